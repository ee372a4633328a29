//! `zolog init`, `append`, `log`, `verify`, `recover`: the log itself.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::Args;

use super::{Ctx, out};
use crate::error::{Error, Result};
use crate::event::json::{self, LineError};
use crate::event::{Payload, Source, SourceKind, codec};
use crate::log::{ProblemKind, ReadEnd};
use crate::store::Store;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Project name recorded in ProjectInitialized (default: the directory's name).
    #[arg(long)]
    pub project: Option<String>,
}

pub fn init(ctx: &Ctx, a: InitArgs) -> Result<ExitCode> {
    let root = match &ctx.store_arg {
        Some(p) => Store::resolve(p),
        None => std::env::current_dir()
            .map_err(|e| Error::io("getcwd", ".", e))?
            .join(crate::store::STORE_DIR),
    };
    let project = a.project.unwrap_or_else(|| {
        root.canonicalize()
            .unwrap_or_else(|_| root.clone())
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned()
    });
    std::fs::create_dir_all(&root).map_err(|e| Error::io("create directory", &root, e))?;
    let store = Store::init(&root, &project, ctx.opts.clone())?;
    crate::project::refresh(&store)?;
    let mut stdout = io::stdout().lock();
    out(
        &mut stdout,
        format_args!(
            "initialized zolog store {} (project {project:?})\n",
            root.display()
        ),
    )?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct AppendArgs {
    /// JSON-lines file to read; `-` or nothing for standard input. Each line is an event envelope
    /// (as `zolog log` prints) or a bare payload (`{"type": "EpochEnded", ...}`).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Append all lines or none: any bad line rejects the whole input.
    #[arg(long)]
    pub atomic: bool,
    /// Source recorded for lines that do not name one.
    #[arg(long, value_enum, default_value_t = SourceArg::Cli)]
    pub source: SourceArg,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SourceArg {
    Cli,
    Trainer,
    Checker,
    Agent,
}

impl From<SourceArg> for SourceKind {
    fn from(s: SourceArg) -> SourceKind {
        match s {
            SourceArg::Cli => SourceKind::Cli,
            SourceArg::Trainer => SourceKind::Trainer,
            SourceArg::Checker => SourceKind::Checker,
            SourceArg::Agent => SourceKind::Agent,
        }
    }
}

/// Lines parsed and encoded by the reader thread, handed to the writer.
struct Chunk {
    payloads: Vec<Vec<u8>>,
    rejected: Vec<(usize, LineError)>,
    /// An I/O error reading the input (ends the input).
    failed: Option<io::Error>,
}

/// Most events, and bytes, in one batch (one fdatasync).
const BATCH_EVENTS: usize = 8192;
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Read, parse and encode lines on their own thread; send a chunk whenever the batch is full or
/// the input has nothing more buffered (so a slow producer gets prompt acknowledgements).
fn spawn_reader(input: Box<dyn Read + Send>, source: Source) -> mpsc::Receiver<Chunk> {
    let (tx, rx) = mpsc::sync_channel::<Chunk>(4);
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(1 << 20, input);
        let mut line = String::new();
        let mut lineno = 0usize;
        let mut chunk = Chunk {
            payloads: Vec::new(),
            rejected: Vec::new(),
            failed: None,
        };
        let mut bytes = 0usize;
        loop {
            line.clear();
            let n = match reader.read_line(&mut line) {
                Ok(n) => n,
                Err(e) => {
                    chunk.failed = Some(e);
                    let _ = tx.send(chunk);
                    return;
                }
            };
            if n == 0 {
                break;
            }
            lineno += 1;
            if !line.trim().is_empty() {
                if !line.ends_with('\n') {
                    // A last line without its newline: a write that may not be finished.
                    chunk.rejected.push((
                        lineno,
                        LineError {
                            column: None,
                            message:
                                "last line has no newline (a write in progress?); not appended"
                                    .into(),
                        },
                    ));
                } else {
                    match json::parse_input_line(&line) {
                        Ok(ev) => {
                            let p = codec::encode(&ev.into_new(&source));
                            bytes += p.len();
                            chunk.payloads.push(p);
                        }
                        Err(e) => chunk.rejected.push((lineno, e)),
                    }
                }
            }
            let full = chunk.payloads.len() >= BATCH_EVENTS || bytes >= BATCH_BYTES;
            if full || reader.buffer().is_empty() {
                let next = Chunk {
                    payloads: Vec::with_capacity(chunk.payloads.len()),
                    rejected: Vec::new(),
                    failed: None,
                };
                if tx.send(std::mem::replace(&mut chunk, next)).is_err() {
                    return;
                }
                bytes = 0;
            }
        }
        let _ = tx.send(chunk);
    });
    rx
}

pub fn append(ctx: &Ctx, a: AppendArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let (input, name): (Box<dyn Read + Send>, String) = match &a.file {
        None => (Box::new(io::stdin()), "<stdin>".into()),
        Some(p) if p.as_os_str() == "-" => (Box::new(io::stdin()), "<stdin>".into()),
        Some(p) => (
            Box::new(File::open(p).map_err(|e| Error::io("open", p, e))?),
            p.display().to_string(),
        ),
    };
    let source = Source::this_process(a.source.into());
    let rx = spawn_reader(input, source);
    let mut stderr = io::stderr().lock();
    let mut appended = 0u64;
    let mut rejected = 0u64;
    let mut first_seq = None;
    let mut last_seq = None;
    let mut pending: Vec<Vec<u8>> = Vec::new();
    // Under the writer lock, or through `zolog serve` while one holds it.
    let mut appender = store.appender();
    let mut input_error = None;
    for mut chunk in rx {
        for (line, e) in &chunk.rejected {
            rejected += 1;
            let col = e.column.map(|c| format!(":{c}")).unwrap_or_default();
            let _ = writeln!(stderr, "zolog: {name}:{line}{col}: {}", e.message);
        }
        if let Some(e) = chunk.failed.take() {
            input_error = Some(Error::io("read", &name, e));
        }
        if a.atomic {
            pending.append(&mut chunk.payloads);
            continue;
        }
        // Batches coalesce while the writer is busy; each takes the lock on its own, so other
        // writers interleave at batch boundaries.
        pending.append(&mut chunk.payloads);
        if pending.is_empty() {
            continue;
        }
        let refs: Vec<&[u8]> = pending.iter().map(Vec::as_slice).collect();
        let r = appender.append_encoded_chunk(&refs)?;
        appended += pending.len() as u64;
        first_seq.get_or_insert(r.first_seq);
        last_seq = Some(r.last_seq);
        pending.clear();
    }
    if let Some(e) = input_error {
        // What was acknowledged stays; say how far we got.
        let _ = writeln!(
            stderr,
            "zolog: {name}: input failed after {appended} event(s) were appended"
        );
        return Err(e);
    }
    if a.atomic {
        if rejected > 0 {
            let _ = writeln!(
                stderr,
                "zolog: {rejected} line(s) rejected; nothing appended (--atomic)"
            );
            pending.clear();
        } else if !pending.is_empty() {
            let refs: Vec<&[u8]> = pending.iter().map(Vec::as_slice).collect();
            let r = appender.append_encoded(&refs, None)?;
            appended = pending.len() as u64;
            first_seq = Some(r.first_seq);
            last_seq = Some(r.last_seq);
        }
    }
    if appended > 0 {
        crate::project::refresh(&store)?;
    }
    let mut stdout = io::stdout().lock();
    if a.json {
        let v = serde_json::json!({
            "appended": appended,
            "rejected": rejected,
            "first_seq": first_seq,
            "last_seq": last_seq,
        });
        out(&mut stdout, format_args!("{v}\n"))?;
    } else {
        let last = last_seq.map_or_else(|| "-".to_owned(), |s| s.to_string());
        out(
            &mut stdout,
            format_args!("appended {appended} event(s), last seq {last}"),
        )?;
        if rejected > 0 {
            out(&mut stdout, format_args!("; rejected {rejected} line(s)"))?;
        }
        out(&mut stdout, format_args!("\n"))?;
    }
    Ok(if rejected > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Only events of this experiment.
    #[arg(long = "exp", value_name = "ID")]
    pub exp: Option<crate::event::ExpId>,
    /// Only events of this kind (e.g. EpochEnded); repeatable.
    #[arg(long, value_name = "KIND", value_parser = parse_kind)]
    pub kind: Vec<String>,
    /// Start at this sequence number (inclusive).
    #[arg(long, value_name = "SEQ", default_value_t = 1)]
    pub since: u64,
    /// Keep printing events as they are appended.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

fn parse_kind(s: &str) -> std::result::Result<String, String> {
    Payload::KINDS
        .iter()
        .find(|k| k.eq_ignore_ascii_case(s))
        .map(|k| (*k).to_owned())
        .ok_or_else(|| {
            format!(
                "unknown event kind {s:?}; kinds are: {}",
                Payload::KINDS.join(", ")
            )
        })
}

pub fn log(ctx: &Ctx, a: LogArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let mut reader = store.log().reader(a.since);
    let stdout = io::stdout();
    let mut w = BufWriter::with_capacity(1 << 16, stdout.lock());
    loop {
        let end = crate::store::read_with(&mut reader, &mut |ev| {
            if a.exp
                .as_ref()
                .is_some_and(|id| ev.payload.experiment_id() != Some(id))
            {
                return Ok(());
            }
            if !a.kind.is_empty() && !a.kind.iter().any(|k| k == ev.payload.kind()) {
                return Ok(());
            }
            out(&mut w, format_args!("{}\n", json::to_line(&ev)))
        })?;
        w.flush().map_err(|e| Error::io("write", "<stdout>", e))?;
        if !a.follow {
            if let ReadEnd::Pending {
                segment,
                offset,
                bytes,
            } = end
                && store.log().lock_holder().is_none()
            {
                eprintln!(
                    "zolog: warning: {} has {bytes} byte(s) of torn tail at offset {offset}; the next write or `zolog recover` cuts it",
                    segment.display()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn verify(ctx: &Ctx, a: VerifyArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let mut check = |seq: u64, payload: &[u8]| -> std::result::Result<(), String> {
        codec::decode(seq, payload).map(|_| ()).map_err(|e| e.0)
    };
    let bar = (io::stderr().is_terminal() && !a.json).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "verifying {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut progress = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    };
    let report = store.log().verify(&mut check, &mut progress)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    // A torn tail while a writer holds the lock is a write in progress, not damage.
    let in_progress = report.writer_active.is_some()
        && report
            .problems
            .iter()
            .all(|p| p.kind == ProblemKind::TornTail);
    let damaged = !report.problems.is_empty() && !in_progress;
    let mut stdout = io::stdout().lock();
    if a.json {
        let v = serde_json::json!({ "ok": !damaged, "report": report });
        out(&mut stdout, format_args!("{v}\n"))?;
    } else {
        let seqs = match (report.first_seq, report.last_seq) {
            (Some(f), Some(l)) => format!(" (seq {f}..{l})"),
            _ => String::new(),
        };
        out(
            &mut stdout,
            format_args!(
                "segments: {}\nevents:   {}{seqs}\nbytes:    {}\n",
                report.segments.len(),
                report.records,
                report.bytes
            ),
        )?;
        if report.problems.is_empty() {
            out(&mut stdout, format_args!("problems: none\n"))?;
        }
        for p in &report.problems {
            let kind = match p.kind {
                ProblemKind::TornTail => "torn tail",
                ProblemKind::Damage => "DAMAGE",
                ProblemKind::Chain => "CHAIN",
                ProblemKind::Payload => "BAD EVENT",
            };
            out(
                &mut stdout,
                format_args!(
                    "{kind}: {} offset {}: {}\n",
                    p.segment.display(),
                    p.offset,
                    p.message
                ),
            )?;
        }
        if in_progress && let Some(h) = &report.writer_active {
            out(
                &mut stdout,
                format_args!("note: {h} is writing; the tail is a write in progress\n"),
            )?;
        } else if damaged {
            let hint = if report
                .problems
                .iter()
                .all(|p| p.kind == ProblemKind::TornTail)
            {
                "the next write, or `zolog recover`, cuts the torn tail (keeping the bytes in a .broken file)"
            } else {
                "nothing is cut automatically: inspect, then `zolog recover --cut-at SEGMENT:OFFSET` to cut explicitly"
            };
            out(&mut stdout, format_args!("hint: {hint}\n"))?;
        }
    }
    Ok(if damaged {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Cut the log at SEGMENT:OFFSET (segment file name or first seq; OFFSET the end of the last
    /// good batch, as `zolog verify` reports). Everything after it is moved to .broken files.
    #[arg(long, value_name = "SEGMENT:OFFSET")]
    pub cut_at: Option<String>,
}

fn parse_cut(s: &str) -> Result<(u64, u64)> {
    let (seg, off) = s
        .rsplit_once(':')
        .ok_or_else(|| Error::Invalid(format!("--cut-at {s:?}: expected SEGMENT:OFFSET")))?;
    let stem = Path::new(seg)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(seg)
        .trim_end_matches(".zlog");
    let seg = stem.parse().map_err(|_| {
        Error::Invalid(format!(
            "--cut-at: {seg:?} is not a segment name or first seq"
        ))
    })?;
    let off = off
        .parse()
        .map_err(|_| Error::Invalid(format!("--cut-at: {off:?} is not a byte offset")))?;
    Ok((seg, off))
}

pub fn recover(ctx: &Ctx, a: RecoverArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let mut stdout = io::stdout().lock();
    let cuts = match &a.cut_at {
        Some(spec) => {
            let (seg, off) = parse_cut(spec)?;
            store.log().cut_at(seg, off)?
        }
        None => store.log().recover()?.into_iter().collect(),
    };
    if cuts.is_empty() {
        out(
            &mut stdout,
            format_args!("nothing to cut: the log ends cleanly\n"),
        )?;
    }
    for c in &cuts {
        out(
            &mut stdout,
            format_args!(
                "cut {} byte(s) from {} at offset {} ({}); kept in {}\n",
                c.bytes,
                c.segment.display(),
                c.offset,
                c.reason,
                c.kept_in.display()
            ),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

//! `zolog init`, `append`, `log`, `verify`, `recover`: the log itself.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read, Write};
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

/// Raw input cut at a line boundary, as one `read` delivered it.
struct Block {
    /// Position in the input: blocks are appended in this order.
    index: usize,
    /// Number of the block's first line (1-based).
    first_line: usize,
    data: Vec<u8>,
    /// The input ended here without a newline after the last line.
    unterminated: bool,
    /// An I/O error reading the input (ends the input).
    failed: Option<io::Error>,
}

/// A block parsed and encoded: its events, back to back, and the lines it rejected.
struct Parsed {
    index: usize,
    payloads: Vec<u8>,
    /// End offset of each payload in `payloads`.
    ends: Vec<usize>,
    rejected: Vec<(usize, LineError)>,
    failed: Option<io::Error>,
}

impl Parsed {
    fn payloads(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let p = &self.payloads[start..end];
            start = end;
            p
        })
    }
}

/// Most events, and bytes, in one batch (one fdatasync).
const BATCH_EVENTS: usize = 16384;
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Most bytes read at once.
const READ_BLOCK: usize = 256 * 1024;
/// Most parsed blocks waiting for the writer.
const IN_FLIGHT: usize = 64;

/// Read the input in blocks cut at line boundaries (one per `read`, so a slow producer gets its
/// lines acknowledged promptly), parse and encode them on `workers` threads, and deliver the
/// results in input order.
fn spawn_pipeline(
    mut input: Box<dyn Read + Send>,
    source: Source,
    workers: usize,
    max_record: usize,
) -> Pipeline {
    // Enough in flight that parsing goes on while the writer waits for fdatasync: the next batch
    // is whatever was parsed meanwhile (at most IN_FLIGHT blocks, a few MiB).
    let (block_tx, block_rx) = mpsc::sync_channel::<Block>(workers * 2);
    let (parsed_tx, parsed_rx) = mpsc::sync_channel::<Parsed>(IN_FLIGHT);
    std::thread::spawn(move || {
        let mut carry: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; READ_BLOCK];
        let mut line = 1usize;
        let mut index = 0usize;
        loop {
            let (n, failed) = loop {
                match input.read(&mut buf) {
                    Ok(n) => break (n, None),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => break (0, Some(e)),
                }
            };
            let mut data = std::mem::take(&mut carry);
            let old = data.len();
            data.extend_from_slice(&buf[..n]);
            let end = n == 0;
            if failed.is_some() {
                // No next block: an incomplete last line is dropped, never appended.
                let cut = data
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |at| at + 1);
                data.truncate(cut);
            } else if !end {
                // Keep an incomplete last line for the next block.
                let Some(at) = memchr::memrchr(b'\n', &data[old..]) else {
                    carry = data;
                    continue;
                };
                carry.extend_from_slice(&data[old + at + 1..]);
                data.truncate(old + at + 1);
            }
            let lines = memchr::memchr_iter(b'\n', &data).count();
            let unterminated = end && failed.is_none() && data.last().is_some_and(|&b| b != b'\n');
            let block = Block {
                index,
                first_line: line,
                data,
                unterminated,
                failed,
            };
            line += lines;
            index += 1;
            let stop = end || block.failed.is_some();
            if block_tx.send(block).is_err() || stop {
                return;
            }
        }
    });
    let block_rx = std::sync::Arc::new(std::sync::Mutex::new(block_rx));
    for _ in 0..workers {
        let (rx, tx, source) = (block_rx.clone(), parsed_tx.clone(), source.clone());
        std::thread::spawn(move || {
            loop {
                let block = match rx.lock().map(|r| r.recv()) {
                    Ok(Ok(b)) => b,
                    _ => return,
                };
                if tx.send(parse_block(block, &source, max_record)).is_err() {
                    return;
                }
            }
        });
    }
    drop(parsed_tx);
    Pipeline {
        rx: parsed_rx,
        waiting: std::collections::BTreeMap::new(),
        next: 0,
    }
}

/// The parsed blocks, back in input order.
struct Pipeline {
    rx: mpsc::Receiver<Parsed>,
    waiting: std::collections::BTreeMap<usize, Parsed>,
    next: usize,
}

impl Pipeline {
    /// The next block, waiting for it; None at the end of the input.
    fn recv(&mut self) -> Option<Parsed> {
        loop {
            if let Some(p) = self.ready() {
                return Some(p);
            }
            let p = self.rx.recv().ok()?;
            self.waiting.insert(p.index, p);
        }
    }

    /// The next block if it is parsed already.
    fn try_recv(&mut self) -> Option<Parsed> {
        loop {
            if let Some(p) = self.ready() {
                return Some(p);
            }
            let p = self.rx.try_recv().ok()?;
            self.waiting.insert(p.index, p);
        }
    }

    fn ready(&mut self) -> Option<Parsed> {
        let p = self.waiting.remove(&self.next)?;
        self.next += 1;
        Some(p)
    }
}

fn parse_block(block: Block, source: &Source, max_record: usize) -> Parsed {
    // Lines that arrived in one read arrived at the same time.
    let now = crate::event::Timestamp::now();
    let mut out = Parsed {
        index: block.index,
        payloads: Vec::with_capacity(block.data.len()),
        ends: Vec::new(),
        rejected: Vec::new(),
        failed: block.failed,
    };
    let mut lineno = block.first_line;
    let data = &block.data[..];
    let mut start = 0;
    while start < data.len() {
        let end = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |at| start + at + 1);
        let line = &data[start..end];
        start = end;
        let this = lineno;
        lineno += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if block.unterminated && end == data.len() {
            // A last line without its newline: a write that may not be finished.
            out.rejected.push((
                this,
                LineError {
                    column: None,
                    message: "last line has no newline (a write in progress?); not appended".into(),
                },
            ));
            continue;
        }
        let text = match std::str::from_utf8(line) {
            Ok(t) => t,
            Err(e) => {
                out.rejected.push((
                    this,
                    LineError {
                        column: Some(e.valid_up_to() + 1),
                        message: "not UTF-8 text".into(),
                    },
                ));
                continue;
            }
        };
        match json::parse_input_line(text) {
            Ok(ev) => {
                let start = out.payloads.len();
                ev.encode_into(source, now, &mut out.payloads);
                let len = out.payloads.len() - start;
                if len > max_record {
                    out.payloads.truncate(start);
                    out.rejected.push((
                        this,
                        LineError {
                            column: None,
                            message: format!(
                                "the event is {len} bytes encoded, over the maximum record size of {max_record}"
                            ),
                        },
                    ));
                    continue;
                }
                out.ends.push(out.payloads.len());
            }
            Err(e) => out.rejected.push((this, e)),
        }
    }
    out
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
    // The projection state loads on another core while the input is parsed and appended; it
    // starts with the first block that will be appended, so input that appends nothing (a bad
    // line under `--atomic`, an empty file) loads nothing and warns of nothing.
    let mut projections = None;
    // Parsing is most of the work: one parser per core, the writer (this thread) mostly waits
    // for fdatasync.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let max_record = store.log().options().max_record as usize;
    let mut pipeline = spawn_pipeline(input, source, workers, max_record);
    let mut stderr = io::stderr().lock();
    let mut appended = 0u64;
    let mut rejected = 0u64;
    let mut first_seq = None;
    let mut last_seq = None;
    // Under the writer lock, or through `zolog serve` while one holds it.
    let mut appender = store.appender();
    let mut input_error = None;
    // Blocks whose events are not appended yet; `--atomic` keeps them all until the end.
    let mut pending: Vec<Parsed> = Vec::new();
    let (mut events, mut bytes) = (0usize, 0usize);
    while let Some(first) = pipeline.recv() {
        let mut next = Some(first);
        while let Some(p) = next.take() {
            report_block(&mut stderr, &name, &p, &mut rejected, &mut input_error);
            let will_append = !p.ends.is_empty() && (rejected == 0 || !a.atomic);
            if will_append {
                projections.get_or_insert_with(|| crate::project::preload(&store));
            }
            events += p.ends.len();
            bytes += p.payloads.len();
            pending.push(p);
            // Group commit: what was parsed while the last fdatasync ran goes into this batch.
            if !a.atomic && events < BATCH_EVENTS && bytes < BATCH_BYTES {
                next = pipeline.try_recv();
            }
        }
        if a.atomic {
            continue;
        }
        if events > 0 {
            let r = append_blocks(&mut appender, &pending, false)?;
            appended += events as u64;
            first_seq.get_or_insert(r.first_seq);
            last_seq = Some(r.last_seq);
        }
        pending.clear();
        (events, bytes) = (0, 0);
        if input_error.is_some() {
            break;
        }
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
        } else if events > 0 {
            let r = append_blocks(&mut appender, &pending, true)?;
            appended = events as u64;
            first_seq = Some(r.first_seq);
            last_seq = Some(r.last_seq);
        }
    }
    // The loading thread may warn (a discarded checkpoint, say): let go of stderr first.
    drop(stderr);
    if appended > 0 {
        projections
            .unwrap_or_else(|| crate::project::preload(&store))
            .refresh()?;
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

/// Append the events of `blocks` as one batch, under the lock for just that batch (so other
/// writers interleave at batch boundaries).
/// Append the events of `blocks`: as one atomic batch with `atomic`, otherwise as durable chunks
/// (one batch under the lock; a server may split it).
fn append_blocks(
    appender: &mut crate::store::Appender<'_>,
    blocks: &[Parsed],
    atomic: bool,
) -> Result<crate::log::Appended> {
    let batch: Vec<&[u8]> = blocks.iter().flat_map(Parsed::payloads).collect();
    if atomic {
        appender.append_encoded(&batch, None)
    } else {
        appender.append_encoded_chunk(&batch)
    }
}

/// Report a parsed block's rejected lines and input error.
fn report_block(
    stderr: &mut impl Write,
    name: &str,
    p: &Parsed,
    rejected: &mut u64,
    input_error: &mut Option<Error>,
) {
    for (line, e) in &p.rejected {
        *rejected += 1;
        let col = e.column.map(|c| format!(":{c}")).unwrap_or_default();
        let _ = writeln!(stderr, "zolog: {name}:{line}{col}: {}", e.message);
    }
    if let Some(e) = &p.failed {
        *input_error = Some(Error::io(
            "read",
            name,
            io::Error::new(e.kind(), e.to_string()),
        ));
    }
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
        w.flush().map_err(super::stdout_error)?;
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
    let check = |_seq: u64, payload: &[u8]| -> std::result::Result<(), String> {
        codec::check(payload).map_err(|e| e.0)
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
    let report = store.log().verify(&check, &mut progress)?;
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

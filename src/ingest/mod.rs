//! Ingest of a trainer's `metrics.jsonl`: lines become events, exactly once.
//!
//! # Exactly-once
//! Every batch of events made from the file is appended together with an [`IngestAdvanced`]
//! (path, file identity, byte offset, line count, rejected count) in the **same atomic batch**.
//! The log is therefore the only record of how far ingest got: on start, [`Ingester::open`] reads
//! it for the last `IngestAdvanced` of this path (and experiment) and continues from there. A crash
//! loses either the whole batch (events and offset) or nothing.
//!
//! Appends are compare-and-append: the ingester first reads whatever was appended since it last
//! looked (up to seq N - 1); if another process advanced the same file in between (the command run
//! twice at once), it appends nothing, adopts that position, and re-reads from there. Otherwise it
//! appends with [`Appender::append_encoded_unless_keys_since`](crate::store::Appender): only if no
//! `IngestAdvanced` of this path and experiment (its conflict key) has a seq ≥ N, checked under
//! the writer lock, or by `zolog serve`'s writer while a server holds the lock; on a conflict it
//! reads on and decides again. Unrelated appends (other trainers through a busy server) never
//! make it retry.
//!
//! # Replaced and rewritten files
//! `file_id` records the file's `dev:inode` and a 64-bit hash of the last consumed line
//! (`dev:inode:hash16`). Before reading, the ingester checks that the file at the path is the same
//! inode, at least `offset` bytes long, and that the line ending at `offset` still hashes the same.
//! If not (a trainer restarted and replaced, truncated or rewrote the file), it starts a new
//! *generation*: an `IngestAdvanced` at offset 0 of the new file is appended (so the log says so),
//! a notice is given, and the file is read from its start. When the path is replaced while the
//! old file is open, the old file is first read to its end.
//!
//! See docs/trainers.md for the full semantics.

pub mod follow;
pub mod line;

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::event::{
    ExpId, IngestAdvanced, NewEvent, Payload, Source, SourceKind, Timestamp, codec,
};
use crate::log::{ReadError, Reader};
use crate::serve::client::ServeError;
use crate::store::Store;

pub use self::follow::{FollowOptions, FollowStatus, Follower, shutdown_signal};

/// Tunables of an ingest.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// The trainer's `metrics.jsonl`.
    pub path: PathBuf,
    /// The experiment; when `None`, the one the log recorded for this path, or else the first
    /// line that names one.
    pub experiment: Option<ExpId>,
    /// Most events in one appended batch (one fdatasync).
    pub max_batch_events: usize,
    /// Bytes of input read at once; a batch never spans two reads.
    pub read_chunk: usize,
    /// Longest line accepted; a longer one is rejected (and skipped).
    pub max_line_bytes: usize,
    /// When refreshing the projections fails after an append (the events are durable either
    /// way): false, the error ends the poll; true, it is reported as [`Notice::RefreshFailed`]
    /// and ingest goes on. [`Follower`] sets it.
    pub tolerate_refresh_errors: bool,
}

impl IngestOptions {
    pub fn new(path: impl Into<PathBuf>, experiment: Option<ExpId>) -> IngestOptions {
        IngestOptions {
            path: path.into(),
            experiment,
            max_batch_events: 8192,
            read_chunk: 4 << 20,
            max_line_bytes: 8 << 20,
            tolerate_refresh_errors: false,
        }
    }
}

/// A file's identity: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.dev, self.ino)
    }
}

/// How far an ingest has read a file: the content of an [`IngestAdvanced`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The file read; `None` before any file was seen.
    pub file: Option<FileId>,
    /// Byte offset just after the last consumed line.
    pub offset: u64,
    /// Lines consumed in this generation of the file.
    pub line: u64,
    /// Bad lines skipped in this generation of the file.
    pub rejected: u64,
    /// Hash of the last consumed line (with its newline); `None` when unknown (a `file_id`
    /// without one). 0 at offset 0.
    pub tail: Option<u64>,
}

impl Position {
    fn start(file: Option<FileId>) -> Position {
        Position {
            file,
            offset: 0,
            line: 0,
            rejected: 0,
            tail: Some(0),
        }
    }

    /// The `file_id` string: `dev:inode:hash16`.
    pub fn file_id_string(&self) -> String {
        match (self.file, self.tail) {
            (Some(id), Some(t)) => format!("{id}:{t:016x}"),
            (Some(id), None) => id.to_string(),
            (None, _) => String::new(),
        }
    }

    /// Read back from an `IngestAdvanced`.
    pub fn from_advanced(a: &IngestAdvanced) -> Position {
        let mut parts = a.file_id.split(':');
        let dev = parts.next().and_then(|s| s.parse().ok());
        let ino = parts.next().and_then(|s| s.parse().ok());
        let tail = parts.next().and_then(|s| u64::from_str_radix(s, 16).ok());
        let file = match (dev, ino) {
            (Some(dev), Some(ino)) => Some(FileId { dev, ino }),
            _ => None,
        };
        Position {
            file,
            offset: a.offset,
            line: a.line,
            rejected: a.rejected,
            tail: if a.offset == 0 { Some(0) } else { tail },
        }
    }
}

/// 64-bit hash of a consumed line (its bytes and newline): the first 8 bytes of its BLAKE3.
pub fn line_hash(line_with_newline: &[u8]) -> u64 {
    let h = blake3::hash(line_with_newline);
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Why a new generation of the file was started.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NewGenerationReason {
    /// The path now names another file (a different device:inode).
    Replaced { old: FileId, new: FileId },
    /// The file is shorter than the offset already consumed.
    Shrunk { size: u64, offset: u64 },
    /// The line ending at the consumed offset is no longer the one consumed.
    Rewritten { offset: u64 },
}

impl std::fmt::Display for NewGenerationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NewGenerationReason::Replaced { old, new } => {
                write!(f, "the file was replaced (inode {old} is now {new})")
            }
            NewGenerationReason::Shrunk { size, offset } => write!(
                f,
                "the file shrank to {size} bytes, below the {offset} bytes already ingested"
            ),
            NewGenerationReason::Rewritten { offset } => write!(
                f,
                "the file was rewritten (the line ending at byte {offset} is not the one ingested)"
            ),
        }
    }
}

/// Things an ingest reports as it goes. None of them stops it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Notice {
    /// A bad line, skipped (and counted in `rejected`).
    Rejected {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    /// The file was replaced, shrank or was rewritten: reading starts again at byte 0.
    NewGeneration {
        path: PathBuf,
        reason: NewGenerationReason,
        previous: Position,
    },
    /// The last line has no newline (a write in progress, or a trainer killed mid-write). It is
    /// not ingested; a later ingest takes it once it is complete. Given by a final poll only.
    IncompleteLine {
        path: PathBuf,
        line: u64,
        offset: u64,
        bytes: u64,
    },
    /// Another ingest of the same file advanced it; this one adopted its position.
    Adopted { path: PathBuf, position: Position },
    /// A batch whose acknowledgement was lost with a `zolog serve` is in the log after all: this
    /// ingest goes on from its position (nothing is appended twice).
    Landed { path: PathBuf, position: Position },
    /// No line names an experiment and none was given (a final poll only).
    NoExperiment { path: PathBuf },
    /// The experiment was never minted in this store (the events are ingested anyway).
    UnmintedExperiment { experiment: ExpId },
    /// Refreshing the projections failed after an append (the events are durable).
    RefreshFailed { error: String },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Rejected { path, line, reason } => {
                write!(f, "{}:{line}: {reason}; line skipped", path.display())
            }
            Notice::NewGeneration {
                path,
                reason,
                previous,
            } => write!(
                f,
                "{}: {reason}; ingesting it from byte 0 as a new generation (the previous one ended at line {}, byte {})",
                path.display(),
                previous.line,
                previous.offset
            ),
            Notice::IncompleteLine {
                path,
                line,
                offset,
                bytes,
            } => write!(
                f,
                "{}:{line}: last line has no newline ({bytes} bytes at offset {offset}: a write in progress, or the trainer died mid-write); not ingested",
                path.display()
            ),
            Notice::Adopted { path, position } => write!(
                f,
                "{}: another ingest advanced this file to line {}, byte {}; continuing from there",
                path.display(),
                position.line,
                position.offset
            ),
            Notice::Landed { path, position } => write!(
                f,
                "{}: the batch sent to a zolog serve that went away is in the log (up to line {}, byte {}); continuing from there",
                path.display(),
                position.line,
                position.offset
            ),
            Notice::NoExperiment { path } => write!(
                f,
                "{}: no line names an experiment_id; pass --exp",
                path.display()
            ),
            Notice::UnmintedExperiment { experiment } => write!(
                f,
                "experiment {experiment} was never minted in this store; ingesting its events anyway"
            ),
            Notice::RefreshFailed { error } => write!(
                f,
                "the events are appended, but refreshing the projections failed: {error}"
            ),
        }
    }
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollOutcome {
    /// The file does not exist (yet).
    pub no_file: bool,
    /// Events appended (not counting IngestAdvanced).
    pub events: u64,
    /// Lines consumed (events, bad lines and blank lines).
    pub lines: u64,
    /// Bad lines skipped.
    pub rejected: u64,
    /// Bytes after the last complete line (held back).
    pub pending_bytes: u64,
    /// Seq of the last record this poll appended.
    pub last_seq: Option<u64>,
}

/// Totals over the life of an [`Ingester`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub events: u64,
    pub lines: u64,
    pub rejected: u64,
    pub batches: u64,
    pub generations: u64,
}

type Sink = Box<dyn FnMut(&Notice) + Send>;

struct OpenFile {
    file: File,
    id: FileId,
}

/// The events of one read, waiting to be appended.
struct Batch {
    /// Encoded events back to back; event i ends at `ends[i]`.
    data: Vec<u8>,
    ends: Vec<usize>,
    lines: u64,
    rejected: u64,
    /// Offset after the last consumed line, and that line's hash and length.
    end: u64,
    tail: u64,
    tail_len: u64,
}

impl Batch {
    fn new(end: u64) -> Batch {
        Batch {
            data: Vec::new(),
            ends: Vec::new(),
            lines: 0,
            rejected: 0,
            end,
            tail: 0,
            tail_len: 0,
        }
    }

    fn events(&self) -> u64 {
        self.ends.len() as u64
    }

    fn push(&mut self, event: &[u8]) {
        self.data.extend_from_slice(event);
        self.ends.push(self.data.len());
    }
}

/// What became of one line.
enum Parsed {
    Blank,
    /// Its encoded event: a range of the piece's `data`.
    Event(usize, usize),
    Bad(String),
}

/// The lines of one piece of a chunk, parsed and encoded (on its own thread for big chunks).
struct Piece {
    /// Index of each line's newline in the chunk.
    nls: Vec<usize>,
    parsed: Vec<Parsed>,
    data: Vec<u8>,
}

struct ParseCtx<'a> {
    exp: &'a ExpId,
    source: &'a Source,
    /// The `appended` time of the chunk's events.
    now: Timestamp,
    max_line: usize,
    max_record: usize,
}

/// A chunk of the file, read and parsed, waiting to be committed.
struct Prepared {
    /// Offset of its first byte.
    at: u64,
    /// The bytes read.
    buf: Vec<u8>,
    /// Bytes asked for (a read shorter than this reached the end of the file).
    want: usize,
    /// Index of its last newline.
    last_nl: Option<usize>,
    /// Its complete lines, parsed.
    pieces: Vec<Piece>,
}

/// Read up to `want` bytes at `at` and parse their complete lines.
fn prepare(
    file: &File,
    at: u64,
    want: usize,
    cx: &ParseCtx<'_>,
    threads: usize,
) -> io::Result<Prepared> {
    let mut buf = vec![0u8; want];
    let n = read_full_at(file, &mut buf, at)?;
    buf.truncate(n);
    let last_nl = memchr::memrchr(b'\n', &buf);
    let pieces = match last_nl {
        Some(l) => parse_chunk(&buf[..=l], cx, threads),
        None => Vec::new(),
    };
    Ok(Prepared {
        at,
        buf,
        want,
        last_nl,
        pieces,
    })
}

/// Chunks at least this big are parsed on several threads.
const PARALLEL_MIN_BYTES: usize = 256 * 1024;

/// Parse and encode the complete lines of `chunk` (which ends with a newline), in order.
fn parse_chunk(chunk: &[u8], cx: &ParseCtx<'_>, threads: usize) -> Vec<Piece> {
    if threads <= 1 || chunk.len() < PARALLEL_MIN_BYTES {
        return vec![parse_piece(chunk, 0, chunk.len(), cx)];
    }
    let mut bounds = vec![0usize];
    for i in 1..threads {
        let target = (chunk.len() * i / threads).max(*bounds.last().expect("non-empty"));
        if let Some(j) = memchr::memchr(b'\n', &chunk[target..]) {
            let b = target + j + 1;
            if b < chunk.len() && b > *bounds.last().expect("non-empty") {
                bounds.push(b);
            }
        }
    }
    bounds.push(chunk.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = bounds
            .windows(2)
            .map(|w| {
                let (from, to) = (w[0], w[1]);
                s.spawn(move || parse_piece(chunk, from, to, cx))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a parser thread panicked"))
            .collect()
    })
}

/// Parse the lines of `chunk[from..to]` (`to` just after a newline).
fn parse_piece(chunk: &[u8], from: usize, to: usize, cx: &ParseCtx<'_>) -> Piece {
    let mut piece = Piece {
        nls: Vec::new(),
        parsed: Vec::new(),
        data: Vec::with_capacity((to - from) / 2),
    };
    // One event reused for every line: only its time and payload change.
    let mut slot: Option<NewEvent> = None;
    let mut start = from;
    for nl in memchr::memchr_iter(b'\n', &chunk[from..to]) {
        let nl = from + nl;
        let line = &chunk[start..nl];
        start = nl + 1;
        piece.nls.push(nl);
        if line::is_blank(line) {
            piece.parsed.push(Parsed::Blank);
            continue;
        }
        if line.len() > cx.max_line {
            piece.parsed.push(Parsed::Bad(format!(
                "line is {} bytes, over the {}-byte limit",
                line.len(),
                cx.max_line
            )));
            continue;
        }
        let ev = match line::parse_line(line, Some(cx.exp)) {
            Ok((_, ev)) => ev,
            Err(e) => {
                piece.parsed.push(Parsed::Bad(e.reason));
                continue;
            }
        };
        let appended = (cx.now != ev.time).then_some(cx.now);
        let slot = match &mut slot {
            Some(s) => {
                s.time = ev.time;
                s.appended = appended;
                s.payload = ev.payload;
                s
            }
            None => slot.insert(NewEvent {
                time: ev.time,
                appended,
                source: cx.source.clone(),
                payload: ev.payload,
            }),
        };
        let a = piece.data.len();
        codec::encode_into(slot, &mut piece.data);
        let b = piece.data.len();
        if b - a > cx.max_record {
            piece.data.truncate(a);
            piece.parsed.push(Parsed::Bad(format!(
                "the event would be {} bytes, over the log's {}-byte record limit",
                b - a,
                cx.max_record
            )));
        } else {
            piece.parsed.push(Parsed::Event(a, b));
        }
    }
    piece
}

/// Ingests one file into a store; the synchronous core that [`Follower`] drives.
pub struct Ingester {
    store: Store,
    opts: IngestOptions,
    /// The path as recorded in IngestAdvanced: relative to the project directory when inside it.
    key_path: String,
    exp: Option<ExpId>,
    pos: Position,
    /// Length of the last consumed line, when known (saves a backward search).
    tail_len: Option<u64>,
    file: Option<OpenFile>,
    reader: Reader,
    /// Seq ranges this ingester appended that the reader has not passed yet.
    own: Vec<(u64, u64)>,
    minted: HashSet<ExpId>,
    warned_unminted: bool,
    source: Source,
    sink: Sink,
    totals: Totals,
    /// Threads that parse a big chunk.
    threads: usize,
    /// Most events in one batch: `max_batch_events`, halved whenever a batch is over a server's
    /// line limit.
    batch_limit: usize,
    /// The IngestAdvanced of a batch sent to a server that went away before acknowledging it:
    /// it may or may not be in the log, and the next catch-up tells which.
    in_doubt: Option<IngestAdvanced>,
}

impl std::fmt::Debug for Ingester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingester")
            .field("path", &self.opts.path)
            .field("key_path", &self.key_path)
            .field("experiment", &self.exp)
            .field("position", &self.pos)
            .finish_non_exhaustive()
    }
}

/// The path an ingest of `path` records: relative to the store's project directory when it lies
/// inside it, absolute otherwise (symbolic links in its directory resolved, not in its name).
pub fn key_path(store: &Store, path: &Path) -> Result<String> {
    let abs = absolute_resolved(path)?;
    let project = std::path::absolute(store.project_dir())
        .map_err(|e| Error::io("resolve", store.project_dir(), e))?;
    let project = project.canonicalize().unwrap_or(project);
    Ok(match abs.strip_prefix(&project) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.to_string_lossy().into_owned(),
        _ => abs.to_string_lossy().into_owned(),
    })
}

/// `path` made absolute, with its directory canonicalized when it exists. The file name is kept
/// as given: the file may not exist yet, and a symbolic link (`last.pt` → `epoch_19.pt`) is
/// recorded as the name the trainer uses.
pub(crate) fn absolute_resolved(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).map_err(|e| Error::io("resolve", path, e))?;
    Ok(match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => dir.canonicalize().map_or(abs.clone(), |d| d.join(name)),
        _ => abs.canonicalize().unwrap_or(abs),
    })
}

impl Ingester {
    /// Open an ingest of `opts.path` into `store`, recovering its position from the log.
    pub fn open(store: Store, opts: IngestOptions) -> Result<Ingester> {
        let key_path = key_path(&store, &opts.path)?;
        let reader = store.log().reader(1);
        let mut ing = Ingester {
            source: Source {
                kind: SourceKind::Trainer,
                pid: None,
                host: Some(crate::event::hostname()),
            },
            exp: opts.experiment.clone(),
            store,
            opts,
            key_path,
            pos: Position::start(None),
            tail_len: None,
            file: None,
            reader,
            own: Vec::new(),
            minted: HashSet::new(),
            warned_unminted: false,
            sink: Box::new(|n| tracing::warn!("{n}")),
            totals: Totals::default(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            batch_limit: usize::MAX,
            in_doubt: None,
        };
        ing.batch_limit = ing.opts.max_batch_events.max(1);
        if let Some(found) = ing.catch_up()? {
            ing.adopt(found, false);
        }
        Ok(ing)
    }

    /// Where notices go (default: `tracing::warn!`).
    pub fn set_sink(&mut self, sink: impl FnMut(&Notice) + Send + 'static) {
        self.sink = Box::new(sink);
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn path(&self) -> &Path {
        &self.opts.path
    }

    /// The path as recorded in `IngestAdvanced`.
    pub fn key_path(&self) -> &str {
        &self.key_path
    }

    pub fn experiment(&self) -> Option<&ExpId> {
        self.exp.as_ref()
    }

    /// The position the log records for this ingest.
    pub fn position(&self) -> &Position {
        &self.pos
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    pub fn options_mut(&mut self) -> &mut IngestOptions {
        &mut self.opts
    }

    fn notice(&mut self, n: Notice) {
        (self.sink)(&n);
    }

    /// Read what the log gained since we last looked. Returns the last `IngestAdvanced` of this
    /// path (and experiment) that this ingester did not append itself.
    fn catch_up(&mut self) -> Result<Option<IngestAdvanced>> {
        let own = &self.own;
        let key = &self.key_path;
        let exp = self.exp.as_ref();
        let minted = &mut self.minted;
        let mut found = None;
        let r = self.reader.poll(|r| {
            if own.iter().any(|&(a, b)| (a..=b).contains(&r.seq)) {
                return Ok(());
            }
            let ev = codec::decode(r.seq, r.payload)
                .map_err(|source| Error::Codec { seq: r.seq, source })?;
            match ev.payload {
                Payload::IngestAdvanced(a)
                    if a.path == *key && exp.is_none_or(|e| *e == a.experiment_id) =>
                {
                    found = Some(a);
                }
                Payload::ExperimentMinted(m) => {
                    minted.insert(m.experiment_id);
                }
                _ => {}
            }
            Ok(())
        });
        match r {
            Ok(_) => {}
            Err(ReadError::Log(e)) => return Err(e.into()),
            Err(ReadError::Callback(e)) => return Err(e),
        }
        let next = self.reader.next_seq();
        self.own.retain(|&(_, b)| b >= next);
        Ok(found)
    }

    /// Take a position recorded in the log (at open, or another ingest's).
    fn adopt(&mut self, a: IngestAdvanced, announce: bool) {
        if self.exp.is_none() {
            self.exp = Some(a.experiment_id.clone());
        }
        let ours = self.in_doubt.take().is_some_and(|d| d == a);
        self.pos = Position::from_advanced(&a);
        self.tail_len = None;
        self.file = None;
        if announce {
            let path = self.opts.path.clone();
            let position = self.pos.clone();
            self.notice(if ours {
                Notice::Landed { path, position }
            } else {
                Notice::Adopted { path, position }
            });
        }
    }

    /// Read every complete line available now and append its events; with `last`, also report an
    /// incomplete last line and a missing experiment id. Call it again whenever the file may have
    /// grown.
    pub fn poll(&mut self, last: bool) -> Result<PollOutcome> {
        let mut out = PollOutcome::default();
        loop {
            if self.file.is_none() {
                match File::open(&self.opts.path) {
                    Ok(file) => {
                        let meta = file
                            .metadata()
                            .map_err(|e| Error::io("stat", &self.opts.path, e))?;
                        self.file = Some(OpenFile {
                            file,
                            id: FileId::of(&meta),
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        out.no_file = true;
                        return Ok(out);
                    }
                    Err(e) => return Err(Error::io("open", &self.opts.path, e)),
                }
            }
            self.check_file(&mut out)?;
            if self.file.is_none() {
                // Another ingest advanced the file meanwhile: start over from its position.
                continue;
            }
            let restart = self.read_available(last, &mut out)?;
            if restart {
                continue;
            }
            // Read to the end of the open file. Has the path been replaced meanwhile?
            let open_id = self.file.as_ref().map(|f| f.id);
            match std::fs::metadata(&self.opts.path) {
                Ok(m) if Some(FileId::of(&m)) != open_id => {
                    // The old file is drained: switch to the new one.
                    self.file = None;
                    continue;
                }
                _ => {}
            }
            return Ok(out);
        }
    }

    /// Check the open file against the recorded position; start a new generation if it is not
    /// the file (or content) that position describes.
    fn check_file(&mut self, out: &mut PollOutcome) -> Result<()> {
        let Some(of) = self.file.as_ref() else {
            return Ok(());
        };
        let id = of.id;
        let size = of
            .file
            .metadata()
            .map_err(|e| Error::io("stat", &self.opts.path, e))?
            .len();
        let reason = match self.pos.file {
            None => {
                // The first file this ingest ever sees.
                self.pos.file = Some(id);
                None
            }
            Some(old) if old != id => Some(NewGenerationReason::Replaced { old, new: id }),
            Some(_) if size < self.pos.offset => Some(NewGenerationReason::Shrunk {
                size,
                offset: self.pos.offset,
            }),
            Some(_) => {
                if self.tail_matches()? {
                    None
                } else {
                    Some(NewGenerationReason::Rewritten {
                        offset: self.pos.offset,
                    })
                }
            }
        };
        if let Some(reason) = reason {
            let previous = self.pos.clone();
            self.notice(Notice::NewGeneration {
                path: self.opts.path.clone(),
                reason,
                previous,
            });
            self.pos = Position::start(Some(id));
            self.tail_len = Some(0);
            self.totals.generations += 1;
            // Say so in the log: the generation starts at offset 0 of this file.
            self.commit(Batch::new(0), out)?;
        }
        Ok(())
    }

    /// Does the line ending at the recorded offset still hash as recorded?
    fn tail_matches(&mut self) -> Result<bool> {
        let off = self.pos.offset;
        if off == 0 {
            return Ok(true);
        }
        let Some(of) = self.file.as_ref() else {
            return Ok(false);
        };
        let path = &self.opts.path;
        let read = |at: u64, n: usize| -> Result<Vec<u8>> {
            let mut b = vec![0u8; n];
            let got = read_full_at(&of.file, &mut b, at).map_err(|e| Error::io("read", path, e))?;
            b.truncate(got);
            Ok(b)
        };
        let start = match self.tail_len {
            Some(len) if len <= off => off - len,
            _ => {
                // Search back from off-1 for the newline before the last line.
                let last = read(off - 1, 1)?;
                if last.as_slice() != b"\n" {
                    return Ok(false);
                }
                let mut end = off - 1;
                let mut start = 0;
                while end > 0 {
                    let n = end.min(64 * 1024);
                    let b = read(end - n, n as usize)?;
                    if let Some(i) = memchr::memrchr(b'\n', &b) {
                        start = end - n + i as u64 + 1;
                        break;
                    }
                    end -= n;
                }
                start
            }
        };
        let Some(want) = self.pos.tail else {
            // An old record without a hash: all we can check is the newline.
            return Ok(read(off - 1, 1)?.as_slice() == b"\n");
        };
        if off - start > self.opts.max_line_bytes as u64 + 1 {
            // A skipped over-long line: check its last byte only.
            return Ok(read(off - 1, 1)?.as_slice() == b"\n");
        }
        let bytes = read(start, (off - start) as usize)?;
        let ok = bytes.len() as u64 == off - start && line_hash(&bytes) == want;
        if ok {
            self.tail_len = Some(off - start);
        }
        Ok(ok)
    }

    /// Read the open file from the recorded offset to its end, appending as it goes. Returns true
    /// when the position was taken over by another ingest (start over).
    fn read_available(&mut self, last: bool, out: &mut PollOutcome) -> Result<bool> {
        if self.exp.is_none() && !self.discover_experiment()? {
            if last {
                let n = Notice::NoExperiment {
                    path: self.opts.path.clone(),
                };
                self.notice(n);
            }
            return Ok(false);
        }
        self.check_minted();
        let chunk = self.opts.read_chunk.max(4096);
        self.read_loop(chunk, last, out)
    }

    fn read_loop(&mut self, chunk: usize, last: bool, out: &mut PollOutcome) -> Result<bool> {
        let max_line = self.opts.max_line_bytes;
        let max_record = self.store.log().options().max_record as usize;
        let exp = self.exp.clone().expect("known by now");
        let source = self.source.clone();
        let threads = self.threads;
        let path = self.opts.path.clone();
        // A handle of our own, so the next chunk can be read while this one is committed.
        let file = self
            .file
            .as_ref()
            .expect("open")
            .file
            .try_clone()
            .map_err(|e| Error::io("dup", &path, e))?;
        let mut want = chunk;
        let mut next: Option<Prepared> = None;
        loop {
            let at = self.pos.offset;
            let cx = ParseCtx {
                exp: &exp,
                source: &source,
                now: Timestamp::now(),
                max_line,
                max_record,
            };
            let p = match next.take() {
                Some(p) if p.at == at => p,
                _ => prepare(&file, at, want, &cx, threads)
                    .map_err(|e| Error::io("read", &path, e))?,
            };
            let n = p.buf.len();
            if n == 0 {
                out.pending_bytes = 0;
                return Ok(false);
            }
            let Some(last_nl) = p.last_nl else {
                // No complete line in what was read.
                if n == p.want && n <= max_line {
                    // A long line: read more of it.
                    want = p.want.saturating_mul(2);
                    continue;
                }
                if n > max_line {
                    // Over-long: skip to its newline if there is one.
                    if self.skip_long_line(at, out)? {
                        want = chunk;
                        continue;
                    }
                }
                out.pending_bytes = n as u64;
                if last {
                    let n = Notice::IncompleteLine {
                        path: path.clone(),
                        line: self.pos.line + 1,
                        offset: at,
                        bytes: n as u64,
                    };
                    self.notice(n);
                }
                return Ok(false);
            };
            // Truncated while we read? Then what was read may mix two contents: drop it and
            // start over (the generation check then sees the shrink or the rewrite).
            let size = file
                .metadata()
                .map_err(|e| Error::io("stat", &path, e))?
                .len();
            if size < at + n as u64 {
                return Ok(true);
            }
            let more = n == p.want;
            want = chunk;
            let next_at = at + last_nl as u64 + 1;
            // Commit this chunk while the next one is read and parsed.
            let (committed, prepared) = std::thread::scope(|s| {
                let reader = more.then(|| s.spawn(|| prepare(&file, next_at, chunk, &cx, threads)));
                let committed = self.merge_and_commit(&p, last_nl, out);
                let prepared = reader.map(|h| h.join().expect("the reader thread panicked"));
                (committed, prepared)
            });
            if !committed? {
                return Ok(true);
            }
            if let Some(prepared) = prepared {
                next = Some(prepared.map_err(|e| Error::io("read", &path, e))?);
                continue;
            }
            // A short read: that was the end of the file. What follows the last newline is
            // re-read next time.
            let rest = (n - (last_nl + 1)) as u64;
            out.pending_bytes = rest;
            if rest > 0 && last {
                let n = Notice::IncompleteLine {
                    path: path.clone(),
                    line: self.pos.line + 1,
                    offset: self.pos.offset,
                    bytes: rest,
                };
                self.notice(n);
            }
            return Ok(false);
        }
    }

    /// Turn a prepared chunk's lines into batches, report its bad lines, and append. False when
    /// another ingest advanced the file first.
    fn merge_and_commit(
        &mut self,
        p: &Prepared,
        last_nl: usize,
        out: &mut PollOutcome,
    ) -> Result<bool> {
        let at = p.at;
        let complete = &p.buf[..=last_nl];
        let mut batch = Batch::new(at);
        let mut start = 0usize;
        for piece in &p.pieces {
            for (parsed, &nl) in piece.parsed.iter().zip(&piece.nls) {
                let lineno = self.pos.line + batch.lines + 1;
                batch.lines += 1;
                match parsed {
                    Parsed::Blank => {}
                    Parsed::Event(a, b) => batch.push(&piece.data[*a..*b]),
                    Parsed::Bad(reason) => {
                        batch.rejected += 1;
                        let n = Notice::Rejected {
                            path: self.opts.path.clone(),
                            line: lineno,
                            reason: reason.clone(),
                        };
                        self.notice(n);
                    }
                }
                batch.end = at + nl as u64 + 1;
                batch.tail_len = (nl + 1 - start) as u64;
                start = nl + 1;
                if batch.events() as usize >= self.batch_limit {
                    batch.tail = line_hash(&complete[start - batch.tail_len as usize..start]);
                    let full = std::mem::replace(&mut batch, Batch::new(at + start as u64));
                    if !self.commit(full, out)? {
                        return Ok(false);
                    }
                }
            }
        }
        if batch.lines > 0 {
            batch.tail = line_hash(&complete[start - batch.tail_len as usize..start]);
            if !self.commit(batch, out)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A line longer than the limit starts at `at`: find its newline and consume it as a
    /// rejected line. False when its newline has not been written yet.
    fn skip_long_line(&mut self, at: u64, out: &mut PollOutcome) -> Result<bool> {
        let mut scan = at;
        let mut b = vec![0u8; 1 << 20];
        let of = self.file.as_ref().expect("open");
        loop {
            let n = read_full_at(&of.file, &mut b, scan)
                .map_err(|e| Error::io("read", &self.opts.path, e))?;
            if n == 0 {
                return Ok(false);
            }
            if let Some(i) = memchr::memchr(b'\n', &b[..n]) {
                let end = scan + i as u64 + 1;
                let len = end - at;
                let lineno = self.pos.line + 1;
                let n = Notice::Rejected {
                    path: self.opts.path.clone(),
                    line: lineno,
                    reason: format!(
                        "line is {len} bytes, over the {}-byte limit",
                        self.opts.max_line_bytes
                    ),
                };
                self.notice(n);
                let mut batch = Batch::new(end);
                batch.lines = 1;
                batch.rejected = 1;
                // Over-long lines are not hashed; the check falls back to the newline.
                batch.tail_len = len;
                return self.commit(batch, out);
            }
            scan += n as u64;
        }
    }

    /// Without an experiment: find the first line (from the recorded offset) that names one.
    fn discover_experiment(&mut self) -> Result<bool> {
        let Some(of) = self.file.as_ref() else {
            return Ok(false);
        };
        let mut at = self.pos.offset;
        let mut b = vec![0u8; 1 << 20];
        loop {
            let n = read_full_at(&of.file, &mut b, at)
                .map_err(|e| Error::io("read", &self.opts.path, e))?;
            let Some(last) = memchr::memrchr(b'\n', &b[..n]) else {
                return Ok(false);
            };
            let mut start = 0;
            for nl in memchr::memchr_iter(b'\n', &b[..=last]) {
                if let Ok((id, _)) = line::parse_line(&b[start..nl], None) {
                    self.exp = Some(id);
                    return Ok(true);
                }
                start = nl + 1;
            }
            at += last as u64 + 1;
        }
    }

    fn check_minted(&mut self) {
        if self.warned_unminted {
            return;
        }
        if let Some(exp) = self.exp.clone()
            && !self.minted.contains(&exp)
        {
            self.warned_unminted = true;
            self.notice(Notice::UnmintedExperiment { experiment: exp });
        }
    }

    /// Append the batch's events and the new position, atomically, unless another ingest of the
    /// same file got there first (then adopt its position and return false). Also false when the
    /// batch was over a server's line limit: nothing appended, smaller batches from now on.
    fn commit(&mut self, batch: Batch, out: &mut PollOutcome) -> Result<bool> {
        let Some(exp) = self.exp.clone() else {
            return Ok(true);
        };
        let keys = [crate::store::ingest_key(&exp, &self.key_path)];
        let pos = Position {
            file: self.file.as_ref().map(|f| f.id).or(self.pos.file),
            offset: batch.end,
            line: self.pos.line + batch.lines,
            rejected: self.pos.rejected + batch.rejected,
            tail: Some(batch.tail).filter(|_| {
                batch.tail_len <= self.opts.max_line_bytes as u64 + 1 || batch.end == 0
            }),
        };
        let adv = IngestAdvanced {
            experiment_id: exp,
            path: self.key_path.clone(),
            file_id: pos.file_id_string(),
            offset: pos.offset,
            line: pos.line,
            rejected: pos.rejected,
        };
        let adv_bytes = codec::encode(&NewEvent::now(
            self.source.clone(),
            Payload::IngestAdvanced(adv.clone()),
        ));
        let mut parts: Vec<&[u8]> = Vec::with_capacity(batch.ends.len() + 1);
        let mut a = 0;
        for &b in &batch.ends {
            parts.push(&batch.data[a..b]);
            a = b;
        }
        parts.push(&adv_bytes);
        let store = self.store.clone();
        let mut appender = store.appender();
        let mut tries = 0;
        let r = loop {
            // Everything up to N - 1: did another ingest advance this file meanwhile?
            if let Some(theirs) = self.catch_up()? {
                self.adopt(theirs, true);
                return Ok(false);
            }
            let since = self.reader.next_seq();
            match appender.append_encoded_unless_keys_since(since, &keys, &parts) {
                Ok(r) => break r,
                // An IngestAdvanced of this file since N (the next catch_up adopts it), or a
                // server that started after N: read on and decide again.
                Err(Error::KeyConflict { .. }) if tries < CONFLICT_TRIES => tries += 1,
                Err(Error::Serve(ServeError::BatchTooLarge { bytes, max })) => {
                    let events = batch.events() as usize;
                    if events <= 1 {
                        return Err(Error::Invalid(format!(
                            "{}: line {}: its event and the IngestAdvanced are {bytes} bytes as one batch, over the line limit of zolog serve ({max} bytes); raise `zolog serve --max-line`",
                            self.opts.path.display(),
                            self.pos.line + batch.lines
                        )));
                    }
                    self.batch_limit = (events / 2).max(1);
                    return Ok(false);
                }
                Err(e) => {
                    if matches!(
                        e,
                        Error::Serve(ServeError::Lost { .. } | ServeError::Connect { .. })
                    ) {
                        self.in_doubt = Some(adv);
                    }
                    return Err(e);
                }
            }
        };
        self.own.push((r.first_seq, r.last_seq));
        self.in_doubt = None;
        self.pos = pos;
        self.tail_len = Some(batch.tail_len);
        self.totals.events += batch.events();
        self.totals.lines += batch.lines;
        self.totals.rejected += batch.rejected;
        self.totals.batches += 1;
        out.events += batch.events();
        out.lines += batch.lines;
        out.rejected += batch.rejected;
        out.last_seq = Some(r.last_seq);
        if let Err(e) = crate::project::refresh(&self.store) {
            if !self.opts.tolerate_refresh_errors {
                return Err(e);
            }
            self.notice(Notice::RefreshFailed {
                error: e.to_string(),
            });
        }
        Ok(true)
    }
}

/// Conflicts in a row (each a real IngestAdvanced of the same file, adopted by the next catch-up)
/// before a commit gives up.
const CONFLICT_TRIES: usize = 64;

/// Read into `buf` at `offset` until it is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

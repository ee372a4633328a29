//! A store: the `.zo/` directory, its log, and typed access to the events in it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::event::{self, Event, NewEvent, Payload, ProjectInitialized, codec};
use crate::log::fs::{Fs, RealFs};
use crate::log::{Appended, Log, LogError, LogOptions, ReadEnd, ReadError, Writer};
use crate::serve::client::{self, Client, ServeError};

/// Name of the store directory inside a project.
pub const STORE_DIR: &str = ".zo";

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub log: LogOptions,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            log: LogOptions {
                holder: holder_description(),
                ..LogOptions::default()
            },
        }
    }
}

impl StoreOptions {
    pub fn with_lock_timeout(mut self, t: Duration) -> Self {
        self.log.lock_timeout = t;
        self
    }
}

/// "pid 123 on host (zolog append)": what a waiting writer is told about the lock holder.
pub fn holder_description() -> String {
    let args: Vec<String> = std::env::args().take(3).collect();
    let cmd = args
        .iter()
        .map(|a| {
            Path::new(a)
                .file_name()
                .map_or(a.as_str(), |n| n.to_str().unwrap_or(a))
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "pid {} on {} ({})",
        std::process::id(),
        event::hostname(),
        if cmd.is_empty() { "zolog" } else { &cmd }
    )
}

/// A zolog store: `root` is the `.zo` directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    log: Log,
}

impl Store {
    /// Find the store for `start`: `start` itself if it is a store directory, `start/.zo`, or the
    /// same in each parent directory (the way git finds its repository).
    pub fn discover(start: &Path) -> Result<PathBuf> {
        for dir in start.ancestors() {
            if is_store(dir) {
                return Ok(dir.to_path_buf());
            }
            let candidate = dir.join(STORE_DIR);
            if is_store(&candidate) {
                return Ok(candidate);
            }
        }
        Err(Error::NoStore {
            start: start.to_path_buf(),
        })
    }

    /// Resolve an explicit `--store PATH`: the `.zo` directory, or a project directory holding one.
    pub fn resolve(path: &Path) -> PathBuf {
        if is_store(path) || path.file_name().is_some_and(|n| n == STORE_DIR) {
            path.to_path_buf()
        } else {
            path.join(STORE_DIR)
        }
    }

    /// Open an existing store.
    pub fn open(root: &Path, opts: StoreOptions) -> Result<Store> {
        if !is_store(root) {
            return Err(Error::NoStore {
                start: root.to_path_buf(),
            });
        }
        Self::open_with(Arc::new(RealFs), root, opts)
    }

    /// Open a store over any file system (the fault-injecting one in tests).
    pub fn open_with(fs: Arc<dyn Fs>, root: &Path, opts: StoreOptions) -> Result<Store> {
        let log = Log::open(fs, root.join("log"), opts.log)?;
        Ok(Store {
            root: root.to_path_buf(),
            log,
        })
    }

    /// Create a store at `root` (a `.zo` directory) and append `ProjectInitialized`.
    pub fn init(root: &Path, project: &str, opts: StoreOptions) -> Result<Store> {
        Self::init_with(Arc::new(RealFs), root, project, opts)
    }

    pub fn init_with(
        fs: Arc<dyn Fs>,
        root: &Path,
        project: &str,
        opts: StoreOptions,
    ) -> Result<Store> {
        let store = Self::open_with(fs, root, opts)?;
        let mut w = store.log.writer()?;
        if w.next_seq() > 1 {
            return Err(Error::AlreadyInitialized(root.to_path_buf()));
        }
        let ev = NewEvent::now(
            event::json::cli_source(),
            Payload::ProjectInitialized(ProjectInitialized {
                project: project.to_owned(),
            }),
        );
        w.append(&[codec::encode(&ev)])?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The project directory (the parent of `.zo`), which `artifacts_dir` paths are relative to.
    pub fn project_dir(&self) -> &Path {
        self.root.parent().unwrap_or(Path::new("."))
    }

    pub fn experiments_dir(&self) -> PathBuf {
        self.root.join("experiments")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Take the writer lock (recovering a torn tail) for appending several batches.
    pub fn writer(&self) -> Result<Writer> {
        Ok(self.log.writer()?)
    }

    /// Append events as one durable, atomic batch: under the writer lock, or, while a
    /// `zolog serve` holds the lock, through its socket.
    pub fn append(&self, events: &[NewEvent]) -> Result<Appended> {
        self.appender().append(events)
    }

    /// An appender for several batches, which keeps its connection to a server between them.
    pub fn appender(&self) -> Appender<'_> {
        Appender {
            store: self,
            server: None,
        }
    }

    /// The socket a `zolog serve` on this store listens on.
    pub fn socket_path(&self) -> PathBuf {
        crate::serve::socket_path(&self.root)
    }

    /// Call `f` with every event from `from_seq` on, in order. Returns how the log ended.
    pub fn read(&self, from_seq: u64, mut f: impl FnMut(Event) -> Result<()>) -> Result<ReadEnd> {
        let mut reader = self.log.reader(from_seq);
        read_with(&mut reader, &mut f)
    }

    /// All events from `from_seq` on.
    pub fn events(&self, from_seq: u64) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        self.read(from_seq, |e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }
}

/// Appends batches to a store. Every writing command goes through here, so that while a
/// `zolog serve` holds the writer lock, writes go through its socket instead of failing on the
/// lock: a server that answers on `.zo/serve.sock` is used; otherwise the lock is taken as usual,
/// and if it turns out to be busy, the socket is tried once more.
///
/// Check-then-append (decide from the log's state, append only if nobody appended meanwhile)
/// works the same way in both cases with [`Appender::append_if`]: fold the log to its end, decide,
/// `append_if(next_seq, ..)`, and on [`Error::Conflict`] fold again and retry.
#[derive(Debug)]
pub struct Appender<'a> {
    store: &'a Store,
    server: Option<Client>,
}

/// What is being appended: events, or payloads already encoded (`codec::encode`).
#[derive(Clone, Copy)]
enum Batch<'a> {
    Events(&'a [NewEvent]),
    Encoded(&'a [&'a [u8]]),
}

impl Batch<'_> {
    fn len(&self) -> usize {
        match self {
            Batch::Events(e) => e.len(),
            Batch::Encoded(p) => p.len(),
        }
    }

    fn skip(self, n: usize) -> Self {
        match self {
            Batch::Events(e) => Batch::Events(&e[n..]),
            Batch::Encoded(p) => Batch::Encoded(&p[n..]),
        }
    }

    fn payloads(&self) -> Vec<std::borrow::Cow<'_, [u8]>> {
        match self {
            Batch::Events(e) => e.iter().map(|ev| codec::encode(ev).into()).collect(),
            Batch::Encoded(p) => p.iter().map(|&b| b.into()).collect(),
        }
    }

    /// The JSON envelopes a server takes. An encoded payload is decoded first (its `appended`
    /// time is not sent: the server records its own).
    fn envelopes(&self) -> Result<Vec<String>> {
        match self {
            Batch::Events(e) => Ok(e.iter().map(client::envelope).collect()),
            Batch::Encoded(p) => p
                .iter()
                .map(|b| {
                    let ev =
                        codec::decode(0, b).map_err(|source| Error::Codec { seq: 0, source })?;
                    Ok(client::envelope(&NewEvent {
                        time: ev.time,
                        appended: ev.appended,
                        source: ev.source,
                        payload: ev.payload,
                    }))
                })
                .collect(),
        }
    }
}

/// How a batch may be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// All of it in one log batch.
    Atomic,
    /// Through a server, possibly as several atomic batches.
    Split,
    /// Atomic, and only if the log's next seq is this one.
    If(u64),
}

impl Appender<'_> {
    /// Append `events` as one durable, atomic batch.
    pub fn append(&mut self, events: &[NewEvent]) -> Result<Appended> {
        self.go(Batch::Events(events), Mode::Atomic)
    }

    /// Append `events` durably; through a server they may be split into several atomic batches
    /// (each within its line limit). The range returned spans them all.
    pub fn append_chunk(&mut self, events: &[NewEvent]) -> Result<Appended> {
        self.go(Batch::Events(events), Mode::Split)
    }

    /// Append `events` as one atomic batch only if the log's next seq is `next_seq` when it is
    /// appended; otherwise nothing is appended and the error is [`Error::Conflict`] with the seq
    /// the log is at.
    pub fn append_if(&mut self, next_seq: u64, events: &[NewEvent]) -> Result<Appended> {
        self.go(Batch::Events(events), Mode::If(next_seq))
    }

    /// [`Appender::append`] (or, with `if_next_seq`, [`Appender::append_if`]) for payloads
    /// already encoded with `codec::encode`.
    pub fn append_encoded(
        &mut self,
        payloads: &[&[u8]],
        if_next_seq: Option<u64>,
    ) -> Result<Appended> {
        let mode = if_next_seq.map_or(Mode::Atomic, Mode::If);
        self.go(Batch::Encoded(payloads), mode)
    }

    /// [`Appender::append_chunk`] for payloads already encoded with `codec::encode`.
    pub fn append_encoded_chunk(&mut self, payloads: &[&[u8]]) -> Result<Appended> {
        self.go(Batch::Encoded(payloads), Mode::Split)
    }

    /// Whether the last append went through a server.
    pub fn via_server(&self) -> bool {
        self.server.is_some()
    }

    fn connect(&mut self) -> Result<bool> {
        if self.server.is_none() {
            self.server = client::connect_store(&self.store.root, client::DEFAULT_TIMEOUT)?;
        }
        Ok(self.server.is_some())
    }

    fn through_server(&mut self, batch: Batch<'_>, mode: Mode) -> Result<Outcome> {
        let envs = batch.envelopes()?;
        let c = self.server.as_mut().expect("connected");
        let r = match mode {
            Mode::Atomic => c.append_envelopes(&envs, None),
            Mode::If(n) => c.append_envelopes(&envs, Some(n)),
            Mode::Split => c.append_split_envelopes(&envs),
        };
        match r {
            Ok(a) => Ok(Outcome::Done(a)),
            // A server that stopped before reading the rest did not append it: the lock is
            // (about to be) free, so the rest goes in directly.
            Err(ServeError::ShutDown {
                appended,
                first_seq,
                ..
            }) if mode == Mode::Split || appended == 0 => {
                tracing::info!("zolog serve stopped; appending the rest directly");
                self.server = None;
                Ok(Outcome::Partly(appended, first_seq))
            }
            Err(ServeError::Conflict { expected, actual }) => {
                Err(Error::Conflict { expected, actual })
            }
            Err(e) => {
                self.server = None;
                Err(e.into())
            }
        }
    }

    fn go(&mut self, batch: Batch<'_>, mode: Mode) -> Result<Appended> {
        if batch.len() == 0 {
            return Err(LogError::EmptyBatch.into());
        }
        let mut done = 0;
        let mut first = None;
        if self.connect()? {
            match self.through_server(batch, mode)? {
                Outcome::Done(a) => return Ok(a),
                Outcome::Partly(n, f) => {
                    done = n;
                    first = f;
                }
            }
        }
        let rest = batch.skip(done);
        let r = match self.store.log.writer() {
            Ok(mut w) => {
                if let Mode::If(expected) = mode
                    && w.next_seq() != expected
                {
                    return Err(Error::Conflict {
                        expected,
                        actual: w.next_seq(),
                    });
                }
                w.append(&rest.payloads())?
            }
            Err(LogError::Locked { holder, waited }) => {
                if self.connect()? {
                    match self.through_server(rest, mode)? {
                        Outcome::Done(a) => a,
                        Outcome::Partly(..) => {
                            return Err(Error::Invalid(
                                "zolog serve stopped twice during one append; the log holds part of it (check with `zolog log`)".into(),
                            ));
                        }
                    }
                } else {
                    return Err(LogError::Locked { holder, waited }.into());
                }
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Appended {
            first_seq: first.unwrap_or(r.first_seq),
            last_seq: r.last_seq,
        })
    }
}

enum Outcome {
    Done(Appended),
    /// The server stopped after appending this many events (a prefix), the first at this seq.
    Partly(usize, Option<u64>),
}

/// Drive a log reader, decoding each record into an event.
pub fn read_with(
    reader: &mut crate::log::Reader,
    f: &mut dyn FnMut(Event) -> Result<()>,
) -> Result<ReadEnd> {
    match reader.poll(|r| {
        let ev = codec::decode(r.seq, r.payload)
            .map_err(|source| Error::Codec { seq: r.seq, source })?;
        f(ev)
    }) {
        Ok(end) => Ok(end),
        Err(ReadError::Log(e)) => Err(e.into()),
        Err(ReadError::Callback(e)) => Err(e),
    }
}

fn is_store(dir: &Path) -> bool {
    dir.join("log").is_dir()
}

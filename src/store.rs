//! A store: the `.zo/` directory, its log, and typed access to the events in it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::event::{self, AlertRaised, Event, ExpId, NewEvent, Payload, ProjectInitialized, codec};
use crate::log::fs::{Fs, RealFs};
use crate::log::{Appended, Log, LogError, LogOptions, ReadEnd, ReadError, Writer};
use crate::serve::client::{self, Client, Condition, ServeError};

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

/// The conflict key of an event, if it has one: what a keyed check-then-append
/// ([`Appender::append_unless_keys_since`], the `if_no_key_since` batch of docs/serve.md) decides
/// about. Two events that must not both be appended by check-then-appends made from the same view
/// of the log have the same key:
///
/// - `IngestAdvanced`: `ingest <experiment> <path>` ([`ingest_key`]), the position of one file's
///   ingest into one experiment, which an ingester adopts from the log;
/// - `AlertRaised`: `alert <experiment> <severity> <trigger seq, or -> "<rule>" <subject>`, the
///   experiment and the [`AlertKey`](crate::checker::AlertKey) that watchers dedup alerts on.
///
/// Every other event has none, and finding that out is one comparison of the payload's variant
/// (the server derives keys for every event it appends). The log itself never sees keys.
#[inline]
pub fn conflict_key(payload: &Payload) -> Option<String> {
    match payload {
        Payload::IngestAdvanced(a) => Some(ingest_key(&a.experiment_id, &a.path)),
        Payload::AlertRaised(a) => Some(alert_key(a)),
        _ => None,
    }
}

/// The conflict key of the `IngestAdvanced` events of `path` (as recorded) into `exp`.
pub fn ingest_key(exp: &ExpId, path: &str) -> String {
    format!("ingest {exp} {path}")
}

fn alert_key(a: &AlertRaised) -> String {
    let k = crate::checker::AlertKey::of(a);
    let severity = match k.severity {
        event::Severity::Info => "info",
        event::Severity::Warn => "warn",
        event::Severity::Stop => "stop",
    };
    let trigger = k
        .trigger_seq
        .map_or_else(|| "-".to_owned(), |s| s.to_string());
    // The rule is quoted (JSON), so the subject after it may hold anything.
    let rule = serde_json::to_string(&k.rule).expect("strings serialize");
    format!(
        "alert {} {severity} {trigger} {rule} {}",
        a.experiment_id, k.subject
    )
}

/// Appends batches to a store. Every writing command goes through here, so that while a
/// `zolog serve` holds the writer lock, writes go through its socket instead of failing on the
/// lock: a server that answers on `.zo/serve.sock` is used; otherwise the lock is taken as usual,
/// and if it turns out to be busy, the socket is tried once more.
///
/// Check-then-append (decide from the log's state, append only if nobody appended meanwhile)
/// works the same way in both cases with [`Appender::append_if`]: fold the log to its end, decide,
/// `append_if(next_seq, ..)`, and on [`Error::Conflict`] fold again and retry. When only some
/// events matter (another ingest of the same file, the same alert), the narrower
/// [`Appender::append_unless_keys_since`] does not conflict with unrelated appends, so it does not
/// starve under a busy server.
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
enum Mode<'k> {
    /// All of it in one log batch.
    Atomic,
    /// Through a server, possibly as several atomic batches.
    Split,
    /// Atomic, and only if the log's next seq is this one.
    If(u64),
    /// Atomic, and only if no event carrying one of these conflict keys has a seq at or after
    /// this one.
    UnlessKeysSince(u64, &'k [String]),
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

    /// Append `events` as one atomic batch only if no event carrying one of `keys` (see
    /// [`conflict_key`]) was appended at seq `since` or later: `since` is the next seq the caller
    /// had not read when it decided. Otherwise nothing is appended and the error is
    /// [`Error::KeyConflict`]: read the log on (to its `next_seq`), decide again, retry.
    ///
    /// Directly, the writer lock is taken and the events from `since` to the end are read to
    /// check; through a server, its writer checks when it appends the batch (it remembers the
    /// last seq of every key it appended, and answers a conflict for a `since` older than its own
    /// start, which a caller that read on to the end never sends again). Unrelated appends never
    /// conflict. With no keys it is [`Appender::append`].
    pub fn append_unless_keys_since(
        &mut self,
        since: u64,
        keys: &[String],
        events: &[NewEvent],
    ) -> Result<Appended> {
        self.go(Batch::Events(events), Self::keyed(since, keys))
    }

    /// [`Appender::append_unless_keys_since`] for payloads already encoded with `codec::encode`.
    pub fn append_encoded_unless_keys_since(
        &mut self,
        since: u64,
        keys: &[String],
        payloads: &[&[u8]],
    ) -> Result<Appended> {
        self.go(Batch::Encoded(payloads), Self::keyed(since, keys))
    }

    fn keyed(since: u64, keys: &[String]) -> Mode<'_> {
        if keys.is_empty() {
            Mode::Atomic
        } else {
            Mode::UnlessKeysSince(since, keys)
        }
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

    fn through_server(&mut self, batch: Batch<'_>, mode: Mode<'_>) -> Result<Outcome> {
        let envs = batch.envelopes()?;
        let c = self.server.as_mut().expect("connected");
        let r = match mode {
            Mode::Atomic => c.append_envelopes(&envs, None),
            Mode::If(n) => c.append_envelopes(&envs, Some(Condition::NextSeq(n))),
            Mode::UnlessKeysSince(since, keys) => {
                c.append_envelopes(&envs, Some(Condition::NoKeySince { since, keys }))
            }
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
            Err(ServeError::KeyConflict {
                since,
                next_seq,
                reason,
            }) => Err(Error::KeyConflict {
                since,
                next_seq,
                reason,
            }),
            Err(e) => {
                self.server = None;
                Err(e.into())
            }
        }
    }

    /// Under the writer lock: the first event from `since` on that carries one of `keys`, said
    /// as a conflict reason.
    fn keys_since(&self, since: u64, keys: &[String]) -> Result<Option<String>> {
        let mut found = None;
        self.store.read(since.max(1), |ev| {
            if found.is_none()
                && let Some(k) = conflict_key(&ev.payload)
                && keys.contains(&k)
            {
                found = Some(format!("the event at seq {} has key {k:?}", ev.seq));
            }
            Ok(())
        })?;
        Ok(found)
    }

    fn go(&mut self, batch: Batch<'_>, mode: Mode<'_>) -> Result<Appended> {
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
                if let Mode::UnlessKeysSince(since, keys) = mode
                    && let Some(reason) = self.keys_since(since, keys)?
                {
                    return Err(Error::KeyConflict {
                        since,
                        next_seq: w.next_seq(),
                        reason,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EpochEnded, IngestAdvanced, Metrics, Severity};

    fn alert(f: impl FnOnce(&mut AlertRaised)) -> Payload {
        let mut a = AlertRaised {
            experiment_id: ExpId::from_number(1),
            rule: "divergence.spike".into(),
            severity: Severity::Warn,
            epoch: Some(3),
            observed: Metrics(vec![("val loss".into(), 9.0), ("x".into(), 1.0)]),
            thresholds: Metrics::default(),
            evidence_seqs: vec![10, 12],
            config_seq: Some(4),
            message: "spike".into(),
            likely_cause: String::new(),
            recommended_action: String::new(),
        };
        f(&mut a);
        Payload::AlertRaised(a)
    }

    /// Alerts the watcher treats as the same (equal `AlertKey`, same experiment) have the same
    /// conflict key; any difference the watcher sees gives another key; only ingest positions
    /// and alerts have one.
    #[test]
    fn conflict_keys_follow_what_check_then_append_decides_about() {
        let key = |p: &Payload| conflict_key(p);
        let base = key(&alert(|_| {})).unwrap();
        assert_eq!(base, r#"alert exp-001 warn 12 "divergence.spike" val loss"#);
        // Same AlertKey: same conflict key.
        let same = alert(|a| {
            a.message = "other words".into();
            a.epoch = None;
            a.evidence_seqs = vec![1, 12];
            a.observed.0[0].1 = f64::NAN;
            a.observed.0[1].0 = "y".into();
            a.config_seq = None;
        });
        assert_eq!(key(&same).unwrap(), base);
        // Any part of the AlertKey, or the experiment, differs: another key.
        let differ: Vec<Payload> = vec![
            alert(|a| a.experiment_id = ExpId::from_number(2)),
            alert(|a| a.rule = "nan_inf".into()),
            alert(|a| a.severity = Severity::Stop),
            alert(|a| a.evidence_seqs = vec![13]),
            alert(|a| a.evidence_seqs = vec![]),
            alert(|a| {
                a.observed.0.remove(0);
            }),
            // A rule with spaces and quotes cannot pass for another rule and subject.
            alert(|a| {
                a.rule = "divergence.spike\" val".into();
                a.observed.0[0].0 = "loss".into();
            }),
        ];
        for p in &differ {
            assert_ne!(key(p).unwrap(), base, "{p:?}");
        }
        let adv = Payload::IngestAdvanced(IngestAdvanced {
            experiment_id: ExpId::from_number(7),
            path: "runs/a b/metrics.jsonl".into(),
            file_id: "1:2".into(),
            offset: 5,
            line: 1,
            rejected: 0,
        });
        assert_eq!(
            key(&adv).as_deref(),
            Some("ingest exp-007 runs/a b/metrics.jsonl")
        );
        assert_eq!(
            key(&adv),
            Some(ingest_key(&ExpId::from_number(7), "runs/a b/metrics.jsonl"))
        );
        let epoch = Payload::EpochEnded(EpochEnded {
            experiment_id: ExpId::from_number(1),
            epoch: 1,
            step: None,
            metrics: Metrics::default(),
            learning_rate: None,
            wall_time_seconds: None,
            gpu_memory_mb: None,
        });
        assert_eq!(key(&epoch), None);
    }
}

//! `zolog serve`: many writers, one log, group commit.
//!
//! A server takes the store's writer lock for its whole life and listens on a Unix socket inside
//! the store (`.zo/serve.sock`, mode 0600) and, only when asked, on a loopback TCP port that
//! requires a token. Clients send JSON lines (the forms of [`protocol`]); each connection's reader
//! parses and encodes them and hands them to the single writer thread ([`group`]), which appends
//! everything waiting with one fdatasync and only then lets the connection acknowledge. Queues are
//! bounded everywhere, so a flood slows its sender instead of growing memory. docs/serve.md is the
//! contract.
//!
//! Architecture invariant: the server appends only what clients sent, and acknowledges an event
//! only after `Writer::append` returned for the group holding it.

pub mod client;
mod conn;
mod group;
pub mod protocol;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use crate::error::{Error, Result};
use crate::event::{Source, SourceKind};
use crate::store::Store;

pub use self::protocol::{DEFAULT_MAX_LINE, SOCKET_NAME};

/// The socket a server for the store at `root` (a `.zo` directory) listens on.
pub fn socket_path(root: &Path) -> PathBuf {
    root.join(SOCKET_NAME)
}

/// The TCP listener: loopback only, with a token.
#[derive(Clone)]
pub struct TcpOptions {
    pub addr: SocketAddr,
    pub token: String,
}

impl std::fmt::Debug for TcpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpOptions")
            .field("addr", &self.addr)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Tunables of a server. The defaults suit a sweep of trainers on one machine.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The Unix socket; default `.zo/serve.sock`.
    pub socket: Option<PathBuf>,
    pub tcp: Option<TcpOptions>,
    /// Longest line read, in bytes.
    pub max_line: usize,
    /// Connections served at once; more are refused with an error line.
    pub max_connections: usize,
    /// Submissions (chunks of lines) one connection may have waiting for acknowledgement.
    pub conn_inflight: usize,
    /// Bytes of encoded events in flight to the writer, server-wide.
    pub budget_bytes: usize,
    /// Submissions waiting for the writer, server-wide.
    pub queue: usize,
    /// Most bytes appended in one group (one fdatasync).
    pub group_max_bytes: usize,
    /// A client that takes none of its acknowledgements for this long is dropped.
    pub ack_timeout: Duration,
    /// A TCP client must authenticate within this time.
    pub auth_timeout: Duration,
    /// Least time between two projection refreshes.
    pub refresh_interval: Duration,
    /// Source kind of events that name no source (and whose connection sent no `#source`).
    pub source_kind: SourceKind,
    /// Tokio worker threads.
    pub workers: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            socket: None,
            tcp: None,
            max_line: DEFAULT_MAX_LINE,
            max_connections: 1024,
            conn_inflight: 16,
            budget_bytes: 256 << 20,
            queue: 4096,
            group_max_bytes: 8 << 20,
            ack_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            refresh_interval: Duration::from_millis(250),
            source_kind: SourceKind::Trainer,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8)),
        }
    }
}

/// Where a started server listens.
#[derive(Debug, Clone)]
pub struct Ready {
    pub socket: PathBuf,
    pub tcp: Option<SocketAddr>,
    /// The seq the next appended event will get.
    pub next_seq: u64,
}

/// Durations in a log-linear histogram: 4 buckets per power of two of microseconds (so a
/// quantile is known to within 19%), up to about 2^40 µs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    pub counts: Vec<u64>,
}

const HIST_BUCKETS: usize = 4 * 41;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; HIST_BUCKETS],
        }
    }
}

impl Histogram {
    fn bucket(micros: u64) -> usize {
        if micros < 4 {
            return micros as usize;
        }
        let log = 63 - micros.leading_zeros() as usize;
        let sub = ((micros >> (log - 2)) & 3) as usize;
        (4 * (log - 1) + sub).min(HIST_BUCKETS - 1)
    }

    /// The upper bound, in microseconds, of bucket `i`.
    fn upper(i: usize) -> u64 {
        if i < 4 {
            return i as u64 + 1;
        }
        let log = i / 4 + 1;
        let sub = (i % 4) as u64;
        (4 + sub + 1) << (log - 2)
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// An upper bound of the `q` quantile (0 < q ≤ 1), or None when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let want = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(Duration::from_micros(Self::upper(i)));
            }
        }
        None
    }
}

/// What a server did, reported when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeReport {
    pub connections: u64,
    pub events: u64,
    /// Groups appended, one fdatasync each.
    pub syncs: u64,
    pub rejected_lines: u64,
    /// Clients dropped for not taking their acknowledgements.
    pub dropped_clients: u64,
    /// Connections refused (over the limit, or failed authentication).
    pub refused_connections: u64,
    pub last_seq: Option<u64>,
    /// How long each group's `Writer::append` (write + fdatasync) took.
    pub append_times: Histogram,
}

#[derive(Debug)]
pub(crate) struct Stats {
    pub connections: AtomicU64,
    pub events: AtomicU64,
    pub syncs: AtomicU64,
    pub rejected: AtomicU64,
    pub dropped: AtomicU64,
    pub refused: AtomicU64,
    pub last_seq: AtomicU64,
    pub append_hist: Vec<AtomicU64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            connections: AtomicU64::new(0),
            events: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
            append_hist: (0..HIST_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Stats {
    pub(crate) fn record_append(&self, took: Duration) {
        let i = Histogram::bucket(took.as_micros().min(u64::MAX as u128) as u64);
        self.append_hist[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// What every connection task shares.
pub(crate) struct Shared {
    pub opts: ServeOptions,
    pub writer_tx: mpsc::Sender<group::Submission>,
    pub budget: Arc<Semaphore>,
    pub budget_kib: usize,
    pub stop: watch::Receiver<bool>,
    pub stats: Arc<Stats>,
    pub greeting: Vec<u8>,
    pub host: String,
    pub max_record: usize,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |e| Error::io(op, path, e)
}

/// Remove a socket left by a server that died: we hold the writer lock, so no server is using it.
fn remove_stale_socket(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            tracing::info!("removing stale socket {}", path.display());
            std::fs::remove_file(path).map_err(io_err("remove stale socket", path))
        }
        Ok(_) => Err(Error::Invalid(format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// Bind the Unix socket with mode 0600 from the start (umask), then say so explicitly.
fn bind_unix(path: &Path) -> Result<(UnixListener, u64)> {
    // sockaddr_un holds 108 bytes including the terminating NUL.
    if path.as_os_str().len() > 107 {
        return Err(Error::Invalid(format!(
            "socket path {} is {} bytes, over the 107 a Unix socket allows; use a shorter store path",
            path.display(),
            path.as_os_str().len()
        )));
    }
    remove_stale_socket(path)?;
    use nix::sys::stat::{Mode, umask};
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    let l = bound.map_err(io_err("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod", path))?;
    let ino = std::fs::metadata(path).map_err(io_err("stat", path))?.ino();
    Ok((l, ino))
}

async fn accept_unix(
    l: UnixListener,
    sh: Arc<Shared>,
    slots: Arc<Semaphore>,
    track: mpsc::Sender<()>,
) {
    let mut stop = sh.stop.clone();
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            r = l.accept() => r,
        };
        let (stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: wait a little rather than spin.
                tracing::warn!("accept on the Unix socket failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(stream, &sh);
            continue;
        };
        sh.stats.connections.fetch_add(1, Ordering::Relaxed);
        let pid = stream
            .peer_cred()
            .ok()
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok());
        let source = Source {
            kind: sh.opts.source_kind,
            pid,
            host: Some(sh.host.clone()),
        };
        let sh = sh.clone();
        let track = track.clone();
        tokio::spawn(async move {
            let (rd, wr) = stream.into_split();
            conn::run(rd, wr, Vec::new(), 0, source, sh).await;
            drop(slot);
            drop(track);
        });
    }
}

async fn accept_tcp(
    l: TcpListener,
    token: Arc<str>,
    sh: Arc<Shared>,
    slots: Arc<Semaphore>,
    track: mpsc::Sender<()>,
) {
    let mut stop = sh.stop.clone();
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            r = l.accept() => r,
        };
        let (mut stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept on the TCP port failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(stream, &sh);
            continue;
        };
        let sh = sh.clone();
        let track = track.clone();
        let token = token.clone();
        tokio::spawn(async move {
            match conn::authenticate(&mut stream, &token, sh.opts.auth_timeout).await {
                Ok(rest) => {
                    sh.stats.connections.fetch_add(1, Ordering::Relaxed);
                    let source = Source {
                        kind: sh.opts.source_kind,
                        pid: None,
                        host: Some(sh.host.clone()),
                    };
                    let (rd, wr) = stream.into_split();
                    conn::run(rd, wr, rest, 1, source, sh).await;
                }
                Err(why) => {
                    sh.stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("refused TCP client {peer}: {why}");
                }
            }
            drop(slot);
            drop(track);
        });
    }
}

/// Over the connection limit: say so and close.
fn refuse<S: tokio::io::AsyncWrite + Unpin + Send + 'static>(mut stream: S, sh: &Shared) {
    use tokio::io::AsyncWriteExt;
    sh.stats.refused.fetch_add(1, Ordering::Relaxed);
    let mut out = Vec::new();
    protocol::write_error(
        &mut out,
        &format!(
            "too many connections (the limit is {}); try again later",
            sh.opts.max_connections
        ),
        None,
        true,
    );
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
    });
}

/// Run a server on `store` until the future made by `stop` completes, or a write fails. `stop`
/// is called inside the runtime before anything is bound (so signal handlers are in place
/// first); `ready` is called once the sockets accept connections.
///
/// On stop: no new connections; every line already read is appended and acknowledged (a client
/// that takes no acknowledgements for `ack_timeout` is dropped); each connection gets a final
/// `{"bye":..}` line; the socket is removed; the lock is released when this returns.
pub fn run<F, Fut>(
    store: &Store,
    opts: ServeOptions,
    stop: F,
    ready: impl FnOnce(&Ready),
) -> Result<ServeReport>
where
    F: FnOnce() -> io::Result<Fut>,
    Fut: Future<Output = ()>,
{
    let writer = store.writer()?;
    let next_seq = writer.next_seq();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.workers.max(1))
        .thread_name("zolog-serve")
        .enable_all()
        .build()
        .map_err(|e| Error::io("start runtime", store.root(), e))?;
    let socket = opts
        .socket
        .clone()
        .unwrap_or_else(|| socket_path(store.root()));
    rt.block_on(async move {
        let stop = stop().map_err(|e| Error::io("install signal handlers", "", e))?;
        let (listener, ino) = bind_unix(&socket)?;
        let tcp = match &opts.tcp {
            Some(t) => {
                if !t.addr.ip().is_loopback() {
                    return Err(Error::Invalid(format!(
                        "--tcp {}: only loopback addresses are served (the protocol is not encrypted)",
                        t.addr
                    )));
                }
                let l = TcpListener::bind(t.addr)
                    .await
                    .map_err(|e| Error::io("bind", t.addr.to_string(), e))?;
                let a = l.local_addr().map_err(|e| Error::io("bind", t.addr.to_string(), e))?;
                Some((l, a, Arc::<str>::from(t.token.as_str())))
            }
            None => None,
        };
        let result = serve_on(store, writer, opts, listener, tcp, stop, ready, next_seq, &socket, ino).await;
        remove_socket(&socket, ino);
        result
    })
}

/// Remove the socket if it is still ours, so clients fall back to taking the lock.
fn remove_socket(socket: &Path, ino: u64) {
    if std::fs::metadata(socket).is_ok_and(|m| m.ino() == ino) {
        let _ = std::fs::remove_file(socket);
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_on(
    store: &Store,
    writer: crate::log::Writer,
    opts: ServeOptions,
    listener: UnixListener,
    tcp: Option<(TcpListener, SocketAddr, Arc<str>)>,
    stop: impl Future<Output = ()>,
    ready: impl FnOnce(&Ready),
    next_seq: u64,
    socket: &Path,
    ino: u64,
) -> Result<ServeReport> {
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (writer_tx, writer_rx) = mpsc::channel(opts.queue.max(1));
    let fatal = Arc::new(Notify::new());
    let failed = Arc::new(AtomicBool::new(false));

    // Projections follow the log off the hot path: a doorbell rung after each group.
    let (bell_tx, bell_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let refresher = {
        let store = store.clone();
        let every = opts.refresh_interval;
        std::thread::Builder::new()
            .name("zolog-refresh".into())
            .spawn(move || refresh_loop(&store, bell_rx, every))
            .map_err(|e| Error::io("spawn", "refresh thread", e))?
    };
    let writer_thread = {
        let stats = stats.clone();
        let fatal = fatal.clone();
        let failed = failed.clone();
        let max = opts.group_max_bytes;
        std::thread::Builder::new()
            .name("zolog-writer".into())
            .spawn(move || {
                let r = group::run(
                    writer,
                    writer_rx,
                    max,
                    &stats,
                    &|_| {
                        let _ = bell_tx.try_send(());
                    },
                    &|| {
                        failed.store(true, Ordering::SeqCst);
                        fatal.notify_one();
                    },
                );
                drop(bell_tx);
                r
            })
            .map_err(|e| Error::io("spawn", "writer thread", e))?
    };

    let budget_kib = (opts.budget_bytes / 1024).max(opts.max_line / 1024 + 64);
    let greeting = protocol::Greeting {
        zolog: env!("CARGO_PKG_VERSION").to_owned(),
        protocol: protocol::PROTOCOL_VERSION,
        max_line: opts.max_line,
        pid: std::process::id(),
    }
    .line();
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let sh = Arc::new(Shared {
        writer_tx,
        budget: Arc::new(Semaphore::new(budget_kib)),
        budget_kib,
        stop: stop_rx,
        stats: stats.clone(),
        greeting,
        host: crate::event::hostname(),
        max_record: store.log().options().max_record as usize,
        opts,
    });
    let (track_tx, mut track_rx) = mpsc::channel::<()>(1);
    let mut acceptors = vec![tokio::spawn(accept_unix(
        listener,
        sh.clone(),
        slots.clone(),
        track_tx.clone(),
    ))];
    let tcp_addr = tcp.as_ref().map(|t| t.1);
    if let Some((l, _, token)) = tcp {
        acceptors.push(tokio::spawn(accept_tcp(
            l,
            token,
            sh.clone(),
            slots.clone(),
            track_tx.clone(),
        )));
    }
    ready(&Ready {
        socket: socket.to_path_buf(),
        tcp: tcp_addr,
        next_seq,
    });
    tracing::info!("serving {} (next seq {next_seq})", socket.display());

    tokio::select! {
        _ = stop => tracing::info!("stopping: finishing what was received"),
        _ = fatal.notified() => tracing::error!("stopping after a failed append"),
    }
    let t0 = Instant::now();
    let _ = stop_tx.send(true);
    for a in acceptors {
        let _ = a.await;
    }
    // Nobody accepts any more: new clients should not find the socket.
    remove_socket(socket, ino);
    drop(track_tx);
    let _ = track_rx.recv().await;
    drop(sh);
    let written = tokio::task::spawn_blocking(move || writer_thread.join())
        .await
        .map_err(|e| Error::Invalid(format!("writer thread: {e}")))?
        .map_err(|_| Error::Invalid("the writer thread panicked".into()))?;
    let _ = tokio::task::spawn_blocking(move || refresher.join()).await;
    tracing::info!("stopped in {:?}", t0.elapsed());
    written?;
    let last = stats.last_seq.load(Ordering::Relaxed);
    Ok(ServeReport {
        connections: stats.connections.load(Ordering::Relaxed),
        events: stats.events.load(Ordering::Relaxed),
        syncs: stats.syncs.load(Ordering::Relaxed),
        rejected_lines: stats.rejected.load(Ordering::Relaxed),
        dropped_clients: stats.dropped.load(Ordering::Relaxed),
        refused_connections: stats.refused.load(Ordering::Relaxed),
        last_seq: (last > 0).then_some(last),
        append_times: Histogram {
            counts: stats
                .append_hist
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_bound_their_values() {
        for v in [
            0u64,
            1,
            3,
            4,
            5,
            7,
            8,
            9,
            100,
            130,
            1000,
            4095,
            4096,
            1 << 30,
        ] {
            let i = Histogram::bucket(v);
            assert!(
                Histogram::upper(i) > v,
                "{v} in bucket {i} up to {}",
                Histogram::upper(i)
            );
            if i > 0 {
                assert!(
                    Histogram::upper(i - 1) <= v,
                    "{v}: bucket {i} is not the first that fits"
                );
            }
        }
        let mut h = Histogram::default();
        for v in 1..=100u64 {
            h.counts[Histogram::bucket(v * 10)] += 1;
        }
        let p50 = h.quantile(0.5).unwrap().as_micros() as u64;
        assert!((500..=600).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap().as_micros() as u64;
        assert!((990..=1200).contains(&p99), "{p99}");
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}

fn refresh_loop(store: &Store, bell: std::sync::mpsc::Receiver<()>, every: Duration) {
    let mut dirty = false;
    loop {
        match bell.recv_timeout(every) {
            Ok(()) => dirty = true,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if dirty {
            if let Err(e) = crate::project::refresh(store) {
                tracing::warn!("projection refresh failed (will retry): {e}");
            } else {
                dirty = false;
            }
            std::thread::sleep(every);
        }
    }
    // A last refresh after the writer stopped, so the files match the log on exit.
    if let Err(e) = crate::project::refresh(store) {
        tracing::warn!("projection refresh failed: {e}");
    }
}

/// A server running on a thread of this process (for embedding and tests).
#[derive(Debug)]
pub struct Running {
    ready: Ready,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<ServeReport>>>,
}

impl Running {
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// Stop it as SIGTERM would, and wait for it.
    pub fn stop(mut self) -> Result<ServeReport> {
        self.finish()
    }

    fn finish(&mut self) -> Result<ServeReport> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| Error::Invalid("the server thread panicked".into()))?,
            None => Ok(ServeReport::default()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Start a server on its own thread; returns once it accepts connections.
pub fn start(store: Store, opts: ServeOptions) -> Result<Running> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("zolog-serve-main".into())
        .spawn(move || {
            run(
                &store,
                opts,
                move || {
                    Ok(async move {
                        let _ = stop_rx.await;
                    })
                },
                |r| {
                    let _ = ready_tx.send(r.clone());
                },
            )
        })
        .map_err(|e| Error::io("spawn", "server thread", e))?;
    match ready_rx.recv() {
        Ok(ready) => Ok(Running {
            ready,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Err(_) => match thread.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(Error::Invalid(
                "the server stopped before it was ready".into(),
            )),
        },
    }
}

/// The future `zolog serve` stops on: SIGTERM or SIGINT. Call inside a tokio runtime.
pub fn signals() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

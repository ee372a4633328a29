//! `--follow`: keep ingesting as the trainer writes, until told to stop.
//!
//! A tokio loop around the synchronous [`Ingester`]: each poll runs on the blocking pool; between
//! polls the loop sleeps until inotify (through `notify`, watching the file's directory, so a
//! replaced or newly created file is seen too) says the file changed, a fallback timer fires, or
//! the shutdown future completes. The fallback timer backs off from `poll_min` to `poll_max`
//! while nothing happens, so an idle follow costs nothing measurable; when inotify cannot be set
//! up (no directory yet, no inotify), the timer alone drives it.
//!
//! On shutdown the poll in flight finishes (its batch is durable), one last poll takes every
//! complete line written so far, and an incomplete last line is reported, not ingested.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{Notify, watch};

use super::{Ingester, PollOutcome, Position};
use crate::error::{Error, Result};
use crate::log::LogError;
use crate::serve::client::ServeError;

/// Tunables of a follow.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// Use inotify (through `notify`); otherwise poll only.
    pub use_notify: bool,
    /// Shortest pause between fallback polls (after activity).
    pub poll_min: Duration,
    /// Longest pause between fallback polls when inotify is active.
    pub poll_max_notify: Duration,
    /// Longest pause between polls when polling alone.
    pub poll_max_polling: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            use_notify: true,
            poll_min: Duration::from_millis(10),
            poll_max_notify: Duration::from_secs(1),
            poll_max_polling: Duration::from_millis(100),
        }
    }
}

/// What a follow has done so far; published after every poll.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowStatus {
    /// Seq of the last record appended (the batch is durable).
    pub last_seq: Option<u64>,
    /// The position the log records.
    pub position: Option<Position>,
    pub events: u64,
    pub lines: u64,
    pub rejected: u64,
    /// The file does not exist (yet).
    pub waiting_for_file: bool,
    /// Bytes of an incomplete last line, held back.
    pub pending_bytes: u64,
    /// Whether inotify is watching (false: polling alone).
    pub notify_active: bool,
    pub polls: u64,
}

/// Follows one file into the store. Build it from an [`Ingester`], take [`Follower::status`] if
/// you want progress, then `run` it with a shutdown future.
pub struct Follower {
    ing: Option<Ingester>,
    opts: FollowOptions,
    status: watch::Sender<FollowStatus>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("ingester", &self.ing)
            .field("opts", &self.opts)
            .finish()
    }
}

/// A future that completes on the first SIGINT or SIGTERM. The handlers are installed when this
/// is called (not when the future is first polled), so no signal is lost in between.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Errors that a follow waits out instead of stopping: the lock held too long by another writer,
/// a `zolog serve` lost mid-append (whether that batch landed is read back from the log by the
/// next poll, so retrying never duplicates a line), or the metrics file unreadable for a moment.
fn is_transient(e: &Error, path: &Path) -> bool {
    match e {
        Error::Log(LogError::Locked { .. }) => true,
        Error::Serve(ServeError::Lost { .. } | ServeError::Connect { .. }) => true,
        Error::Io { path: p, .. } => p == path,
        _ => false,
    }
}

struct Watch {
    _watcher: notify::RecommendedWatcher,
}

fn start_watch(path: &Path, wake: &Arc<Notify>) -> Option<Watch> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name()?.to_owned();
    let w = wake.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let relevant = match &res {
            Ok(ev) => ev.paths.is_empty() || ev.paths.iter().any(|p| p.file_name() == Some(&name)),
            Err(_) => true,
        };
        if relevant {
            w.notify_one();
        }
    })
    .ok()?;
    match watcher.watch(&dir, RecursiveMode::NonRecursive) {
        Ok(()) => Some(Watch { _watcher: watcher }),
        Err(e) => {
            tracing::debug!("no inotify watch on {}: {e}; polling", dir.display());
            None
        }
    }
}

impl Follower {
    /// A follower of `ingester`'s file. A failed projection refresh is reported, not fatal,
    /// while following.
    pub fn new(mut ingester: Ingester, opts: FollowOptions) -> Follower {
        ingester.options_mut().tolerate_refresh_errors = true;
        let (status, _) = watch::channel(FollowStatus {
            position: Some(ingester.position().clone()),
            ..FollowStatus::default()
        });
        Follower {
            ing: Some(ingester),
            opts,
            status,
        }
    }

    /// Progress, updated after every poll.
    pub fn status(&self) -> watch::Receiver<FollowStatus> {
        self.status.subscribe()
    }

    async fn poll_once(&mut self, last: bool) -> Result<PollOutcome> {
        let mut ing = self.ing.take().expect("ingester present between polls");
        let (ing, res) = tokio::task::spawn_blocking(move || {
            let r = ing.poll(last);
            (ing, r)
        })
        .await
        .map_err(|e| Error::Invalid(format!("the ingest task failed: {e}")))?;
        let pos = ing.position().clone();
        self.ing = Some(ing);
        if let Ok(o) = &res {
            self.status.send_modify(|s| {
                if o.last_seq.is_some() {
                    s.last_seq = o.last_seq;
                }
                s.position = Some(pos);
                s.events += o.events;
                s.lines += o.lines;
                s.rejected += o.rejected;
                s.waiting_for_file = o.no_file;
                s.pending_bytes = o.pending_bytes;
                s.polls += 1;
            });
        }
        res
    }

    /// Follow until `shutdown` completes, then take every complete line once more and return the
    /// ingester (its totals, its position). Bad lines never stop it; transient errors (a lock
    /// held too long, the file unreadable) are retried with backoff; other errors end it.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<Ingester> {
        let path = self
            .ing
            .as_ref()
            .map(|i| i.path().to_path_buf())
            .expect("ingester present");
        let wake = Arc::new(Notify::new());
        let mut watch = if self.opts.use_notify {
            start_watch(&path, &wake)
        } else {
            None
        };
        tokio::pin!(shutdown);
        let mut pause = self.opts.poll_min;
        loop {
            match self.poll_once(false).await {
                Ok(o) => {
                    if o.lines > 0 {
                        pause = self.opts.poll_min;
                    }
                }
                Err(e) if is_transient(&e, &path) => {
                    tracing::warn!("{e}; retrying");
                }
                Err(e) => return Err(e),
            }
            if watch.is_none() && self.opts.use_notify {
                watch = start_watch(&path, &wake);
            }
            let active = watch.is_some();
            self.status.send_modify(|s| s.notify_active = active);
            let max = if active {
                self.opts.poll_max_notify
            } else {
                self.opts.poll_max_polling
            };
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = wake.notified() => {
                    pause = self.opts.poll_min;
                }
                _ = tokio::time::sleep(pause) => {
                    pause = (pause * 2).min(max);
                }
            }
        }
        drop(watch);
        self.poll_once(true).await?;
        Ok(self.ing.take().expect("ingester present"))
    }
}

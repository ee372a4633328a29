//! `zolog run`: the one command a user wraps a trainer in.
//!
//! In order (docs/run.md):
//! 1. the experiment must exist; its `metrics.jsonl` (by default
//!    `.zo/experiments/<id>/metrics.jsonl`) gets its directory, and whatever the file already holds
//!    (a previous run's lines) is ingested first, so it cannot be mistaken for this run's;
//! 2. the trainer is spawned in its own process group with `ZO_STORE`, `ZO_EXPERIMENT` and
//!    `ZO_METRICS` in its environment, and `TrainingStarted` is appended with its pid and host
//!    (the first half of the *pair*: the trainer's own `training_start` line, ingested a moment
//!    later, continues this run instead of starting another; see [`RunInfo::continued_by`]);
//! 3. its `metrics.jsonl` is ingested live ([`Follower`]) and the run is watched ([`Watcher`],
//!    killing on a stop alert with `kill`); SIGINT and SIGTERM received by zolog are forwarded to
//!    the trainer's process group (a second one, or the grace period running out, sends SIGKILL);
//! 4. the child is reaped as soon as it exits; every complete line it wrote is ingested; then the
//!    ending is recorded: `TrainingEnded` with the exit code or signal always, plus
//!    `ExperimentStatusChanged failed` for a non-zero exit or a crash signal, or `RunKilled` by
//!    `user` and `aborted` when a forwarded signal ended it. A kill by the checker was recorded by
//!    the watcher (`RunKilled` by `checker`, `aborted`). Exit 0 leaves the experiment `running`
//!    until a result is recorded, as the reference does.
//!
//! [`RunInfo::continued_by`]: crate::checker::rules::RunInfo::continued_by

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::checker::CheckerConfig;
use crate::checker::process::{OsProcesses, ProcessControl, Sig};
use crate::checker::watch::{WatchEvent, WatchOptions, WatchReport, Watcher, describe};
use crate::error::{Error, Result};
use crate::event::{
    AlertRaised, ExpId, ExperimentStatus, ExperimentStatusChanged, Json, Metrics, NewEvent,
    Payload, RunKilled, Source, SourceKind, Timestamp, TrainingEnded, TrainingStarted,
};
use crate::ingest::{FollowOptions, Follower, IngestOptions, Ingester};
use crate::store::Store;

/// Exit status of `zolog run` when the checker killed the trainer (as `zolog watch` exits 2 when
/// the experiment has a stop alert).
pub const EXIT_KILLED_BY_CHECKER: u8 = 2;

/// What to run and how.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub exp: ExpId,
    /// The trainer's program and arguments.
    pub command: Vec<OsString>,
    /// The metrics.jsonl the trainer writes (`ZO_METRICS`); default
    /// `.zo/experiments/<id>/metrics.jsonl`.
    pub metrics: Option<PathBuf>,
    /// Kill the trainer on a stop alert.
    pub kill: bool,
    /// Between SIGTERM and SIGKILL, for the checker's kill and for a forwarded signal.
    pub grace: Duration,
    pub checker: CheckerConfig,
    /// Extra environment for the trainer.
    pub env: Vec<(OsString, OsString)>,
}

/// Who ended the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndedBy {
    /// The trainer exited (or crashed) by itself.
    Trainer,
    /// The checker killed it; the seq of its RunKilled.
    Checker { kill_seq: Option<u64> },
    /// A signal zolog received and forwarded (`SIGINT`, `SIGTERM`; `SIGKILL` after escalation).
    User { signal: String },
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub exp: ExpId,
    pub pid: u32,
    pub metrics: PathBuf,
    pub started_seq: u64,
    /// The trainer's exit code, or the signal that ended it.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub ended_by: EndedBy,
    /// Seq of the TrainingEnded recorded by this run.
    pub ended_seq: u64,
    /// The experiment's status after the run, and its reason.
    pub status: ExperimentStatus,
    pub status_reason: String,
    /// Alerts the watcher appended, with their seqs.
    pub alerts: Vec<(u64, AlertRaised)>,
    /// Lines of metrics.jsonl consumed and events ingested by this run (including what the file
    /// already held), and bad lines skipped.
    pub lines: u64,
    pub events: u64,
    pub rejected: u64,
    pub elapsed: Duration,
}

impl RunOutcome {
    /// The status `zolog run` exits with: the trainer's exit code; 128 + N for a signal N;
    /// [`EXIT_KILLED_BY_CHECKER`] when the checker killed it.
    pub fn exit_status(&self) -> u8 {
        if matches!(self.ended_by, EndedBy::Checker { .. }) {
            return EXIT_KILLED_BY_CHECKER;
        }
        match (self.exit_code, self.signal) {
            (Some(c), _) => u8::try_from(c).unwrap_or(1),
            (None, Some(s)) => u8::try_from(128 + s).unwrap_or(255),
            (None, None) => 1,
        }
    }

    /// A few lines saying how the run went.
    pub fn summary(&self) -> String {
        let how = match (&self.ended_by, self.exit_code, self.signal) {
            (EndedBy::Checker { kill_seq }, _, _) => format!(
                "killed by the checker{}",
                kill_seq.map_or(String::new(), |s| format!(" (RunKilled seq {s})"))
            ),
            (EndedBy::User { signal }, _, _) => format!("stopped by the user ({signal} forwarded)"),
            (EndedBy::Trainer, Some(0), _) => "exited with code 0".to_owned(),
            (EndedBy::Trainer, Some(c), _) => format!("exited with code {c}"),
            (EndedBy::Trainer, None, Some(s)) => format!("died of signal {s} ({})", sig_name(s)),
            (EndedBy::Trainer, None, None) => "ended".to_owned(),
        };
        let process = match (self.exit_code, self.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("signal {s} ({})", sig_name(s)),
            (None, None) => "no status".to_owned(),
        };
        let mut s = format!(
            "{}: trainer pid {} {how} after {:.1} s ({process}; TrainingEnded seq {})\n",
            self.exp,
            self.pid,
            self.elapsed.as_secs_f64(),
            self.ended_seq
        );
        s.push_str(&format!(
            "{}: ingested {} line(s) of {} as {} event(s){}; {} alert(s) raised\n",
            self.exp,
            self.lines,
            self.metrics.display(),
            self.events,
            if self.rejected > 0 {
                format!(", {} bad line(s) skipped", self.rejected)
            } else {
                String::new()
            },
            self.alerts.len()
        ));
        s.push_str(&format!("{}: status {}", self.exp, self.status.as_str()));
        if !self.status_reason.trim().is_empty() {
            s.push_str(&format!(" ({})", self.status_reason));
        }
        s.push('\n');
        s
    }
}

/// The name of signal `n` (`SIGTERM`), or `signal n`.
pub fn sig_name(n: i32) -> String {
    Signal::try_from(n).map_or_else(|_| format!("signal {n}"), |s| s.as_str().to_owned())
}

/// The trainer as the watcher sees it: the operating system's view, except that a child this run
/// has reaped is gone for good (its pid may be reused), and every signal the checker sends is
/// remembered, so the run knows who ended the trainer.
#[derive(Debug)]
struct RunControl {
    pid: u32,
    reaped: AtomicBool,
    checker_signalled: AtomicBool,
}

impl ProcessControl for RunControl {
    fn alive(&self, pid: u32) -> bool {
        if pid == self.pid && self.reaped.load(Ordering::SeqCst) {
            return false;
        }
        OsProcesses.alive(pid)
    }

    fn started_at(&self, pid: u32) -> Option<Timestamp> {
        OsProcesses.started_at(pid)
    }

    fn signal(&self, pid: u32, sig: Sig) -> std::io::Result<()> {
        if pid != self.pid {
            return OsProcesses.signal(pid, sig);
        }
        if self.reaped.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(
                nix::errno::Errno::ESRCH as i32,
            ));
        }
        OsProcesses.signal(pid, sig)?;
        // No await between the signal and this store: the run cannot see the exit in between.
        self.checker_signalled.store(true, Ordering::SeqCst);
        Ok(())
    }
}

fn run_source() -> Source {
    Source::this_process(SourceKind::Cli)
}

/// Where printed lines go.
pub type Say = Arc<dyn Fn(&str) + Send + Sync>;

/// Run the trainer under the checker; see the module docs. Progress lines (the watcher's, and the
/// run's own) go to `say`. Must be called inside a tokio runtime with time and signal drivers
/// (the CLI uses a current-thread runtime).
pub async fn run(store: Store, spec: RunSpec, say: Say) -> Result<RunOutcome> {
    let exp = spec.exp.clone();
    let Some((program, args)) = spec.command.split_first() else {
        return Err(Error::Invalid("zolog run: no command to run".into()));
    };
    // 1. The experiment, its metrics file, and what that file already holds.
    let state = crate::project::current(&store)?;
    let status_before = crate::exp::require(&state, &exp)?.status;
    if status_before == ExperimentStatus::Complete {
        return Err(Error::Invalid(format!(
            "{exp} is complete (it has a result); mint a new experiment to train again"
        )));
    }
    drop(state);
    let metrics = match &spec.metrics {
        Some(p) => p.clone(),
        None => store
            .experiments_dir()
            .join(exp.as_str())
            .join("metrics.jsonl"),
    };
    let metrics = std::path::absolute(&metrics).map_err(|e| Error::io("resolve", &metrics, e))?;
    if let Some(dir) = metrics.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    }
    let store_root =
        std::path::absolute(store.root()).map_err(|e| Error::io("resolve", store.root(), e))?;
    let mut ing = Ingester::open(
        store.clone(),
        IngestOptions::new(metrics.clone(), Some(exp.clone())),
    )?;
    let before = ing.poll(true)?;
    if before.lines > 0 {
        say(&format!(
            "ingested {} line(s) already in {} before starting",
            before.lines,
            metrics.display()
        ));
    }

    // 2. Signals first (none is lost), then the trainer, then its TrainingStarted.
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| Error::io("handle", "SIGINT", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("handle", "SIGTERM", e))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("ZO_STORE", &store_root)
        .env("ZO_EXPERIMENT", exp.as_str())
        .env("ZO_METRICS", &metrics)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        // Its own process group: a terminal's Ctrl-C reaches zolog only, which forwards it once
        // (to the whole group, so data-loader workers get it too).
        .process_group(0)
        .kill_on_drop(true);
    let started_at = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("start", std::path::Path::new(program), e))?;
    let pid = child
        .id()
        .ok_or_else(|| Error::Invalid("the trainer exited before it could be recorded".into()))?;
    let mut first = Vec::new();
    if status_before != ExperimentStatus::Running {
        first.push(NewEvent::now(
            run_source(),
            Payload::ExperimentStatusChanged(ExperimentStatusChanged {
                experiment_id: exp.clone(),
                status: ExperimentStatus::Running,
                reason: format!("run again by zolog run (was {})", status_before.as_str()),
            }),
        ));
    }
    first.push(NewEvent::now(
        run_source(),
        Payload::TrainingStarted(TrainingStarted {
            experiment_id: exp.clone(),
            experiment_name: None,
            pid: Some(pid),
            host: Some(crate::event::hostname()),
            total_epochs: None,
            config: Json::default(),
        }),
    ));
    let appended = store.append(&first)?;
    let started_seq = appended.first_seq + first.len() as u64 - 1;
    refresh(&store, &say);
    say(&format!(
        "started trainer pid {pid} for {exp} (TrainingStarted seq {started_seq}); metrics from {}",
        metrics.display()
    ));

    // 3. Ingest live, and watch.
    let (ingest_stop, ingest_stopped) = tokio::sync::oneshot::channel::<()>();
    let follower = Follower::new(ing, FollowOptions::default());
    let ingest_task = tokio::spawn(follower.run(async {
        let _ = ingest_stopped.await;
    }));
    let control = Arc::new(RunControl {
        pid,
        reaped: AtomicBool::new(false),
        checker_signalled: AtomicBool::new(false),
    });
    let (watch_stop, watch_stopped) = tokio::sync::oneshot::channel::<()>();
    let watch_say = say.clone();
    let watcher = Watcher::new(store.clone(), exp.clone(), spec.checker.clone())
        .options(WatchOptions {
            kill: spec.kill,
            grace: spec.grace,
            ..WatchOptions::default()
        })
        .process_control(control.clone())
        .on_event(move |ev| {
            if matches!(ev, WatchEvent::CaughtUp { .. }) {
                return;
            }
            if let Some(line) = describe(&ev) {
                watch_say(&line);
            }
        });
    let watch_task = tokio::spawn(watcher.run(async {
        let _ = watch_stopped.await;
    }));

    // 4. Wait for the trainer, forwarding signals.
    let mut user_signal: Option<String> = None;
    let mut escalate_at: Option<tokio::time::Instant> = None;
    let status = loop {
        let escalate = async {
            match escalate_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            st = child.wait() => break st.map_err(|e| Error::io("wait for", "the trainer", e))?,
            _ = sigint.recv() => {
                forward(pid, Signal::SIGINT, &mut user_signal, &mut escalate_at, spec.grace, &say);
            }
            _ = sigterm.recv() => {
                forward(pid, Signal::SIGTERM, &mut user_signal, &mut escalate_at, spec.grace, &say);
            }
            _ = escalate => {
                say(&format!("trainer pid {pid} still running {:.1} s after the signal: SIGKILL", spec.grace.as_secs_f64()));
                let _ = nix::sys::signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                user_signal = Some("SIGKILL".into());
                escalate_at = None;
            }
        }
    };
    control.reaped.store(true, Ordering::SeqCst);
    let elapsed = started_at.elapsed();
    let exit_code = status.code();
    let signal = status.signal();

    // 5. Everything the trainer wrote reaches the log before the ending does.
    let _ = ingest_stop.send(());
    let (lines, events, rejected) = match ingest_task.await {
        Ok(Ok(ing)) => {
            let t = ing.totals();
            (t.lines, t.events, t.rejected)
        }
        Ok(Err(e)) => {
            say(&format!(
                "warning: ingest of {} failed: {e}",
                metrics.display()
            ));
            (0, 0, 0)
        }
        Err(e) => {
            say(&format!("warning: the ingest task failed: {e}"));
            (0, 0, 0)
        }
    };

    // A kill by the checker: the watcher records it (RunKilled, aborted) once it sees the trainer
    // gone, which is now; wait for that before recording anything else.
    let checker_killed = control.checker_signalled.load(Ordering::SeqCst);
    let mut watch_task = Some(watch_task);
    let mut report: Option<WatchReport> = None;
    if checker_killed {
        let limit = spec.grace + Duration::from_secs(10);
        if let Some(t) = watch_task.take() {
            report = finish_watch(t, limit, &say).await;
        }
    }

    // 6. The ending.
    let ended = TrainingEnded {
        experiment_id: exp.clone(),
        epoch: None,
        metrics: Metrics::default(),
        wall_time_seconds: None,
        exit_code,
        signal,
    };
    let process = match (exit_code, signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s} ({})", sig_name(s)),
        (None, None) => "no exit status".into(),
    };
    let mut batch = vec![NewEvent::now(run_source(), Payload::TrainingEnded(ended))];
    let ended_by = if checker_killed {
        EndedBy::Checker {
            kill_seq: report.as_ref().and_then(|r| r.killed.as_ref().map(|k| k.0)),
        }
    } else if let Some(sig) = &user_signal {
        let reason = format!("killed by the user: {sig} forwarded by zolog run; trainer {process}");
        batch.push(NewEvent::now(
            run_source(),
            Payload::RunKilled(RunKilled {
                experiment_id: exp.clone(),
                pid: Some(pid),
                alert_seqs: Vec::new(),
                signal: sig.clone(),
                by: "user".into(),
                reason: reason.clone(),
            }),
        ));
        batch.push(NewEvent::now(
            run_source(),
            Payload::ExperimentStatusChanged(ExperimentStatusChanged {
                experiment_id: exp.clone(),
                status: ExperimentStatus::Aborted,
                reason,
            }),
        ));
        EndedBy::User {
            signal: sig.clone(),
        }
    } else {
        if exit_code != Some(0) {
            batch.push(NewEvent::now(
                run_source(),
                Payload::ExperimentStatusChanged(ExperimentStatusChanged {
                    experiment_id: exp.clone(),
                    status: ExperimentStatus::Failed,
                    reason: format!("trainer pid {pid} failed: {process}"),
                }),
            ));
        }
        EndedBy::Trainer
    };
    let ended_seq = store.append(&batch)?.first_seq;

    // 7. The watcher sees the ending (and appends any alert the last lines raised), then stops.
    if let Some(t) = watch_task.take() {
        report = finish_watch_after_end(t, watch_stop, &say).await;
    } else {
        let _ = watch_stop.send(());
    }
    refresh(&store, &say);

    let state = crate::project::current(&store)?;
    let e = crate::exp::require(&state, &exp)?;
    Ok(RunOutcome {
        exp: exp.clone(),
        pid,
        metrics,
        started_seq,
        exit_code,
        signal,
        ended_by,
        ended_seq,
        status: e.status,
        status_reason: e.status_reason.clone(),
        alerts: report.map(|r| r.appended).unwrap_or_default(),
        lines: lines + before.lines,
        events: events + before.events,
        rejected: rejected + before.rejected,
        elapsed,
    })
}

fn refresh(store: &Store, say: &Say) {
    if let Err(e) = crate::project::refresh(store) {
        say(&format!("warning: projections not refreshed: {e}"));
    }
}

/// Forward a signal zolog received to the trainer's process group; a second one is SIGKILL.
fn forward(
    pid: u32,
    sig: Signal,
    user_signal: &mut Option<String>,
    escalate_at: &mut Option<tokio::time::Instant>,
    grace: Duration,
    say: &Say,
) {
    let group = Pid::from_raw(pid as i32);
    if user_signal.is_some() {
        say(&format!(
            "{} again: SIGKILL to trainer pid {pid}",
            sig.as_str()
        ));
        let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
        *user_signal = Some("SIGKILL".into());
        *escalate_at = None;
        return;
    }
    say(&format!(
        "{}: forwarding it to trainer pid {pid}",
        sig.as_str()
    ));
    let _ = nix::sys::signal::killpg(group, sig);
    *user_signal = Some(sig.as_str().to_owned());
    *escalate_at = Some(tokio::time::Instant::now() + grace);
}

/// Wait (at most `limit`) for a watcher that is finishing a kill.
async fn finish_watch(
    task: tokio::task::JoinHandle<Result<WatchReport>>,
    limit: Duration,
    say: &Say,
) -> Option<WatchReport> {
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(Ok(r))) => Some(r),
        Ok(Ok(Err(e))) => {
            say(&format!("warning: the checker stopped: {e}"));
            None
        }
        Ok(Err(e)) => {
            say(&format!("warning: the checker task failed: {e}"));
            None
        }
        Err(_) => {
            say("warning: the checker did not record its kill in time");
            None
        }
    }
}

/// After the ending is in the log the watcher stops by itself; give it a moment, then tell it.
async fn finish_watch_after_end(
    mut task: tokio::task::JoinHandle<Result<WatchReport>>,
    stop: tokio::sync::oneshot::Sender<()>,
    say: &Say,
) -> Option<WatchReport> {
    let res = match tokio::time::timeout(Duration::from_secs(5), &mut task).await {
        Ok(r) => r,
        Err(_) => {
            let _ = stop.send(());
            match tokio::time::timeout(Duration::from_secs(5), task).await {
                Ok(r) => r,
                Err(_) => {
                    say("warning: the checker did not stop");
                    return None;
                }
            }
        }
    };
    match res {
        Ok(Ok(r)) => Some(r),
        Ok(Err(e)) => {
            say(&format!("warning: the checker stopped: {e}"));
            None
        }
        Err(e) => {
            say(&format!("warning: the checker task failed: {e}"));
            None
        }
    }
}

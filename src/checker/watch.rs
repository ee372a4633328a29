//! `zolog watch`: follow the log, run the rules as events arrive, fire the stall timer, append
//! alerts, and (with kill enabled) stop a broken run.
//!
//! A library type, [`Watcher`], so `zolog run` can drive the same loop next to the trainer it
//! spawned: build it with the store and experiment, choose options, optionally hand it a
//! [`ProcessControl`] and an event callback, and `run(shutdown).await`.
//!
//! The order of things, so an audit can always re-derive a decision:
//! 1. the effective configuration is appended as CheckerConfigured (or, when the experiment's
//!    latest CheckerConfigured is identical, that one is reused) before anything is evaluated;
//! 2. the log is replayed from its first event through a fresh [`Checker`]; alerts whose
//!    [`AlertKey`] is already in the log are not appended again (so watching twice, or a restarted
//!    watcher, never duplicates an alert); the append is conditional on no alert with the same
//!    key having been appended since the watcher last read the log (`append_unless_keys_since`,
//!    checked under the writer lock or by `zolog serve`), so concurrent watchers never duplicate
//!    one either;
//! 3. new events are read every `poll_interval`; timer rules run every `tick_interval` with the
//!    clock's time and the trainer's liveness passed in;
//! 4. alerts are appended as one batch; then, for stop alerts with kill enabled: SIGTERM, SIGKILL
//!    after the grace period, and RunKilled (citing the alert seqs) with ExperimentStatusChanged
//!    aborted in one batch. A `stall.process_gone` alert marks the experiment failed instead.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::process::{self, OsProcesses, ProcessControl};
use super::{AlertKey, Checker, CheckerConfig, Liveness, one_line};
use crate::error::{Error, Result};
use crate::event::{
    AlertRaised, CheckerConfigured, Event, ExpId, ExperimentStatus, ExperimentStatusChanged, Json,
    NewEvent, Payload, RunKilled, Severity, Source, SourceKind, Timestamp,
};
use crate::store::{Store, conflict_key, read_with};

/// Conflicts in a row (each an alert another watcher appended, found by the next key refresh)
/// before an append of alerts gives up.
const CONFLICT_TRIES: usize = 64;

/// How a watcher behaves.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Stop the trainer on a stop alert.
    pub kill: bool,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Evaluate what the log holds (and the timer rules once, now), then return.
    pub once: bool,
    /// How often the log is polled for new events.
    pub poll_interval: Duration,
    /// How often the timer rules (stall) run.
    pub tick_interval: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            kill: false,
            grace: Duration::from_secs(10),
            once: false,
            poll_interval: Duration::from_millis(5),
            tick_interval: Duration::from_millis(250),
        }
    }
}

/// What a watcher reports as it goes (for printing, or a dashboard).
#[derive(Debug, Clone)]
pub enum WatchEvent<'a> {
    /// The configuration in force: the seq of its CheckerConfigured, and whether it was appended
    /// now or reused.
    Configured {
        seq: u64,
        appended: bool,
    },
    /// The replay of the log up to where it was when the watch started is done.
    CaughtUp {
        next_seq: u64,
    },
    Alert {
        seq: u64,
        alert: &'a AlertRaised,
    },
    /// An alert that was already in the log at `seq` (not appended again).
    AlreadyRaised {
        seq: u64,
        alert: &'a AlertRaised,
    },
    Killed {
        seq: u64,
        killed: &'a RunKilled,
    },
    /// A stop alert asked for a kill that could not be done.
    CannotKill {
        reason: String,
    },
    StatusChanged {
        seq: u64,
        change: &'a ExperimentStatusChanged,
    },
}

/// Why the watcher returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEnd {
    /// `once` was set.
    Once,
    /// The run ended (TrainingEnded, a kill, a result or a terminal status).
    RunEnded,
    /// The shutdown future completed.
    Shutdown,
}

/// What a watch did.
#[derive(Debug, Clone)]
pub struct WatchReport {
    pub config_seq: u64,
    /// Alerts appended by this watch, with their seqs.
    pub appended: Vec<(u64, AlertRaised)>,
    /// Every alert the rules raised, including those already in the log.
    pub raised: Vec<AlertRaised>,
    pub killed: Option<(u64, RunKilled)>,
    pub end: WatchEnd,
}

impl WatchReport {
    /// Did the rules raise a stop alert (now or in an earlier watch)?
    pub fn has_stop(&self) -> bool {
        self.raised.iter().any(|a| a.severity == Severity::Stop)
    }
}

type Callback = Box<dyn FnMut(WatchEvent<'_>) + Send>;

/// The watch loop for one experiment.
pub struct Watcher {
    store: Store,
    exp: ExpId,
    config: CheckerConfig,
    opts: WatchOptions,
    control: Arc<dyn ProcessControl>,
    on_event: Option<Callback>,
    /// Alerts in the log (this experiment's), and a reader that keeps the set current.
    keys: BTreeMap<AlertKey, u64>,
    keys_reader: Option<crate::log::Reader>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("exp", &self.exp)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

fn checker_source() -> Source {
    Source::this_process(SourceKind::Checker)
}

impl Watcher {
    pub fn new(store: Store, exp: ExpId, config: CheckerConfig) -> Watcher {
        Watcher {
            store,
            exp,
            config,
            opts: WatchOptions::default(),
            control: Arc::new(OsProcesses),
            on_event: None,
            keys: BTreeMap::new(),
            keys_reader: None,
        }
    }

    pub fn options(mut self, opts: WatchOptions) -> Watcher {
        self.opts = opts;
        self
    }

    /// Observe and signal processes through `ctl` instead of the operating system directly.
    pub fn process_control(mut self, ctl: Arc<dyn ProcessControl>) -> Watcher {
        self.control = ctl;
        self
    }

    /// Called for everything the watcher does.
    pub fn on_event(mut self, f: impl FnMut(WatchEvent<'_>) + Send + 'static) -> Watcher {
        self.on_event = Some(Box::new(f));
        self
    }

    fn emit(&mut self, ev: WatchEvent<'_>) {
        if let Some(f) = &mut self.on_event {
            f(ev);
        }
    }

    fn append(&self, events: &[NewEvent]) -> Result<u64> {
        let r = self.store.append(events)?;
        self.refreshed();
        Ok(r.first_seq)
    }

    /// Bring projections up to date after an append.
    fn refreshed(&self) {
        if let Err(e) = crate::project::refresh(&self.store) {
            // The log is the truth and projections can be rebuilt; a watcher that stopped here
            // would stop protecting the run.
            tracing::warn!("projections not refreshed after appending checker events: {e}");
        }
    }

    /// Record the configuration (or reuse an identical latest one); returns its seq.
    fn configure(&mut self) -> Result<u64> {
        let mut known = false;
        let mut latest: Option<(u64, serde_json::Value)> = None;
        let mut keys = BTreeMap::new();
        let exp = self.exp.clone();
        let mut keys_reader = self.store.log().reader(1);
        read_with(&mut keys_reader, &mut |ev: Event| {
            if ev.payload.experiment_id() == Some(&exp) {
                known = true;
                match &ev.payload {
                    Payload::CheckerConfigured(c) => latest = Some((ev.seq, c.config.0.clone())),
                    Payload::AlertRaised(a) => {
                        keys.insert(AlertKey::of(a), ev.seq);
                    }
                    _ => {}
                }
            }
            Ok(())
        })?;
        if !known {
            return Err(Error::UnknownExperiment(exp));
        }
        self.keys = keys;
        self.keys_reader = Some(keys_reader);
        let mine = self.config.to_json();
        let (seq, appended) = match latest {
            Some((seq, cfg)) if cfg == mine => (seq, false),
            _ => {
                let ev = NewEvent::now(
                    checker_source(),
                    Payload::CheckerConfigured(CheckerConfigured {
                        experiment_id: exp,
                        config: Json(mine),
                    }),
                );
                (self.append(&[ev])?, true)
            }
        };
        self.emit(WatchEvent::Configured { seq, appended });
        Ok(seq)
    }

    /// Bring the set of alert keys in the log up to date (another watcher may have appended).
    fn refresh_keys(&mut self) -> Result<()> {
        let Some(r) = &mut self.keys_reader else {
            return Ok(());
        };
        let exp = &self.exp;
        let keys = &mut self.keys;
        read_with(r, &mut |ev: Event| {
            if let Payload::AlertRaised(a) = &ev.payload
                && &a.experiment_id == exp
            {
                keys.insert(AlertKey::of(a), ev.seq);
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Run until the run ends, `once` is done, or `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<WatchReport> {
        let config_seq = self.configure()?;
        let mut checker = Checker::new(self.exp.clone(), self.config.clone(), Some(config_seq));
        let mut reader = self.store.log().reader(1);
        let mut report = WatchReport {
            config_seq,
            appended: Vec::new(),
            raised: Vec::new(),
            killed: None,
            end: WatchEnd::Once,
        };
        let mut caught_up = false;
        let mut gone_since: Option<Instant> = None;
        let mut last_tick = Instant::now()
            .checked_sub(self.opts.tick_interval)
            .unwrap_or_else(Instant::now);
        let mut buf: Vec<AlertRaised> = Vec::new();
        let mut fresh: Vec<AlertRaised> = Vec::new();
        tokio::pin!(shutdown);
        loop {
            // 1. Everything new in the log.
            read_with(&mut reader, &mut |ev: Event| {
                checker.observe(&ev, &mut buf);
                Ok(())
            })?;
            for a in buf.drain(..) {
                report.raised.push(a.clone());
                fresh.push(a);
            }
            if !caught_up {
                caught_up = true;
                self.emit(WatchEvent::CaughtUp {
                    next_seq: reader.next_seq(),
                });
            }

            if !fresh.is_empty() {
                self.raise(&mut checker, &mut fresh, None, &mut report)
                    .await?;
            }

            // 2. The timer rules.
            if self.opts.once || last_tick.elapsed() >= self.opts.tick_interval {
                last_tick = Instant::now();
                let now = Timestamp::now();
                let liveness = self.liveness(&checker, &mut gone_since);
                checker.tick(now, liveness, &mut buf);
                for a in buf.drain(..) {
                    report.raised.push(a.clone());
                    fresh.push(a);
                }
                if !fresh.is_empty() {
                    // Timer alerts carry the time they were evaluated at, so an audit can replay
                    // them at that instant.
                    self.raise(&mut checker, &mut fresh, Some(now), &mut report)
                        .await?;
                }
            }

            if self.opts.once {
                report.end = WatchEnd::Once;
                break;
            }
            if checker.run().ended {
                // Read whatever the ending appended (our own RunKilled, say), then stop.
                read_with(&mut reader, &mut |ev: Event| {
                    checker.observe(&ev, &mut buf);
                    Ok(())
                })?;
                buf.clear();
                report.end = WatchEnd::RunEnded;
                break;
            }
            tokio::select! {
                _ = &mut shutdown => {
                    report.end = WatchEnd::Shutdown;
                    break;
                }
                _ = tokio::time::sleep(self.opts.poll_interval) => {}
            }
        }
        Ok(report)
    }

    fn liveness(&self, checker: &Checker, gone_since: &mut Option<Instant>) -> Liveness {
        let run = checker.run();
        let Some(pid) = run.pid.filter(|&p| process::signallable(p)) else {
            return Liveness::Unknown;
        };
        if run
            .host
            .as_deref()
            .is_some_and(|h| h != crate::event::hostname())
        {
            return Liveness::Unknown;
        }
        let alive = self.control.alive(pid)
            && process::same_process(self.control.as_ref(), pid, run.started_time);
        if alive {
            *gone_since = None;
            Liveness::Alive
        } else {
            let since = *gone_since.get_or_insert_with(Instant::now);
            Liveness::GoneFor(since.elapsed().as_secs_f64())
        }
    }

    /// Append fresh alerts as one batch, then act on the stop alerts.
    async fn raise(
        &mut self,
        checker: &mut Checker,
        fresh: &mut Vec<AlertRaised>,
        at: Option<Timestamp>,
        report: &mut WatchReport,
    ) -> Result<()> {
        // Stop alerts already in the log (an earlier watch without --kill, say) still stop a run
        // that is going on.
        let mut stops = Vec::new();
        let mut batch = Vec::new();
        for a in std::mem::take(fresh) {
            match self.keys.get(&AlertKey::of(&a)) {
                Some(&seq) => self.already(seq, a, &mut stops),
                None => batch.push(a),
            }
        }
        let mut first = 0;
        if !batch.is_empty() {
            // Check the log's alerts once more (up to seq N - 1) and append only what is not
            // there, and only if no alert with one of these keys has a seq >= N by the time it is
            // appended (checked under the writer lock, or by zolog serve's writer): so even
            // concurrent watchers never duplicate one, and unrelated appends never get in the way.
            let store = self.store.clone();
            let mut appender = store.appender();
            let mut tries = 0;
            loop {
                self.refresh_keys()?;
                let mut new = Vec::new();
                for a in std::mem::take(&mut batch) {
                    match self.keys.get(&AlertKey::of(&a)) {
                        Some(&seq) => self.already(seq, a, &mut stops),
                        None => new.push(a),
                    }
                }
                batch = new;
                if batch.is_empty() {
                    break;
                }
                let since = self.keys_reader.as_ref().map_or(1, |r| r.next_seq());
                let events: Vec<NewEvent> = batch
                    .iter()
                    .map(|a| {
                        let p = Payload::AlertRaised(a.clone());
                        match at {
                            Some(t) => NewEvent::at(t, checker_source(), p),
                            None => NewEvent::now(checker_source(), p),
                        }
                    })
                    .collect();
                let keys: Vec<String> = events
                    .iter()
                    .filter_map(|e| conflict_key(&e.payload))
                    .collect();
                match appender.append_unless_keys_since(since, &keys, &events) {
                    Ok(r) => {
                        first = r.first_seq;
                        break;
                    }
                    // Another watcher appended one of these alerts since (the next refresh_keys
                    // finds it), or a server that started after `since`: read on, check again.
                    Err(Error::KeyConflict { .. }) if tries < CONFLICT_TRIES => tries += 1,
                    Err(e) => return Err(e),
                }
            }
            for (i, a) in batch.iter().enumerate() {
                self.keys.insert(AlertKey::of(a), first + i as u64);
            }
            if !batch.is_empty() {
                self.refreshed();
            }
        }
        let mut gone = None;
        for (i, a) in batch.into_iter().enumerate() {
            let seq = first + i as u64;
            self.emit(WatchEvent::Alert { seq, alert: &a });
            if a.severity == Severity::Stop {
                if a.rule == "stall.process_gone" {
                    gone = Some((seq, a.clone()));
                } else {
                    stops.push((seq, a.clone()));
                }
            }
            report.appended.push((seq, a));
        }
        if let Some((seq, a)) = gone
            && !checker.run().ended
        {
            let change = ExperimentStatusChanged {
                experiment_id: self.exp.clone(),
                status: ExperimentStatus::Failed,
                reason: format!("checker: {} (alert seq {seq})", a.message),
            };
            let s = self.append(&[NewEvent::now(
                checker_source(),
                Payload::ExperimentStatusChanged(change.clone()),
            )])?;
            self.emit(WatchEvent::StatusChanged {
                seq: s,
                change: &change,
            });
        }
        // Only this run's stop alerts stop it: after a restart (a second `zolog run` of the
        // experiment, say) the previous run's alerts are replayed but never kill the new one.
        stops.retain(|(seq, a)| of_current_run(checker.run(), *seq, a));
        if self.opts.kill && !stops.is_empty() && report.killed.is_none() {
            stops.sort_by_key(|s| s.0);
            self.kill(checker, &stops, report).await?;
        }
        Ok(())
    }

    /// An alert that is already in the log at `seq`.
    fn already(&mut self, seq: u64, a: AlertRaised, stops: &mut Vec<(u64, AlertRaised)>) {
        self.emit(WatchEvent::AlreadyRaised { seq, alert: &a });
        if a.severity == Severity::Stop && a.rule != "stall.process_gone" {
            stops.push((seq, a));
        }
    }

    async fn kill(
        &mut self,
        checker: &Checker,
        stops: &[(u64, AlertRaised)],
        report: &mut WatchReport,
    ) -> Result<()> {
        let run = checker.run().clone();
        let refuse = |reason: String| -> Option<String> { Some(reason) };
        let why_not = if run.ended {
            refuse("the run has already ended".into())
        } else {
            match run.pid {
                None => refuse("TrainingStarted records no pid".into()),
                Some(pid) if !process::signallable(pid) => {
                    refuse(format!("pid {pid} is not a process the checker may signal"))
                }
                Some(pid)
                    if run
                        .host
                        .as_deref()
                        .is_some_and(|h| h != crate::event::hostname()) =>
                {
                    refuse(format!(
                        "pid {pid} runs on {}, not on this host",
                        run.host.as_deref().unwrap_or("?")
                    ))
                }
                Some(pid) if !self.control.alive(pid) => {
                    refuse(format!("pid {pid} is not running"))
                }
                Some(pid)
                    if !process::same_process(self.control.as_ref(), pid, run.started_time) =>
                {
                    refuse(format!(
                        "pid {pid} started after TrainingStarted: it is another process now"
                    ))
                }
                Some(_) => None,
            }
        };
        if let Some(reason) = why_not {
            self.emit(WatchEvent::CannotKill { reason });
            return Ok(());
        }
        let pid = run.pid.expect("checked above");
        let done = process::terminate(self.control.as_ref(), pid, self.opts.grace)
            .await
            .map_err(|e| Error::Invalid(format!("could not signal trainer pid {pid}: {e}")))?;
        let (first_seq, first) = &stops[0];
        let more = if stops.len() > 1 {
            format!(" (and {} more stop alert(s))", stops.len() - 1)
        } else {
            String::new()
        };
        let reason = format!(
            "checker: {} at seq {first_seq}: {}{more}",
            first.rule, first.message
        );
        let killed = RunKilled {
            experiment_id: self.exp.clone(),
            pid: Some(pid),
            alert_seqs: stops.iter().map(|s| s.0).collect(),
            signal: done.signal.name().to_owned(),
            by: "checker".into(),
            reason: reason.clone(),
        };
        let change = ExperimentStatusChanged {
            experiment_id: self.exp.clone(),
            status: ExperimentStatus::Aborted,
            reason,
        };
        let seq = self.append(&[
            NewEvent::now(checker_source(), Payload::RunKilled(killed.clone())),
            NewEvent::now(
                checker_source(),
                Payload::ExperimentStatusChanged(change.clone()),
            ),
        ])?;
        self.emit(WatchEvent::Killed {
            seq,
            killed: &killed,
        });
        self.emit(WatchEvent::StatusChanged {
            seq: seq + 1,
            change: &change,
        });
        report.killed = Some((seq, killed));
        Ok(())
    }
}

/// Does the stop alert at `seq` belong to the run in force? Its trigger (the last evidence
/// seq; the alert's own seq when it cites none) is at or after the run's TrainingStarted.
fn of_current_run(run: &super::RunInfo, seq: u64, a: &AlertRaised) -> bool {
    match run.started_seq {
        None => true,
        Some(start) => a.evidence_seqs.last().copied().unwrap_or(seq) >= start,
    }
}

/// A line of text for each watch event (what `zolog watch` prints).
pub fn describe(ev: &WatchEvent<'_>) -> Option<String> {
    Some(match ev {
        WatchEvent::Configured { seq, appended } => format!(
            "checker configuration at seq {seq}{}",
            if *appended {
                ""
            } else {
                " (unchanged, reused)"
            }
        ),
        WatchEvent::CaughtUp { next_seq } => {
            format!("replayed the log up to seq {}", next_seq.saturating_sub(1))
        }
        WatchEvent::Alert { seq, alert } => format!("seq {seq} {}", one_line(alert)),
        WatchEvent::AlreadyRaised { seq, alert } => {
            format!("seq {seq} {} (already in the log)", one_line(alert))
        }
        WatchEvent::Killed { seq, killed } => format!(
            "seq {seq} killed trainer pid {} with {}: {}",
            killed.pid.map_or("?".into(), |p| p.to_string()),
            killed.signal,
            killed.reason
        ),
        WatchEvent::CannotKill { reason } => format!("cannot kill the run: {reason}"),
        WatchEvent::StatusChanged { seq, change } => format!(
            "seq {seq} experiment {} {}: {}",
            change.experiment_id,
            change.status.as_str(),
            change.reason
        ),
    })
}

//! stall: no progress for too long, or the trainer process gone without saying it ended.
//!
//! Judged only when the watch loop's timer calls [`Stall::tick`] with the time *now*, so the rule
//! stays a pure function of its inputs: the events (progress times, epoch durations) and `now`.
//! Liveness is evidence the caller observed (the trainer's pid checked with `kill(pid, 0)`), passed
//! in as [`Liveness`]; the rule never assumes a run is healthy because nothing bad was heard.
//!
//! - `stall.no_progress`: no trainer event (epoch, checkpoint, start) for max(`k` × median of the
//!   last `median_window` epoch durations, `floor_seconds`). Warn, once per last progress seen.
//! - `stall.process_gone`: the trainer's pid has been gone for `gone_grace_seconds` and the log
//!   has no TrainingEnded. Stop; the watcher marks the experiment failed.

use std::collections::VecDeque;

use super::{Finding, RunInfo, evidence, metrics};
use crate::checker::config::StallConfig;
use crate::checker::stats::{fmt_g, median};
use crate::event::{Severity, Timestamp};

/// What the caller knows about the trainer process at `now`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Liveness {
    /// No pid, or a pid on another host: nothing can be said.
    Unknown,
    Alive,
    /// Seen gone (no such process) continuously for this many seconds.
    GoneFor(f64),
}

#[derive(Debug, Clone, Default)]
pub struct Stall {
    durations: VecDeque<f64>,
    last_epoch_time: Option<Timestamp>,
    last_progress: Option<(Timestamp, u64)>,
    alerted_for: Option<u64>,
    gone_alerted_for: Option<u64>,
}

impl Stall {
    /// Progress: a trainer event at `time`, appended at `appended`. Epochs also time the epoch.
    pub fn progress(
        &mut self,
        cfg: &StallConfig,
        seq: u64,
        time: Timestamp,
        appended: Option<Timestamp>,
        epoch: bool,
        start: bool,
    ) {
        if epoch || start {
            if epoch && let Some(prev) = self.last_epoch_time {
                let d = (time.nanos() - prev.nanos()) as f64 / 1e9;
                if self.durations.len() >= cfg.median_window.max(1) as usize {
                    self.durations.pop_front();
                }
                self.durations.push_back(d.max(0.0));
            }
            self.last_epoch_time = Some(time);
        }
        // When the evidence reached the log: what a live watcher can compare with its clock.
        self.last_progress = Some((appended.unwrap_or(time), seq));
    }

    /// The time past which no progress is a stall.
    pub fn threshold_seconds(&self, cfg: &StallConfig) -> f64 {
        let med = median(self.durations.iter().copied());
        if med.is_finite() {
            (cfg.k * med).max(cfg.floor_seconds)
        } else {
            cfg.floor_seconds
        }
    }

    /// Evaluate at `now`, for the run as the log tells it.
    pub fn tick(
        &mut self,
        cfg: &StallConfig,
        now: Timestamp,
        liveness: Liveness,
        run: &RunInfo,
        out: &mut Vec<Finding>,
    ) {
        let (started_seq, pid, last_epoch) = (run.started_seq, run.pid, run.last_epoch);
        let Some((last_t, last_seq)) = self.last_progress else {
            return;
        };
        let elapsed = (now.nanos() - last_t.nanos()) as f64 / 1e9;
        let med = median(self.durations.iter().copied());
        let threshold = self.threshold_seconds(cfg);
        let mut seqs: Vec<u64> = started_seq.into_iter().collect();
        seqs.push(last_seq);
        if let Liveness::GoneFor(gone) = liveness
            && gone >= cfg.gone_grace_seconds
            && self.gone_alerted_for != Some(started_seq.unwrap_or(0))
        {
            self.gone_alerted_for = Some(started_seq.unwrap_or(0));
            let pid = pid.map_or(f64::NAN, f64::from);
            out.push(Finding {
                rule: "stall.process_gone",
                severity: Severity::Stop,
                epoch: last_epoch,
                observed: metrics([
                    ("pid", pid),
                    ("seconds_gone", gone),
                    ("seconds_since_progress", elapsed),
                ]),
                thresholds: metrics([("gone_grace_seconds", cfg.gone_grace_seconds)]),
                evidence: evidence(seqs.clone()),
                message: format!(
                    "trainer pid {} is gone (no such process for {} s) and the log has no TrainingEnded; last progress {} s ago{}",
                    fmt_g(pid),
                    fmt_g(gone),
                    fmt_g(elapsed),
                    last_epoch.map_or(String::new(), |e| format!(", after epoch {e}"))
                ),
            });
        }
        if elapsed >= threshold && self.alerted_for != Some(last_seq) {
            self.alerted_for = Some(last_seq);
            let mut observed = metrics([("seconds_since_progress", elapsed)]);
            if med.is_finite() {
                observed.insert("median_epoch_seconds", med);
            }
            observed.insert("epochs_timed", self.durations.len() as f64);
            if let Liveness::Alive = liveness {
                observed.insert("pid_alive", 1.0);
            }
            out.push(Finding {
                rule: "stall.no_progress",
                severity: Severity::Warn,
                epoch: last_epoch,
                observed,
                thresholds: metrics([
                    ("k", cfg.k),
                    ("floor_seconds", cfg.floor_seconds),
                    ("threshold_seconds", threshold),
                ]),
                evidence: evidence(seqs),
                message: format!(
                    "no progress for {} s{} (threshold max({} × median epoch {} s, {} s) = {} s){}",
                    fmt_g(elapsed),
                    last_epoch.map_or(String::new(), |e| format!(" since epoch {e}")),
                    fmt_g(cfg.k),
                    if med.is_finite() {
                        fmt_g(med)
                    } else {
                        "unknown".into()
                    },
                    fmt_g(cfg.floor_seconds),
                    fmt_g(threshold),
                    if liveness == Liveness::Alive {
                        "; the trainer process is alive but silent: hung"
                    } else {
                        ""
                    }
                ),
            });
        }
    }
}

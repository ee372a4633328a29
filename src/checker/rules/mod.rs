//! The rules. Each is a small state machine fed one value at a time by the engine
//! ([`super::Checker`]); none reads a clock or does I/O, and each update is O(1) amortised.
//!
//! A rule reports a [`Finding`]; the engine turns it into an `AlertRaised` (adding the
//! experiment, the config seq and the advice texts). Conventions every finding keeps, because
//! deduplication and the audit rely on them:
//! - `evidence` is ascending and its last seq is the *trigger*: the sample that made the condition
//!   true (for the stall rule, the last progress seen);
//! - the first entry of `observed` is the *subject*: the monitored value itself, keyed by the
//!   metric's name (or `seconds_since_progress`, `pid`).

pub mod classical;
pub mod dead_lr;
pub mod divergence;
pub mod grad;
pub mod overfit;
pub mod stall;

use crate::event::{Metrics, Severity, Timestamp};

/// The experiment's run as the log tells it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunInfo {
    /// Seq, time, pid and host of the TrainingStarted in force.
    pub started_seq: Option<u64>,
    pub started_time: Option<Timestamp>,
    pub pid: Option<u32>,
    pub host: Option<String>,
    pub total_epochs: Option<u64>,
    pub schedule_configured: bool,
    /// Samples (EpochEnded) seen.
    pub samples: u64,
    pub last_epoch: Option<u64>,
    /// TrainingEnded, RunKilled, a result, or a terminal status change has been seen (and no
    /// TrainingStarted since).
    pub ended: bool,
    pub minted: bool,
}

impl RunInfo {
    /// Is `t` the second half of a TrainingStarted pair rather than a new run? `zolog run`
    /// records the start with the trainer's pid; the trainer's own `training_start` line, ingested
    /// a moment later, carries no pid (or the same one). While the run with a pid has not ended,
    /// such a start continues it: it adds total epochs and configuration and keeps pid, host and
    /// start time (docs/run.md).
    pub fn continued_by(&self, t: &crate::event::TrainingStarted) -> bool {
        self.started_seq.is_some()
            && !self.ended
            && self.pid.is_some()
            && (t.pid.is_none() || t.pid == self.pid)
    }

    /// Is there a run in progress, as far as the log says?
    pub fn active(&self) -> bool {
        !self.ended && (self.started_seq.is_some() || self.samples > 0)
    }
}

/// Where a rule is being evaluated: the sample's seq and epoch, its index among the experiment's
/// samples, and the dedup policy (`dedup.rearm_after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eval {
    pub seq: u64,
    pub epoch: u64,
    pub sample: u64,
    pub rearm: u32,
}

/// What a rule saw, before the engine dresses it as an alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// `family.condition` (`divergence.spike`), or the family alone when it has one condition.
    pub rule: &'static str,
    pub severity: Severity,
    pub epoch: Option<u64>,
    pub observed: Metrics,
    pub thresholds: Metrics,
    pub evidence: Vec<u64>,
    pub message: String,
}

/// Every rule id a finding can carry, for documentation and the advice texts.
pub const RULES: &[&str] = &[
    "nan_inf",
    "divergence.spike",
    "divergence.rising",
    "divergence.absolute",
    "grad_blowup.exploding",
    "grad_blowup.exploding_nonfinite",
    "grad_blowup.vanishing",
    "grad_blowup.flat_loss",
    "overfit",
    "dead_lr.zero",
    "dead_lr.decayed",
    "dead_lr.constant",
    "stall.no_progress",
    "stall.process_gone",
    "classical.fold_variance",
    "classical.cv_gap",
];

/// The family of a rule id: `divergence.spike` → `divergence`.
pub fn family(rule: &str) -> &str {
    rule.split_once('.').map_or(rule, |(f, _)| f)
}

/// Build a `Metrics` from pairs.
pub(crate) fn metrics<const N: usize>(pairs: [(&str, f64); N]) -> Metrics {
    Metrics(pairs.iter().map(|&(k, v)| (k.to_owned(), v)).collect())
}

/// Sort and deduplicate evidence seqs (the trigger, the largest, stays last).
pub(crate) fn evidence(mut seqs: Vec<u64>) -> Vec<u64> {
    seqs.sort_unstable();
    seqs.dedup();
    seqs
}

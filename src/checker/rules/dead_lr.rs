//! dead_lr: a learning rate that is zero, decayed to nearly nothing too early, or never moves
//! although a schedule was configured.
//!
//! - `dead_lr.zero`: at or below `zero_at_or_below` for `zero_epochs` consecutive epochs, with at
//!   least `run_left_fraction` of `total_epochs` left (or at any point when the length is
//!   unknown). Warn.
//! - `dead_lr.decayed`: below `decayed_fraction` × its peak with at least `run_left_fraction` of
//!   the run left (needs `total_epochs`). Warn.
//! - `dead_lr.constant`: a schedule is configured (a `schedule_keys` entry in TrainingStarted's
//!   config) but the rate has not changed once over `constant_fraction` × total_epochs (or
//!   `constant_epochs`; at least 3). Warn.

use super::{Eval, Finding, RunInfo, evidence, metrics};
use crate::checker::config::DeadLrConfig;
use crate::checker::stats::{Latch, SeqRing, fmt_g};
use crate::event::Severity;

#[derive(Debug, Clone)]
pub struct DeadLr {
    n: u64,
    first: f64,
    first_seq: u64,
    peak: f64,
    peak_epoch: u64,
    peak_seq: u64,
    last: f64,
    changed: bool,
    zero_run: u32,
    recent: SeqRing,
    zero: Latch,
    decayed: Latch,
    constant: Latch,
}

impl DeadLr {
    pub fn new(cfg: &DeadLrConfig) -> DeadLr {
        DeadLr {
            n: 0,
            first: f64::NAN,
            first_seq: 0,
            peak: f64::NEG_INFINITY,
            peak_epoch: 0,
            peak_seq: 0,
            last: f64::NAN,
            changed: false,
            zero_run: 0,
            recent: SeqRing::new((cfg.zero_epochs as usize).clamp(1, 64)),
            zero: Latch::default(),
            decayed: Latch::default(),
            constant: Latch::default(),
        }
    }

    /// Feed one epoch's learning rate (`name` is where it came from).
    pub fn observe(
        &mut self,
        cfg: &DeadLrConfig,
        name: &str,
        v: f64,
        at: Eval,
        run: &RunInfo,
        out: &mut Vec<Finding>,
    ) {
        let (total_epochs, schedule_configured) = (run.total_epochs, run.schedule_configured);
        let Eval {
            seq, epoch, rearm, ..
        } = at;
        if !v.is_finite() {
            return;
        }
        if self.n == 0 {
            self.first = v;
            self.first_seq = seq;
        } else if v != self.last {
            self.changed = true;
        }
        if v > self.peak {
            self.peak = v;
            self.peak_epoch = epoch;
            self.peak_seq = seq;
        }
        self.last = v;
        self.n += 1;
        self.recent.push(seq);
        let total = total_epochs.filter(|&t| t > 0);
        let left = total.map(|t| t.saturating_sub(epoch + 1) as f64 / t as f64);
        let much_left = left.is_none_or(|l| l >= cfg.run_left_fraction);

        let is_zero = v <= cfg.zero_at_or_below;
        self.zero_run = if is_zero { self.zero_run + 1 } else { 0 };
        let zero = self.zero_run >= cfg.zero_epochs.max(1) && much_left;
        if let Some(sev) = self.zero.update(zero.then_some(Severity::Warn), rearm) {
            let mut observed = metrics([
                (name, v),
                ("zero_epochs", f64::from(self.zero_run)),
                ("peak", self.peak),
            ]);
            if let Some(l) = left {
                observed.insert("run_left_fraction", l);
            }
            out.push(Finding {
                rule: "dead_lr.zero",
                severity: sev,
                epoch: Some(epoch),
                observed,
                thresholds: metrics([
                    ("zero_at_or_below", cfg.zero_at_or_below),
                    ("zero_epochs", f64::from(cfg.zero_epochs)),
                    ("run_left_fraction", cfg.run_left_fraction),
                ]),
                evidence: evidence(self.recent.last(self.zero_run as usize)),
                message: format!(
                    "{name} has been {} for {} epoch(s) at epoch {epoch}{}: the model has stopped learning",
                    fmt_g(v),
                    self.zero_run,
                    left_text(left, total)
                ),
            });
        }

        let decayed = !is_zero
            && self.peak > 0.0
            && v < cfg.decayed_fraction * self.peak
            && left.is_some_and(|l| l >= cfg.run_left_fraction);
        if let Some(sev) = self
            .decayed
            .update(decayed.then_some(Severity::Warn), rearm)
        {
            out.push(Finding {
                rule: "dead_lr.decayed",
                severity: sev,
                epoch: Some(epoch),
                observed: metrics([
                    (name, v),
                    ("peak", self.peak),
                    ("peak_epoch", self.peak_epoch as f64),
                    ("fraction_of_peak", v / self.peak),
                    ("run_left_fraction", left.unwrap_or(f64::NAN)),
                ]),
                thresholds: metrics([
                    ("decayed_fraction", cfg.decayed_fraction),
                    ("run_left_fraction", cfg.run_left_fraction),
                ]),
                evidence: evidence(vec![self.peak_seq, seq]),
                message: format!(
                    "{name} decayed to {} at epoch {epoch}, {}% of its peak {} (epoch {}){}",
                    fmt_g(v),
                    fmt_g(100.0 * v / self.peak),
                    fmt_g(self.peak),
                    self.peak_epoch,
                    left_text(left, total)
                ),
            });
        }

        let constant = schedule_configured && !self.changed && self.n >= constant_need(cfg, total);
        if let Some(sev) = self
            .constant
            .update(constant.then_some(Severity::Warn), rearm)
        {
            out.push(Finding {
                rule: "dead_lr.constant",
                severity: sev,
                epoch: Some(epoch),
                observed: metrics([(name, v), ("unchanged_epochs", self.n as f64)]),
                thresholds: metrics([
                    ("constant_fraction", cfg.constant_fraction),
                    ("constant_epochs", constant_need(cfg, total) as f64),
                ]),
                evidence: evidence(vec![self.first_seq, seq]),
                message: format!(
                    "{name} has stayed at {} for all {} epoch(s) up to epoch {epoch} although TrainingStarted configures a schedule: the scheduler is not being stepped",
                    fmt_g(v),
                    self.n
                ),
            });
        }
    }
}

/// Epochs without a change that make a configured schedule "never stepped".
fn constant_need(cfg: &DeadLrConfig, total: Option<u64>) -> u64 {
    total
        .map(|t| (cfg.constant_fraction * t as f64).ceil() as u64)
        .unwrap_or(u64::from(cfg.constant_epochs))
        .max(3)
}

fn left_text(left: Option<f64>, total: Option<u64>) -> String {
    match (left, total) {
        (Some(l), Some(t)) => format!(" with {}% of {t} epochs still to run", fmt_g(100.0 * l)),
        _ => String::new(),
    }
}

/// Does a trainer's config say a learning-rate schedule is configured?
pub fn schedule_configured(config: &serde_json::Value, keys: &[String]) -> bool {
    fn truthy(v: &serde_json::Value) -> bool {
        use serde_json::Value::*;
        match v {
            Null | Bool(false) => false,
            Bool(true) => true,
            Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
            String(s) => {
                let s = s.trim().to_ascii_lowercase();
                !(s.is_empty() || s == "none" || s == "constant" || s == "null" || s == "off")
            }
            Array(a) => !a.is_empty(),
            Object(o) => !o.is_empty(),
        }
    }
    fn walk(v: &serde_json::Value, keys: &[String], depth: u32) -> bool {
        let Some(obj) = v.as_object() else {
            return false;
        };
        obj.iter().any(|(k, v)| {
            (keys.iter().any(|key| key.eq_ignore_ascii_case(k)) && truthy(v))
                || (depth < 4 && walk(v, keys, depth + 1))
        })
    }
    walk(config, keys, 1)
}

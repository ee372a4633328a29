//! overfit: the validation loss climbs while the training loss keeps falling.
//!
//! Both losses are smoothed by a running mean of `smooth` epochs. The rule fires when the
//! smoothed validation loss has had no new best for `patience` epochs (Lightning EarlyStopping's
//! patience, with its `min_delta`), sits more than `rise_rtol × |best|` above that best, the
//! smoothed training loss is lower than it was at the best epoch, and so the gap between them has
//! widened. Warn, naming the best (raw) validation epoch: the checkpoint to keep.

use super::{Eval, Finding, metrics};
use crate::checker::config::OverfitConfig;
use crate::checker::stats::{Latch, Noise, Window, fmt_g};
use crate::event::Severity;

#[derive(Debug, Clone)]
pub struct Overfit {
    val: Window,
    train: Window,
    best: f64,
    train_at_best: f64,
    gap_at_best: f64,
    since_best: u32,
    best_raw: f64,
    best_raw_epoch: u64,
    best_raw_seq: u64,
    noise: Noise,
    latch: Latch,
}

impl Overfit {
    pub fn new(cfg: &OverfitConfig) -> Overfit {
        Overfit {
            val: Window::new(cfg.smooth),
            train: Window::new(cfg.smooth),
            best: f64::INFINITY,
            train_at_best: f64::NAN,
            gap_at_best: f64::NAN,
            since_best: 0,
            best_raw: f64::INFINITY,
            best_raw_epoch: 0,
            best_raw_seq: 0,
            noise: Noise::new(40),
            latch: Latch::default(),
        }
    }

    /// Feed one epoch's pair of values (both finite).
    pub fn observe(
        &mut self,
        cfg: &OverfitConfig,
        (val_name, val): (&str, f64),
        (train_name, train): (&str, f64),
        at: Eval,
        out: &mut Vec<Finding>,
    ) {
        let Eval {
            seq, epoch, rearm, ..
        } = at;
        if !(val.is_finite() && train.is_finite()) {
            return;
        }
        if val < self.best_raw {
            self.best_raw = val;
            self.best_raw_epoch = epoch;
            self.best_raw_seq = seq;
        }
        self.val.push(val, seq);
        self.train.push(train, seq);
        let (sv, st) = (self.val.mean(), self.train.mean());
        if sv < self.best - cfg.min_delta {
            self.best = sv;
            self.train_at_best = st;
            self.gap_at_best = sv - st;
            self.since_best = 0;
        } else {
            self.since_best = self.since_best.saturating_add(1);
        }
        let gap = sv - st;
        let rise = sv - self.best;
        let mut sigma = f64::NAN;
        let cond = self.since_best >= cfg.patience.max(1)
            && rise > cfg.rise_rtol * self.best.abs()
            && st < self.train_at_best - cfg.min_delta
            && gap > self.gap_at_best
            && {
                sigma = self.noise.sigma();
                rise > cfg.noise_sigmas * sigma / (self.val.len() as f64).sqrt()
            };
        self.noise.push(val);
        if let Some(sev) = self.latch.update(cond.then_some(Severity::Warn), rearm) {
            out.push(Finding {
                rule: "overfit",
                severity: sev,
                epoch: Some(epoch),
                observed: metrics([
                    (val_name, val),
                    (train_name, train),
                    ("smoothed_val", sv),
                    ("smoothed_train", st),
                    ("best_smoothed_val", self.best),
                    ("epochs_since_best", f64::from(self.since_best)),
                    ("best_val", self.best_raw),
                    ("best_epoch", self.best_raw_epoch as f64),
                    ("gap", gap),
                    ("gap_at_best", self.gap_at_best),
                    ("noise_sigma", sigma),
                ]),
                thresholds: metrics([
                    ("smooth", f64::from(cfg.smooth)),
                    ("patience", f64::from(cfg.patience)),
                    ("min_delta", cfg.min_delta),
                    ("rise_rtol", cfg.rise_rtol),
                    ("noise_sigmas", cfg.noise_sigmas),
                ]),
                evidence: super::evidence(vec![self.best_raw_seq, seq]),
                message: format!(
                    "{val_name} has risen {}% above its best for {} epoch(s) while {train_name} kept falling ({} → {}, smoothed over {} epochs): the gap widened from {} to {} at epoch {epoch}; best epoch {} ({val_name} {})",
                    fmt_g(100.0 * rise / self.best.abs()),
                    self.since_best,
                    fmt_g(self.train_at_best),
                    fmt_g(st),
                    cfg.smooth,
                    fmt_g(self.gap_at_best),
                    fmt_g(gap),
                    self.best_raw_epoch,
                    fmt_g(self.best_raw)
                ),
            });
        }
    }
}

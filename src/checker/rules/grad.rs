//! grad_blowup: exploding gradients (and the non-finite values they lead to), vanishing
//! gradients, and a training loss that never moves.
//!
//! - `grad_blowup.exploding` (OLMo-core StabilityMonitor's 6σ): a grad norm above mean +
//!   `k_sigma` × std of the last `window` finite, non-spike grad norms (judged once `min_samples`
//!   are in), and at least `min_ratio` × the mean. Warn.
//! - `grad_blowup.exploding_nonfinite`: after an exploding grad norm, a non-finite grad norm or
//!   training loss within `nonfinite_within` samples. Stop.
//! - `grad_blowup.vanishing`: grad norm below `vanish_below` for `vanish_epochs` consecutive
//!   epochs. Warn.
//! - `grad_blowup.flat_loss`: the first `flat_epochs` training-loss values all within `flat_rtol`
//!   of the first. Warn (evaluated once).

use super::{Eval, Finding, evidence, metrics};
use crate::checker::config::GradBlowupConfig;
use crate::checker::stats::{Latch, SeqRing, Window, fmt_g};
use crate::event::Severity;

#[derive(Debug, Clone, Copy)]
struct Explosion {
    sample: u64,
    seq: u64,
    epoch: u64,
    value: f64,
    mean: f64,
}

#[derive(Debug, Clone)]
pub struct Grad {
    window: Window,
    vanish_run: u32,
    recent: SeqRing,
    exploded: Option<Explosion>,
    explode: Latch,
    vanish: Latch,
    nonfinite: Latch,
}

impl Grad {
    pub fn new(cfg: &GradBlowupConfig) -> Grad {
        Grad {
            window: Window::new(cfg.window),
            vanish_run: 0,
            recent: SeqRing::new((cfg.vanish_epochs as usize).clamp(1, 64)),
            exploded: None,
            explode: Latch::default(),
            vanish: Latch::default(),
            nonfinite: Latch::default(),
        }
    }

    /// Feed one value of the grad norm; `sample` counts the experiment's samples.
    pub fn observe(
        &mut self,
        cfg: &GradBlowupConfig,
        name: &str,
        v: f64,
        at: Eval,
        out: &mut Vec<Finding>,
    ) {
        let Eval {
            seq,
            epoch,
            sample,
            rearm,
        } = at;
        if !v.is_finite() {
            self.vanish_run = 0;
            return;
        }
        let mut cond = None;
        let (mean, std) = (self.window.mean(), self.window.std());
        if self.window.len() >= cfg.min_samples as usize
            && std > 1e-10
            && v > mean + cfg.k_sigma * std
            && v >= cfg.min_ratio * mean
        {
            cond = Some(Severity::Warn);
            self.exploded = Some(Explosion {
                sample,
                seq,
                epoch,
                value: v,
                mean,
            });
        } else {
            self.window.push(v, seq);
        }
        if let Some(sev) = self.explode.update(cond, rearm) {
            let mut ev: Vec<u64> = self.window.seqs().collect();
            ev.push(seq);
            out.push(Finding {
                rule: "grad_blowup.exploding",
                severity: sev,
                epoch: Some(epoch),
                observed: metrics([
                    (name, v),
                    ("window_mean", mean),
                    ("window_std", std),
                    ("sigmas", (v - mean) / std),
                ]),
                thresholds: metrics([
                    ("window", f64::from(cfg.window)),
                    ("k_sigma", cfg.k_sigma),
                    ("min_ratio", cfg.min_ratio),
                ]),
                evidence: evidence(ev),
                message: format!(
                    "{name} jumped to {} at epoch {epoch}: {}σ above its mean {} (std {}) over the last {} epoch(s), {}× the mean",
                    fmt_g(v),
                    fmt_g((v - mean) / std),
                    fmt_g(mean),
                    fmt_g(std),
                    self.window.len(),
                    fmt_g(v / mean)
                ),
            });
        }

        self.recent.push(seq);
        if v < cfg.vanish_below {
            self.vanish_run += 1;
        } else {
            self.vanish_run = 0;
        }
        let vanishing = (cfg.vanish_epochs > 0 && self.vanish_run >= cfg.vanish_epochs)
            .then_some(Severity::Warn);
        if let Some(sev) = self.vanish.update(vanishing, rearm) {
            out.push(Finding {
                rule: "grad_blowup.vanishing",
                severity: sev,
                epoch: Some(epoch),
                observed: metrics([(name, v), ("epochs_below", f64::from(self.vanish_run))]),
                thresholds: metrics([
                    ("vanish_below", cfg.vanish_below),
                    ("vanish_epochs", f64::from(cfg.vanish_epochs)),
                ]),
                evidence: evidence(self.recent.last(self.vanish_run as usize)),
                message: format!(
                    "{name} has been below {} for {} consecutive epoch(s) ({} at epoch {epoch}): gradients have vanished",
                    fmt_g(cfg.vanish_below),
                    self.vanish_run,
                    fmt_g(v)
                ),
            });
        }
    }

    /// After every sample: a non-finite grad norm or training loss (`nonfinite`: its name and
    /// value) shortly after an explosion is the explosion running away.
    pub fn after_sample(
        &mut self,
        cfg: &GradBlowupConfig,
        name: &str,
        grad_now: Option<f64>,
        nonfinite: Option<(&str, f64)>,
        at: Eval,
        out: &mut Vec<Finding>,
    ) {
        let Eval {
            seq,
            epoch,
            sample,
            rearm,
        } = at;
        let hit = match (self.exploded, nonfinite) {
            (Some(x), Some(nf)) if sample - x.sample < u64::from(cfg.nonfinite_within) => {
                Some((x, nf))
            }
            _ => None,
        };
        if let Some(sev) = self
            .nonfinite
            .update(hit.map(|_| Severity::Stop), rearm)
            .filter(|_| hit.is_some())
        {
            let (x, (nf_name, nf_value)) = hit.expect("checked above");
            let mut observed = metrics([
                (name, grad_now.unwrap_or(f64::NAN)),
                ("exploding_value", x.value),
                ("exploding_epoch", x.epoch as f64),
                ("mean_before", x.mean),
            ]);
            observed.insert(nf_name, nf_value);
            out.push(Finding {
                rule: "grad_blowup.exploding_nonfinite",
                severity: sev,
                epoch: Some(epoch),
                observed,
                thresholds: metrics([("nonfinite_within", f64::from(cfg.nonfinite_within))]),
                evidence: evidence(vec![x.seq, seq]),
                message: format!(
                    "{name} exploded to {} at epoch {} ({}× its mean {}), then {nf_name} became {} at epoch {epoch}: exploding gradients",
                    fmt_g(x.value),
                    x.epoch,
                    fmt_g(x.value / x.mean),
                    fmt_g(x.mean),
                    fmt_g(nf_value)
                ),
            });
        }
    }
}

/// `grad_blowup.flat_loss`: a training loss that does not move over its first epochs.
#[derive(Debug, Clone, Default)]
pub struct FlatLoss {
    first: f64,
    max_dev: f64,
    n: u32,
    done: bool,
    seqs: Vec<u64>,
}

impl FlatLoss {
    pub fn observe(
        &mut self,
        cfg: &GradBlowupConfig,
        name: &str,
        v: f64,
        seq: u64,
        epoch: u64,
        out: &mut Vec<Finding>,
    ) {
        if self.done || !v.is_finite() {
            return;
        }
        if cfg.flat_epochs == 0 {
            self.done = true;
            return;
        }
        if self.n == 0 {
            self.first = v;
        }
        self.max_dev = self.max_dev.max((v - self.first).abs());
        self.n += 1;
        self.seqs.push(seq);
        if self.n < cfg.flat_epochs {
            return;
        }
        self.done = true;
        let seqs = std::mem::take(&mut self.seqs);
        if self.max_dev <= cfg.flat_rtol * self.first.abs() {
            out.push(Finding {
                rule: "grad_blowup.flat_loss",
                severity: Severity::Warn,
                epoch: Some(epoch),
                observed: metrics([
                    (name, v),
                    ("first_value", self.first),
                    ("max_change_fraction", self.max_dev / self.first.abs()),
                ]),
                thresholds: metrics([
                    ("flat_epochs", f64::from(cfg.flat_epochs)),
                    ("flat_rtol", cfg.flat_rtol),
                ]),
                evidence: evidence(seqs),
                message: format!(
                    "{name} has not moved over its first {} epoch(s): {} at the start, {} at epoch {epoch}, never more than {}% away",
                    self.n,
                    fmt_g(self.first),
                    fmt_g(v),
                    fmt_g(100.0 * self.max_dev / self.first.abs())
                ),
            });
        }
    }
}

//! divergence: a training loss that spikes, climbs for several epochs, or crosses an absolute
//! threshold.
//!
//! - `divergence.spike` (Lightning Fabric SpikeDetection, per epoch): the value is no better than
//!   the previous one and exceeds the running mean of the last `window` finite, non-spike values
//!   by at least `rtol × |mean|`. Warn; stop from `severe_rtol × |mean|`. Spikes do not enter the
//!   window (as in Lightning, which updates its running mean only with non-spikes).
//! - `divergence.rising` (Lightning EarlyStopping patience/min_delta, made noise-proof): at least
//!   `patience` consecutive increases, each by more than `min_delta`, adding up to more than
//!   `rise_rtol × |start of the run-up|`. Warn; stop once it is back at or above its first value
//!   after having improved on it.
//! - `divergence.absolute` (Lightning EarlyStopping divergence_threshold): above the configured
//!   threshold for this metric. Stop.

use super::{Eval, Finding, evidence, metrics};
use crate::checker::config::DivergenceConfig;
use crate::checker::stats::{Latch, Noise, SeqRing, Window, fmt_g};
use crate::event::Severity;

#[derive(Debug, Clone)]
pub struct Divergence {
    window: Window,
    seen: u32,
    last_ok: f64,
    prev: f64,
    prev_seq: u64,
    first: f64,
    best: f64,
    run_len: u32,
    runup_start: f64,
    runup_seq: u64,
    recent: SeqRing,
    noise: Noise,
    absolute: Option<f64>,
    spike: Latch,
    rising: Latch,
    above: Latch,
}

impl Divergence {
    pub fn new(cfg: &DivergenceConfig, name: &str) -> Divergence {
        Divergence {
            window: Window::new(cfg.window),
            seen: 0,
            last_ok: f64::NAN,
            prev: f64::NAN,
            prev_seq: 0,
            first: f64::NAN,
            best: f64::INFINITY,
            run_len: 0,
            runup_start: f64::NAN,
            runup_seq: 0,
            recent: SeqRing::new((cfg.patience as usize + 1).clamp(8, 64)),
            noise: Noise::new(40),
            absolute: cfg.absolute.get(name).copied(),
            spike: Latch::default(),
            rising: Latch::default(),
            above: Latch::default(),
        }
    }

    /// Feed one finite value of the metric.
    pub fn observe(
        &mut self,
        cfg: &DivergenceConfig,
        name: &str,
        v: f64,
        at: Eval,
        out: &mut Vec<Finding>,
    ) {
        let Eval {
            seq, epoch, rearm, ..
        } = at;
        debug_assert!(v.is_finite());
        // Spike against the running mean.
        let mut is_spike = false;
        let mut spike_sev = None;
        let mean = self.window.mean();
        if self.seen >= cfg.warmup && !self.window.is_empty() {
            let excess = v - mean;
            if v > self.last_ok && excess > 0.0 && excess >= cfg.rtol * mean.abs() {
                is_spike = true;
                spike_sev = Some(if excess >= cfg.severe_rtol * mean.abs() {
                    Severity::Stop
                } else {
                    Severity::Warn
                });
            }
        }
        if let Some(sev) = self.spike.update(spike_sev, rearm) {
            let mut ev: Vec<u64> = self.window.seqs().collect();
            ev.push(seq);
            out.push(Finding {
                rule: "divergence.spike",
                severity: sev,
                epoch: Some(epoch),
                observed: metrics([
                    (name, v),
                    ("window_mean", mean),
                    ("ratio_to_mean", v / mean),
                    ("previous", self.last_ok),
                ]),
                thresholds: metrics([
                    ("window", f64::from(cfg.window)),
                    ("rtol", cfg.rtol),
                    ("severe_rtol", cfg.severe_rtol),
                ]),
                evidence: evidence(ev),
                message: format!(
                    "{name} spiked to {} at epoch {epoch}: {}× its running mean {} over the last {} epoch(s) (spike from mean + {} × mean, stop from mean + {} × mean)",
                    fmt_g(v),
                    fmt_g(v / mean),
                    fmt_g(mean),
                    self.window.len(),
                    fmt_g(cfg.rtol),
                    fmt_g(cfg.severe_rtol),
                ),
            });
        }
        if !is_spike {
            self.window.push(v, seq);
            self.last_ok = v;
        }

        // Rising for several epochs.
        if self.seen > 0 && v > self.prev + cfg.min_delta {
            if self.run_len == 0 {
                self.runup_start = self.prev;
                self.runup_seq = self.prev_seq;
            }
            self.run_len += 1;
        } else {
            self.run_len = 0;
        }
        self.recent.push(seq);
        let rise = v - self.runup_start;
        let mut sigma = f64::NAN;
        let rising = self.run_len >= cfg.patience.max(1)
            && rise > cfg.rise_rtol * self.runup_start.abs()
            && {
                sigma = self.noise.sigma();
                rise > cfg.noise_sigmas * sigma * std::f64::consts::SQRT_2
            };
        let severe = cfg.severe_above_initial && self.best < self.first && v >= self.first;
        let rising_sev = rising.then_some(if severe {
            Severity::Stop
        } else {
            Severity::Warn
        });
        if let Some(sev) = self.rising.update(rising_sev, rearm) {
            let mut ev = self.recent.last(self.run_len as usize);
            ev.push(self.runup_seq);
            out.push(Finding {
                rule: "divergence.rising",
                severity: sev,
                epoch: Some(epoch),
                observed: metrics([
                    (name, v),
                    ("run_up_start", self.runup_start),
                    ("rising_epochs", f64::from(self.run_len)),
                    ("rise_fraction", rise / self.runup_start.abs()),
                    ("first_value", self.first),
                    ("best_value", self.best),
                    ("noise_sigma", sigma),
                ]),
                thresholds: metrics([
                    ("patience", f64::from(cfg.patience)),
                    ("min_delta", cfg.min_delta),
                    ("rise_rtol", cfg.rise_rtol),
                    ("noise_sigmas", cfg.noise_sigmas),
                ]),
                evidence: evidence(ev),
                message: format!(
                    "{name} rose for {} consecutive epoch(s), from {} to {} at epoch {epoch} (+{}%){}",
                    self.run_len,
                    fmt_g(self.runup_start),
                    fmt_g(v),
                    fmt_g(100.0 * rise / self.runup_start.abs()),
                    if sev == Severity::Stop {
                        format!(
                            ", back above its first value {} after reaching {}",
                            fmt_g(self.first),
                            fmt_g(self.best)
                        )
                    } else {
                        String::new()
                    }
                ),
            });
        }

        // Absolute threshold.
        let above = self.absolute.filter(|&t| v > t);
        if let Some(sev) = self.above.update(above.map(|_| Severity::Stop), rearm) {
            let t = above.unwrap_or(f64::NAN);
            out.push(Finding {
                rule: "divergence.absolute",
                severity: sev,
                epoch: Some(epoch),
                observed: metrics([(name, v)]),
                thresholds: metrics([("divergence_threshold", t)]),
                evidence: vec![seq],
                message: format!(
                    "{name} is {} at epoch {epoch}, above its divergence threshold {}",
                    fmt_g(v),
                    fmt_g(t)
                ),
            });
        }

        self.noise.push(v);
        if self.seen == 0 {
            self.first = v;
        }
        self.best = self.best.min(v);
        self.prev = v;
        self.prev_seq = seq;
        self.seen = self.seen.saturating_add(1);
    }
}

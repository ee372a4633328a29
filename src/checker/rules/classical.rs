//! classical: cross-validation folds (CheckpointSaved with reason `fold`) that disagree, or a
//! model much better on its training folds than on the held-out ones.
//!
//! - `classical.fold_variance`: once `min_folds` folds report a metric, its std / |mean| across
//!   folds (population std, as scikit-learn's `std_test_score`) above `max_fold_cv`. Warn.
//! - `classical.cv_gap`: a `train_X` metric against its held-out twin (`X`, `val_X`, `test_X`,
//!   `cv_X`, `valid_X`), averaged over the folds reporting both: the training side better by more
//!   than `gap_rtol × |train|` (lower is better for names with loss/error/mse/mae, higher
//!   otherwise). Warn.
//!
//! Work per fold event is O(folds × metrics), and folds are few.

use super::{Finding, evidence, metrics};
use crate::checker::config::ClassicalConfig;
use crate::checker::stats::{Latch, fmt_g};
use crate::event::{Metrics, Severity};

#[derive(Debug, Clone)]
struct FoldMetric {
    name: String,
    /// (fold, value, seq), one entry per fold (a re-reported fold replaces its value).
    folds: Vec<(u32, f64, u64)>,
    variance: Latch,
    gap: Latch,
}

#[derive(Debug, Clone, Default)]
pub struct Classical {
    metrics: Vec<FoldMetric>,
}

const HELD_OUT_PREFIXES: [&str; 5] = ["", "val_", "test_", "cv_", "valid_"];

fn lower_is_better(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["loss", "error", "mse", "mae", "rmse"]
        .iter()
        .any(|w| n.contains(w))
}

fn stats(vals: impl Iterator<Item = f64>) -> (f64, f64, usize) {
    let v: Vec<f64> = vals.collect();
    let n = v.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, 0);
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
    (mean, var.sqrt(), n)
}

impl Classical {
    fn entry(&mut self, name: &str) -> usize {
        match self.metrics.iter().position(|m| m.name == name) {
            Some(i) => i,
            None => {
                self.metrics.push(FoldMetric {
                    name: name.to_owned(),
                    folds: Vec::new(),
                    variance: Latch::default(),
                    gap: Latch::default(),
                });
                self.metrics.len() - 1
            }
        }
    }

    /// A fold finished with these metrics, in the event at `seq` (with its epoch, if any).
    pub fn fold(
        &mut self,
        cfg: &ClassicalConfig,
        rearm: u32,
        fold: u32,
        values: &Metrics,
        (seq, epoch): (u64, Option<u64>),
        out: &mut Vec<Finding>,
    ) {
        let mut touched = Vec::new();
        for (name, v) in values.iter() {
            if !v.is_finite() {
                continue;
            }
            let i = self.entry(name);
            let m = &mut self.metrics[i];
            match m.folds.iter_mut().find(|f| f.0 == fold) {
                Some(f) => *f = (fold, v, seq),
                None => m.folds.push((fold, v, seq)),
            }
            touched.push(i);
        }
        let min = cfg.min_folds.max(2) as usize;
        for &i in &touched {
            let m = &self.metrics[i];
            if m.name.starts_with("train") {
                continue;
            }
            let (mean, std, n) = stats(m.folds.iter().map(|f| f.1));
            let cv = std / mean.abs();
            let cond = n >= min && mean.abs() > 1e-12 && cv > cfg.max_fold_cv;
            let name = m.name.clone();
            let seqs: Vec<u64> = m.folds.iter().map(|f| f.2).collect();
            let (lo, hi) = m
                .folds
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |a, f| {
                    (a.0.min(f.1), a.1.max(f.1))
                });
            if let Some(sev) = self.metrics[i]
                .variance
                .update(cond.then_some(Severity::Warn), rearm)
            {
                out.push(Finding {
                    rule: "classical.fold_variance",
                    severity: sev,
                    epoch,
                    observed: metrics([
                        (name.as_str(), mean),
                        ("fold_std", std),
                        ("fold_cv", cv),
                        ("folds", n as f64),
                        ("fold_min", lo),
                        ("fold_max", hi),
                    ]),
                    thresholds: metrics([
                        ("max_fold_cv", cfg.max_fold_cv),
                        ("min_folds", f64::from(cfg.min_folds)),
                    ]),
                    evidence: evidence(seqs),
                    message: format!(
                        "{name} varies across {n} folds: mean {}, std {} ({}% of the mean), from {} to {}",
                        fmt_g(mean),
                        fmt_g(std),
                        fmt_g(100.0 * cv),
                        fmt_g(lo),
                        fmt_g(hi)
                    ),
                });
            }
        }
        // Train-vs-held-out gaps, for every train_X touched or whose twin was touched.
        for i in 0..self.metrics.len() {
            let Some(base) = self.metrics[i].name.strip_prefix("train_") else {
                continue;
            };
            let base = base.to_owned();
            let Some(j) = HELD_OUT_PREFIXES.iter().find_map(|p| {
                let twin = format!("{p}{base}");
                self.metrics.iter().position(|m| m.name == twin)
            }) else {
                continue;
            };
            if !touched.contains(&i) && !touched.contains(&j) {
                continue;
            }
            let (train, held) = (&self.metrics[i], &self.metrics[j]);
            let pairs: Vec<(f64, f64, u64, u64)> = train
                .folds
                .iter()
                .filter_map(|t| {
                    held.folds
                        .iter()
                        .find(|h| h.0 == t.0)
                        .map(|h| (t.1, h.1, t.2, h.2))
                })
                .collect();
            let n = pairs.len();
            let (tm, _, _) = stats(pairs.iter().map(|p| p.0));
            let (hm, _, _) = stats(pairs.iter().map(|p| p.1));
            let gap = if lower_is_better(&base) {
                hm - tm
            } else {
                tm - hm
            };
            let rel = gap / tm.abs().max(1e-12);
            let cond = n >= min && rel > cfg.gap_rtol;
            let (tname, hname) = (train.name.clone(), held.name.clone());
            let seqs: Vec<u64> = pairs.iter().flat_map(|p| [p.2, p.3]).collect();
            if let Some(sev) = self.metrics[i]
                .gap
                .update(cond.then_some(Severity::Warn), rearm)
            {
                out.push(Finding {
                    rule: "classical.cv_gap",
                    severity: sev,
                    epoch,
                    observed: metrics([
                        (hname.as_str(), hm),
                        (tname.as_str(), tm),
                        ("gap", gap),
                        ("gap_fraction", rel),
                        ("folds", n as f64),
                    ]),
                    thresholds: metrics([
                        ("gap_rtol", cfg.gap_rtol),
                        ("min_folds", f64::from(cfg.min_folds)),
                    ]),
                    evidence: evidence(seqs),
                    message: format!(
                        "{tname} averages {} but {hname} only {} over {n} folds: a gap of {}% of the training score",
                        fmt_g(tm),
                        fmt_g(hm),
                        fmt_g(100.0 * rel)
                    ),
                });
            }
        }
    }
}

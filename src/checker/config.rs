//! The checker's configuration: which metrics are monitored and every rule's thresholds.
//!
//! Every field has a default (docs/checker.md says where each comes from), so a `--config` file
//! names only what it changes. Unknown fields are refused, so a typo is an error rather than a
//! silently ignored threshold. The full effective configuration is what `zolog watch` records in
//! `CheckerConfigured`, so an audit replays with exactly the thresholds that were in force even
//! after these defaults change.

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Version of the configuration shape written into `CheckerConfigured`.
pub const CONFIG_VERSION: u32 = 1;

/// Everything the rules need to know beyond the events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CheckerConfig {
    /// Shape version (1).
    pub version: u32,
    pub monitor: MonitorConfig,
    pub dedup: DedupConfig,
    pub nan_inf: NanInfConfig,
    pub divergence: DivergenceConfig,
    pub grad_blowup: GradBlowupConfig,
    pub overfit: OverfitConfig,
    pub dead_lr: DeadLrConfig,
    pub stall: StallConfig,
    pub classical: ClassicalConfig,
}

impl Default for CheckerConfig {
    fn default() -> Self {
        CheckerConfig {
            version: CONFIG_VERSION,
            monitor: MonitorConfig::default(),
            dedup: DedupConfig::default(),
            nan_inf: NanInfConfig::default(),
            divergence: DivergenceConfig::default(),
            grad_blowup: GradBlowupConfig::default(),
            overfit: OverfitConfig::default(),
            dead_lr: DeadLrConfig::default(),
            stall: StallConfig::default(),
            classical: ClassicalConfig::default(),
        }
    }
}

/// Which metrics the rules look at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// A metric whose name contains one of these (case-insensitive) is a loss.
    pub loss_contains: Vec<String>,
    /// Further metrics to treat as losses (lower is better), by exact name.
    pub losses: Vec<String>,
    /// Gradient-norm metrics, by exact name.
    pub grad_norm: Vec<String>,
    /// Learning-rate metrics, by exact name; `EpochEnded.learning_rate` is always monitored and
    /// wins when both are present.
    pub learning_rate: Vec<String>,
    /// A loss whose name has one of these as a word (split on `_`, `-`, `/`, `.`, space) is a
    /// validation loss; other losses are training losses.
    pub validation_words: Vec<String>,
    /// Metrics never monitored, by exact name.
    pub exclude: Vec<String>,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            loss_contains: vec!["loss".into()],
            losses: vec![],
            grad_norm: vec!["grad_norm".into()],
            learning_rate: vec!["lr".into(), "learning_rate".into()],
            validation_words: [
                "val",
                "valid",
                "validation",
                "eval",
                "test",
                "dev",
                "holdout",
            ]
            .map(String::from)
            .to_vec(),
            exclude: vec![],
        }
    }
}

/// How often the same condition may alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// An alert opens an episode for its rule and metric; the episode closes after the condition
    /// has been false for this many consecutive evaluations, and only then can the same condition
    /// alert again. Within an episode, only an escalation (warn to stop) alerts.
    pub rearm_after: u32,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig { rearm_after: 5 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NanInfConfig {
    pub enabled: bool,
}

impl Default for NanInfConfig {
    fn default() -> Self {
        NanInfConfig { enabled: true }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DivergenceConfig {
    pub enabled: bool,
    /// Also watch validation losses (by default only training losses: a rising validation loss
    /// under a falling training loss is the overfit rule's business).
    pub include_validation: bool,
    /// Running-mean window of finite, non-spike values (Lightning SpikeDetection: 10).
    pub window: u32,
    /// Values seen before spike checks start (Lightning SpikeDetection: 1).
    pub warmup: u32,
    /// Spike: value − mean ≥ rtol × |mean| and no better than the previous value (Lightning
    /// SpikeDetection: 2.0).
    pub rtol: f64,
    /// A spike with value − mean ≥ severe_rtol × |mean| is stop severity.
    pub severe_rtol: f64,
    /// Rising: this many consecutive increases (Lightning EarlyStopping patience: 3)...
    pub patience: u32,
    /// ...each larger than this (Lightning EarlyStopping min_delta: 0)...
    pub min_delta: f64,
    /// ...and a total rise since the run-up began of more than rise_rtol × |its start|...
    pub rise_rtol: f64,
    /// ...and more than noise_sigmas × the noise of the difference of two values (σ√2, σ from
    /// the last 20 successive differences), so a noisy curve needs a bigger rise.
    pub noise_sigmas: f64,
    /// A rising loss that climbs back to or above its first value, after having improved on it,
    /// is stop severity (all progress lost).
    pub severe_above_initial: bool,
    /// Absolute divergence thresholds per metric name (Lightning EarlyStopping
    /// divergence_threshold; none by default): a value above it is stop severity.
    pub absolute: std::collections::BTreeMap<String, f64>,
}

impl Default for DivergenceConfig {
    fn default() -> Self {
        DivergenceConfig {
            enabled: true,
            include_validation: false,
            window: 10,
            warmup: 1,
            rtol: 2.0,
            severe_rtol: 10.0,
            patience: 3,
            min_delta: 0.0,
            rise_rtol: 0.2,
            noise_sigmas: 5.0,
            severe_above_initial: true,
            absolute: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GradBlowupConfig {
    pub enabled: bool,
    /// Rolling window of finite, non-spike grad norms (OLMo-core StabilityMonitor: 128 steps;
    /// per epoch, 20).
    pub window: u32,
    /// Values needed in the window before spikes are judged.
    pub min_samples: u32,
    /// Exploding: value > mean + k_sigma × std (OLMo-core: 6σ)...
    pub k_sigma: f64,
    /// ...and value ≥ min_ratio × mean, so a tiny std cannot turn noise into an explosion.
    pub min_ratio: f64,
    /// Exploding, then a non-finite grad norm or training loss within this many samples
    /// (counting the exploding one): stop.
    pub nonfinite_within: u32,
    /// Vanishing: grad norm below this...
    pub vanish_below: f64,
    /// ...for this many consecutive epochs.
    pub vanish_epochs: u32,
    /// Flat from the start: after this many training-loss values...
    pub flat_epochs: u32,
    /// ...none has moved more than flat_rtol × |first value| from the first.
    pub flat_rtol: f64,
}

impl Default for GradBlowupConfig {
    fn default() -> Self {
        GradBlowupConfig {
            enabled: true,
            window: 20,
            min_samples: 8,
            k_sigma: 6.0,
            min_ratio: 2.0,
            nonfinite_within: 3,
            vanish_below: 1e-6,
            vanish_epochs: 3,
            flat_epochs: 8,
            flat_rtol: 0.01,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct OverfitConfig {
    pub enabled: bool,
    /// Explicit [train, validation] metric pairs. Empty: every validation loss is paired with the
    /// training loss named like it (`val_loss` with `train_loss`, else `loss`).
    pub pairs: Vec<[String; 2]>,
    /// Values are smoothed by a running mean of this many epochs before comparing.
    pub smooth: u32,
    /// Epochs without a new best (smoothed) validation loss (Lightning EarlyStopping patience: 3).
    pub patience: u32,
    /// An improvement must beat the best by more than this (Lightning min_delta: 0).
    pub min_delta: f64,
    /// The smoothed validation loss is above its best by more than rise_rtol × |best|...
    pub rise_rtol: f64,
    /// ...and by more than noise_sigmas × the noise of a smoothed value (σ / √smooth, σ from the
    /// last 20 successive differences of the raw validation loss). The best is a minimum over the
    /// run, about 3 such σ below the level on a long plateau, hence a wide margin.
    pub noise_sigmas: f64,
}

impl Default for OverfitConfig {
    fn default() -> Self {
        OverfitConfig {
            enabled: true,
            pairs: vec![],
            smooth: 5,
            patience: 3,
            min_delta: 0.0,
            rise_rtol: 0.1,
            noise_sigmas: 10.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DeadLrConfig {
    pub enabled: bool,
    /// A learning rate at or below this counts as zero.
    pub zero_at_or_below: f64,
    /// Zero for this many consecutive epochs...
    pub zero_epochs: u32,
    /// ...with at least this fraction of `total_epochs` left (when the run says how long it is).
    pub run_left_fraction: f64,
    /// Decayed below this fraction of its peak with run_left_fraction of the run left.
    pub decayed_fraction: f64,
    /// Keys in TrainingStarted's config (at any depth up to 4) that say a schedule is configured,
    /// when their value is not null, false, 0, "", "none" or "constant".
    pub schedule_keys: Vec<String>,
    /// With a schedule configured, never changing over this fraction of total_epochs...
    pub constant_fraction: f64,
    /// ...or over this many epochs when total_epochs is unknown.
    pub constant_epochs: u32,
}

impl Default for DeadLrConfig {
    fn default() -> Self {
        DeadLrConfig {
            enabled: true,
            zero_at_or_below: 0.0,
            zero_epochs: 2,
            run_left_fraction: 0.5,
            decayed_fraction: 0.01,
            schedule_keys: [
                "scheduler",
                "lr_scheduler",
                "lr_schedule",
                "schedule",
                "lr_decay",
                "lr_policy",
                "warmup_epochs",
                "warmup_steps",
                "milestones",
            ]
            .map(String::from)
            .to_vec(),
            constant_fraction: 0.5,
            constant_epochs: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StallConfig {
    pub enabled: bool,
    /// No progress for max(k × median epoch duration, floor_seconds)...
    pub k: f64,
    /// ...(PyTorch's default NCCL collective timeout, the classic hang, is 600 s).
    pub floor_seconds: f64,
    /// The median is over this many most recent epoch durations.
    pub median_window: u32,
    /// The trainer's pid must have been seen gone this long, with no TrainingEnded, before the
    /// run is declared dead (gives a wrapper time to record how it ended).
    pub gone_grace_seconds: f64,
}

impl Default for StallConfig {
    fn default() -> Self {
        StallConfig {
            enabled: true,
            k: 5.0,
            floor_seconds: 600.0,
            median_window: 20,
            gone_grace_seconds: 5.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ClassicalConfig {
    pub enabled: bool,
    /// Folds needed before judging.
    pub min_folds: u32,
    /// High variance: std / |mean| of a metric across folds above this.
    pub max_fold_cv: f64,
    /// Train-vs-CV gap: the train score better than the CV score by more than gap_rtol × |train|.
    pub gap_rtol: f64,
}

impl Default for ClassicalConfig {
    fn default() -> Self {
        ClassicalConfig {
            enabled: true,
            min_folds: 3,
            max_fold_cv: 0.1,
            gap_rtol: 0.1,
        }
    }
}

impl CheckerConfig {
    /// Parse a configuration (a `--config` file's text, or CheckerConfigured's JSON), naming the
    /// field at fault.
    pub fn from_json(v: &serde_json::Value) -> std::result::Result<CheckerConfig, String> {
        let c: CheckerConfig = serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                e.into_inner().to_string()
            } else {
                format!("at {path}: {}", e.into_inner())
            }
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Read a `--config` file (JSON).
    pub fn load(path: &Path) -> Result<CheckerConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::InvalidInput {
                file: path.to_path_buf(),
                line: e.line(),
                reason: e.to_string(),
            })?;
        CheckerConfig::from_json(&v).map_err(|reason| Error::InvalidInput {
            file: path.to_path_buf(),
            line: 0,
            reason,
        })
    }

    /// The JSON recorded in CheckerConfigured: every field, defaults included.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("the configuration always serializes")
    }

    /// Refuse values no rule can work with.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let mut bad = Vec::new();
        let mut pos = |name: &str, v: f64| {
            if !(v.is_finite() && v >= 0.0) {
                bad.push(format!("{name} must be a finite number ≥ 0, found {v}"));
            }
        };
        let d = &self.divergence;
        pos("divergence.rtol", d.rtol);
        pos("divergence.severe_rtol", d.severe_rtol);
        pos("divergence.min_delta", d.min_delta);
        pos("divergence.rise_rtol", d.rise_rtol);
        pos("divergence.noise_sigmas", d.noise_sigmas);
        let g = &self.grad_blowup;
        pos("grad_blowup.k_sigma", g.k_sigma);
        pos("grad_blowup.min_ratio", g.min_ratio);
        pos("grad_blowup.vanish_below", g.vanish_below);
        pos("grad_blowup.flat_rtol", g.flat_rtol);
        let o = &self.overfit;
        pos("overfit.min_delta", o.min_delta);
        pos("overfit.rise_rtol", o.rise_rtol);
        pos("overfit.noise_sigmas", o.noise_sigmas);
        let l = &self.dead_lr;
        pos("dead_lr.zero_at_or_below", l.zero_at_or_below);
        pos("dead_lr.run_left_fraction", l.run_left_fraction);
        pos("dead_lr.decayed_fraction", l.decayed_fraction);
        pos("dead_lr.constant_fraction", l.constant_fraction);
        let s = &self.stall;
        pos("stall.k", s.k);
        pos("stall.floor_seconds", s.floor_seconds);
        pos("stall.gone_grace_seconds", s.gone_grace_seconds);
        let c = &self.classical;
        pos("classical.max_fold_cv", c.max_fold_cv);
        pos("classical.gap_rtol", c.gap_rtol);
        for (name, v) in &d.absolute {
            if v.is_nan() {
                bad.push(format!("divergence.absolute.{name} must be a number"));
            }
        }
        if d.window == 0 {
            bad.push("divergence.window must be at least 1".into());
        }
        if g.window == 0 || g.min_samples < 2 || g.min_samples > g.window {
            bad.push("grad_blowup needs window ≥ 1 and 2 ≤ min_samples ≤ window".into());
        }
        if o.smooth == 0 {
            bad.push("overfit.smooth must be at least 1".into());
        }
        if s.median_window == 0 {
            bad.push("stall.median_window must be at least 1".into());
        }
        if self.version != CONFIG_VERSION {
            bad.push(format!(
                "version {} is not supported (this zolog reads version {CONFIG_VERSION})",
                self.version
            ));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_file_keeps_the_other_defaults() {
        let v = serde_json::json!({"divergence": {"rtol": 1.5}, "stall": {"floor_seconds": 2}});
        let c = CheckerConfig::from_json(&v).unwrap();
        assert_eq!(c.divergence.rtol, 1.5);
        assert_eq!(c.divergence.window, 10);
        assert_eq!(c.stall.floor_seconds, 2.0);
        assert_eq!(c.grad_blowup, GradBlowupConfig::default());
    }

    #[test]
    fn typos_and_bad_values_are_refused_with_the_field() {
        let e =
            CheckerConfig::from_json(&serde_json::json!({"divergence": {"rtoll": 1}})).unwrap_err();
        assert!(e.contains("divergence") && e.contains("rtoll"), "{e}");
        let e = CheckerConfig::from_json(&serde_json::json!({"stall": {"k": -1}})).unwrap_err();
        assert!(e.contains("stall.k"), "{e}");
        let e = CheckerConfig::from_json(&serde_json::json!({"version": 2})).unwrap_err();
        assert!(e.contains("version 2"), "{e}");
    }

    #[test]
    fn the_recorded_form_round_trips() {
        let c = CheckerConfig::default();
        assert_eq!(CheckerConfig::from_json(&c.to_json()).unwrap(), c);
    }
}

//! What an alert means and what to try next, in words tied to the metric that was observed.
//!
//! One source for every text about a rule: the checker puts [`likely_cause`] and
//! [`recommended_action`] into each AlertRaised, and the projections (diagnosis.md, next.md) call
//! [`mechanism`] and [`recommendation`] with the AlertRaised events they fold. Pure functions of
//! the alert: the same alert always gives the same text.

use super::stats::fmt_g;
use crate::event::AlertRaised;

/// Why this rule's condition usually happens (one line).
pub fn likely_cause(rule: &str) -> &'static str {
    match rule {
        "nan_inf" => {
            "learning rate too high, bad input normalisation, or a division by zero / log of zero in the loss"
        }
        "divergence.spike" => {
            "an unstable update: learning rate too high for the current curvature, an outlier or corrupted batch, or a loss-scale overflow under mixed precision"
        }
        "divergence.rising" | "divergence.absolute" => {
            "the optimiser is climbing the loss: step size too large (often when warm-up ends or a schedule restarts), or stale optimiser state"
        }
        "grad_blowup.exploding" | "grad_blowup.exploding_nonfinite" => {
            "exploding gradients: learning rate too high, no gradient clipping, poor initialisation, or missing normalisation in a deep or recurrent network"
        }
        "grad_blowup.vanishing" => {
            "vanishing gradients: saturating activations, a deep network without residual connections or normalisation, or parameters cut off from the loss"
        }
        "grad_blowup.flat_loss" => {
            "the model is not learning: learning rate far too low, gradients not reaching the weights (frozen, detached, or not given to the optimiser), or labels unrelated to the inputs"
        }
        "overfit" => {
            "the model is memorising the training set: too much capacity or too little regularisation and data for this many epochs"
        }
        "dead_lr.zero" | "dead_lr.decayed" => {
            "a schedule that ends too early (T_max or total steps shorter than the run), a mis-set warm-up, or the learning rate overwritten"
        }
        "dead_lr.constant" => {
            "the scheduler is configured but never stepped (scheduler.step() missing, or attached to another optimiser)"
        }
        "stall.no_progress" => {
            "a hang: a deadlock in data loading or a collective operation, an I/O stall, memory thrashing before an OOM, or an epoch far slower than the others"
        }
        "stall.process_gone" => {
            "the trainer died without recording its end: the OOM killer, a crash (segfault, CUDA error), or a lost node"
        }
        "classical.fold_variance" => {
            "folds that are not comparable: little data, class imbalance without stratification, leakage between grouped or time-ordered samples, or an unstable model"
        }
        "classical.cv_gap" => {
            "overfitting: the model is too flexible for the data (deep trees, weak regularisation, many features)"
        }
        _ => "unknown rule",
    }
}

/// What to do now (one line), naming the metric the alert is about.
pub fn recommended_action(rule: &str, subject: &str) -> String {
    match rule {
        "nan_inf" => format!(
            "stop the run; resume from the last checkpoint where {subject} was finite with the learning rate halved and gradient clipping, and check inputs for NaN or zero-variance features"
        ),
        "divergence.spike" => format!(
            "lower the learning rate or lengthen warm-up, add gradient clipping, and inspect the batches seen just before {subject} spiked"
        ),
        "divergence.rising" | "divergence.absolute" => format!(
            "restart from the checkpoint with the lowest {subject} with a lower peak learning rate or a decaying schedule"
        ),
        "grad_blowup.exploding" | "grad_blowup.exploding_nonfinite" => format!(
            "clip gradients (max norm near the typical {subject}), add learning-rate warm-up, and review initialisation"
        ),
        "grad_blowup.vanishing" => "use non-saturating activations with He initialisation, add normalisation or residual connections, and check that every trainable parameter reaches the loss".to_owned(),
        "grad_blowup.flat_loss" => format!(
            "run a learning-rate range test, check that optimizer.step() runs and parameters require grad, and overfit one batch to prove {subject} can fall"
        ),
        "overfit" => format!(
            "keep the best-epoch checkpoint; early-stop on {subject} and add regularisation (weight decay, dropout), augmentation, or a smaller model"
        ),
        "dead_lr.zero" | "dead_lr.decayed" => "fix the schedule length (T_max or total steps = the real number of optimiser steps) so the learning rate decays over the whole run".to_owned(),
        "dead_lr.constant" => "call scheduler.step() once per epoch (or per batch for per-step schedules) after optimizer.step(), and log the learning rate to confirm it moves".to_owned(),
        "stall.no_progress" => "inspect the trainer (py-spy dump, GPU utilisation, memory); set DataLoader and collective timeouts so a hang fails fast".to_owned(),
        "stall.process_gone" => "check the OOM-killer log (dmesg) and the trainer's stderr; resume from the last checkpoint, with a smaller batch if memory ran out".to_owned(),
        "classical.fold_variance" => format!(
            "use stratified (or grouped / time-series) splits, more or repeated folds, and a more regularised model; report {subject} as mean ± std"
        ),
        "classical.cv_gap" => format!(
            "regularise (shallower trees, larger min_samples_leaf, stronger C/alpha), prune features, and select on {subject}, not the training score"
        ),
        _ => String::new(),
    }
}

fn subject(a: &AlertRaised) -> (&str, f64) {
    a.observed
        .0
        .first()
        .map_or(("the metric", f64::NAN), |(n, v)| (n.as_str(), *v))
}

fn get(a: &AlertRaised, k: &str) -> String {
    a.observed.get(k).map_or_else(|| "?".into(), fmt_g)
}

fn at(a: &AlertRaised) -> String {
    a.epoch.map_or(String::new(), |e| format!(" at epoch {e}"))
}

/// The mechanism the alert points to, at the level of the model's internals, citing the observed
/// values. For diagnosis.md's `## Mechanism`.
pub fn mechanism(a: &AlertRaised) -> String {
    let (name, v) = subject(a);
    let at = at(a);
    match a.rule.as_str() {
        "nan_inf" => format!(
            "{name} became {}{at}. A non-finite loss means an operation overflowed (exp or softmax of huge logits, squares of exploding activations) or was undefined (log 0, 0/0); once one update writes NaN into the weights every later step is NaN, so the run cannot recover without restoring earlier weights.",
            fmt_g(v)
        ),
        "divergence.spike" => format!(
            "{name} jumped to {}{at}, {}× its running mean {}. A jump this large means a few updates threw the weights into a much worse region: typically the step size exceeded what the local curvature allows (sharpness above 2/lr), or an outlier batch produced an outsized gradient.",
            fmt_g(v),
            get(a, "ratio_to_mean"),
            get(a, "window_mean")
        ),
        "divergence.rising" => format!(
            "{name} rose for {} consecutive epochs, from {} to {}{at} (its best was {}). The optimiser is moving uphill on its own objective: the effective step size is too large for the current landscape, so updates overshoot instead of descending.",
            get(a, "rising_epochs"),
            get(a, "run_up_start"),
            fmt_g(v),
            get(a, "best_value")
        ),
        "divergence.absolute" => format!(
            "{name} reached {}{at}, beyond the configured divergence threshold: the optimisation has left the region where the model fits the data.",
            fmt_g(v)
        ),
        "grad_blowup.exploding" => format!(
            "{name} reached {}{at}, {}σ above its recent mean {}. Gradients grow multiplicatively through the layers when weight matrices stretch their inputs (spectral norm above 1); one large update enlarges the weights further, a feedback loop that ends in overflow unless the step is bounded.",
            fmt_g(v),
            get(a, "sigmas"),
            get(a, "window_mean")
        ),
        "grad_blowup.exploding_nonfinite" => format!(
            "{name} exploded to {} at epoch {} and the values became non-finite{at}: the exploding-gradient feedback loop (large gradient, larger weights, larger activations) ran until floating point overflowed.",
            get(a, "exploding_value"),
            get(a, "exploding_epoch")
        ),
        "grad_blowup.vanishing" => format!(
            "{name} has stayed near zero ({}{at}): the error signal no longer reaches the weights, because activations saturate, signals shrink through many layers without residual paths or normalisation, or parameters are detached from the loss. The weights stop changing even though the loss is not at its floor.",
            fmt_g(v)
        ),
        "grad_blowup.flat_loss" => format!(
            "{name} stayed within {}% of its first value {} over the first epochs{at}: the updates are not changing the function the model computes, either because they are vanishingly small (learning rate, vanishing gradients) or because they never reach the weights.",
            fmt_g(100.0 * a.observed.get("max_change_fraction").unwrap_or(f64::NAN)),
            get(a, "first_value")
        ),
        "overfit" => {
            let train = a
                .observed
                .0
                .get(1)
                .map_or("the training loss", |(n, _)| n.as_str());
            format!(
                "{name} climbed to {}{at} while {train} kept falling; the smoothed gap widened from {} to {}, and {name} was best ({}) at epoch {}. The model is now fitting patterns specific to the training set (noise, memorised examples), which raises the held-out loss.",
                fmt_g(v),
                get(a, "gap_at_best"),
                get(a, "gap"),
                get(a, "best_val"),
                get(a, "best_epoch")
            )
        }
        "dead_lr.zero" => format!(
            "{name} is {}{at} with much of the run left: every update is zero, so the remaining epochs cost compute without changing the model.",
            fmt_g(v)
        ),
        "dead_lr.decayed" => format!(
            "{name} decayed to {}{at}, {}× its peak {}, with {}% of the run left: updates are too small to make progress, so the model is frozen near where it stood when the rate collapsed.",
            fmt_g(v),
            get(a, "fraction_of_peak"),
            get(a, "peak"),
            fmt_g(100.0 * a.observed.get("run_left_fraction").unwrap_or(f64::NAN))
        ),
        "dead_lr.constant" => format!(
            "{name} stayed at {} for {} epochs although a schedule is configured: the schedule never takes effect, so the run trains at a constant rate that is either too high to settle into a minimum or too low to make progress.",
            fmt_g(v),
            get(a, "unchanged_epochs")
        ),
        "stall.no_progress" => format!(
            "no progress for {} s{at} against a median epoch of {} s. {} A trainer that is alive but silent is usually blocked: a data-loader worker deadlock, a collective operation waiting for a peer, an I/O stall, or memory thrashing before an OOM.",
            fmt_g(v),
            get(a, "median_epoch_seconds"),
            if a.observed.get("pid_alive") == Some(1.0) {
                "The process is alive."
            } else {
                "The process could not be checked."
            }
        ),
        "stall.process_gone" => format!(
            "the trainer (pid {}) disappeared without a TrainingEnded{at}: it was killed from outside (the OOM killer, a scheduler) or crashed in native code before Python could record its end.",
            get(a, "pid")
        ),
        "classical.fold_variance" => format!(
            "{name} averages {} across {} folds with a std of {} (from {} to {}): the model's quality depends on which samples land in which fold, so the estimate is unreliable and the model unstable.",
            fmt_g(v),
            get(a, "folds"),
            get(a, "fold_std"),
            get(a, "fold_min"),
            get(a, "fold_max")
        ),
        "classical.cv_gap" => {
            let train = a
                .observed
                .0
                .get(1)
                .map_or("the training score", |(n, _)| n.as_str());
            format!(
                "{train} averages {} but {name} only {}: a gap of {}% of the training score means the model fits its training folds far better than unseen data (variance dominates bias).",
                get(a, train),
                fmt_g(v),
                fmt_g(100.0 * a.observed.get("gap_fraction").unwrap_or(f64::NAN))
            )
        }
        _ => a.message.clone(),
    }
}

/// The next experiment to run, as one concrete change tied to the observed metric. For
/// diagnosis.md's `## Recommended next experiment(s)` and next.md.
pub fn recommendation(a: &AlertRaised) -> String {
    let (name, v) = subject(a);
    let before = a.epoch.map_or("the last good checkpoint".to_owned(), |e| {
        format!("the last checkpoint before epoch {e}")
    });
    match a.rule.as_str() {
        "nan_inf" => format!(
            "Resume from {before} with the learning rate halved and gradient clipping (max_norm 1.0); success is {name} staying finite past epoch {}.",
            a.epoch.map_or("?".into(), |e| e.to_string())
        ),
        "divergence.spike" => format!(
            "Rerun from {before} with the learning rate lowered 2–3× (or a longer warm-up) and gradient clipping; success is {name} staying under 2× its running mean ({}) through epoch {}.",
            get(a, "window_mean"),
            a.epoch.map_or("?".into(), |e| e.to_string())
        ),
        "divergence.rising" | "divergence.absolute" => format!(
            "Restart from the checkpoint with the lowest {name} ({}) with a 3× lower peak learning rate or a decaying schedule; success is {name} falling below {} instead of rising.",
            get(a, "best_value"),
            get(a, "best_value")
        ),
        "grad_blowup.exploding" | "grad_blowup.exploding_nonfinite" => format!(
            "Add gradient clipping at max_norm ≈ {} (the typical {name}) and a learning-rate warm-up; success is {name} staying within a few σ of its mean.",
            get(a, "window_mean").replace('?', "1.0"),
        ),
        "grad_blowup.vanishing" => format!(
            "Switch to non-saturating activations with He initialisation and add normalisation or residual connections; success is {name} staying above {} with the loss falling.",
            a.thresholds.get("vanish_below").map_or("1e-06".into(), fmt_g)
        ),
        "grad_blowup.flat_loss" => format!(
            "Run a learning-rate range test and overfit a single batch first; success is {name} falling below {} within {} epochs.",
            fmt_g(v * 0.9),
            a.thresholds.get("flat_epochs").map_or("5".into(), fmt_g)
        ),
        "overfit" => format!(
            "Keep the epoch {} checkpoint; rerun with early stopping on {name} (patience 3) plus weight decay or dropout (or augmentation, or a smaller model); success is {name} below {} without the gap widening past {}.",
            get(a, "best_epoch"),
            get(a, "best_val"),
            get(a, "gap_at_best")
        ),
        "dead_lr.zero" | "dead_lr.decayed" => format!(
            "Rerun with the schedule stretched over the whole run (T_max / total steps = real optimiser steps); success is {name} still above 1% of its peak ({}) at mid-run.",
            get(a, "peak")
        ),
        "dead_lr.constant" => format!(
            "Rerun with scheduler.step() called each epoch; success is {name} moving off {} as the configured schedule says.",
            fmt_g(v)
        ),
        "stall.no_progress" => "Rerun with DataLoader(timeout=...) and collective timeouts, and a py-spy dump on hang; success is every epoch finishing within the usual time.".to_owned(),
        "stall.process_gone" => "Resume from the last checkpoint with a smaller batch or gradient accumulation if the OOM killer fired; success is a TrainingEnded in the log.".to_owned(),
        "classical.fold_variance" => format!(
            "Repeat with stratified (or grouped / time-series) splits and a more regularised model; success is the std of {name} across folds under 10% of its mean (now {}).",
            get(a, "fold_std")
        ),
        "classical.cv_gap" => format!(
            "Regularise more (shallower trees, larger min_samples_leaf, stronger C/alpha) and tune on the CV score; success is the gap under 10% (now {}%).",
            fmt_g(100.0 * a.observed.get("gap_fraction").unwrap_or(f64::NAN))
        ),
        _ => a.recommended_action.clone(),
    }
}

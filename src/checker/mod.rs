//! The training checker: deterministic rules over an experiment's events, the watch loop that
//! runs them live, killing a broken run, and the audit that re-derives a decision from the log.
//!
//! Architecture invariant: the rules ([`rules`], driven by [`Checker`]) are pure functions of the
//! events they are fed (values, seqs, event times, the configuration) and of the `now` and
//! liveness evidence passed to [`Checker::tick`]. They read no clock and do no I/O, so replaying
//! the same events with the same configuration yields the same alerts, byte for byte. Everything
//! with side effects (following the log, signals, appending) lives in [`watch`] and [`process`].
//!
//! docs/checker.md documents every rule, threshold and default.

pub mod advice;
pub mod audit;
pub mod config;
pub mod process;
pub mod rules;
pub mod stats;
pub mod synth;
pub mod watch;

use std::collections::BTreeSet;

use crate::event::{
    AlertRaised, EpochEnded, Event, ExpId, ExperimentStatus, Metrics, Payload, Severity, Timestamp,
};

pub use self::config::CheckerConfig;
pub use self::rules::RunInfo;
use self::rules::classical::Classical;
use self::rules::dead_lr::{DeadLr, schedule_configured};
use self::rules::divergence::Divergence;
use self::rules::grad::{FlatLoss, Grad};
use self::rules::overfit::Overfit;
pub use self::rules::stall::Liveness;
use self::rules::stall::Stall;
use self::rules::{Eval, Finding};
use self::stats::{Latch, fmt_g};

/// What a metric is to the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Other,
    TrainLoss,
    ValLoss,
    GradNorm,
    LearningRate,
}

impl Role {
    fn monitored(self) -> bool {
        self != Role::Other
    }
}

/// Classify a metric name by the monitor configuration.
pub fn classify(m: &config::MonitorConfig, name: &str) -> Role {
    if m.exclude.iter().any(|x| x == name) {
        return Role::Other;
    }
    if m.grad_norm.iter().any(|x| x == name) {
        return Role::GradNorm;
    }
    if m.learning_rate.iter().any(|x| x == name) {
        return Role::LearningRate;
    }
    let lower = name.to_lowercase();
    let is_loss = m.losses.iter().any(|x| x == name)
        || m.loss_contains
            .iter()
            .any(|w| !w.is_empty() && lower.contains(&w.to_lowercase()));
    if !is_loss {
        return Role::Other;
    }
    if validation_word(m, name).is_some() {
        Role::ValLoss
    } else {
        Role::TrainLoss
    }
}

fn is_sep(c: char) -> bool {
    matches!(c, '_' | '-' | '/' | '.' | ' ' | ':')
}

/// The byte span of the first word of `name` that marks it as validation.
fn validation_word(m: &config::MonitorConfig, name: &str) -> Option<(usize, usize)> {
    let mut start = 0;
    for (i, c) in name.char_indices().chain([(name.len(), '_')]) {
        if is_sep(c) {
            let w = &name[start..i];
            if !w.is_empty() && m.validation_words.iter().any(|v| v.eq_ignore_ascii_case(w)) {
                return Some((start, i));
            }
            start = i + c.len_utf8();
        }
    }
    None
}

/// The training-loss names a validation loss is paired with, in order of preference.
pub fn train_partners(cfg: &CheckerConfig, val: &str) -> Vec<String> {
    if !cfg.overfit.pairs.is_empty() {
        return cfg
            .overfit
            .pairs
            .iter()
            .filter(|[_, v]| v == val)
            .map(|[t, _]| t.clone())
            .collect();
    }
    let Some((s, e)) = validation_word(&cfg.monitor, val) else {
        return vec![];
    };
    let mut out = vec![format!("{}train{}", &val[..s], &val[e..])];
    let rest = &val[e..];
    if let Some(c) = rest.chars().next().filter(|&c| is_sep(c)) {
        out.push(format!("{}{}", &val[..s], &rest[c.len_utf8()..]));
    } else if s > 0 {
        out.push(format!("{}{}", &val[..s - 1], rest));
    }
    out.retain(|n| !n.is_empty());
    out
}

/// Per-metric state.
#[derive(Debug, Clone)]
struct Slot {
    name: String,
    role: Role,
    nan: Latch,
    divergence: Option<Divergence>,
    grad: Option<Grad>,
    flat: Option<FlatLoss>,
    overfit: Option<Overfit>,
    /// For validation losses: the paired training slot, once found.
    partner: Option<usize>,
    /// Slot count when the partner was last looked for.
    partner_checked: usize,
    /// This sample's value, and the sample it came from.
    cur: f64,
    cur_sample: u64,
}

/// The rule engine for one experiment. Feed it the log's events in order ([`Checker::observe`])
/// and, from a timer, the time now ([`Checker::tick`]); it returns the alerts to raise.
#[derive(Debug, Clone)]
pub struct Checker {
    exp: ExpId,
    cfg: CheckerConfig,
    config_seq: Option<u64>,
    slots: Vec<Slot>,
    /// Metric position in the last sample → slot (samples usually repeat their order).
    by_pos: Vec<usize>,
    run: RunInfo,
    lr: DeadLr,
    lr_field_nan: Latch,
    classical: Classical,
    stall: Stall,
    found: Vec<Finding>,
    nan_new: Vec<(String, f64)>,
}

impl Checker {
    pub fn new(experiment: ExpId, cfg: CheckerConfig, config_seq: Option<u64>) -> Checker {
        Checker {
            exp: experiment,
            lr: DeadLr::new(&cfg.dead_lr),
            cfg,
            config_seq,
            slots: Vec::new(),
            by_pos: Vec::new(),
            run: RunInfo::default(),
            lr_field_nan: Latch::default(),
            classical: Classical::default(),
            stall: Stall::default(),
            found: Vec::new(),
            nan_new: Vec::new(),
        }
    }

    pub fn experiment(&self) -> &ExpId {
        &self.exp
    }

    pub fn config(&self) -> &CheckerConfig {
        &self.cfg
    }

    pub fn config_seq(&self) -> Option<u64> {
        self.config_seq
    }

    pub fn run(&self) -> &RunInfo {
        &self.run
    }

    /// Seconds without progress after which the stall rule fires, as things stand.
    pub fn stall_threshold_seconds(&self) -> f64 {
        self.stall.threshold_seconds(&self.cfg.stall)
    }

    /// Feed the next event of the log (events of other experiments are ignored).
    pub fn observe(&mut self, ev: &Event, out: &mut Vec<AlertRaised>) {
        if ev.payload.experiment_id() != Some(&self.exp) {
            return;
        }
        match &ev.payload {
            Payload::EpochEnded(e) => self.on_epoch(ev, e),
            Payload::TrainingStarted(t) if self.run.continued_by(t) => {
                // The trainer's own `training_start` line for the run that `zolog run` started
                // (docs/run.md): it adds what the trainer knows; pid, host and start stay.
                if t.total_epochs.is_some() {
                    self.run.total_epochs = t.total_epochs;
                }
                self.run.schedule_configured |=
                    schedule_configured(&t.config.0, &self.cfg.dead_lr.schedule_keys);
                self.stall
                    .progress(&self.cfg.stall, ev.seq, ev.time, ev.appended, false, false);
            }
            Payload::TrainingStarted(t) => {
                self.run.started_seq = Some(ev.seq);
                self.run.started_time = Some(ev.time);
                self.run.pid = t.pid;
                self.run.host = t.host.clone().or_else(|| ev.source.host.clone());
                self.run.total_epochs = t.total_epochs;
                self.run.schedule_configured =
                    schedule_configured(&t.config.0, &self.cfg.dead_lr.schedule_keys);
                self.run.ended = false;
                self.stall
                    .progress(&self.cfg.stall, ev.seq, ev.time, ev.appended, false, true);
            }
            Payload::CheckpointSaved(c) => {
                self.stall
                    .progress(&self.cfg.stall, ev.seq, ev.time, ev.appended, false, false);
                if let Some(fold) = c.fold
                    && c.reason == crate::event::CheckpointReason::Fold
                {
                    self.check_nonfinite(&c.metrics, ev.seq, c.epoch);
                    if self.cfg.classical.enabled {
                        self.classical.fold(
                            &self.cfg.classical,
                            self.cfg.dedup.rearm_after,
                            fold,
                            &c.metrics,
                            (ev.seq, c.epoch),
                            &mut self.found,
                        );
                    }
                }
            }
            Payload::TrainingEnded(_) | Payload::RunKilled(_) | Payload::ResultRecorded(_) => {
                self.run.ended = true;
            }
            Payload::ExperimentStatusChanged(s) if s.status != ExperimentStatus::Running => {
                self.run.ended = true;
            }
            Payload::ExperimentMinted(_) => self.run.minted = true,
            _ => {}
        }
        self.flush(out);
    }

    /// Evaluate the timer-driven rules at `now` with what is known of the trainer process.
    pub fn tick(&mut self, now: Timestamp, liveness: Liveness, out: &mut Vec<AlertRaised>) {
        if self.cfg.stall.enabled && self.run.active() {
            self.stall
                .tick(&self.cfg.stall, now, liveness, &self.run, &mut self.found);
        }
        self.flush(out);
    }

    fn flush(&mut self, out: &mut Vec<AlertRaised>) {
        for f in self.found.drain(..) {
            out.push(to_alert(&self.exp, self.config_seq, f));
        }
    }

    fn slot_for(&mut self, pos: usize, name: &str) -> usize {
        if let Some(&i) = self.by_pos.get(pos)
            && self.slots[i].name == name
        {
            return i;
        }
        let i = self.slot_named(name);
        if pos < self.by_pos.len() {
            self.by_pos[pos] = i;
        } else if pos == self.by_pos.len() {
            self.by_pos.push(i);
        }
        i
    }

    fn slot_named(&mut self, name: &str) -> usize {
        match self.slots.iter().position(|s| s.name == name) {
            Some(i) => i,
            None => {
                let role = classify(&self.cfg.monitor, name);
                let cfg = &self.cfg;
                let div = (cfg.divergence.enabled
                    && (role == Role::TrainLoss
                        || (role == Role::ValLoss && cfg.divergence.include_validation)))
                    .then(|| Divergence::new(&cfg.divergence, name));
                self.slots.push(Slot {
                    name: name.to_owned(),
                    role,
                    nan: Latch::default(),
                    divergence: div,
                    grad: (cfg.grad_blowup.enabled && role == Role::GradNorm)
                        .then(|| Grad::new(&cfg.grad_blowup)),
                    flat: (cfg.grad_blowup.enabled && role == Role::TrainLoss)
                        .then(FlatLoss::default),
                    overfit: (cfg.overfit.enabled && role == Role::ValLoss)
                        .then(|| Overfit::new(&cfg.overfit)),
                    partner: None,
                    partner_checked: 0,
                    cur: f64::NAN,
                    cur_sample: u64::MAX,
                });
                self.slots.len() - 1
            }
        }
    }

    /// nan_inf over a metric map that is not an epoch (fold checkpoints).
    fn check_nonfinite(&mut self, m: &Metrics, seq: u64, epoch: Option<u64>) {
        if !self.cfg.nan_inf.enabled {
            return;
        }
        let rearm = self.cfg.dedup.rearm_after;
        for (name, v) in m.iter() {
            let i = self.slot_named(name);
            let s = &mut self.slots[i];
            if !s.role.monitored() {
                continue;
            }
            let cond = (!v.is_finite()).then_some(Severity::Stop);
            if s.nan.update(cond, rearm).is_some() {
                self.nan_new.push((name.to_owned(), v));
            }
        }
        self.push_nan(seq, epoch);
    }

    fn push_nan(&mut self, seq: u64, epoch: Option<u64>) {
        if self.nan_new.is_empty() {
            return;
        }
        let observed = Metrics(std::mem::take(&mut self.nan_new));
        let list = observed
            .iter()
            .map(|(n, v)| format!("{n} is {}", fmt_g(v)))
            .collect::<Vec<_>>()
            .join(", ");
        let at = epoch.map_or(String::new(), |e| format!(" at epoch {e}"));
        self.found.insert(
            0,
            Finding {
                rule: "nan_inf",
                severity: Severity::Stop,
                epoch,
                observed,
                thresholds: Metrics::new(),
                evidence: vec![seq],
                message: format!("{list}{at}: training has produced a non-finite value"),
            },
        );
    }

    fn on_epoch(&mut self, ev: &Event, e: &EpochEnded) {
        let seq = ev.seq;
        let epoch = e.epoch;
        let sample = self.run.samples;
        self.run.samples += 1;
        self.run.last_epoch = Some(epoch);
        self.stall
            .progress(&self.cfg.stall, seq, ev.time, ev.appended, true, false);
        let rearm = self.cfg.dedup.rearm_after;
        let at = Eval {
            seq,
            epoch,
            sample,
            rearm,
        };
        let nan_on = self.cfg.nan_inf.enabled;
        // A non-finite training loss or grad norm in this sample (for exploding_nonfinite).
        let mut nonfinite: Option<(usize, f64)> = None;
        let mut lr_metric: Option<(usize, f64)> = None;
        let mut any_val = false;

        for (pos, (name, v)) in e.metrics.iter().enumerate() {
            let i = self.slot_for(pos, name);
            let cfg = &self.cfg;
            let s = &mut self.slots[i];
            s.cur = v;
            s.cur_sample = sample;
            if !s.role.monitored() {
                continue;
            }
            let finite = v.is_finite();
            if nan_on
                && s.nan
                    .update((!finite).then_some(Severity::Stop), rearm)
                    .is_some()
            {
                self.nan_new.push((s.name.clone(), v));
            }
            if !finite && matches!(s.role, Role::TrainLoss | Role::GradNorm) && nonfinite.is_none()
            {
                nonfinite = Some((i, v));
            }
            match s.role {
                Role::TrainLoss | Role::ValLoss => {
                    any_val |= s.role == Role::ValLoss;
                    if finite && let Some(d) = &mut s.divergence {
                        d.observe(&cfg.divergence, &s.name, v, at, &mut self.found);
                    }
                    if let Some(f) = &mut s.flat {
                        f.observe(&cfg.grad_blowup, &s.name, v, seq, epoch, &mut self.found);
                    }
                }
                Role::GradNorm => {
                    if let Some(g) = &mut s.grad {
                        g.observe(&cfg.grad_blowup, &s.name, v, at, &mut self.found);
                    }
                }
                Role::LearningRate => {
                    if lr_metric.is_none() {
                        lr_metric = Some((i, v));
                    }
                }
                Role::Other => {}
            }
        }

        // The learning rate: the EpochEnded field wins over a metric.
        if let Some(lr) = e.learning_rate
            && nan_on
            && self
                .lr_field_nan
                .update((!lr.is_finite()).then_some(Severity::Stop), rearm)
                .is_some()
        {
            self.nan_new.push(("learning_rate".to_owned(), lr));
        }
        if self.cfg.dead_lr.enabled {
            let lr = match (e.learning_rate, lr_metric) {
                (Some(v), _) => Some(("learning_rate", v)),
                (None, Some((i, v))) => Some((self.slots[i].name.as_str(), v)),
                (None, None) => None,
            };
            if let Some((name, v)) = lr {
                self.lr
                    .observe(&self.cfg.dead_lr, name, v, at, &self.run, &mut self.found);
            }
        }

        // Explosions that ran into non-finite values.
        if self.cfg.grad_blowup.enabled {
            let nf = nonfinite.map(|(i, v)| (self.slots[i].name.clone(), v));
            for s in self.slots.iter_mut().filter(|s| s.grad.is_some()) {
                let grad_now = (s.cur_sample == sample).then_some(s.cur);
                if let Some(g) = &mut s.grad {
                    g.after_sample(
                        &self.cfg.grad_blowup,
                        &s.name,
                        grad_now,
                        nf.as_ref().map(|(n, v)| (n.as_str(), *v)),
                        at,
                        &mut self.found,
                    );
                }
            }
        }

        // Overfitting: each validation loss against its training twin in this sample.
        if any_val && self.cfg.overfit.enabled {
            for i in 0..self.slots.len() {
                if self.slots[i].overfit.is_none() || self.slots[i].cur_sample != sample {
                    continue;
                }
                if self.slots[i].partner.is_none()
                    && self.slots[i].partner_checked != self.slots.len()
                {
                    self.slots[i].partner_checked = self.slots.len();
                    let names = train_partners(&self.cfg, &self.slots[i].name);
                    self.slots[i].partner = names
                        .iter()
                        .find_map(|n| self.slots.iter().position(|s| &s.name == n));
                }
                let Some(j) = self.slots[i].partner else {
                    continue;
                };
                if self.slots[j].cur_sample != sample {
                    continue;
                }
                if i == j {
                    continue;
                }
                let (val, train) = if i < j {
                    let (a, b) = self.slots.split_at_mut(j);
                    (&mut a[i], &b[0])
                } else {
                    let (a, b) = self.slots.split_at_mut(i);
                    (&mut b[0], &a[j])
                };
                if let Some(o) = &mut val.overfit {
                    o.observe(
                        &self.cfg.overfit,
                        (&val.name, val.cur),
                        (&train.name, train.cur),
                        at,
                        &mut self.found,
                    );
                }
            }
        }
        self.push_nan(seq, Some(epoch));
    }
}

fn to_alert(exp: &ExpId, config_seq: Option<u64>, f: Finding) -> AlertRaised {
    let subject = f.observed.0.first().map_or("", |(n, _)| n.as_str());
    AlertRaised {
        experiment_id: exp.clone(),
        likely_cause: advice::likely_cause(f.rule).to_owned(),
        recommended_action: advice::recommended_action(f.rule, subject),
        rule: f.rule.to_owned(),
        severity: f.severity,
        epoch: f.epoch,
        observed: f.observed,
        thresholds: f.thresholds,
        evidence_seqs: f.evidence,
        config_seq,
        message: f.message,
    }
}

/// What makes two alerts "the same alert": rule, subject (the first observed entry's name),
/// trigger seq (the last evidence seq) and severity. Watching twice never appends two alerts
/// with the same key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AlertKey {
    pub rule: String,
    pub subject: String,
    pub trigger_seq: Option<u64>,
    pub severity: Severity,
}

impl AlertKey {
    pub fn of(a: &AlertRaised) -> AlertKey {
        AlertKey {
            rule: a.rule.clone(),
            subject: a
                .observed
                .0
                .first()
                .map_or_else(String::new, |(n, _)| n.clone()),
            trigger_seq: a.evidence_seqs.last().copied(),
            severity: a.severity,
        }
    }
}

/// The keys of the alerts already in `events` for `exp`.
pub fn raised_keys<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    exp: &ExpId,
) -> BTreeSet<AlertKey> {
    events
        .into_iter()
        .filter_map(|e| match &e.payload {
            Payload::AlertRaised(a) if &a.experiment_id == exp => Some(AlertKey::of(a)),
            _ => None,
        })
        .collect()
}

/// Evaluate `events` (a log's events, in order) for one experiment: every alert the rules raise,
/// each with the seq of the last event fed before it was raised. Timer-driven rules are not
/// evaluated (call [`Checker::tick`] for those).
pub fn evaluate(
    events: &[Event],
    exp: &ExpId,
    cfg: &CheckerConfig,
    config_seq: Option<u64>,
) -> Vec<(u64, AlertRaised)> {
    let mut c = Checker::new(exp.clone(), cfg.clone(), config_seq);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for ev in events {
        c.observe(ev, &mut buf);
        out.extend(buf.drain(..).map(|a| (ev.seq, a)));
    }
    out
}

/// A short summary of an alert for one line of output.
pub fn one_line(a: &AlertRaised) -> String {
    let sev = match a.severity {
        Severity::Info => "info",
        Severity::Warn => "warn",
        Severity::Stop => "STOP",
    };
    format!("[{sev}] {}: {}", a.rule, a.message)
}

#[cfg(test)]
mod tests;

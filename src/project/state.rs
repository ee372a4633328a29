//! The projection state and its fold: `apply(&mut State, &Event)`.
//!
//! The fold is pure and synchronous: it reads no clock and no file; every time comes from an
//! event. Its memory is bounded by experiments × metrics (and by the notes and ideas people
//! wrote), never by the number of samples: each metric keeps aggregates (count, first, last,
//! min, max, non-finite), not a list of values.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::curve::{ExpCurves, LR_SLOT, Thinned};

use crate::event::codec::EpochView;
use crate::event::{
    AlertRaised, CheckpointReason, CheckpointSaved, Event, ExpId, ExperimentMinted,
    ExperimentStatus, Metrics, NextIdea, NoteSection, OracleTier, Payload, ResultRecorded,
    Severity, Timestamp, TrainingEnded, TrainingStarted,
};

/// Everything the projections are rendered from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// Seq of the last event folded (0: none).
    pub seq: u64,
    /// From the last ProjectInitialized.
    pub project: String,
    /// Time of the last ProjectInitialized: the registry's `created`.
    pub created: Timestamp,
    /// In mint order.
    pub experiments: Vec<Experiment>,
    /// Events that name an experiment never minted (or mint one twice): not folded.
    pub ignored: u64,
    /// Experiment id ([`id_key`]) → position in `experiments`.
    pub(crate) index: HashMap<u64, usize, BuildHasherDefault<KeyHasher>>,
    /// Position of the experiment the last event named: samples come in runs.
    pub(crate) hot: Option<usize>,
    /// What changed since the state was loaded (not persisted).
    pub(crate) dirty: Dirty,
    /// Curve samples of experiments whose curves are not loaded (they live in the curve cache,
    /// `super::shard`), in seq order, to add once those are loaded. Bounded by the events folded
    /// since the checkpoint. Not persisted.
    pub(crate) pending: Vec<Pending>,
    /// Drop curve samples of experiments whose curves are not loaded, instead of keeping them
    /// in `pending`: for commands that only read and never draw.
    pub(crate) ignore_curves: bool,
}

/// A curve sample folded while its experiment's curves were not loaded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pending {
    pub seq: u64,
    /// Position in `State::experiments`.
    pub exp: u32,
    /// Index in the run's metrics, or [`LR_SLOT`].
    pub slot: u32,
    pub epoch: u64,
    pub value: f64,
}

/// Which files need rendering again.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Dirty {
    /// registry.json and CHECKLIST.md.
    pub registry: bool,
    /// Experiments (by index) whose own files may have changed.
    pub experiments: BTreeSet<usize>,
    /// The last one inserted (most events repeat it).
    pub last: Option<usize>,
    /// Experiments (by index) whose curves got samples (folded in, or pending).
    pub curves: BTreeSet<usize>,
    pub last_curve: Option<usize>,
}

/// One experiment: its registry entry and what its run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub id: ExpId,
    pub phase: String,
    pub parent_id: Option<ExpId>,
    pub created: Timestamp,
    pub hypothesis: String,
    pub rationale: String,
    pub status: ExperimentStatus,
    /// Reason given with the last status change.
    pub status_reason: String,
    /// Time of the last status change (a result counts).
    pub status_time: Option<Timestamp>,
    pub result: Option<ResultState>,
    pub next_ideas: Vec<NextIdea>,
    /// Sticky: diagnosis.md exists once anything happened to the experiment after its mint.
    pub has_diagnosis: bool,
    /// Sticky: next.md exists once the experiment had ideas, next notes or checker advice.
    pub has_next: bool,
    /// Everything else: decoded from the checkpoint only when needed.
    pub(crate) detail: Detail,
    /// Its curves, when loaded: always for an experiment minted during this fold (it had no
    /// samples before), otherwise only once read from the curve cache. Never in the checkpoint.
    pub(crate) curves: Option<ExpCurves>,
}

/// What an experiment's run did and what agents and the checker said about it: everything but
/// its registry entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Details {
    pub notes_what_happened: Vec<String>,
    pub notes_mechanism: Vec<String>,
    pub notes_next: Vec<String>,
    pub run: Run,
    /// One aggregate per alert rule, in the order rules first fired.
    pub alerts: Vec<AlertAgg>,
    pub kill: Option<Kill>,
    /// Alerts with an epoch, for plots (bounded: [`Thinned`]).
    pub alert_marks: Thinned<AlertMark>,
}

/// One alert at an epoch: `rule` indexes [`Details::alerts`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertMark {
    pub epoch: u64,
    pub severity: Severity,
    pub rule: u32,
}

/// [`Details`], kept as the checkpoint's bytes until something reads or changes them: listing
/// 10,000 experiments, or folding one sample into one of them, decodes only what it touches, and
/// saving writes untouched details back as they were. The bytes are a range of the checkpoint
/// buffer, shared, not copied. Decoded details are boxed: inline, the empty cell made every
/// [`Experiment`] 1.2 KB, 12 MB of memory touched to list 10,000 of them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Detail {
    raw: Option<(std::sync::Arc<Vec<u8>>, std::ops::Range<usize>)>,
    cell: std::sync::OnceLock<Box<Details>>,
}

impl PartialEq for Detail {
    fn eq(&self, other: &Detail) -> bool {
        self.get() == other.get()
    }
}

impl Detail {
    pub(crate) fn from_raw(buf: &std::sync::Arc<Vec<u8>>, range: std::ops::Range<usize>) -> Detail {
        Detail {
            raw: (!range.is_empty()).then(|| (buf.clone(), range)),
            cell: std::sync::OnceLock::new(),
        }
    }

    fn raw(&self) -> &[u8] {
        self.raw.as_ref().map_or(&[], |(b, r)| &b[r.clone()])
    }

    pub(crate) fn get(&self) -> &Details {
        self.cell.get_or_init(|| {
            let raw = self.raw();
            if raw.is_empty() {
                return Box::default();
            }
            // The checkpoint's CRC and version were checked when it was loaded; bytes that still
            // do not decode are a bug, not damage.
            Box::new(super::wire::decode_details(raw).expect("checked checkpoint details decode"))
        })
    }

    pub(crate) fn get_mut(&mut self) -> &mut Details {
        self.get();
        self.raw = None;
        self.cell.get_mut().expect("initialised above")
    }

    /// The encoded details: the raw bytes if never decoded, else encoded afresh; empty details
    /// are always empty bytes, so equal states encode to equal bytes.
    pub(crate) fn encoded(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.cell.get() {
            None => std::borrow::Cow::Borrowed(self.raw()),
            Some(d) if **d == Details::default() => std::borrow::Cow::Borrowed(&[]),
            Some(d) => std::borrow::Cow::Owned(super::wire::encode_details(d)),
        }
    }
}

/// A recorded result, with `delta_vs_parent` as the registry shows it (computed when not given).
#[derive(Debug, Clone, PartialEq)]
pub struct ResultState {
    pub tier: OracleTier,
    pub metric: String,
    pub value: f64,
    pub delta: Option<f64>,
    pub secondary: Metrics,
    pub shortfalls: Vec<String>,
    pub evaluated_at: Timestamp,
}

/// What the training run(s) of an experiment did, as aggregates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Run {
    /// TrainingStarted events (a resumed run starts again).
    pub starts: u32,
    pub name: Option<String>,
    pub started: Option<Timestamp>,
    pub pid: Option<u32>,
    pub host: Option<String>,
    pub total_epochs: Option<u64>,
    /// EpochEnded events.
    pub epochs: u64,
    pub first_epoch: Option<u64>,
    pub last_epoch: Option<u64>,
    pub last_epoch_time: Option<Timestamp>,
    pub wall_time_seconds: Option<f64>,
    /// In the order the metrics first appeared.
    pub metrics: Vec<MetricAgg>,
    pub lr: Option<LrAgg>,
    pub checkpoints: Checkpoints,
    pub ended: Option<Ended>,
}

/// Aggregates of one metric over every epoch: bounded, whatever the number of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricAgg {
    pub name: String,
    pub count: u64,
    /// (epoch, value) of the first and last samples.
    pub first: (u64, f64),
    pub last: (u64, f64),
    /// Lowest and highest finite values, at the first epoch they were reached.
    pub min: Option<(u64, f64)>,
    pub max: Option<(u64, f64)>,
    /// NaN or ±Inf samples, and the first of them.
    pub nonfinite: u64,
    pub first_nonfinite: Option<(u64, f64)>,
}

impl MetricAgg {
    fn new(name: &str, epoch: u64, v: f64) -> MetricAgg {
        let fin = v.is_finite().then_some((epoch, v));
        MetricAgg {
            name: name.to_owned(),
            count: 1,
            first: (epoch, v),
            last: (epoch, v),
            min: fin,
            max: fin,
            nonfinite: u64::from(!v.is_finite()),
            first_nonfinite: (!v.is_finite()).then_some((epoch, v)),
        }
    }

    fn add(&mut self, epoch: u64, v: f64) {
        self.count += 1;
        self.last = (epoch, v);
        if v.is_finite() {
            if self.min.is_none_or(|(_, m)| v < m) {
                self.min = Some((epoch, v));
            }
            if self.max.is_none_or(|(_, m)| v > m) {
                self.max = Some((epoch, v));
            }
        } else {
            self.nonfinite += 1;
            if self.first_nonfinite.is_none() {
                self.first_nonfinite = Some((epoch, v));
            }
        }
    }

    /// A loss-like metric (its name contains `loss`): lower is better.
    pub fn is_loss(&self) -> bool {
        is_loss_name(&self.name)
    }
}

/// Lower is better for names containing `loss` (any case), as the reference's best_metrics.
pub fn is_loss_name(name: &str) -> bool {
    name.to_ascii_lowercase().contains("loss")
}

/// The learning rate over the run.
#[derive(Debug, Clone, PartialEq)]
pub struct LrAgg {
    pub first: (u64, f64),
    pub last: (u64, f64),
    pub min: f64,
    pub max: f64,
}

/// Checkpoints taken: counts by reason, and the latest and best one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoints {
    pub count: u64,
    /// Indexed by [`reason_index`].
    pub by_reason: [u64; 6],
    pub last: Option<Ckpt>,
    pub last_best: Option<Ckpt>,
    /// Epochs of the checkpoints that had one, for plots (bounded: [`Thinned`]).
    pub ticks: Thinned<(u64, CheckpointReason)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ckpt {
    pub epoch: Option<u64>,
    pub path: String,
    pub reason: CheckpointReason,
}

pub const REASONS: [CheckpointReason; 6] = [
    CheckpointReason::Best,
    CheckpointReason::Last,
    CheckpointReason::Periodic,
    CheckpointReason::Fold,
    CheckpointReason::Manual,
    CheckpointReason::SearchState,
];

pub fn reason_index(r: CheckpointReason) -> usize {
    REASONS.iter().position(|&x| x == r).unwrap_or(0)
}

pub fn reason_name(r: CheckpointReason) -> &'static str {
    match r {
        CheckpointReason::Best => "best",
        CheckpointReason::Last => "last",
        CheckpointReason::Periodic => "periodic",
        CheckpointReason::Fold => "fold",
        CheckpointReason::Manual => "manual",
        CheckpointReason::SearchState => "search_state",
    }
}

/// How the last run ended (TrainingEnded).
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub time: Timestamp,
    pub epoch: Option<u64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub wall_time_seconds: Option<f64>,
    pub metrics: Metrics,
}

/// The alerts of one rule: how many, and the most severe one (the first at that severity).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertAgg {
    pub rule: String,
    pub count: u64,
    pub first_seq: u64,
    pub first_epoch: Option<u64>,
    pub last_epoch: Option<u64>,
    pub severity: Severity,
    pub seq: u64,
    pub epoch: Option<u64>,
    pub observed: Metrics,
    pub message: String,
    pub likely_cause: String,
    pub recommended_action: String,
}

/// The last RunKilled.
#[derive(Debug, Clone, PartialEq)]
pub struct Kill {
    pub time: Timestamp,
    pub seq: u64,
    pub pid: Option<u32>,
    pub signal: String,
    pub by: String,
    pub reason: String,
    pub alert_seqs: Vec<u64>,
    /// RunKilled events so far.
    pub count: u32,
    /// The last epoch that had ended when the run was killed.
    pub epoch: Option<u64>,
}

impl Experiment {
    fn minted(m: &ExperimentMinted, time: Timestamp, curves: bool) -> Experiment {
        Experiment {
            id: m.experiment_id.clone(),
            phase: m.phase.clone(),
            parent_id: m.parent_id.clone(),
            created: time,
            hypothesis: m.hypothesis.clone(),
            rationale: m.rationale.clone(),
            status: ExperimentStatus::Running,
            status_reason: String::new(),
            status_time: None,
            result: None,
            next_ideas: Vec::new(),
            has_diagnosis: false,
            has_next: false,
            detail: Detail::default(),
            curves: curves.then(ExpCurves::default),
        }
    }

    /// Its run, notes, alerts and kill.
    pub fn details(&self) -> &Details {
        self.detail.get()
    }

    pub(crate) fn details_mut(&mut self) -> &mut Details {
        self.detail.get_mut()
    }

    /// Its curves, if loaded (see [`crate::project::current_with_curves`]).
    pub fn curves(&self) -> Option<&ExpCurves> {
        self.curves.as_ref()
    }

    /// The registry's `next_ideas` strings: `label: idea`, or the idea alone.
    pub fn next_idea_strings(&self) -> Vec<String> {
        self.next_ideas.iter().map(idea_string).collect()
    }
}

/// `exp-004: idea` for a labelled idea, the idea alone otherwise.
pub fn idea_string(i: &NextIdea) -> String {
    match &i.label {
        Some(l) => format!("{l}: {}", i.idea),
        None => i.idea.clone(),
    }
}

impl State {
    pub fn new() -> State {
        State::default()
    }

    pub fn get(&self, id: &ExpId) -> Option<&Experiment> {
        self.position(id).map(|i| &self.experiments[i])
    }

    pub fn position(&self, id: &ExpId) -> Option<usize> {
        self.index.get(&id_key(id.as_str())?).copied()
    }

    /// Position of the experiment `id`, trying the last one looked up first.
    fn find(&mut self, id: &str) -> Option<usize> {
        if let Some(h) = self.hot
            && self.experiments[h].id.as_str() == id
        {
            return Some(h);
        }
        let i = *self.index.get(&id_key(id)?)?;
        self.hot = Some(i);
        Some(i)
    }

    /// The id the next mint gets: highest number + 1, zero-padded (`exp-001` first).
    pub fn next_id(&self) -> Option<ExpId> {
        let max = self.experiments.iter().map(|e| e.id.number()).max();
        match max {
            None => Some(ExpId::from_number(1)),
            Some(n) if n >= 999_999_999 => None,
            Some(n) => Some(ExpId::from_number(n + 1)),
        }
    }

    /// Ancestors of `id`, root first, `id` last (stops at an unknown parent or a cycle). Linear
    /// in the length of the chain: a chain of 10,000 generations is a plain loop, not 50 million
    /// comparisons.
    pub fn lineage(&self, id: &ExpId) -> Vec<&Experiment> {
        let mut chain = Vec::new();
        let mut seen = vec![false; self.experiments.len()];
        let mut cur = self.position(id);
        while let Some(i) = cur {
            if std::mem::replace(&mut seen[i], true) {
                break;
            }
            let e = &self.experiments[i];
            chain.push(e);
            cur = e.parent_id.as_ref().and_then(|p| self.position(p));
        }
        chain.reverse();
        chain
    }

    pub(crate) fn rebuild_index(&mut self) {
        let mut index =
            HashMap::with_capacity_and_hasher(self.experiments.len(), Default::default());
        for (i, e) in self.experiments.iter().enumerate() {
            index.insert(id_key(e.id.as_str()).expect("an ExpId is exp-NNN"), i);
        }
        self.index = index;
        self.hot = None;
    }

    /// Forget what changed (after the files were written).
    pub(crate) fn clear_dirty(&mut self) {
        self.dirty = Dirty::default();
    }

    /// Mark everything as changed (for a rebuild).
    pub(crate) fn mark_all_dirty(&mut self) {
        self.dirty.registry = true;
        self.dirty.experiments = (0..self.experiments.len()).collect();
    }

    fn touch(&mut self, i: usize) {
        if self.dirty.last != Some(i) {
            self.dirty.experiments.insert(i);
            self.dirty.last = Some(i);
        }
        self.experiments[i].has_diagnosis = true;
    }
}

/// An experiment id as a number, for the index: `exp-` and 1 to 9 digits are their value and
/// their count (`exp-7` and `exp-007` differ), so the index holds no string per experiment.
/// `None` for anything that is not an id (no experiment has it).
pub(crate) fn id_key(id: &str) -> Option<u64> {
    let digits = ExpId::digits(id.as_bytes())?;
    let n = digits
        .iter()
        .fold(0u64, |n, &b| n * 10 + u64::from(b - b'0'));
    Some((digits.len() as u64) << 32 | n)
}

/// Hashes an [`id_key`]: one multiplication (Fibonacci hashing) spreads consecutive numbers over
/// every bit. The keys come from the log, not from an adversary.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Fold one event into the state. Pure: same events in the same order, same state.
pub fn apply(state: &mut State, ev: &Event) {
    state.seq = ev.seq;
    let p = &ev.payload;
    if let Payload::ProjectInitialized(pi) = p {
        state.project = pi.project.clone();
        state.created = ev.time;
        state.dirty.registry = true;
        return;
    }
    if let Payload::ExperimentMinted(m) = p {
        let key = id_key(m.experiment_id.as_str()).expect("an ExpId is exp-NNN");
        if state.index.contains_key(&key) {
            state.ignored += 1;
            return;
        }
        let i = state.experiments.len();
        let curves = !state.ignore_curves;
        state
            .experiments
            .push(Experiment::minted(m, ev.time, curves));
        state.index.insert(key, i);
        state.dirty.registry = true;
        state.dirty.experiments.insert(i);
        return;
    }
    let Some(id) = p.experiment_id() else {
        return;
    };
    let Some(i) = state.find(id.as_str()) else {
        state.ignored += 1;
        return;
    };
    match p {
        Payload::ProjectInitialized(_) | Payload::ExperimentMinted(_) => unreachable!(),
        Payload::ExperimentStatusChanged(s) => {
            let e = &mut state.experiments[i];
            e.status = s.status;
            e.status_reason = s.reason.clone();
            e.status_time = Some(ev.time);
            state.dirty.registry = true;
            state.touch(i);
        }
        Payload::ResultRecorded(r) => {
            let delta = r.primary_metric.delta_vs_parent.or_else(|| {
                // The reference: value − parent's value, when the parent has a result on the
                // same metric, as the state is at this point of the log.
                let e = &state.experiments[i];
                let parent = state.position(e.parent_id.as_ref()?)?;
                let pr = state.experiments[parent].result.as_ref()?;
                (pr.metric == r.primary_metric.name).then_some(r.primary_metric.value - pr.value)
            });
            let e = &mut state.experiments[i];
            e.result = Some(result_state(r, delta));
            e.status = ExperimentStatus::Complete;
            e.status_reason = String::new();
            e.status_time = Some(ev.time);
            state.dirty.registry = true;
            state.touch(i);
        }
        Payload::NextIdeasRecorded(n) => {
            let e = &mut state.experiments[i];
            e.next_ideas = n.ideas.clone();
            e.has_next = true;
            state.dirty.registry = true;
            state.dirty.experiments.insert(i);
        }
        Payload::NoteAdded(n) => {
            let e = &mut state.experiments[i];
            match n.section {
                NoteSection::WhatHappened => {
                    e.details_mut().notes_what_happened.push(n.text.clone())
                }
                NoteSection::Mechanism => e.details_mut().notes_mechanism.push(n.text.clone()),
                NoteSection::Next => {
                    e.details_mut().notes_next.push(n.text.clone());
                    e.has_next = true;
                }
            }
            state.touch(i);
        }
        Payload::TrainingStarted(t) => {
            let e = &mut state.experiments[i];
            let running = e.status == ExperimentStatus::Running;
            training_started(&mut e.details_mut().run, t, ev.time, running);
            state.touch(i);
        }
        Payload::EpochEnded(e) => {
            let metrics = e.metrics.0.iter().map(|(n, v)| (n.as_str(), *v));
            state.epoch_ended(
                i,
                ev.seq,
                e.epoch,
                metrics,
                e.learning_rate,
                e.wall_time_seconds,
                ev.time,
            );
        }
        Payload::CheckpointSaved(c) => {
            checkpoint_saved(&mut state.experiments[i].details_mut().run.checkpoints, c);
            state.touch(i);
        }
        Payload::TrainingEnded(t) => {
            training_ended(&mut state.experiments[i].details_mut().run, t, ev.time);
            state.touch(i);
        }
        Payload::CheckerConfigured(_) | Payload::IngestAdvanced(_) => {}
        Payload::AlertRaised(a) => {
            let e = &mut state.experiments[i];
            let d = e.details_mut();
            alert_raised(&mut d.alerts, a, ev.seq);
            if let Some(epoch) = a.epoch {
                let rule = d.alerts.iter().position(|x| x.rule == a.rule).unwrap_or(0) as u32;
                d.alert_marks.add(AlertMark {
                    epoch,
                    severity: a.severity,
                    rule,
                });
            }
            if !a.recommended_action.trim().is_empty() {
                e.has_next = true;
            }
            state.touch(i);
        }
        Payload::RunKilled(k) => {
            let e = &mut state.experiments[i];
            let d = e.details_mut();
            let count = d.kill.as_ref().map_or(0, |k| k.count) + 1;
            d.kill = Some(Kill {
                time: ev.time,
                seq: ev.seq,
                pid: k.pid,
                signal: k.signal.clone(),
                by: k.by.clone(),
                reason: k.reason.clone(),
                alert_seqs: k.alert_seqs.clone(),
                count,
                epoch: d.run.last_epoch,
            });
            e.has_next = true;
            state.touch(i);
        }
    }
}

fn result_state(r: &ResultRecorded, delta: Option<f64>) -> ResultState {
    ResultState {
        tier: r.oracle_tier,
        metric: r.primary_metric.name.clone(),
        value: r.primary_metric.value,
        delta,
        secondary: r.secondary_metrics.clone(),
        shortfalls: r.shortfalls.clone(),
        evaluated_at: r.evaluated_at,
    }
}

/// `running`: the experiment's status is `running` (a killed, failed or complete run has ended
/// even without a TrainingEnded).
fn training_started(run: &mut Run, t: &TrainingStarted, time: Timestamp, running: bool) {
    if running
        && run.starts > 0
        && run.ended.is_none()
        && run.pid.is_some()
        && (t.pid.is_none() || t.pid == run.pid)
    {
        // The second half of `zolog run`'s TrainingStarted pair (docs/run.md): the trainer's own
        // `training_start` line adds its name, planned epochs and configuration to the run that
        // `zolog run` started with the pid; it is not another start.
        if t.experiment_name.is_some() {
            run.name = t.experiment_name.clone();
        }
        if t.total_epochs.is_some() {
            run.total_epochs = t.total_epochs;
        }
        return;
    }
    run.starts += 1;
    if t.experiment_name.is_some() {
        run.name = t.experiment_name.clone();
    }
    run.started = Some(time);
    run.pid = t.pid;
    run.host = t.host.clone();
    if t.total_epochs.is_some() {
        run.total_epochs = t.total_epochs;
    }
    run.ended = None;
}

/// Fold an EpochEnded that was decoded as a borrowed view (the fast path of a rebuild): the same
/// as [`apply`] on the fully decoded event.
pub fn apply_epoch(state: &mut State, seq: u64, time: Timestamp, e: &EpochView<'_>) {
    state.seq = seq;
    let Some(i) = state.find(e.experiment_id) else {
        state.ignored += 1;
        return;
    };
    let metrics = e.metrics.iter().copied();
    state.epoch_ended(
        i,
        seq,
        e.epoch,
        metrics,
        e.learning_rate,
        e.wall_time_seconds,
        time,
    );
}

impl State {
    #[allow(clippy::too_many_arguments)]
    fn epoch_ended<'m>(
        &mut self,
        i: usize,
        seq: u64,
        epoch: u64,
        metrics: impl Iterator<Item = (&'m str, f64)>,
        learning_rate: Option<f64>,
        wall_time_seconds: Option<f64>,
        time: Timestamp,
    ) {
        // Where the curve samples go: into the experiment's curves when they are loaded, into
        // the pending samples when they are not, nowhere when the state ignores curves.
        let e = &mut self.experiments[i];
        let run = &mut e.detail.get_mut().run;
        let (lr, wall) = (learning_rate, wall_time_seconds);
        match &mut e.curves {
            Some(c) => {
                let sink = |slot, name: &str, epoch, v| {
                    // The run's metrics and a curve set kept since the mint grow together.
                    let added = c.add(slot, name, epoch, v);
                    debug_assert!(added, "curve slot {slot} out of step");
                };
                epoch_ended(run, sink, epoch, metrics, lr, wall, time);
            }
            None if self.ignore_curves => {
                epoch_ended(run, |_, _, _, _| {}, epoch, metrics, lr, wall, time)
            }
            None => {
                let pending = &mut self.pending;
                let sink = |slot, _: &str, epoch, value| {
                    pending.push(Pending {
                        seq,
                        exp: i as u32,
                        slot,
                        epoch,
                        value,
                    })
                };
                epoch_ended(run, sink, epoch, metrics, lr, wall, time);
            }
        }
        if self.dirty.last_curve != Some(i) {
            self.dirty.curves.insert(i);
            self.dirty.last_curve = Some(i);
        }
        self.touch(i);
    }
}

/// Fold an epoch into the run's aggregates; each curve sample goes to `sink` as (slot, metric
/// name, epoch, value), slot [`LR_SLOT`] for the learning rate.
fn epoch_ended<'m>(
    run: &mut Run,
    mut sink: impl FnMut(u32, &'m str, u64, f64),
    epoch: u64,
    metrics: impl Iterator<Item = (&'m str, f64)>,
    learning_rate: Option<f64>,
    wall_time_seconds: Option<f64>,
    time: Timestamp,
) {
    run.epochs += 1;
    if run.first_epoch.is_none() {
        run.first_epoch = Some(epoch);
    }
    run.last_epoch = Some(epoch);
    run.last_epoch_time = Some(time);
    if wall_time_seconds.is_some() {
        run.wall_time_seconds = wall_time_seconds;
    }
    for (k, (name, v)) in metrics.enumerate() {
        // Trainers give the same metrics in the same order: try the same slot first.
        let slot = match run.metrics.get(k) {
            Some(m) if m.name == name => Some(k),
            _ => run.metrics.iter().position(|m| m.name == name),
        };
        let s = match slot {
            Some(s) => {
                run.metrics[s].add(epoch, v);
                s
            }
            None => {
                run.metrics.push(MetricAgg::new(name, epoch, v));
                run.metrics.len() - 1
            }
        };
        sink(s as u32, name, epoch, v);
    }
    if let Some(lr) = learning_rate {
        match &mut run.lr {
            Some(a) => {
                a.last = (epoch, lr);
                a.min = a.min.min(lr);
                a.max = a.max.max(lr);
            }
            None => {
                run.lr = Some(LrAgg {
                    first: (epoch, lr),
                    last: (epoch, lr),
                    min: lr,
                    max: lr,
                })
            }
        }
        sink(LR_SLOT, "", epoch, lr);
    }
}

fn checkpoint_saved(c: &mut Checkpoints, s: &CheckpointSaved) {
    c.count += 1;
    c.by_reason[reason_index(s.reason)] += 1;
    let ck = Ckpt {
        epoch: s.epoch,
        path: s.path.clone(),
        reason: s.reason,
    };
    if let Some(e) = s.epoch {
        c.ticks.add((e, s.reason));
    }
    if s.reason == CheckpointReason::Best {
        c.last_best = Some(ck.clone());
    }
    c.last = Some(ck);
}

fn training_ended(run: &mut Run, t: &TrainingEnded, time: Timestamp) {
    if t.wall_time_seconds.is_some() {
        run.wall_time_seconds = t.wall_time_seconds;
    }
    // A second TrainingEnded of the same run (the trainer's `training_end` line, then `zolog
    // run`'s record of the exit status) completes the first: what it leaves out is kept.
    let prev = run.ended.take();
    let prev = prev.as_ref();
    run.ended = Some(Ended {
        time,
        epoch: t.epoch.or(prev.and_then(|p| p.epoch)),
        exit_code: t.exit_code.or(prev.and_then(|p| p.exit_code)),
        signal: t.signal.or(prev.and_then(|p| p.signal)),
        wall_time_seconds: t
            .wall_time_seconds
            .or(prev.and_then(|p| p.wall_time_seconds)),
        metrics: match prev {
            Some(p) if t.metrics.is_empty() => p.metrics.clone(),
            _ => t.metrics.clone(),
        },
    });
}

fn alert_raised(alerts: &mut Vec<AlertAgg>, a: &AlertRaised, seq: u64) {
    match alerts.iter_mut().find(|x| x.rule == a.rule) {
        Some(x) => {
            x.count += 1;
            x.last_epoch = a.epoch.or(x.last_epoch);
            if a.severity > x.severity {
                x.severity = a.severity;
                x.seq = seq;
                x.epoch = a.epoch;
                x.observed = a.observed.clone();
                x.message = a.message.clone();
                x.likely_cause = a.likely_cause.clone();
                x.recommended_action = a.recommended_action.clone();
            }
        }
        None => alerts.push(AlertAgg {
            rule: a.rule.clone(),
            count: 1,
            first_seq: seq,
            first_epoch: a.epoch,
            last_epoch: a.epoch,
            severity: a.severity,
            seq,
            epoch: a.epoch,
            observed: a.observed.clone(),
            message: a.message.clone(),
            likely_cause: a.likely_cause.clone(),
            recommended_action: a.recommended_action.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{PrimaryMetric, Source, SourceKind};

    fn ev(seq: u64, payload: Payload) -> Event {
        Event {
            seq,
            time: Timestamp(seq as i64 * 1_000_000_000),
            appended: None,
            source: Source {
                kind: SourceKind::Cli,
                pid: None,
                host: None,
            },
            payload,
        }
    }

    fn id(s: &str) -> ExpId {
        ExpId::parse(s).unwrap()
    }

    fn mint(n: &str, parent: Option<&str>) -> Payload {
        Payload::ExperimentMinted(ExperimentMinted {
            experiment_id: id(n),
            parent_id: parent.map(id),
            phase: "phase_4".into(),
            hypothesis: String::new(),
            rationale: String::new(),
        })
    }

    fn result(n: &str, metric: &str, value: f64, delta: Option<f64>) -> Payload {
        Payload::ResultRecorded(ResultRecorded {
            experiment_id: id(n),
            oracle_tier: OracleTier::Fail,
            primary_metric: PrimaryMetric {
                name: metric.into(),
                value,
                delta_vs_parent: delta,
            },
            secondary_metrics: Metrics::new(),
            shortfalls: vec![],
            evaluated_at: Timestamp(0),
        })
    }

    fn fold(ps: Vec<Payload>) -> State {
        let mut s = State::new();
        for (i, p) in ps.into_iter().enumerate() {
            apply(&mut s, &ev(i as u64 + 1, p));
        }
        s
    }

    fn delta(s: &State, n: &str) -> Option<f64> {
        s.get(&id(n)).unwrap().result.as_ref().unwrap().delta
    }

    #[test]
    fn delta_vs_parent_is_computed_from_the_state_at_that_point() {
        let s = fold(vec![
            mint("exp-001", None),
            mint("exp-002", Some("exp-001")),
            mint("exp-003", Some("exp-001")),
            mint("exp-004", Some("exp-001")),
            // exp-002's result comes before its parent's: no delta.
            result("exp-002", "mae", 0.5, None),
            result("exp-001", "mae", 0.75, None),
            result("exp-003", "mae", 0.25, None),
            // Different metric: no delta. Given delta: kept.
            result("exp-004", "rmse", 0.25, None),
        ]);
        assert_eq!(delta(&s, "exp-001"), None);
        assert_eq!(delta(&s, "exp-002"), None);
        assert_eq!(delta(&s, "exp-003"), Some(-0.5));
        assert_eq!(delta(&s, "exp-004"), None);
        let s = fold(vec![
            mint("exp-001", None),
            mint("exp-002", Some("exp-001")),
            result("exp-001", "mae", 0.75, None),
            result("exp-002", "mae", 0.5, Some(9.0)),
        ]);
        assert_eq!(delta(&s, "exp-002"), Some(9.0));
        assert_eq!(
            s.get(&id("exp-002")).unwrap().status,
            ExperimentStatus::Complete
        );
    }

    #[test]
    fn unknown_ids_and_second_mints_are_ignored_and_counted() {
        let s = fold(vec![
            mint("exp-001", None),
            mint("exp-001", Some("exp-009")),
            result("exp-002", "mae", 1.0, None),
        ]);
        assert_eq!(s.experiments.len(), 1);
        assert_eq!(s.experiments[0].parent_id, None);
        assert_eq!(s.ignored, 2);
    }

    #[test]
    fn metric_aggregates_keep_best_first_epoch_and_non_finite() {
        let mut m = MetricAgg::new("val_loss", 0, 1.0);
        m.add(1, 0.5);
        m.add(2, 0.5);
        m.add(3, f64::NAN);
        m.add(4, f64::INFINITY);
        assert_eq!(m.min, Some((1, 0.5)));
        assert_eq!(m.max, Some((0, 1.0)));
        assert_eq!(m.count, 5);
        assert_eq!(m.nonfinite, 2);
        assert_eq!(m.first_nonfinite.map(|x| x.0), Some(3));
        assert_eq!(m.last.0, 4);
        assert!(m.is_loss());
    }

    #[test]
    fn next_id_is_highest_plus_one() {
        let s = fold(vec![mint("exp-007", None), mint("exp-002", None)]);
        assert_eq!(s.next_id().unwrap().as_str(), "exp-008");
        assert_eq!(State::new().next_id().unwrap().as_str(), "exp-001");
        let s = fold(vec![mint("exp-1000", None)]);
        assert_eq!(s.next_id().unwrap().as_str(), "exp-1001");
    }
}

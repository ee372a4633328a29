//! Experiment commands as library calls: validate against the folded state, append events, refresh
//! the projections. Data flows one way: the state comes from the fold, never from the files.

pub mod import;
pub mod parse;

use crate::error::{Error, Result};
use crate::event::{
    ExpId, ExperimentMinted, ExperimentStatus, ExperimentStatusChanged, Metrics, NewEvent,
    NextIdea, NextIdeasRecorded, NoteAdded, NoteSection, OracleTier, Payload, PrimaryMetric,
    ResultRecorded, Source, SourceKind, Timestamp,
};
use crate::log::Appended;
use crate::project::{self, State};
use crate::store::Store;

/// Fold the log to its end, let `decide` check the request against that state and say what to
/// append, and append it only if the log has not moved since (compare-and-append on the next seq:
/// under the writer lock, or through `zolog serve` while one holds it); when it has moved, fold
/// again and decide again. So check-then-append is atomic (two mints never get the same id), with
/// or without a server. Then refresh the projections from the state already folded. Returns the
/// state the projection files then show.
pub fn append_checked<T>(
    store: &Store,
    mut decide: impl FnMut(&State) -> Result<(Vec<NewEvent>, T)>,
) -> Result<(Option<Appended>, T, State)> {
    const TRIES: usize = 64;
    let mut appender = store.appender();
    for _ in 0..TRIES {
        let current = project::load(store)?;
        let (events, out) = decide(current.state())?;
        if events.is_empty() {
            let (_, current) = project::refresh_from(store, current)?;
            return Ok((None, out, current.into_state()));
        }
        let a = match appender.append_if(current.next_seq(), &events) {
            Ok(a) => a,
            Err(Error::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        };
        return match project::refresh_from(store, current) {
            Ok((_, current)) => Ok((Some(a), out, current.into_state())),
            Err(e) => Err(Error::Invalid(format!(
                "appended seq {}..={}, but updating the projection files failed: {e}; the log is \
                 intact: the next command, or `zolog rebuild`, brings the files up to date",
                a.first_seq, a.last_seq
            ))),
        };
    }
    Err(Error::Invalid(format!(
        "other writers appended before every one of {TRIES} attempts; try again"
    )))
}

fn cli_event(payload: Payload) -> NewEvent {
    NewEvent::now(Source::this_process(SourceKind::Cli), payload)
}

/// The experiment, or the reference's error for an unknown id.
pub fn require<'a>(state: &'a State, id: &ExpId) -> Result<&'a project::Experiment> {
    state
        .get(id)
        .ok_or_else(|| Error::UnknownExperiment(id.clone()))
}

/// What `zolog exp mint` asks for.
#[derive(Debug, Clone, Default)]
pub struct Mint {
    pub parent: Option<ExpId>,
    pub phase: Option<String>,
    pub hypothesis: String,
    pub rationale: String,
}

/// Mint the next experiment (highest number + 1); returns its id.
pub fn mint(store: &Store, m: Mint) -> Result<ExpId> {
    let (_, id, _) = append_checked(store, |state| {
        if let Some(p) = &m.parent {
            require(state, p)?;
        }
        let id = state.next_id().ok_or_else(|| {
            Error::Invalid("no experiment number left (exp-999999999 exists)".into())
        })?;
        let ev = cli_event(Payload::ExperimentMinted(ExperimentMinted {
            experiment_id: id.clone(),
            parent_id: m.parent.clone(),
            phase: m.phase.clone().unwrap_or_else(|| "phase_4".to_owned()),
            hypothesis: m.hypothesis.clone(),
            rationale: m.rationale.clone(),
        }));
        Ok((vec![ev], id))
    })?;
    Ok(id)
}

/// A result as given on the command line or read from result.md.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultInput {
    pub tier: OracleTier,
    pub metric: String,
    pub value: f64,
    pub delta: Option<f64>,
    pub secondary: Metrics,
    pub shortfalls: Vec<String>,
    pub evaluated_at: Option<Timestamp>,
}

/// Record the oracle's result (the experiment becomes `complete`). Returns the delta vs parent
/// as the registry now shows it.
pub fn record_result(store: &Store, id: &ExpId, r: ResultInput) -> Result<Option<f64>> {
    let (_, (), state) = append_checked(store, |state| {
        require(state, id)?;
        let ev = cli_event(Payload::ResultRecorded(ResultRecorded {
            experiment_id: id.clone(),
            oracle_tier: r.tier,
            primary_metric: PrimaryMetric {
                name: r.metric.clone(),
                value: r.value,
                delta_vs_parent: r.delta,
            },
            secondary_metrics: r.secondary.clone(),
            shortfalls: r.shortfalls.clone(),
            evaluated_at: r.evaluated_at.unwrap_or_else(Timestamp::now),
        }));
        Ok((vec![ev], ()))
    })?;
    Ok(require(&state, id)?.result.as_ref().and_then(|r| r.delta))
}

pub fn set_status(store: &Store, id: &ExpId, status: ExperimentStatus, reason: &str) -> Result<()> {
    append_checked(store, |state| {
        require(state, id)?;
        let ev = cli_event(Payload::ExperimentStatusChanged(ExperimentStatusChanged {
            experiment_id: id.clone(),
            status,
            reason: reason.to_owned(),
        }));
        Ok((vec![ev], ()))
    })
    .map(drop)
}

pub fn set_next(store: &Store, id: &ExpId, ideas: Vec<NextIdea>) -> Result<()> {
    append_checked(store, |state| {
        require(state, id)?;
        let ev = cli_event(Payload::NextIdeasRecorded(NextIdeasRecorded {
            experiment_id: id.clone(),
            ideas: ideas.clone(),
        }));
        Ok((vec![ev], ()))
    })
    .map(drop)
}

pub fn add_note(store: &Store, id: &ExpId, section: NoteSection, text: &str) -> Result<()> {
    if text.trim().is_empty() {
        return Err(Error::Invalid("a note needs some text".into()));
    }
    append_checked(store, |state| {
        require(state, id)?;
        let ev = cli_event(Payload::NoteAdded(NoteAdded {
            experiment_id: id.clone(),
            section,
            text: text.to_owned(),
        }));
        Ok((vec![ev], ()))
    })
    .map(drop)
}

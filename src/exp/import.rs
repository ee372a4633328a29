//! `zolog import registry.json`: a Python-layer registry becomes events, so a team's history
//! enters the log. Idempotent: what the log already says is not appended again.
//!
//! Per experiment, in the file's order: ExperimentMinted (event time = `created`), then
//! NextIdeasRecorded, ResultRecorded (event time = `evaluated_at`) and ExperimentStatusChanged as
//! needed to reach the file's values. Results without a `delta_vs_parent` are appended before
//! their parents' (deepest first), so that the fold, which computes a missing delta from the
//! parent's result at that point of the log, leaves it null as the file has it. The registry's
//! `project` and `created` come from a ProjectInitialized appended at `created` when they differ.
//! Everything is one batch: an import is appended whole or not at all.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use super::parse::idea_from_string;
use crate::error::{Error, Result};
use crate::event::{
    ExpId, ExperimentMinted, ExperimentStatus, ExperimentStatusChanged, Metrics, NewEvent,
    NextIdeasRecorded, OracleTier, Payload, PrimaryMetric, ProjectInitialized, ResultRecorded,
    Source, SourceKind, Timestamp, json,
};
use crate::project::registry::{ARTIFACTS_ROOT, ExperimentOut};
use crate::project::{self, State};
use crate::store::Store;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryIn {
    schema_version: u32,
    #[serde(default)]
    project: String,
    created: Timestamp,
    #[serde(default)]
    experiments: Vec<ExpIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpIn {
    id: ExpId,
    phase: String,
    #[serde(default)]
    parent_id: Option<ExpId>,
    created: Timestamp,
    #[serde(default)]
    hypothesis: String,
    #[serde(default)]
    rationale: String,
    #[serde(default = "running")]
    status: ExperimentStatus,
    #[serde(default)]
    result: Option<ResultIn>,
    #[serde(default)]
    next_ideas: Vec<String>,
    #[serde(default)]
    artifacts_dir: String,
}

fn running() -> ExperimentStatus {
    ExperimentStatus::Running
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultIn {
    oracle_tier: OracleTier,
    primary_metric: PrimaryIn,
    #[serde(default)]
    secondary_metrics: BTreeMapOrdered,
    #[serde(default)]
    shortfalls: Vec<String>,
    evaluated_at: Timestamp,
}

/// pydantic writes a non-finite float as `null`: read `null` back as NaN.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrimaryIn {
    name: String,
    #[serde(with = "json::opt_float")]
    value: Option<f64>,
    #[serde(default, with = "json::opt_float")]
    delta_vs_parent: Option<f64>,
}

/// Secondary metrics in file order, `null` as NaN.
#[derive(Default)]
struct BTreeMapOrdered(Metrics);

impl<'de> Deserialize<'de> for BTreeMapOrdered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = BTreeMapOrdered;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of metric name to number or null")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                #[derive(Deserialize)]
                struct F(#[serde(with = "json::opt_float")] Option<f64>);
                let mut m = Metrics::new();
                while let Some((k, F(v))) = a.next_entry::<String, F>()? {
                    m.insert(k, v.unwrap_or(f64::NAN));
                }
                Ok(BTreeMapOrdered(m))
            }
        }
        d.deserialize_map(V)
    }
}

/// What an import did (or would do).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportReport {
    pub experiments_in_file: usize,
    pub minted: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub events: usize,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Whether registry.json, rebuilt from the log, now equals the imported file byte for byte.
    pub reproduces_file: bool,
    /// What will not be reproduced exactly, and why.
    pub warnings: Vec<String>,
}

fn event_at(time: Timestamp, payload: Payload) -> NewEvent {
    NewEvent::at(time, Source::this_process(SourceKind::Cli), payload)
}

fn result_event(id: &ExpId, r: &ResultIn) -> NewEvent {
    event_at(
        r.evaluated_at,
        Payload::ResultRecorded(ResultRecorded {
            experiment_id: id.clone(),
            oracle_tier: r.oracle_tier,
            primary_metric: PrimaryMetric {
                name: r.primary_metric.name.clone(),
                value: r.primary_metric.value.unwrap_or(f64::NAN),
                delta_vs_parent: r.primary_metric.delta_vs_parent,
            },
            secondary_metrics: r.secondary_metrics.0.clone(),
            shortfalls: r.shortfalls.clone(),
            evaluated_at: r.evaluated_at,
        }),
    )
}

fn entry_json(e: &project::Experiment) -> serde_json::Value {
    serde_json::to_value(ExperimentOut::new(e)).expect("experiment serializes")
}

/// Import `path` into the store.
pub fn import(store: &Store, path: &Path) -> Result<ImportReport> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| Error::InvalidInput {
        file: path.to_path_buf(),
        line: 1,
        reason: format!("not UTF-8: {e}"),
    })?;
    let de = &mut serde_json::Deserializer::from_str(text);
    let reg: RegistryIn = serde_path_to_error::deserialize(de).map_err(|e| {
        let line = e.inner().line();
        Error::InvalidInput {
            file: path.to_path_buf(),
            line,
            reason: format!(
                "not a registry.json (schema_version 1): at {}: {}",
                e.path(),
                e.inner()
            ),
        }
    })?;
    if reg.schema_version != 1 {
        return Err(Error::InvalidInput {
            file: path.to_path_buf(),
            line: 1,
            reason: format!(
                "registry schema_version {} is not supported (zolog imports version 1)",
                reg.schema_version
            ),
        });
    }
    let mut seen = HashMap::new();
    for e in &reg.experiments {
        if seen.insert(e.id.clone(), ()).is_some() {
            return Err(Error::InvalidInput {
                file: path.to_path_buf(),
                line: 1,
                reason: format!("experiment {} appears twice", e.id),
            });
        }
    }
    let (appended, mut report, state) = super::append_checked(store, |state| plan(state, &reg))?;
    if let Some(a) = appended {
        report.first_seq = Some(a.first_seq);
        report.last_seq = Some(a.last_seq);
    }
    report.reproduces_file = project::registry::render(&state) == bytes;
    for e in &reg.experiments {
        if let Some(have) = state.get(&e.id) {
            let want = file_entry_json(text, &e.id);
            if want.as_ref() != Some(&entry_json(have)) {
                report.warnings.push(format!(
                    "{}: the registry shows it differently after import",
                    e.id
                ));
            }
        }
    }
    Ok(report)
}

/// The experiment's entry as the file has it, as a JSON value (for comparison).
fn file_entry_json(text: &str, id: &ExpId) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("experiments")?
        .as_array()?
        .iter()
        .find(|e| e.get("id").and_then(|i| i.as_str()) == Some(id.as_str()))
        .cloned()
}

/// The events that bring the state in line with the file.
fn plan(state: &State, reg: &RegistryIn) -> Result<(Vec<NewEvent>, ImportReport)> {
    let mut report = ImportReport {
        experiments_in_file: reg.experiments.len(),
        ..ImportReport::default()
    };
    let mut events = Vec::new();
    if state.project != reg.project || state.created.to_micros_z() != reg.created.to_micros_z() {
        events.push(event_at(
            reg.created,
            Payload::ProjectInitialized(ProjectInitialized {
                project: reg.project.clone(),
            }),
        ));
    }
    // Depth of each experiment in the file's lineage (for the order of results).
    let parents: HashMap<&ExpId, Option<&ExpId>> = reg
        .experiments
        .iter()
        .map(|e| (&e.id, e.parent_id.as_ref()))
        .collect();
    let depth = |id: &ExpId| {
        let mut d = 0usize;
        let mut cur = parents.get(id).copied().flatten();
        while let Some(p) = cur {
            d += 1;
            if d > parents.len() {
                break;
            }
            cur = parents.get(p).copied().flatten();
        }
        d
    };
    let mut mints = Vec::new();
    // (depth, file index) → result event, for results without a delta; file order for the rest.
    let mut null_delta: BTreeMap<(std::cmp::Reverse<usize>, usize), NewEvent> = BTreeMap::new();
    let mut given_delta = Vec::new();
    let mut statuses = Vec::new();
    for (i, e) in reg.experiments.iter().enumerate() {
        let want_dir = format!("{ARTIFACTS_ROOT}/{}", e.id);
        if !e.artifacts_dir.is_empty() && e.artifacts_dir != want_dir {
            report.warnings.push(format!(
                "{}: artifacts_dir {:?} becomes {want_dir:?} (zolog keeps experiments there)",
                e.id, e.artifacts_dir
            ));
        }
        let existing = state.get(&e.id);
        let mut changed = false;
        match existing {
            None => {
                mints.push(event_at(
                    e.created,
                    Payload::ExperimentMinted(ExperimentMinted {
                        experiment_id: e.id.clone(),
                        parent_id: e.parent_id.clone(),
                        phase: e.phase.clone(),
                        hypothesis: e.hypothesis.clone(),
                        rationale: e.rationale.clone(),
                    }),
                ));
                report.minted += 1;
            }
            Some(have) => {
                let same = have.phase == e.phase
                    && have.parent_id == e.parent_id
                    && have.hypothesis == e.hypothesis
                    && have.rationale == e.rationale
                    && have.created.to_micros_z() == e.created.to_micros_z();
                if !same {
                    return Err(Error::Invalid(format!(
                        "{} already exists in the log with a different phase, parent, creation time, hypothesis or rationale; refusing to import over it (nothing was appended)",
                        e.id
                    )));
                }
            }
        }
        let have_ideas = existing.map(|h| h.next_idea_strings()).unwrap_or_default();
        if have_ideas != e.next_ideas {
            mints.push(event_at(
                e.created,
                Payload::NextIdeasRecorded(NextIdeasRecorded {
                    experiment_id: e.id.clone(),
                    ideas: e.next_ideas.iter().map(|s| idea_from_string(s)).collect(),
                }),
            ));
            changed = true;
        }
        // Status the fold will have after the result events.
        let mut status_after = existing.map_or(ExperimentStatus::Running, |h| h.status);
        if let Some(r) = &e.result {
            let have_json = existing
                .and_then(|h| h.result.as_ref().map(|_| entry_json(h)))
                .and_then(|v| v.get("result").cloned());
            let want_json = serde_json::to_value(RenderResult(r)).ok();
            if have_json != want_json {
                let ev = result_event(&e.id, r);
                if r.primary_metric.delta_vs_parent.is_none() {
                    null_delta.insert((std::cmp::Reverse(depth(&e.id)), i), ev);
                } else {
                    given_delta.push(ev);
                }
                status_after = ExperimentStatus::Complete;
                changed = true;
            }
        } else if existing.is_some_and(|h| h.result.is_some()) {
            report.warnings.push(format!(
                "{}: the log has a result and the file has none; the log's result stays",
                e.id
            ));
        }
        if status_after != e.status {
            statuses.push(event_at(
                e.result.as_ref().map_or(e.created, |r| r.evaluated_at),
                Payload::ExperimentStatusChanged(ExperimentStatusChanged {
                    experiment_id: e.id.clone(),
                    status: e.status,
                    reason: "imported from registry.json".into(),
                }),
            ));
            changed = true;
        }
        if existing.is_some() {
            if changed {
                report.updated += 1;
            } else {
                report.unchanged += 1;
            }
        }
    }
    events.extend(mints);
    events.extend(null_delta.into_values());
    events.extend(given_delta);
    events.extend(statuses);
    report.events = events.len();
    Ok((events, report))
}

/// A file result as the registry renders it (to compare with the log's).
struct RenderResult<'a>(&'a ResultIn);

impl serde::Serialize for RenderResult<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let r = self.0;
        let fin = |v: Option<f64>| v.filter(|x| x.is_finite());
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("oracle_tier", r.oracle_tier.as_str())?;
        let pm = serde_json::json!({
            "name": r.primary_metric.name,
            "value": fin(r.primary_metric.value),
            "delta_vs_parent": fin(r.primary_metric.delta_vs_parent),
        });
        m.serialize_entry("primary_metric", &pm)?;
        let sec: serde_json::Map<String, serde_json::Value> = r
            .secondary_metrics
            .0
            .iter()
            .map(|(k, v)| (k.to_owned(), serde_json::json!(fin(Some(v)))))
            .collect();
        m.serialize_entry("secondary_metrics", &sec)?;
        m.serialize_entry("shortfalls", &r.shortfalls)?;
        m.serialize_entry("evaluated_at", &project::registry::datetime(r.evaluated_at))?;
        m.end()
    }
}

//! registry.json: the reference's schema_version 1, field for field and byte for byte.
//!
//! The reference writes it with pydantic's `model_dump_json(indent=2)`: 2-space pretty JSON,
//! fields in declaration order, UTF-8 unescaped, floats in their shortest round-trip form
//! (`1e-5`, `100000.0`), non-finite floats as `null`, and no trailing newline. serde_json's
//! pretty printer writes exactly that for the same values.

use serde::Serialize;
use serde::ser::SerializeMap;

use super::state::{Experiment, ResultState, State};
use crate::event::{Metrics, Timestamp};

/// Where the reference keeps experiment folders, relative to the project directory.
pub const ARTIFACTS_ROOT: &str = ".zo/experiments";

#[derive(Serialize)]
struct RegistryOut<'a> {
    schema_version: u32,
    project: &'a str,
    created: String,
    experiments: Vec<ExperimentOut<'a>>,
}

/// One experiment as registry.json (and `--json` output) shows it.
#[derive(Serialize)]
pub struct ExperimentOut<'a> {
    id: &'a str,
    phase: &'a str,
    parent_id: Option<&'a str>,
    created: String,
    hypothesis: &'a str,
    rationale: &'a str,
    status: &'static str,
    result: Option<ResultOut<'a>>,
    next_ideas: Vec<String>,
    artifacts_dir: String,
}

#[derive(Serialize)]
struct ResultOut<'a> {
    oracle_tier: &'static str,
    primary_metric: PrimaryOut<'a>,
    secondary_metrics: MetricsOut<'a>,
    shortfalls: &'a [String],
    evaluated_at: String,
}

#[derive(Serialize)]
struct PrimaryOut<'a> {
    name: &'a str,
    value: Option<f64>,
    delta_vs_parent: Option<f64>,
}

/// Name → float in the order given; non-finite values as `null` (pydantic's default).
struct MetricsOut<'a>(&'a Metrics);

impl Serialize for MetricsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0.iter() {
            m.serialize_entry(k, &finite(v))?;
        }
        m.end()
    }
}

/// A registry datetime as pydantic writes a UTC datetime: microseconds and `Z`
/// (`2026-11-24T09:53:33.639907Z`), and no fraction at all when the microseconds are zero
/// (`2026-11-24T10:00:00Z`).
pub fn datetime(t: Timestamp) -> String {
    let s = t.to_micros_z();
    match s.strip_suffix(".000000Z") {
        Some(whole) => format!("{whole}Z"),
        None => s,
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

impl<'a> ExperimentOut<'a> {
    pub fn new(e: &'a Experiment) -> ExperimentOut<'a> {
        ExperimentOut {
            id: e.id.as_str(),
            phase: &e.phase,
            parent_id: e.parent_id.as_ref().map(|p| p.as_str()),
            created: datetime(e.created),
            hypothesis: &e.hypothesis,
            rationale: &e.rationale,
            status: e.status.as_str(),
            result: e.result.as_ref().map(ResultOut::new),
            next_ideas: e.next_idea_strings(),
            artifacts_dir: format!("{ARTIFACTS_ROOT}/{}", e.id),
        }
    }
}

impl<'a> ResultOut<'a> {
    fn new(r: &'a ResultState) -> ResultOut<'a> {
        ResultOut {
            oracle_tier: r.tier.as_str(),
            primary_metric: PrimaryOut {
                name: &r.metric,
                value: finite(r.value),
                delta_vs_parent: r.delta.and_then(finite),
            },
            secondary_metrics: MetricsOut(&r.secondary),
            shortfalls: &r.shortfalls,
            evaluated_at: datetime(r.evaluated_at),
        }
    }
}

/// The bytes of registry.json.
pub fn render(state: &State) -> Vec<u8> {
    let out = RegistryOut {
        schema_version: 1,
        project: &state.project,
        created: datetime(state.created),
        experiments: state.experiments.iter().map(ExperimentOut::new).collect(),
    };
    let mut buf = Vec::with_capacity(512 * (state.experiments.len() + 1));
    serde_json::to_writer_pretty(&mut buf, &out).expect("registry serializes");
    buf
}

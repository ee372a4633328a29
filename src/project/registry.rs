//! registry.json: the reference's schema_version 1, field for field and byte for byte.
//!
//! The reference writes it with pydantic's `model_dump_json(indent=2)`: 2-space pretty JSON,
//! fields in declaration order, UTF-8 unescaped, floats in their shortest round-trip form
//! (`1e-5`, `100000.0`), non-finite floats as `null`, and no trailing newline. serde_json's
//! pretty printer writes exactly that for the same values.

use serde::Serialize;
use serde::ser::SerializeMap;

use super::state::{Experiment, ResultState, State};
use crate::event::{ExpId, Metrics, NextIdea, Timestamp};

/// Where the reference keeps experiment folders, relative to the project directory.
pub const ARTIFACTS_ROOT: &str = ".zo/experiments";

#[derive(Serialize)]
struct RegistryOut<'a> {
    schema_version: u32,
    project: &'a str,
    created: Datetime,
    experiments: ExperimentsOut<'a>,
}

/// Experiments as registry.json (and `exp list --json`) shows them, serialized one by one as
/// they are borrowed: nothing is allocated per experiment.
pub struct ExperimentsOut<'a>(pub &'a [Experiment]);

impl Serialize for ExperimentsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(ExperimentOut::new))
    }
}

/// One experiment as registry.json (and `--json` output) shows it.
#[derive(Serialize)]
pub struct ExperimentOut<'a> {
    id: &'a str,
    phase: &'a str,
    parent_id: Option<&'a str>,
    created: Datetime,
    hypothesis: &'a str,
    rationale: &'a str,
    status: &'static str,
    result: Option<ResultOut<'a>>,
    next_ideas: IdeasOut<'a>,
    artifacts_dir: ArtifactsDir<'a>,
}

#[derive(Serialize)]
struct ResultOut<'a> {
    oracle_tier: &'static str,
    primary_metric: PrimaryOut<'a>,
    secondary_metrics: MetricsOut<'a>,
    shortfalls: &'a [String],
    evaluated_at: Datetime,
}

/// The registry's `next_ideas` strings ([`super::state::idea_string`]), written as they are
/// serialized.
struct IdeasOut<'a>(&'a [NextIdea]);

impl Serialize for IdeasOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Idea<'a>(&'a NextIdea);
        impl Serialize for Idea<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match &self.0.label {
                    Some(l) => s.collect_str(&format_args!("{l}: {}", self.0.idea)),
                    None => s.serialize_str(&self.0.idea),
                }
            }
        }
        s.collect_seq(self.0.iter().map(Idea))
    }
}

/// `.zo/experiments/<id>`.
struct ArtifactsDir<'a>(&'a ExpId);

impl Serialize for ArtifactsDir<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{ARTIFACTS_ROOT}/{}", self.0))
    }
}

/// A registry [`datetime`], serialized from the stack.
#[derive(Debug, Clone, Copy)]
pub struct Datetime(pub Timestamp);

impl Serialize for Datetime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        with_datetime(self.0, |t| s.serialize_str(t))
    }
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
    with_datetime(t, str::to_owned)
}

/// Call `f` with [`datetime`]'s text, made on the stack.
fn with_datetime<R>(t: Timestamp, f: impl FnOnce(&str) -> R) -> R {
    let micros = t.micros_z();
    match micros.as_str().strip_suffix(".000000Z") {
        Some(whole) => {
            let mut b = [b'Z'; 20];
            b[..whole.len()].copy_from_slice(whole.as_bytes());
            f(std::str::from_utf8(&b[..whole.len() + 1]).expect("ASCII"))
        }
        None => f(micros.as_str()),
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
            created: Datetime(e.created),
            hypothesis: &e.hypothesis,
            rationale: &e.rationale,
            status: e.status.as_str(),
            result: e.result.as_ref().map(ResultOut::new),
            next_ideas: IdeasOut(&e.next_ideas),
            artifacts_dir: ArtifactsDir(&e.id),
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
            evaluated_at: Datetime(r.evaluated_at),
        }
    }
}

/// The bytes of registry.json.
pub fn render(state: &State) -> Vec<u8> {
    let out = RegistryOut {
        schema_version: 1,
        project: &state.project,
        created: Datetime(state.created),
        experiments: ExperimentsOut(&state.experiments),
    };
    let mut buf = Vec::with_capacity(512 * (state.experiments.len() + 1));
    serde_json::to_writer_pretty(&mut buf, &out).expect("registry serializes");
    buf
}

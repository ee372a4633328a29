//! Events: one envelope {seq, time, appended, source, payload} and the past-tense payloads.
//!
//! The JSON shapes here are the edge format (`zolog append`, `zolog log`, schemas/); the log stores
//! the bincode form produced by [`codec`]. Variants of [`Payload`] are only ever appended, never
//! reordered or changed: the binary form identifies them by position (docs/format.md).

pub mod codec;
pub mod json;
mod time;

use std::fmt;

use bincode::{Decode, Encode};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use self::json::{Float, Metrics};
pub use self::time::{MicrosZ, Timestamp};

/// An event as read back from the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Position in the log: gap-free, increasing, assigned on append.
    pub seq: u64,
    /// When it happened (a trainer's own timestamp, for instance), UTC.
    pub time: Timestamp,
    /// When it was appended, where that differs from `time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appended: Option<Timestamp>,
    pub source: Source,
    pub payload: Payload,
}

/// An event before it has a place in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub time: Timestamp,
    pub appended: Option<Timestamp>,
    pub source: Source,
    pub payload: Payload,
}

impl NewEvent {
    /// An event that happens now.
    pub fn now(source: Source, payload: Payload) -> NewEvent {
        NewEvent {
            time: Timestamp::now(),
            appended: None,
            source,
            payload,
        }
    }

    /// An event that happened at `time` (a trainer's timestamp) and is appended now.
    pub fn at(time: Timestamp, source: Source, payload: Payload) -> NewEvent {
        let now = Timestamp::now();
        NewEvent {
            time,
            appended: (now != time).then_some(now),
            source,
            payload,
        }
    }
}

/// Who appended an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub kind: SourceKind,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub host: Option<String>,
}

impl Source {
    /// This process, as `kind`.
    pub fn this_process(kind: SourceKind) -> Source {
        Source {
            kind,
            pid: Some(std::process::id()),
            host: Some(hostname()),
        }
    }
}

/// The host name of this machine.
pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Encode, Decode,
)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Cli,
    Trainer,
    Checker,
    Agent,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Cli => "cli",
            SourceKind::Trainer => "trainer",
            SourceKind::Checker => "checker",
            SourceKind::Agent => "agent",
        })
    }
}

/// An experiment id: `exp-` followed by 1 to 9 ASCII digits (`exp-001`). Anything else, and in
/// particular anything that could escape `.zo/experiments` (`../x`, `/abs`, empty, NUL), is
/// refused wherever an id enters zolog: JSON, the command line, and decoding from the log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ExpId(String);

impl ExpId {
    pub const PATTERN: &'static str = "^exp-[0-9]{1,9}$";

    pub fn parse(s: &str) -> Result<ExpId, IdError> {
        match Self::digits(s.as_bytes()) {
            Some(_) => Ok(ExpId(s.to_owned())),
            None => Err(IdError(s.to_owned())),
        }
    }

    /// The digits of `s` if it is an id ([`Self::PATTERN`]: `exp-` and 1 to 9 ASCII digits),
    /// `None` if it is not: the one statement of the rule, for the parser, the codec's
    /// allocation-free check and the projection index.
    pub fn digits(s: &[u8]) -> Option<&[u8]> {
        s.strip_prefix(b"exp-")
            .filter(|d| !d.is_empty() && d.len() <= 9 && d.iter().all(u8::is_ascii_digit))
    }

    /// The id for number `n`, zero-padded to 3 digits as the reference numbers them.
    pub fn from_number(n: u32) -> ExpId {
        ExpId(format!("exp-{n:03}"))
    }

    pub fn number(&self) -> u32 {
        self.0[4..].parse().unwrap_or(0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ExpId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ExpId::parse(s)
    }
}

/// An experiment id that is not `exp-` followed by digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid experiment id {0:?}: expected `exp-` followed by 1 to 9 digits, e.g. exp-001")]
pub struct IdError(pub String);

impl<'de> Deserialize<'de> for ExpId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ExpId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for ExpId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ExpId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": ExpId::PATTERN,
            "description": "Experiment id: `exp-` and 1 to 9 digits, zero-padded to 3 (exp-001)."
        })
    }
}

/// Arbitrary JSON (a trainer's config, a checker configuration).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Json(pub serde_json::Value);

/// Call macro `$m` with every payload kind (variant and struct name), in declaration order:
/// the one list code that handles each kind by name expands from.
#[macro_export]
macro_rules! with_payload_kinds {
    ($m:ident) => {
        $m!(
            ProjectInitialized,
            ExperimentMinted,
            ExperimentStatusChanged,
            ResultRecorded,
            NextIdeasRecorded,
            NoteAdded,
            TrainingStarted,
            EpochEnded,
            CheckpointSaved,
            TrainingEnded,
            CheckerConfigured,
            AlertRaised,
            RunKilled,
            IngestAdvanced,
        )
    };
}

/// Every kind of event, in past tense. Append new variants at the end only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(tag = "type")]
pub enum Payload {
    ProjectInitialized(ProjectInitialized),
    ExperimentMinted(ExperimentMinted),
    ExperimentStatusChanged(ExperimentStatusChanged),
    ResultRecorded(ResultRecorded),
    NextIdeasRecorded(NextIdeasRecorded),
    NoteAdded(NoteAdded),
    TrainingStarted(TrainingStarted),
    EpochEnded(EpochEnded),
    CheckpointSaved(CheckpointSaved),
    TrainingEnded(TrainingEnded),
    CheckerConfigured(CheckerConfigured),
    AlertRaised(AlertRaised),
    RunKilled(RunKilled),
    IngestAdvanced(IngestAdvanced),
}

impl Payload {
    /// The variant name, as in JSON's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::ProjectInitialized(_) => "ProjectInitialized",
            Payload::ExperimentMinted(_) => "ExperimentMinted",
            Payload::ExperimentStatusChanged(_) => "ExperimentStatusChanged",
            Payload::ResultRecorded(_) => "ResultRecorded",
            Payload::NextIdeasRecorded(_) => "NextIdeasRecorded",
            Payload::NoteAdded(_) => "NoteAdded",
            Payload::TrainingStarted(_) => "TrainingStarted",
            Payload::EpochEnded(_) => "EpochEnded",
            Payload::CheckpointSaved(_) => "CheckpointSaved",
            Payload::TrainingEnded(_) => "TrainingEnded",
            Payload::CheckerConfigured(_) => "CheckerConfigured",
            Payload::AlertRaised(_) => "AlertRaised",
            Payload::RunKilled(_) => "RunKilled",
            Payload::IngestAdvanced(_) => "IngestAdvanced",
        }
    }

    /// Every variant name, in declaration order.
    pub const KINDS: [&'static str; 14] = [
        "ProjectInitialized",
        "ExperimentMinted",
        "ExperimentStatusChanged",
        "ResultRecorded",
        "NextIdeasRecorded",
        "NoteAdded",
        "TrainingStarted",
        "EpochEnded",
        "CheckpointSaved",
        "TrainingEnded",
        "CheckerConfigured",
        "AlertRaised",
        "RunKilled",
        "IngestAdvanced",
    ];

    /// The experiment the event belongs to, if any.
    pub fn experiment_id(&self) -> Option<&ExpId> {
        match self {
            Payload::ProjectInitialized(_) => None,
            Payload::ExperimentMinted(p) => Some(&p.experiment_id),
            Payload::ExperimentStatusChanged(p) => Some(&p.experiment_id),
            Payload::ResultRecorded(p) => Some(&p.experiment_id),
            Payload::NextIdeasRecorded(p) => Some(&p.experiment_id),
            Payload::NoteAdded(p) => Some(&p.experiment_id),
            Payload::TrainingStarted(p) => Some(&p.experiment_id),
            Payload::EpochEnded(p) => Some(&p.experiment_id),
            Payload::CheckpointSaved(p) => Some(&p.experiment_id),
            Payload::TrainingEnded(p) => Some(&p.experiment_id),
            Payload::CheckerConfigured(p) => Some(&p.experiment_id),
            Payload::AlertRaised(p) => Some(&p.experiment_id),
            Payload::RunKilled(p) => Some(&p.experiment_id),
            Payload::IngestAdvanced(p) => Some(&p.experiment_id),
        }
    }
}

/// `zolog init`: the store exists. The event's time is the project's creation time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct ProjectInitialized {
    pub project: String,
}

/// A new experiment; the event's time is its `created` time. Status starts as `running`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct ExperimentMinted {
    pub experiment_id: ExpId,
    #[serde(default)]
    pub parent_id: Option<ExpId>,
    #[serde(default = "default_phase")]
    pub phase: String,
    #[serde(default)]
    pub hypothesis: String,
    #[serde(default)]
    pub rationale: String,
}

fn default_phase() -> String {
    "phase_4".to_owned()
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Encode, Decode,
)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentStatus {
    Running,
    Complete,
    Failed,
    Aborted,
}

impl ExperimentStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            ExperimentStatus::Running => "running",
            ExperimentStatus::Complete => "complete",
            ExperimentStatus::Failed => "failed",
            ExperimentStatus::Aborted => "aborted",
        }
    }
}

impl std::str::FromStr for ExperimentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "running" => Ok(ExperimentStatus::Running),
            "complete" => Ok(ExperimentStatus::Complete),
            "failed" => Ok(ExperimentStatus::Failed),
            "aborted" => Ok(ExperimentStatus::Aborted),
            _ => Err(format!(
                "unknown status {s:?}: expected running, complete, failed or aborted"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct ExperimentStatusChanged {
    pub experiment_id: ExpId,
    pub status: ExperimentStatus,
    #[serde(default)]
    pub reason: String,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Encode, Decode,
)]
#[serde(rename_all = "snake_case")]
pub enum OracleTier {
    MustPass,
    ShouldPass,
    CouldPass,
    Fail,
}

impl OracleTier {
    pub fn as_str(&self) -> &'static str {
        match self {
            OracleTier::MustPass => "must_pass",
            OracleTier::ShouldPass => "should_pass",
            OracleTier::CouldPass => "could_pass",
            OracleTier::Fail => "fail",
        }
    }
}

impl std::str::FromStr for OracleTier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "must_pass" => Ok(OracleTier::MustPass),
            "should_pass" => Ok(OracleTier::ShouldPass),
            "could_pass" => Ok(OracleTier::CouldPass),
            "fail" => Ok(OracleTier::Fail),
            _ => Err(format!(
                "unknown oracle tier {s:?}: expected must_pass, should_pass, could_pass or fail"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct PrimaryMetric {
    pub name: String,
    #[serde(with = "json::float")]
    #[schemars(with = "Float")]
    pub value: f64,
    /// As given; when absent, projections compute it from the parent's result as the reference
    /// does.
    #[serde(default, with = "json::opt_float")]
    #[schemars(with = "Option<Float>")]
    pub delta_vs_parent: Option<f64>,
}

/// The oracle's verdict; sets the experiment `complete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct ResultRecorded {
    pub experiment_id: ExpId,
    pub oracle_tier: OracleTier,
    pub primary_metric: PrimaryMetric,
    #[serde(default)]
    pub secondary_metrics: Metrics,
    #[serde(default)]
    pub shortfalls: Vec<String>,
    pub evaluated_at: Timestamp,
}

/// One next-experiment idea. `label` is the `## exp-NNN` heading it stood under in next.md, if
/// any; `details` are the further bullets of that section (e.g. `Rationale: ...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct NextIdea {
    #[serde(default)]
    pub label: Option<String>,
    pub idea: String,
    #[serde(default)]
    pub details: Vec<String>,
}

/// Replaces the experiment's list of next ideas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct NextIdeasRecorded {
    pub experiment_id: ExpId,
    pub ideas: Vec<NextIdea>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Encode, Decode,
)]
#[serde(rename_all = "kebab-case")]
pub enum NoteSection {
    WhatHappened,
    Mechanism,
    Next,
}

/// Agent narrative for diagnosis.md and next.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct NoteAdded {
    pub experiment_id: ExpId,
    pub section: NoteSection,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct TrainingStarted {
    pub experiment_id: ExpId,
    #[serde(default)]
    pub experiment_name: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub total_epochs: Option<u64>,
    #[serde(default)]
    pub config: Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct EpochEnded {
    pub experiment_id: ExpId,
    /// Counts from 0.
    pub epoch: u64,
    #[serde(default)]
    pub step: Option<u64>,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default, with = "json::opt_float")]
    #[schemars(with = "Option<Float>")]
    pub learning_rate: Option<f64>,
    #[serde(default, with = "json::opt_float")]
    #[schemars(with = "Option<Float>")]
    pub wall_time_seconds: Option<f64>,
    #[serde(default, with = "json::opt_float")]
    #[schemars(with = "Option<Float>")]
    pub gpu_memory_mb: Option<f64>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Encode, Decode,
)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointReason {
    Best,
    Last,
    Periodic,
    /// After a cross-validation fold (classical ML).
    Fold,
    Manual,
    /// Hyper-parameter search state (e.g. an Optuna study) persisted after a trial.
    SearchState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSaved {
    pub experiment_id: ExpId,
    #[serde(default)]
    pub epoch: Option<u64>,
    pub path: String,
    pub reason: CheckpointReason,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// `blake3:<hex>` of the file's bytes when it was recorded.
    #[serde(default)]
    pub content_hash: Option<String>,
    /// Resumable-state keys the checkpoint holds (`model_state_dict`, `optimizer_state_dict`...).
    #[serde(default)]
    pub state_keys: Vec<String>,
    /// Cross-validation fold, for `fold` checkpoints.
    #[serde(default)]
    pub fold: Option<u32>,
    /// Search trial number, for `search_state` checkpoints.
    #[serde(default)]
    pub trial: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct TrainingEnded {
    pub experiment_id: ExpId,
    #[serde(default)]
    pub epoch: Option<u64>,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default, with = "json::opt_float")]
    #[schemars(with = "Option<Float>")]
    pub wall_time_seconds: Option<f64>,
    /// The trainer process's exit code, when zolog ran it.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that ended it, when it died of one.
    #[serde(default)]
    pub signal: Option<i32>,
}

/// The checker's configuration (rules, thresholds, monitored metrics), appended before it
/// evaluates anything, so an audit can replay with exactly what was in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct CheckerConfigured {
    pub experiment_id: ExpId,
    pub config: Json,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
    Encode,
    Decode,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warn,
    Stop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct AlertRaised {
    pub experiment_id: ExpId,
    pub rule: String,
    pub severity: Severity,
    #[serde(default)]
    pub epoch: Option<u64>,
    /// The values the rule saw.
    #[serde(default)]
    pub observed: Metrics,
    /// The thresholds it compared them with.
    #[serde(default)]
    pub thresholds: Metrics,
    /// Seqs of the samples that are the evidence.
    #[serde(default)]
    pub evidence_seqs: Vec<u64>,
    /// Seq of the CheckerConfigured in force.
    #[serde(default)]
    pub config_seq: Option<u64>,
    pub message: String,
    #[serde(default)]
    pub likely_cause: String,
    #[serde(default)]
    pub recommended_action: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct RunKilled {
    pub experiment_id: ExpId,
    #[serde(default)]
    pub pid: Option<u32>,
    /// Seqs of the alerts that caused it (empty when a person killed it).
    #[serde(default)]
    pub alert_seqs: Vec<u64>,
    /// `SIGTERM`, or `SIGKILL` when the grace period ran out.
    pub signal: String,
    /// `checker` or `user`.
    pub by: String,
    pub reason: String,
}

/// How far `zolog ingest` has read a trainer's file; appended in the same batch as the events
/// those lines produced, so ingest is exactly-once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct IngestAdvanced {
    pub experiment_id: ExpId,
    pub path: String,
    /// Identity of the file read (device and inode), to detect a replaced file.
    pub file_id: String,
    /// Byte offset just after the last complete line consumed.
    pub offset: u64,
    /// Lines consumed so far (the next line's number is `line + 1`).
    pub line: u64,
    /// Bad lines skipped so far.
    #[serde(default)]
    pub rejected: u64,
}

#[cfg(test)]
mod tests {
    use super::Payload;

    #[test]
    fn the_kind_list_macro_names_every_kind_in_order() {
        macro_rules! names {
            ($($k:ident),* $(,)?) => {
                [$(stringify!($k)),*]
            };
        }
        let listed: &[&str] = &crate::with_payload_kinds!(names);
        assert_eq!(listed, &Payload::KINDS[..]);
    }
}

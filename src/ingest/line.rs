//! One `metrics.jsonl` line (zo-reference.md, "metrics.jsonl") → one event payload.
//!
//! The mapping is a pure function of the line's bytes: ingesting the same file twice yields the
//! same events (apart from the `appended` time), which is what lets the exactly-once tests compare
//! the log with the file. Nothing is looked up outside the line (checkpoint files are not hashed
//! here: that would record the bytes the file has *now*, not the ones the line talks about).

use std::borrow::Cow;
use std::path::Path;

use serde::Deserialize;

use crate::event::json::{normalize_nonfinite, opt_float};
use crate::event::{
    CheckpointReason, CheckpointSaved, EpochEnded, ExpId, Json, Metrics, Payload, Timestamp,
    TrainingEnded, TrainingStarted,
};

/// The four line kinds a trainer writes.
pub const LINE_KINDS: [&str; 4] = [
    "training_start",
    "epoch_end",
    "checkpoint_saved",
    "training_end",
];

/// A line as the platform's `ZOTrainingCallback` writes it. Unknown fields are ignored (a newer
/// callback may add some); known fields must have the reference's types. The fields after
/// `config` are optional zolog extensions a trainer may add.
#[derive(Deserialize)]
struct RawLine<'a> {
    #[serde(default)]
    timestamp: Option<Timestamp>,
    #[serde(default, borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(default)]
    experiment_id: Option<ExpId>,
    #[serde(default)]
    experiment_name: Option<String>,
    #[serde(default)]
    epoch: Option<i64>,
    #[serde(default)]
    total_epochs: Option<i64>,
    #[serde(default)]
    metrics: Option<Metrics>,
    #[serde(default, with = "opt_float")]
    learning_rate: Option<f64>,
    #[serde(default)]
    checkpoint_path: Option<String>,
    #[serde(default, with = "opt_float")]
    wall_time_seconds: Option<f64>,
    #[serde(default, with = "opt_float")]
    gpu_memory_mb: Option<f64>,
    #[serde(default)]
    config: Option<serde_json::Value>,
    // zolog extensions.
    #[serde(default)]
    step: Option<u64>,
    #[serde(default)]
    reason: Option<CheckpointReason>,
    #[serde(default, alias = "keys")]
    state_keys: Option<Vec<String>>,
    #[serde(default)]
    fold: Option<u32>,
    #[serde(default)]
    trial: Option<u64>,
    #[serde(default)]
    size_bytes: Option<u64>,
    #[serde(default)]
    content_hash: Option<String>,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    host: Option<String>,
}

/// A line turned into an event: its time (the line's `timestamp`) and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct LineEvent {
    pub time: Timestamp,
    pub payload: Payload,
}

/// Why a line was not turned into an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineReject {
    pub reason: String,
}

fn reject<T>(reason: impl Into<String>) -> Result<T, LineReject> {
    Err(LineReject {
        reason: reason.into(),
    })
}

/// Is this line blank (only whitespace)? Blank lines are consumed without an event or a report.
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| b.is_ascii_whitespace())
}

/// Parse one line (without its newline) into an event for experiment `exp` (the ingest's
/// experiment, when known; a line naming another experiment is refused).
///
/// Returns the experiment the line names (or `exp`) with the event.
pub fn parse_line(bytes: &[u8], exp: Option<&ExpId>) -> Result<(ExpId, LineEvent), LineReject> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t.trim_end_matches('\r'),
        Err(e) => return reject(format!("not UTF-8 text ({e})")),
    };
    let text = normalize_nonfinite(text);
    let raw: RawLine<'_> = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(_) => return reject(explain(&text)),
    };
    let Some(event) = raw.event.as_deref() else {
        return reject(format!(
            "missing field `event` (one of {})",
            LINE_KINDS.join(", ")
        ));
    };
    if !LINE_KINDS.contains(&event) {
        return reject(format!(
            "unknown event {event:?}; expected one of {}",
            LINE_KINDS.join(", ")
        ));
    }
    let Some(time) = raw.timestamp else {
        return reject("missing field `timestamp`");
    };
    let experiment_id = match (raw.experiment_id.clone(), exp) {
        (Some(line_id), Some(ours)) if &line_id != ours => {
            return reject(format!(
                "line is for experiment {line_id}, but this ingest is for {ours}"
            ));
        }
        (Some(id), _) => id,
        (None, Some(ours)) => ours.clone(),
        (None, None) => {
            return reject("no `experiment_id` in the line, and no --exp given");
        }
    };
    let epoch = match raw.epoch {
        Some(e) if e < 0 => return reject(format!("`epoch` is {e}; epochs count from 0")),
        e => e.map(|e| e as u64),
    };
    let metrics = raw.metrics.unwrap_or_default();
    let payload = match event {
        "training_start" => {
            let total_epochs = match raw.total_epochs {
                Some(t) if t < 0 => return reject(format!("`total_epochs` is {t}, below 0")),
                t => t.map(|t| t as u64),
            };
            Payload::TrainingStarted(TrainingStarted {
                experiment_id: experiment_id.clone(),
                experiment_name: raw.experiment_name,
                pid: raw.pid,
                host: raw.host,
                total_epochs,
                config: Json(raw.config.unwrap_or_default()),
            })
        }
        "epoch_end" => {
            let Some(epoch) = epoch else {
                return reject("`epoch_end` without an `epoch`");
            };
            Payload::EpochEnded(EpochEnded {
                experiment_id: experiment_id.clone(),
                epoch,
                step: raw.step,
                metrics,
                learning_rate: raw.learning_rate,
                wall_time_seconds: raw.wall_time_seconds,
                gpu_memory_mb: raw.gpu_memory_mb,
            })
        }
        "checkpoint_saved" => {
            let path = match raw.checkpoint_path {
                Some(p) if !p.is_empty() => p,
                _ => return reject("`checkpoint_saved` without a `checkpoint_path`"),
            };
            let reason = raw
                .reason
                .unwrap_or_else(|| infer_reason(&path, raw.fold, raw.trial));
            Payload::CheckpointSaved(CheckpointSaved {
                experiment_id: experiment_id.clone(),
                epoch,
                path,
                reason,
                metrics,
                size_bytes: raw.size_bytes,
                content_hash: raw.content_hash,
                state_keys: raw.state_keys.unwrap_or_default(),
                fold: raw.fold,
                trial: raw.trial,
            })
        }
        "training_end" => Payload::TrainingEnded(TrainingEnded {
            experiment_id: experiment_id.clone(),
            epoch,
            metrics,
            wall_time_seconds: raw.wall_time_seconds,
            exit_code: None,
            signal: None,
        }),
        _ => unreachable!("checked against LINE_KINDS"),
    };
    Ok((experiment_id, LineEvent { time, payload }))
}

/// The reason of a `checkpoint_saved` line that does not give one: `fold` when it names a fold,
/// `search_state` when it names a trial, `best`/`last` for the policy's `best.*`/`last.*` files,
/// `periodic` otherwise.
pub fn infer_reason(path: &str, fold: Option<u32>, trial: Option<u64>) -> CheckpointReason {
    if fold.is_some() {
        return CheckpointReason::Fold;
    }
    if trial.is_some() {
        return CheckpointReason::SearchState;
    }
    let stem = Path::new(path)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("");
    match stem {
        "best" => CheckpointReason::Best,
        "last" => CheckpointReason::Last,
        _ => CheckpointReason::Periodic,
    }
}

/// Why `text` did not parse: the JSON syntax error with its column, or the field with the wrong
/// type (slow path, only for bad lines).
fn explain(text: &str) -> String {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return format!("malformed JSON: {e}"),
    };
    if !value.is_object() {
        return format!("expected a JSON object, found {}", kind_of(&value));
    }
    match serde_path_to_error::deserialize::<_, RawLine<'_>>(&value) {
        Ok(_) => "not a valid metrics line".to_owned(),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                inner.to_string()
            } else {
                format!("field `{path}`: {inner}")
            }
        }
    }
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp() -> ExpId {
        ExpId::parse("exp-001").unwrap()
    }

    fn ok(line: &str) -> Payload {
        parse_line(line.as_bytes(), Some(&exp()))
            .unwrap_or_else(|e| panic!("{line}: {}", e.reason))
            .1
            .payload
    }

    fn bad(line: &str, want: &str) {
        let e = parse_line(line.as_bytes(), Some(&exp())).unwrap_err();
        assert!(
            e.reason.contains(want),
            "{line}: reason {:?} should mention {want:?}",
            e.reason
        );
    }

    const TS: &str = "\"timestamp\":\"2026-11-24T09:50:05.866809+00:00\"";

    #[test]
    fn reference_epoch_end_line() {
        let line = format!(
            r#"{{{TS},"event":"epoch_end","experiment_id":"exp-001","experiment_name":"m","epoch":3,"total_epochs":10,"metrics":{{"train_loss":NaN,"val_loss":Infinity,"grad_norm":-Infinity,"val_acc":0.5}},"learning_rate":0.001,"checkpoint_path":null,"wall_time_seconds":12.3,"gpu_memory_mb":null,"config":{{}}}}"#
        );
        let Payload::EpochEnded(e) = ok(&line) else {
            panic!()
        };
        assert_eq!(e.epoch, 3);
        let m = &e.metrics.0;
        assert!(m[0].1.is_nan());
        assert_eq!(m[1].1, f64::INFINITY);
        assert_eq!(m[2].1, f64::NEG_INFINITY);
        assert_eq!(m[3], ("val_acc".to_owned(), 0.5));
        assert_eq!(e.learning_rate, Some(0.001));
        assert_eq!(e.gpu_memory_mb, None);
    }

    #[test]
    fn checkpoint_reason_inference() {
        let cases = [
            (
                "models/checkpoints/m/best.pt",
                None,
                None,
                CheckpointReason::Best,
            ),
            (
                "models/checkpoints/m/last.pt",
                None,
                None,
                CheckpointReason::Last,
            ),
            (
                "models/checkpoints/m/epoch_9.pt",
                None,
                None,
                CheckpointReason::Periodic,
            ),
            ("fold_2.joblib", Some(2), None, CheckpointReason::Fold),
            ("study.db", None, Some(7), CheckpointReason::SearchState),
        ];
        for (path, fold, trial, want) in cases {
            assert_eq!(infer_reason(path, fold, trial), want, "{path}");
        }
        let line = format!(
            r#"{{{TS},"event":"checkpoint_saved","epoch":9,"checkpoint_path":"x/best.pt","reason":"manual","keys":["epoch"]}}"#
        );
        let Payload::CheckpointSaved(c) = ok(&line) else {
            panic!()
        };
        assert_eq!(c.reason, CheckpointReason::Manual);
        assert_eq!(c.state_keys, vec!["epoch".to_owned()]);
        assert_eq!(c.experiment_id, exp());
    }

    #[test]
    fn bad_lines_say_why() {
        bad("{\"event\":", "malformed JSON");
        bad("[1,2]", "expected a JSON object");
        bad(
            &format!(r#"{{{TS},"event":"epoch_begin"}}"#),
            "unknown event",
        );
        bad(&format!(r#"{{{TS}}}"#), "missing field `event`");
        bad(r#"{"event":"epoch_end","epoch":1}"#, "timestamp");
        bad(
            &format!(r#"{{{TS},"event":"epoch_end","epoch":"three"}}"#),
            "field `epoch`",
        );
        bad(
            &format!(r#"{{{TS},"event":"epoch_end","epoch":1,"metrics":{{"loss":"x"}}}}"#),
            "field `metrics",
        );
        bad(
            &format!(r#"{{{TS},"event":"epoch_end"}}"#),
            "without an `epoch`",
        );
        bad(
            &format!(r#"{{{TS},"event":"epoch_end","epoch":-1}}"#),
            "count from 0",
        );
        bad(
            &format!(r#"{{{TS},"event":"epoch_end","epoch":1,"experiment_id":"exp-002"}}"#),
            "for experiment exp-002",
        );
        bad(
            &format!(r#"{{{TS},"event":"epoch_end","epoch":1,"experiment_id":"../x"}}"#),
            "invalid experiment id",
        );
        bad(
            &format!(r#"{{{TS},"event":"checkpoint_saved"}}"#),
            "checkpoint_path",
        );
        let e = parse_line(b"\xff\xfe", None).unwrap_err();
        assert!(e.reason.contains("UTF-8"));
        let e = parse_line(
            format!(r#"{{{TS},"event":"epoch_end","epoch":1}}"#).as_bytes(),
            None,
        )
        .unwrap_err();
        assert!(e.reason.contains("--exp"), "{}", e.reason);
    }
}

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
    #[serde(default, deserialize_with = "de_timestamp")]
    timestamp: Option<Timestamp>,
    #[serde(default, borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(default)]
    experiment_id: Option<ExpId>,
    #[serde(default, borrow)]
    experiment_name: Option<Cow<'a, str>>,
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
    /// Only `training_start` keeps it (parsed again by [`ConfigOnly`]); skipped otherwise.
    #[serde(default)]
    config: Option<serde::de::IgnoredAny>,
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

/// The `config` of a `training_start` line (the only kind that keeps it).
#[derive(Deserialize)]
struct ConfigOnly {
    #[serde(default)]
    config: Option<serde_json::Value>,
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
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if has_nonfinite_token(bytes) {
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => return reject(format!("not UTF-8 text ({e})")),
        };
        let text = normalize_nonfinite(text);
        match serde_json::from_str::<RawLine<'_>>(&text) {
            Ok(raw) => build(raw, text.as_bytes(), exp),
            Err(_) => reject(explain(&text)),
        }
    } else {
        match serde_json::from_slice::<RawLine<'_>>(bytes) {
            Ok(raw) => build(raw, bytes, exp),
            Err(_) => match std::str::from_utf8(bytes) {
                Ok(text) => reject(explain(text)),
                Err(e) => reject(format!("not UTF-8 text ({e})")),
            },
        }
    }
}

/// Could the line hold a bare `NaN`, `Infinity` or `-Infinity`? One SIMD pass over the bytes.
fn has_nonfinite_token(bytes: &[u8]) -> bool {
    memchr::memchr2_iter(b'N', b'I', bytes).any(|i| {
        let rest = &bytes[i..];
        rest.starts_with(b"NaN") || rest.starts_with(b"Infinity")
    })
}

fn build(
    raw: RawLine<'_>,
    json: &[u8],
    exp: Option<&ExpId>,
) -> Result<(ExpId, LineEvent), LineReject> {
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
            let config = match raw.config {
                None => serde_json::Value::Null,
                Some(_) => match serde_json::from_slice::<ConfigOnly>(json) {
                    Ok(c) => c.config.unwrap_or_default(),
                    Err(e) => return reject(format!("field `config`: {e}")),
                },
            };
            Payload::TrainingStarted(TrainingStarted {
                experiment_id: experiment_id.clone(),
                experiment_name: raw.experiment_name.map(Cow::into_owned),
                pid: raw.pid,
                host: raw.host,
                total_epochs,
                config: Json(config),
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

/// `timestamp`: the reference's form (`2026-11-24T09:50:05.866809+00:00`) parsed directly, any
/// other through [`Timestamp::parse`].
fn de_timestamp<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    let Some(s) = Option::<Cow<'de, str>>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(t) = fast_timestamp(&s) {
        return Ok(Some(t));
    }
    Timestamp::parse(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}][Z|+00:00]` (no offset = UTC, as [`Timestamp::parse`] takes it),
/// years 1678 to 2261 (inside the nanosecond range); `None` for anything else, which then goes
/// to the general parser.
pub fn fast_timestamp(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1678..=2261).contains(&y) || !(1..=12).contains(&mo) || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let dim = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d < 1 || d > dim[(mo - 1) as usize] {
        return None;
    }
    let mut i = 19;
    let mut frac = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 9 {
            return None;
        }
        frac = num(start..i)? * 10i64.pow((9 - digits) as u32);
    }
    match &b[i..] {
        b"" | b"Z" | b"+00:00" => {}
        _ => return None,
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    Some(Timestamp::from_nanos(
        secs.checked_mul(1_000_000_000)?.checked_add(frac)?,
    ))
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
    fn training_start_keeps_name_and_config() {
        let line = format!(
            r#"{{{TS},"event":"training_start","experiment_id":"exp-001","experiment_name":"r\u00e9snet","epoch":null,"total_epochs":30,"metrics":{{}},"config":{{"lr":0.1,"scheduler":"cosine","clip":NaN}}}}"#
        );
        let Payload::TrainingStarted(t) = ok(&line) else {
            panic!()
        };
        assert_eq!(t.experiment_name.as_deref(), Some("résnet"));
        assert_eq!(t.total_epochs, Some(30));
        assert_eq!(t.config.0["scheduler"], "cosine");
        assert_eq!(t.config.0["clip"], "NaN");
        let null = format!(r#"{{{TS},"event":"training_start","config":null}}"#);
        let Payload::TrainingStarted(t) = ok(&null) else {
            panic!()
        };
        assert_eq!(t.config.0, serde_json::Value::Null);
        bad(
            &format!(r#"{{{TS},"event":"training_start","total_epochs":-2}}"#),
            "below 0",
        );
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
    fn fast_timestamps_equal_the_general_parser() {
        let mut cases: Vec<String> = Vec::new();
        for (y, m, d) in [
            (1970, 1, 1),
            (1969, 12, 31),
            (2000, 2, 29),
            (2024, 2, 29),
            (2026, 11, 24),
            (2100, 3, 1),
            (1678, 1, 1),
            (2261, 12, 31),
        ] {
            for frac in ["", ".8", ".866809", ".123456789"] {
                for tz in ["", "Z", "+00:00"] {
                    cases.push(format!("{y:04}-{m:02}-{d:02}T23:59:59{frac}{tz}"));
                    cases.push(format!("{y:04}-{m:02}-{d:02}T00:00:00{frac}{tz}"));
                }
            }
        }
        for s in &cases {
            assert_eq!(fast_timestamp(s), Some(Timestamp::parse(s).unwrap()), "{s}");
        }
        // Not the fast form: left to the general parser.
        for s in [
            "2023-02-29T00:00:00Z",
            "2026-11-24T09:50:05.866809+01:00",
            "2026-11-24 09:50:05",
            "2026-11-24T24:00:00Z",
            "2026-11-24T09:50:05.1234567890Z",
            "2026-11-24T09:50:05.Z",
            "1600-01-01T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-24T09:50:05+00:00x",
        ] {
            assert_eq!(fast_timestamp(s), None, "{s}");
        }
        assert_eq!(
            Timestamp::parse("2026-11-24T09:50:05.866809+01:00").unwrap(),
            Timestamp::parse("2026-11-24T08:50:05.866809Z").unwrap()
        );
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

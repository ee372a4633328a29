//! Checkpoints: the cadence policy, recording (size, content hash, state keys), verification,
//! and the choice of the checkpoint a restarted trainer should resume from.
//!
//! Paths in `CheckpointSaved` are relative to the project directory (the parent of `.zo`) or
//! absolute. Everything here is a fold of the log plus a look at the files; nothing reads a
//! projection. The rules are documented in docs/trainers.md.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::event::{
    CheckpointReason, CheckpointSaved, ExpId, Metrics, NewEvent, Payload, Source, Timestamp,
};
use crate::store::Store;

/// The reference's cadence (zo-reference.md, "Checkpoint cadence"), rules in order: `is_best` →
/// true; `total_epochs <= 0` or `epoch < 0` → false; the last epoch (`epoch == total_epochs - 1`)
/// → true; otherwise `(epoch + 1) % max(1, every) == 0`.
pub fn should_checkpoint(epoch: i64, total_epochs: i64, every: i64, is_best: bool) -> bool {
    if is_best {
        return true;
    }
    if total_epochs <= 0 || epoch < 0 {
        return false;
    }
    if i128::from(epoch) == i128::from(total_epochs) - 1 {
        return true;
    }
    (i128::from(epoch) + 1) % i128::from(every.max(1)) == 0
}

/// The reference's default `every`.
pub const DEFAULT_EVERY: i64 = 10;

/// Size and `blake3:<hex>` of a file, read in 1 MiB pieces (never whole in memory).
pub fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, format!("blake3:{}", hasher.finalize().to_hex())))
}

/// A checkpoint path as stored: relative to the project directory when it lies inside it,
/// absolute otherwise. `path` is taken relative to the current directory.
pub fn stored_path(store: &Store, path: &Path) -> Result<String> {
    crate::ingest::key_path(store, path)
}

/// Where a stored checkpoint path points: absolute as is, relative to the project directory.
pub fn resolve(store: &Store, stored: &str) -> PathBuf {
    let p = Path::new(stored);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        store.project_dir().join(p)
    }
}

/// What `zolog checkpoint record` records.
#[derive(Debug, Clone)]
pub struct RecordRequest {
    pub experiment_id: ExpId,
    pub epoch: Option<u64>,
    /// As given on the command line (relative to the current directory, or absolute).
    pub path: PathBuf,
    pub reason: CheckpointReason,
    pub state_keys: Vec<String>,
    pub fold: Option<u32>,
    pub trial: Option<u64>,
    pub metrics: Metrics,
}

/// A recorded checkpoint: its event and where it sits in the log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub seq: u64,
    pub time: Timestamp,
    #[serde(flatten)]
    pub checkpoint: CheckpointSaved,
}

/// Hash the file and append a `CheckpointSaved`. The experiment must have been minted.
pub fn record(store: &Store, req: RecordRequest, source: Source) -> Result<Record> {
    if req.reason == CheckpointReason::Fold && req.fold.is_none() {
        return Err(Error::Invalid(
            "a fold checkpoint needs its fold number (--fold N)".into(),
        ));
    }
    let history = History::load(store, &req.experiment_id)?;
    if !history.minted {
        return Err(Error::UnknownExperiment(req.experiment_id));
    }
    let path = stored_path(store, &req.path)?;
    let file = resolve(store, &path);
    let (size, hash) = hash_file(&file).map_err(|e| Error::io("hash", &file, e))?;
    let cp = CheckpointSaved {
        experiment_id: req.experiment_id,
        epoch: req.epoch,
        path,
        reason: req.reason,
        metrics: req.metrics,
        size_bytes: Some(size),
        content_hash: Some(hash),
        state_keys: req.state_keys,
        fold: req.fold,
        trial: req.trial,
    };
    let ev = NewEvent::now(source, Payload::CheckpointSaved(cp.clone()));
    let time = ev.time;
    let r = store.append(&[ev])?;
    crate::project::refresh(store)?;
    Ok(Record {
        seq: r.first_seq,
        time,
        checkpoint: cp,
    })
}

/// What the log says about an experiment's checkpoints and the evidence resume needs.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub minted: bool,
    /// Every CheckpointSaved, in log order.
    pub records: Vec<Record>,
    /// Configs of TrainingStarted events, in log order.
    pub configs: Vec<serde_json::Value>,
}

impl History {
    pub fn load(store: &Store, exp: &ExpId) -> Result<History> {
        let mut h = History::default();
        store.read(1, |ev| {
            if ev.payload.experiment_id() != Some(exp) {
                return Ok(());
            }
            match ev.payload {
                Payload::ExperimentMinted(_) => h.minted = true,
                Payload::TrainingStarted(t) => h.configs.push(t.config.0),
                Payload::CheckpointSaved(c) => h.records.push(Record {
                    seq: ev.seq,
                    time: ev.time,
                    checkpoint: c,
                }),
                _ => {}
            }
            Ok(())
        })?;
        Ok(h)
    }

    /// The seq of the newest record at the same file as `r`, if newer than `r`.
    fn superseded_by(&self, store: &Store, r: &Record) -> Option<u64> {
        let me = resolve(store, &r.checkpoint.path);
        self.records
            .iter()
            .filter(|o| o.seq > r.seq && resolve(store, &o.checkpoint.path) == me)
            .map(|o| o.seq)
            .next_back()
    }
}

/// The state of a recorded checkpoint's file now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FileCheck {
    /// The file exists and hashes as recorded.
    Ok,
    /// A later record names the same file: it now holds that checkpoint, not this one.
    Superseded {
        by_seq: u64,
    },
    Missing {
        path: String,
    },
    /// The file's bytes are not the ones recorded.
    Changed {
        recorded: String,
        now: String,
        size: u64,
    },
    /// The file exists, but no hash was recorded (e.g. ingested from metrics.jsonl).
    Unhashed,
    Unreadable {
        error: String,
    },
}

impl FileCheck {
    /// A problem `checkpoint verify` fails on.
    pub fn is_problem(&self) -> bool {
        matches!(
            self,
            FileCheck::Missing { .. } | FileCheck::Changed { .. } | FileCheck::Unreadable { .. }
        )
    }

    fn describe(&self) -> String {
        match self {
            FileCheck::Ok => "file present, hash matches".into(),
            FileCheck::Superseded { by_seq } => format!(
                "superseded: seq {by_seq} recorded a newer checkpoint at the same path, so the file no longer holds this one"
            ),
            FileCheck::Missing { path } => format!("file missing: {path}"),
            FileCheck::Changed { recorded, now, .. } => {
                format!("file changed since it was recorded: recorded {recorded}, now {now}")
            }
            FileCheck::Unhashed => {
                "no content hash recorded (ingested from metrics.jsonl?); record it with `zolog checkpoint record` to make it verifiable".into()
            }
            FileCheck::Unreadable { error } => format!("file unreadable: {error}"),
        }
    }
}

fn check_file(store: &Store, history: &History, r: &Record) -> FileCheck {
    if let Some(by_seq) = history.superseded_by(store, r) {
        return FileCheck::Superseded { by_seq };
    }
    let path = resolve(store, &r.checkpoint.path);
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return FileCheck::Missing {
                path: path.display().to_string(),
            };
        }
        Err(e) => {
            return FileCheck::Unreadable {
                error: e.to_string(),
            };
        }
        Ok(_) => {}
    }
    let Some(recorded) = &r.checkpoint.content_hash else {
        return FileCheck::Unhashed;
    };
    match hash_file(&path) {
        Ok((_, now)) if &now == recorded => FileCheck::Ok,
        Ok((size, now)) => FileCheck::Changed {
            recorded: recorded.clone(),
            now,
            size,
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => FileCheck::Missing {
            path: path.display().to_string(),
        },
        Err(e) => FileCheck::Unreadable {
            error: e.to_string(),
        },
    }
}

/// One line of `checkpoint verify`.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    #[serde(flatten)]
    pub record: Record,
    pub check: FileCheck,
}

/// Re-hash every recorded checkpoint of `exp`.
pub fn verify(store: &Store, exp: &ExpId) -> Result<Vec<Verified>> {
    let h = History::load(store, exp)?;
    Ok(h.records
        .iter()
        .map(|r| Verified {
            record: r.clone(),
            check: check_file(store, &h, r),
        })
        .collect())
}

/// State a deep-learning checkpoint must hold to resume: the reference's key and the names
/// accepted for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequiredKey {
    pub key: &'static str,
    pub aliases: &'static [&'static str],
    /// Why it is required.
    pub why: String,
}

const EPOCH: &[&str] = &["epoch"];
const MODEL: &[&str] = &["model_state_dict", "model", "state_dict"];
const OPTIMIZER: &[&str] = &["optimizer_state_dict", "optimizer"];
const RNG: &[&str] = &["rng_state", "rng_states"];
const SCHEDULER: &[&str] = &[
    "scheduler_state_dict",
    "lr_scheduler_state_dict",
    "scheduler",
];
const SCALER: &[&str] = &["scaler_state_dict", "grad_scaler_state_dict", "scaler"];

/// Config keys whose truthy value says the run used a learning-rate scheduler.
const SCHEDULER_CONFIG_KEYS: &[&str] = &[
    "scheduler",
    "lr_scheduler",
    "use_scheduler",
    "scheduler_name",
    "scheduler_type",
    "lr_schedule",
    "schedule",
];
/// Config keys whose truthy value says the run used AMP with a gradient scaler.
const AMP_CONFIG_KEYS: &[&str] = &[
    "amp",
    "use_amp",
    "fp16",
    "mixed_precision",
    "precision",
    "grad_scaler",
    "use_grad_scaler",
    "scaler",
];

fn has_key(keys: &[String], aliases: &[&str]) -> bool {
    keys.iter().any(|k| aliases.contains(&k.as_str()))
}

/// A config value that means "on": not null, false, 0, or a string like "", "none", "no",
/// "off", "false", "fp32", "32", "bf16" (bf16 autocast needs no gradient scaler).
fn truthy(v: &serde_json::Value, amp: bool) -> bool {
    match v {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if amp {
                // `precision: 16` means fp16; 32 or 64 mean none.
                x != 0.0 && x != 32.0 && x != 64.0
            } else {
                x != 0.0
            }
        }
        serde_json::Value::String(s) => {
            let s = s.trim().to_ascii_lowercase();
            let off = ["", "none", "no", "off", "false", "null", "0"];
            if off.contains(&s.as_str()) {
                return false;
            }
            if amp {
                !(s.contains("bf16")
                    || s.contains("bfloat16")
                    || s == "fp32"
                    || s == "32"
                    || s == "64"
                    || s == "32-true"
                    || s == "64-true")
            } else {
                true
            }
        }
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
    }
}

/// The first key path in `config` (at any depth) among `keys` with a truthy value.
fn find_evidence(config: &serde_json::Value, keys: &[&str], amp: bool) -> Option<String> {
    match config {
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                if keys.contains(&k.to_ascii_lowercase().as_str()) && truthy(v, amp) {
                    return Some(format!("config.{k} = {v}"));
                }
                if let Some(inner) = find_evidence(v, keys, amp) {
                    return Some(inner.replacen("config.", &format!("config.{k}."), 1));
                }
            }
            None
        }
        _ => None,
    }
}

/// The keys a deep-learning checkpoint of this run must hold: epoch, model, optimizer and RNG
/// state always; the scheduler's when a TrainingStarted config names a scheduler or any
/// checkpoint of the run recorded scheduler state; the AMP scaler's likewise.
pub fn required_keys(h: &History) -> Vec<RequiredKey> {
    let mut req = vec![
        RequiredKey {
            key: "epoch",
            aliases: EPOCH,
            why: "always".into(),
        },
        RequiredKey {
            key: "model_state_dict",
            aliases: MODEL,
            why: "always".into(),
        },
        RequiredKey {
            key: "optimizer_state_dict",
            aliases: OPTIMIZER,
            why: "always".into(),
        },
        RequiredKey {
            key: "rng_state",
            aliases: RNG,
            why: "always".into(),
        },
    ];
    let evidence = |aliases: &[&str], config_keys: &[&str], amp: bool| -> Option<String> {
        for c in &h.configs {
            if let Some(e) = find_evidence(c, config_keys, amp) {
                return Some(format!("TrainingStarted {e}"));
            }
        }
        h.records
            .iter()
            .find(|r| has_key(&r.checkpoint.state_keys, aliases))
            .map(|r| format!("checkpoint seq {} holds it", r.seq))
    };
    if let Some(why) = evidence(SCHEDULER, SCHEDULER_CONFIG_KEYS, false) {
        req.push(RequiredKey {
            key: "scheduler_state_dict",
            aliases: SCHEDULER,
            why: format!("the run used a scheduler: {why}"),
        });
    }
    if let Some(why) = evidence(SCALER, AMP_CONFIG_KEYS, true) {
        req.push(RequiredKey {
            key: "scaler_state_dict",
            aliases: SCALER,
            why: format!("the run used AMP: {why}"),
        });
    }
    req
}

/// Deep learning (resume one checkpoint) or classical ML (search state plus completed folds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    DeepLearning,
    Classical,
}

/// One checkpoint considered, and the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    #[serde(flatten)]
    pub record: Record,
    pub qualifies: bool,
    /// Why it does not qualify (empty when it does).
    pub why_not: Vec<String>,
}

/// What a restarted trainer should load.
#[derive(Debug, Clone, Serialize)]
pub struct ResumePlan {
    pub experiment_id: ExpId,
    pub kind: RunKind,
    /// Deep learning: the checkpoint to load. Classical: the search state to continue.
    pub checkpoint: Option<Record>,
    /// The checkpoint's file, resolved.
    pub checkpoint_file: Option<PathBuf>,
    /// Classical: the newest valid checkpoint of each completed fold, by fold number.
    pub folds: Vec<Record>,
    /// Classical: the newest valid best-by-CV checkpoint.
    pub best: Option<Record>,
    /// Deep learning: the state keys required, and why.
    pub required_keys: Vec<RequiredKey>,
    /// Every checkpoint considered, newest first, with why it was or was not taken.
    pub candidates: Vec<Candidate>,
}

impl ResumePlan {
    /// Is there anything to resume from?
    pub fn found(&self) -> bool {
        self.checkpoint.is_some() || !self.folds.is_empty()
    }
}

/// Choose what a restarted trainer of `exp` should load (rules in docs/trainers.md).
pub fn resume(store: &Store, exp: &ExpId) -> Result<ResumePlan> {
    let h = History::load(store, exp)?;
    let classical = h.records.iter().any(|r| {
        matches!(
            r.checkpoint.reason,
            CheckpointReason::Fold | CheckpointReason::SearchState
        )
    });
    if classical {
        Ok(resume_classical(store, exp, &h))
    } else {
        Ok(resume_deep(store, exp, &h))
    }
}

fn resume_deep(store: &Store, exp: &ExpId, h: &History) -> ResumePlan {
    let required = required_keys(h);
    let mut candidates = Vec::new();
    let mut chosen = None;
    for r in h.records.iter().rev() {
        let mut why = Vec::new();
        let missing: Vec<String> = required
            .iter()
            .filter(|k| !has_key(&r.checkpoint.state_keys, k.aliases))
            .map(|k| {
                if k.why == "always" {
                    k.key.to_owned()
                } else {
                    format!("{} ({})", k.key, k.why)
                }
            })
            .collect();
        // Cheap checks first; hash only a checkpoint that passes them.
        let superseded = h.superseded_by(store, r);
        if let Some(by_seq) = superseded {
            why.push(FileCheck::Superseded { by_seq }.describe());
        } else {
            if !missing.is_empty() {
                if r.checkpoint.state_keys.is_empty() {
                    why.push(format!(
                        "not resumable: no state keys recorded (needs {})",
                        missing.join(", ")
                    ));
                } else {
                    why.push(format!("not resumable: lacks {}", missing.join(", ")));
                }
            }
            let check = if missing.is_empty() {
                check_file(store, h, r)
            } else {
                // Still say whether the file is there at all.
                match std::fs::metadata(resolve(store, &r.checkpoint.path)) {
                    Ok(_) => FileCheck::Ok,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => FileCheck::Missing {
                        path: resolve(store, &r.checkpoint.path).display().to_string(),
                    },
                    Err(e) => FileCheck::Unreadable {
                        error: e.to_string(),
                    },
                }
            };
            if check != FileCheck::Ok {
                why.push(check.describe());
            }
        }
        let qualifies = why.is_empty();
        candidates.push(Candidate {
            record: r.clone(),
            qualifies,
            why_not: why,
        });
        if qualifies {
            chosen = Some(r.clone());
            break;
        }
    }
    ResumePlan {
        experiment_id: exp.clone(),
        kind: RunKind::DeepLearning,
        checkpoint_file: chosen.as_ref().map(|r| resolve(store, &r.checkpoint.path)),
        checkpoint: chosen,
        folds: Vec::new(),
        best: None,
        required_keys: required,
        candidates,
    }
}

fn resume_classical(store: &Store, exp: &ExpId, h: &History) -> ResumePlan {
    let mut candidates = Vec::new();
    let mut search = None;
    let mut best = None;
    let mut folds: HashMap<u32, Record> = HashMap::new();
    for r in h.records.iter().rev() {
        let c = &r.checkpoint;
        let mut why = Vec::new();
        let wanted = match c.reason {
            CheckpointReason::SearchState => search.is_none(),
            CheckpointReason::Best => best.is_none(),
            CheckpointReason::Fold => match c.fold {
                Some(f) => !folds.contains_key(&f),
                None => {
                    why.push(
                        "fold checkpoint without a fold number (record it with --fold N)".into(),
                    );
                    false
                }
            },
            _ => {
                why.push(format!(
                    "a {} checkpoint; a classical run resumes from its search state and completed folds",
                    reason_str(c.reason)
                ));
                false
            }
        };
        if wanted {
            let check = check_file(store, h, r);
            if check != FileCheck::Ok {
                why.push(check.describe());
            }
        } else if why.is_empty() {
            why.push("a newer valid checkpoint of the same kind was taken".into());
        }
        let qualifies = why.is_empty();
        if qualifies {
            match c.reason {
                CheckpointReason::SearchState => search = Some(r.clone()),
                CheckpointReason::Best => best = Some(r.clone()),
                CheckpointReason::Fold => {
                    folds.insert(c.fold.expect("checked"), r.clone());
                }
                _ => {}
            }
        }
        candidates.push(Candidate {
            record: r.clone(),
            qualifies,
            why_not: why,
        });
    }
    let mut folds: Vec<Record> = folds.into_values().collect();
    folds.sort_by_key(|r| r.checkpoint.fold);
    ResumePlan {
        experiment_id: exp.clone(),
        kind: RunKind::Classical,
        checkpoint_file: search.as_ref().map(|r| resolve(store, &r.checkpoint.path)),
        checkpoint: search,
        folds,
        best,
        required_keys: Vec::new(),
        candidates,
    }
}

/// The reason as the command line and JSON spell it.
pub fn reason_str(r: CheckpointReason) -> &'static str {
    match r {
        CheckpointReason::Best => "best",
        CheckpointReason::Last => "last",
        CheckpointReason::Periodic => "periodic",
        CheckpointReason::Fold => "fold",
        CheckpointReason::Manual => "manual",
        CheckpointReason::SearchState => "search_state",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row of the reference table: (epoch, total, every, best) → expected.
    fn check(input: (i64, i64, i64, bool), expected: bool) {
        let (e, t, every, best) = input;
        assert_eq!(
            should_checkpoint(e, t, every, best),
            expected,
            "should_checkpoint({e}, {t}, every={every}, best={best})"
        );
    }

    #[test]
    fn cadence_truth_table() {
        let d = DEFAULT_EVERY;
        // | (9,100), (19,100), (99,100), (6,7), (0,1) | true |
        check((9, 100, d, false), true);
        check((19, 100, d, false), true);
        check((99, 100, d, false), true);
        check((6, 7, d, false), true);
        check((0, 1, d, false), true);
        // | (8,100), (5,100), (-1,100), (0,0), (10,10), (5,10,every=20) | false |
        check((8, 100, d, false), false);
        check((5, 100, d, false), false);
        check((-1, 100, d, false), false);
        check((0, 0, d, false), false);
        check((10, 10, d, false), false);
        check((5, 10, 20, false), false);
        // | (3,100,best), (0,0,best), (10,10,best) | true |
        check((3, 100, d, true), true);
        check((0, 0, d, true), true);
        check((10, 10, d, true), true);
        // | every=0 or negative → treated as 1: (0,5,every=0), (3,5,every=0), (2,5,every=-3) | true |
        check((0, 5, 0, false), true);
        check((3, 5, 0, false), true);
        check((2, 5, -3, false), true);
        // | (9,10,every=20) | true |
        check((9, 10, 20, false), true);
        // | total 25: fires at epochs 9, 19, 24 |
        let fired: Vec<i64> = (0..25)
            .filter(|&e| should_checkpoint(e, 25, d, false))
            .collect();
        assert_eq!(fired, vec![9, 19, 24]);
    }

    #[test]
    fn cadence_extremes_do_not_overflow() {
        check((i64::MAX, i64::MAX, d(), false), false);
        check((i64::MAX - 1, i64::MAX, d(), false), true);
        check((0, i64::MIN, d(), false), false);
        check((5, 100, i64::MIN, false), true);
        fn d() -> i64 {
            DEFAULT_EVERY
        }
    }

    #[test]
    fn config_evidence() {
        let cases = [
            (serde_json::json!({"scheduler": "cosine"}), false, true),
            (serde_json::json!({"scheduler": null}), false, false),
            (serde_json::json!({"scheduler": "none"}), false, false),
            (
                serde_json::json!({"optim": {"lr_scheduler": {"name": "step"}}}),
                false,
                true,
            ),
            (serde_json::json!({"amp": true}), true, true),
            (serde_json::json!({"amp": false}), true, false),
            (serde_json::json!({"mixed_precision": "fp16"}), true, true),
            (serde_json::json!({"mixed_precision": "bf16"}), true, false),
            (serde_json::json!({"precision": 16}), true, true),
            (serde_json::json!({"precision": 32}), true, false),
            (
                serde_json::json!({"clamp": true, "example": 1}),
                true,
                false,
            ),
        ];
        for (config, amp, want) in cases {
            let keys = if amp {
                AMP_CONFIG_KEYS
            } else {
                SCHEDULER_CONFIG_KEYS
            };
            assert_eq!(
                find_evidence(&config, keys, amp).is_some(),
                want,
                "{config}"
            );
        }
    }
}

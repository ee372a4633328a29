//! `zolog demo`: the whole product in one command, on a temporary store.
//!
//! A simulated trainer (zolog itself, re-executed as the hidden `__demo-trainer` subcommand: a
//! real child process writing a real `metrics.jsonl` through the platform's format) trains with a
//! learning rate that is too high: its loss falls for six epochs, spikes at epoch
//! [`SPIKE_EPOCH`] and turns NaN at epoch [`NAN_EPOCH`]. It runs under [`crate::run::run`] with
//! kill enabled, exactly as `zolog run --kill` runs a trainer; the checker raises `nan_inf` and
//! kills it. Then the caller prints CHECKLIST.md, the experiment's diagnosis.md and the audit.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::checker::CheckerConfig;
use crate::checker::audit;
use crate::error::{Error, Result};
use crate::event::Timestamp;
use crate::run::{EndedBy, RunOutcome, RunSpec, Say};
use crate::store::{Store, StoreOptions};

/// Epochs the simulated trainer plans.
pub const EPOCHS: u64 = 20;
/// The epoch whose loss spikes (a `divergence.spike` warning).
pub const SPIKE_EPOCH: u64 = 6;
/// The first epoch whose loss, validation loss and grad norm are non-finite (`nan_inf`, stop).
pub const NAN_EPOCH: u64 = 7;
/// The simulated trainer's learning rate.
pub const LR: f64 = 0.5;

/// The simulated trainer's metrics at `epoch`: (train_loss, val_loss, grad_norm).
pub fn curve(epoch: u64) -> (f64, f64, f64) {
    if epoch >= NAN_EPOCH {
        return (f64::NAN, f64::NAN, f64::INFINITY);
    }
    if epoch == SPIKE_EPOCH {
        return (4.8, 5.6, 35.0);
    }
    let round = |v: f64| (v * 1e4).round() / 1e4;
    let train = 2.3 * 0.8f64.powi(epoch as i32);
    let val = train * 1.1 + 0.05;
    let grad = 1.2 - 0.05 * epoch as f64;
    (round(train), round(val), round(grad))
}

/// A float as Python's `json` writes it: bare `NaN`, `Infinity`, `-Infinity`.
fn py(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "Infinity".into()
    } else if v == f64::NEG_INFINITY {
        "-Infinity".into()
    } else {
        format!("{v:?}")
    }
}

/// The reference's timestamp form (`2026-11-24T09:50:05.866809+00:00`).
fn stamp() -> String {
    let z = Timestamp::now().to_micros_z();
    format!("{}+00:00", z.trim_end_matches('Z'))
}

/// One reference-format metrics.jsonl line (without the newline).
fn line(exp: &str, event: &str, epoch: Option<u64>, fields: &str) -> String {
    let epoch = epoch.map_or("null".into(), |e| e.to_string());
    format!(
        "{{\"timestamp\": \"{}\", \"event\": \"{event}\", \"experiment_id\": \"{exp}\", \
         \"experiment_name\": \"demo-mlp\", \"epoch\": {epoch}, {fields}}}",
        stamp()
    )
}

/// The simulated trainer: writes `training_start`, then an `epoch_end` every `epoch_seconds`
/// to `$ZO_METRICS` (for `$ZO_EXPERIMENT`), and `training_end` if nobody stops it.
pub fn trainer(epoch_seconds: f64) -> Result<()> {
    let path = std::env::var_os("ZO_METRICS").ok_or_else(|| {
        Error::Invalid("__demo-trainer runs under zolog demo (ZO_METRICS is not set)".into())
    })?;
    let exp = std::env::var("ZO_EXPERIMENT").unwrap_or_else(|_| "exp-001".into());
    let path = PathBuf::from(path);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    let mut write = |text: String| -> Result<()> {
        f.write_all(format!("{text}\n").as_bytes())
            .map_err(|e| Error::io("write", &path, e))
    };
    let pause = Duration::from_secs_f64(epoch_seconds.max(0.0));
    let started = std::time::Instant::now();
    write(line(
        &exp,
        "training_start",
        None,
        &format!(
            "\"total_epochs\": {EPOCHS}, \"metrics\": {{}}, \"learning_rate\": null, \
             \"checkpoint_path\": null, \"wall_time_seconds\": null, \"gpu_memory_mb\": null, \
             \"config\": {{\"model\": \"mlp\", \"optimizer\": \"sgd\", \"lr\": {LR}, \
             \"batch_size\": 64}}"
        ),
    ))?;
    for epoch in 0..EPOCHS {
        std::thread::sleep(pause);
        let (train, val, grad) = curve(epoch);
        let wall = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
        write(line(
            &exp,
            "epoch_end",
            Some(epoch),
            &format!(
                "\"total_epochs\": {EPOCHS}, \"metrics\": {{\"train_loss\": {}, \"val_loss\": {}, \
                 \"grad_norm\": {}}}, \"learning_rate\": {LR}, \"checkpoint_path\": null, \
                 \"wall_time_seconds\": {wall:?}, \"gpu_memory_mb\": null, \"config\": {{}}",
                py(train),
                py(val),
                py(grad)
            ),
        ))?;
        println!(
            "  trainer: epoch {epoch:2}  train_loss {}  val_loss {}  grad_norm {}",
            py(train),
            py(val),
            py(grad)
        );
        let _ = std::io::stdout().flush();
    }
    write(line(
        &exp,
        "training_end",
        Some(EPOCHS - 1),
        "\"total_epochs\": 0, \"metrics\": {}, \"learning_rate\": null, \
         \"checkpoint_path\": null, \"wall_time_seconds\": null, \"gpu_memory_mb\": null, \
         \"config\": {}",
    ))?;
    Ok(())
}

/// What the demo did, and the texts to show.
#[derive(Debug)]
pub struct DemoOutcome {
    pub project: PathBuf,
    pub outcome: RunOutcome,
    pub checklist: String,
    pub diagnosis: String,
    pub next: String,
    pub audit: String,
    /// The checker killed the run and the audit reproduced every stop decision.
    pub as_expected: bool,
}

/// Set up a store in `project` (which must hold no `.zo` yet), mint an experiment, and run the
/// simulated trainer (`exe __demo-trainer`) under the checker with kill enabled.
pub async fn demo(project: &Path, exe: &Path, epoch_seconds: f64, say: Say) -> Result<DemoOutcome> {
    let root = project.join(".zo");
    if root.exists() {
        return Err(Error::Invalid(format!(
            "{} already holds a store; zolog demo needs a fresh directory",
            project.display()
        )));
    }
    std::fs::create_dir_all(&root).map_err(|e| Error::io("create directory", &root, e))?;
    let store = Store::init(&root, "zolog-demo", StoreOptions::default())?;
    let exp = crate::exp::mint(
        &store,
        crate::exp::Mint {
            parent: None,
            phase: None,
            hypothesis: format!("SGD at lr {LR} trains the demo MLP faster than lr 0.05"),
            rationale: "a larger step size should converge in fewer epochs".into(),
        },
    )?;
    say(&format!(
        "minted {exp}: SGD at lr {LR} trains the demo MLP faster than lr 0.05"
    ));
    let spec = RunSpec {
        exp: exp.clone(),
        command: vec![
            exe.as_os_str().to_owned(),
            OsString::from("__demo-trainer"),
            OsString::from("--epoch-seconds"),
            OsString::from(epoch_seconds.to_string()),
        ],
        metrics: None,
        kill: true,
        grace: Duration::from_secs(2),
        checker: CheckerConfig::default(),
        env: Vec::new(),
    };
    let outcome = crate::run::run(store.clone(), spec, say).await?;
    let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_default();
    let exp_dir = store.experiments_dir().join(exp.as_str());
    let report = audit::audit(&store, &exp)?;
    let as_expected =
        matches!(outcome.ended_by, EndedBy::Checker { .. }) && report.decisions_reproduced();
    Ok(DemoOutcome {
        project: project.to_path_buf(),
        checklist: read(store.experiments_dir().join("CHECKLIST.md")),
        diagnosis: read(exp_dir.join("diagnosis.md")),
        next: read(exp_dir.join("next.md")),
        audit: audit::render(&report),
        outcome,
        as_expected,
    })
}

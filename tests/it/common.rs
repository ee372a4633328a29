//! Helpers shared by the log tests: a seeded RNG, one event of every kind, bitwise comparison, and
//! small constructors for logs over the fault-injecting file system.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use zolog::event::codec;
use zolog::event::{
    AlertRaised, CheckerConfigured, CheckpointReason, CheckpointSaved, EpochEnded, Event, ExpId,
    ExperimentMinted, ExperimentStatus, ExperimentStatusChanged, IngestAdvanced, Json, Metrics,
    NewEvent, NextIdea, NextIdeasRecorded, NoteAdded, NoteSection, OracleTier, Payload,
    PrimaryMetric, ProjectInitialized, ResultRecorded, RunKilled, Severity, Source, SourceKind,
    Timestamp, TrainingEnded, TrainingStarted,
};
use zolog::log::fs::{FaultFs, Fs};
use zolog::log::{Log, LogOptions};

/// SplitMix64: a tiny seeded generator, so every random test replays exactly from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn range(&mut self, lo: u64, hi_inclusive: u64) -> u64 {
        lo + self.below(hi_inclusive - lo + 1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub fn exp(n: u32) -> ExpId {
    ExpId::from_number(n)
}

pub fn metrics(pairs: &[(&str, f64)]) -> Metrics {
    Metrics(pairs.iter().map(|&(k, v)| (k.to_owned(), v)).collect())
}

/// A fixed source, so encodings do not depend on the machine.
pub fn source(kind: SourceKind) -> Source {
    Source {
        kind,
        pid: Some(4242),
        host: Some("gpu-1".into()),
    }
}

/// One payload of every kind (all 14), with NaN, +Inf, -Inf and -0.0 among the floats.
pub fn every_kind() -> Vec<Payload> {
    let e1 = exp(1);
    let v = vec![
        Payload::ProjectInitialized(ProjectInitialized {
            project: "fixture".into(),
        }),
        Payload::ExperimentMinted(ExperimentMinted {
            experiment_id: e1.clone(),
            parent_id: None,
            phase: "phase_4".into(),
            hypothesis: "Wider stem — lowers val loss".into(),
            rationale: "capacity".into(),
        }),
        Payload::ExperimentStatusChanged(ExperimentStatusChanged {
            experiment_id: e1.clone(),
            status: ExperimentStatus::Running,
            reason: "restarted".into(),
        }),
        Payload::TrainingStarted(TrainingStarted {
            experiment_id: e1.clone(),
            experiment_name: Some("wide".into()),
            pid: Some(4242),
            host: Some("gpu-1".into()),
            total_epochs: Some(3),
            config: Json(serde_json::json!({"lr": 0.001, "scheduler": "cosine", "layers": [1, 2]})),
        }),
        Payload::EpochEnded(EpochEnded {
            experiment_id: e1.clone(),
            epoch: 0,
            step: Some(100),
            metrics: metrics(&[
                ("train_loss", 0.9),
                ("val_loss", f64::NAN),
                ("grad_norm", f64::INFINITY),
                ("val_acc", f64::NEG_INFINITY),
                ("zero", -0.0),
            ]),
            learning_rate: Some(1e-3),
            wall_time_seconds: Some(12.5),
            gpu_memory_mb: Some(f64::INFINITY),
        }),
        Payload::CheckpointSaved(CheckpointSaved {
            experiment_id: e1.clone(),
            epoch: Some(0),
            path: "models/checkpoints/m/best.pt".into(),
            reason: CheckpointReason::Best,
            metrics: metrics(&[("val_loss", f64::NAN)]),
            size_bytes: Some(1234),
            content_hash: Some("blake3:00ff".into()),
            state_keys: vec!["epoch".into(), "model_state_dict".into()],
            fold: Some(2),
            trial: None,
        }),
        Payload::CheckerConfigured(CheckerConfigured {
            experiment_id: e1.clone(),
            config: Json(serde_json::json!({"rules": {"nan_inf": {"enabled": true}}})),
        }),
        Payload::AlertRaised(AlertRaised {
            experiment_id: e1.clone(),
            rule: "nan_inf".into(),
            severity: Severity::Stop,
            epoch: Some(0),
            observed: metrics(&[("val_loss", f64::NAN)]),
            thresholds: metrics(&[("max", f64::INFINITY)]),
            evidence_seqs: vec![5],
            config_seq: Some(7),
            message: "val_loss is NaN".into(),
            likely_cause: "LR too high".into(),
            recommended_action: "lower the LR".into(),
        }),
        Payload::RunKilled(RunKilled {
            experiment_id: e1.clone(),
            pid: Some(4242),
            alert_seqs: vec![8],
            signal: "SIGTERM".into(),
            by: "checker".into(),
            reason: "nan_inf".into(),
        }),
        Payload::TrainingEnded(TrainingEnded {
            experiment_id: e1.clone(),
            epoch: Some(0),
            metrics: metrics(&[("val_loss", f64::NEG_INFINITY)]),
            wall_time_seconds: Some(13.0),
            exit_code: None,
            signal: Some(15),
        }),
        Payload::ResultRecorded(ResultRecorded {
            experiment_id: e1.clone(),
            oracle_tier: OracleTier::ShouldPass,
            primary_metric: PrimaryMetric {
                name: "val_auc".into(),
                value: f64::NAN,
                delta_vs_parent: Some(f64::NEG_INFINITY),
            },
            secondary_metrics: metrics(&[("f1", 0.5)]),
            shortfalls: vec!["calibration".into()],
            evaluated_at: Timestamp(1_795_000_000_123_456_789),
        }),
        Payload::NextIdeasRecorded(NextIdeasRecorded {
            experiment_id: e1.clone(),
            ideas: vec![NextIdea {
                label: Some("exp-002".into()),
                idea: "try dropout".into(),
                details: vec!["Rationale: overfits".into()],
            }],
        }),
        Payload::NoteAdded(NoteAdded {
            experiment_id: e1.clone(),
            section: NoteSection::WhatHappened,
            text: "loss went NaN at epoch 0 \"payload\"".into(),
        }),
        Payload::IngestAdvanced(IngestAdvanced {
            experiment_id: e1,
            path: ".zo/experiments/exp-001/metrics.jsonl".into(),
            file_id: "64769:1234".into(),
            offset: 4096,
            line: 12,
            rejected: 1,
        }),
    ];
    let mut kinds: Vec<&str> = v.iter().map(Payload::kind).collect();
    kinds.sort_unstable();
    let mut all = Payload::KINDS.to_vec();
    all.sort_unstable();
    assert_eq!(kinds, all, "every_kind() must hold every payload kind once");
    v
}

/// The bytes the codec stores for a payload in a fixed envelope: equal bytes mean bitwise-equal
/// payloads (NaN bits included), which `PartialEq` cannot say.
pub fn payload_bits(p: &Payload) -> Vec<u8> {
    codec::encode(&NewEvent {
        time: Timestamp(0),
        appended: None,
        source: source(SourceKind::Cli),
        payload: p.clone(),
    })
}

/// Bitwise equality of two events, `appended` excluded when `ignore_appended`.
pub fn assert_same_event(a: &Event, b: &Event, ignore_appended: bool) {
    assert_eq!(a.seq, b.seq);
    assert_eq!(a.time, b.time);
    if !ignore_appended {
        assert_eq!(a.appended, b.appended);
    }
    assert_eq!(a.source, b.source);
    assert_eq!(
        payload_bits(&a.payload),
        payload_bits(&b.payload),
        "payloads differ:\n{:?}\n{:?}",
        a.payload,
        b.payload
    );
}

/// A log over a fresh fault-injecting file system.
pub fn fault_log(opts: LogOptions) -> (FaultFs, Log) {
    let fs = FaultFs::new();
    let log = Log::open(Arc::new(fs.clone()), "/zo/log", opts).expect("open log");
    (fs, log)
}

pub fn small_opts(segment_size: u64) -> LogOptions {
    LogOptions {
        segment_size,
        lock_timeout: Duration::from_millis(0),
        holder: "pid 1 on test (zolog test)".into(),
        ..LogOptions::default()
    }
}

/// Every payload in the log, in order, checking seqs run 1, 2, 3...
pub fn read_payloads(log: &Log) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut reader = log.reader(1);
    reader
        .poll::<std::convert::Infallible>(|r| {
            assert_eq!(r.seq, out.len() as u64 + 1, "seqs must be gap-free");
            out.push(r.payload.to_vec());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("read failed: {e}"));
    out
}

/// Put `bytes` into a new durable file at `path` of a fault fs.
pub fn put_file(fs: &FaultFs, path: &Path, bytes: &[u8]) {
    let mut f = fs.create_new(path).expect("create");
    f.write_all_at(0, bytes).expect("write");
    f.sync_data().expect("sync");
    fs.sync_dir(path.parent().expect("parent"))
        .expect("sync dir");
}

/// Names of the files in a fault fs directory ending with `suffix`.
pub fn files_ending(fs: &FaultFs, dir: &Path, suffix: &str) -> Vec<PathBuf> {
    fs.list(dir)
        .expect("list")
        .into_iter()
        .filter(|n| n.ends_with(suffix))
        .map(|n| dir.join(n))
        .collect()
}

/// The `zolog` binary cargo built for these tests.
pub fn zolog_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("zolog")
}

/// `zolog` with the store set and no inherited ZO_STORE / RUST_LOG surprises.
pub fn zolog(store: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(zolog_bin());
    c.env_remove("RUST_LOG").env("ZO_STORE", store);
    c
}

/// `zolog init` a store in a new temporary directory; returns the dir guard and the `.zo` path.
pub fn init_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join(".zo");
    zolog(&root)
        .args(["init", "--project", "t"])
        .assert()
        .success();
    (dir, root)
}

/// A file under tests/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A child process that is killed and reaped when the guard drops.
pub struct Guard {
    child: Child,
    name: &'static str,
    status: Option<ExitStatus>,
}

impl Guard {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Guard {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Guard {
            child,
            name,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Wait for exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_status() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} (pid {}) still running after {limit:?}",
                self.name,
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig)
            .expect("signal child");
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A reference metrics.jsonl timestamp for epoch `i`.
pub fn ts(i: u64) -> String {
    format!(
        "2026-11-24T09:{:02}:{:02}.{:06}+00:00",
        (i / 60) % 60,
        i % 60,
        i % 1_000_000
    )
}

/// A reference epoch_end line (with its newline).
pub fn epoch_line(i: u64, loss: &str) -> String {
    format!(
        "{{\"timestamp\": \"{}\", \"event\": \"epoch_end\", \"experiment_id\": \"exp-001\", \"experiment_name\": \"mlp\", \"epoch\": {i}, \"total_epochs\": 100000, \"metrics\": {{\"train_loss\": {loss}, \"val_loss\": 0.5}}, \"learning_rate\": 0.001, \"checkpoint_path\": null, \"wall_time_seconds\": 1.5, \"gpu_memory_mb\": null, \"config\": {{}}}}\n",
        ts(i)
    )
}

pub fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
}

/// A loss curve for racing watchers: two spikes (epochs 12 and 25) and NaN from epoch 33, so
/// that a checker with the default rules raises exactly [`SPIKY_ALERTS`] over epochs 0..40.
pub fn spiky_loss(epoch: u64) -> f64 {
    match epoch {
        12 => 9.0,
        25 => 40.0,
        33.. => f64::NAN,
        _ => 1.0 + 1.0 / (epoch + 1) as f64,
    }
}

/// The rules of the alerts [`spiky_loss`] raises over epochs 0..40, in log order.
pub const SPIKY_ALERTS: [&str; 3] = ["divergence.spike", "divergence.spike", "nan_inf"];

/// The rules of the alerts among `events`, in log order.
pub fn alert_rules(events: impl IntoIterator<Item = Event>) -> Vec<String> {
    events
        .into_iter()
        .filter_map(|e| match e.payload {
            Payload::AlertRaised(a) => Some(a.rule),
            _ => None,
        })
        .collect()
}

/// Start `n` copies of `cmd` (each `zolog watch ... --once` racing the others) and assert that
/// each exits with `code` within `limit`.
pub fn race(n: usize, limit: Duration, code: i32, mut cmd: impl FnMut() -> Command) {
    let mut racers: Vec<Guard> = (0..n)
        .map(|_| Guard::spawn("zolog watch", &mut cmd()))
        .collect();
    for (i, r) in racers.iter_mut().enumerate() {
        assert_eq!(r.wait(limit).code(), Some(code), "racer {i}");
    }
}

/// A store opened in-process in a new temporary directory (`root` is its `.zo`), holding the
/// reference's first experiment, exp-001, minted at `minted_at` (now if `None`).
pub struct TestStore {
    /// The temporary directory, removed on drop; `.zo` is inside it.
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub store: zolog::store::Store,
}

impl TestStore {
    pub fn with_exp001(project: &str, minted_at: Option<Timestamp>) -> TestStore {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join(".zo");
        let store =
            zolog::store::Store::init(&root, project, zolog::store::StoreOptions::default())
                .expect("init store");
        let src = Source {
            kind: SourceKind::Trainer,
            pid: None,
            host: None,
        };
        let minted = Payload::ExperimentMinted(ExperimentMinted {
            experiment_id: exp(1),
            parent_id: None,
            phase: "phase_4".into(),
            hypothesis: "it trains".into(),
            rationale: String::new(),
        });
        let ev = match minted_at {
            Some(t) => NewEvent::at(t, src, minted),
            None => NewEvent::now(src, minted),
        };
        store.append(&[ev]).expect("mint exp-001");
        TestStore { dir, root, store }
    }

    /// The `zolog` binary with `--store` set to this store.
    pub fn zolog(&self) -> Command {
        let mut c = Command::new(zolog_bin());
        c.env_remove("RUST_LOG").arg("--store").arg(&self.root);
        c
    }
}

/// A CheckpointSaved with what the projections show (experiment, epoch, path, reason) and
/// nothing else.
pub fn checkpoint_saved(
    experiment_id: ExpId,
    epoch: u64,
    path: impl Into<String>,
    reason: CheckpointReason,
) -> Payload {
    Payload::CheckpointSaved(CheckpointSaved {
        experiment_id,
        epoch: Some(epoch),
        path: path.into(),
        reason,
        metrics: Metrics::new(),
        size_bytes: None,
        content_hash: None,
        state_keys: vec![],
        fold: None,
        trial: None,
    })
}

//! Projections: golden registry.json and CHECKLIST.md, incremental refresh equals a rebuild,
//! the projection checkpoint is never trusted when it should not be, and trainer files are left
//! alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::checkpoint_saved;
use proptest::prelude::*;
use zolog::event::{
    AlertRaised, CheckpointReason, EpochEnded, ExpId, ExperimentMinted, ExperimentStatus,
    ExperimentStatusChanged, Metrics, NewEvent, NextIdea, NextIdeasRecorded, NoteAdded,
    NoteSection, OracleTier, Payload, PrimaryMetric, ProjectInitialized, ResultRecorded, RunKilled,
    Severity, Source, SourceKind, Timestamp, TrainingEnded, TrainingStarted,
};
use zolog::project::{self, checkpoint};
use zolog::store::{Store, StoreOptions};

/// 2026-11-24T09:53:33.639907Z
pub const T0: i64 = 1_795_514_013_639_907_000;

pub struct Fixture {
    /// Kept so the store's directory lives as long as the fixture.
    _dir: tempfile::TempDir,
    pub store: Store,
}

impl Fixture {
    /// A store whose ProjectInitialized happened at T0.
    pub fn new(project: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(".zo");
        std::fs::create_dir_all(&root).unwrap();
        let store = Store::open_with(
            std::sync::Arc::new(zolog::log::fs::RealFs),
            &root,
            StoreOptions::default(),
        )
        .unwrap();
        let f = Fixture { _dir: dir, store };
        f.append(
            0,
            Payload::ProjectInitialized(ProjectInitialized {
                project: project.into(),
            }),
        );
        f
    }

    /// Append one event at T0 + `secs` seconds (no refresh).
    pub fn append(&self, secs: i64, payload: Payload) {
        self.append_all(&[(secs, payload)]);
    }

    pub fn append_all(&self, events: &[(i64, Payload)]) {
        let evs: Vec<NewEvent> = events
            .iter()
            .map(|(secs, p)| NewEvent {
                time: Timestamp(T0 + secs * 1_000_000_000),
                appended: None,
                source: Source {
                    kind: SourceKind::Cli,
                    pid: None,
                    host: None,
                },
                payload: p.clone(),
            })
            .collect();
        self.store.append(&evs).unwrap();
    }

    pub fn exp_dir(&self) -> PathBuf {
        self.store.experiments_dir()
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.exp_dir().join(rel)).unwrap()
    }
}

pub fn id(s: &str) -> ExpId {
    ExpId::parse(s).unwrap()
}

/// An EpochEnded of `n` with a train_loss and a val_acc, learning rate 0.001, ten seconds an
/// epoch.
pub fn epoch_loss_acc(n: &str, epoch: u64, loss: f64, acc: f64) -> Payload {
    Payload::EpochEnded(EpochEnded {
        experiment_id: id(n),
        epoch,
        step: None,
        metrics: Metrics(vec![("train_loss".into(), loss), ("val_acc".into(), acc)]),
        learning_rate: Some(0.001),
        wall_time_seconds: Some(epoch as f64 * 10.0),
        gpu_memory_mb: None,
    })
}

pub fn mint(n: &str, parent: Option<&str>, hypothesis: &str) -> Payload {
    Payload::ExperimentMinted(ExperimentMinted {
        experiment_id: id(n),
        parent_id: parent.map(id),
        phase: "phase_4".into(),
        hypothesis: hypothesis.into(),
        rationale: String::new(),
    })
}

pub fn result(n: &str, tier: OracleTier, metric: &str, value: f64, delta: Option<f64>) -> Payload {
    Payload::ResultRecorded(ResultRecorded {
        experiment_id: id(n),
        oracle_tier: tier,
        primary_metric: PrimaryMetric {
            name: metric.into(),
            value,
            delta_vs_parent: delta,
        },
        secondary_metrics: Metrics::new(),
        shortfalls: vec![],
        evaluated_at: Timestamp(T0 + 3_600_000_000_000),
    })
}

pub fn ideas(n: &str, list: &[&str]) -> Payload {
    Payload::NextIdeasRecorded(NextIdeasRecorded {
        experiment_id: id(n),
        ideas: list
            .iter()
            .map(|i| NextIdea {
                label: None,
                idea: (*i).into(),
                details: vec![],
            })
            .collect(),
    })
}

pub fn status(n: &str, s: ExperimentStatus, reason: &str) -> Payload {
    Payload::ExperimentStatusChanged(ExperimentStatusChanged {
        experiment_id: id(n),
        status: s,
        reason: reason.into(),
    })
}

/// Every file under `dir`, by relative path.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                out.insert(PathBuf::from(format!("{rel}/")), Vec::new());
                walk(base, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(base).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn assert_same_files(a: &BTreeMap<PathBuf, Vec<u8>>, b: &BTreeMap<PathBuf, Vec<u8>>) {
    let ka: Vec<_> = a.keys().collect();
    let kb: Vec<_> = b.keys().collect();
    assert_eq!(ka, kb, "different sets of files");
    for (k, v) in a {
        assert!(
            b[k] == *v,
            "{} differs:\n--- incremental\n{}\n--- rebuild\n{}",
            k.display(),
            String::from_utf8_lossy(v),
            String::from_utf8_lossy(&b[k])
        );
    }
}

#[test]
fn golden_empty_registry() {
    let f = Fixture::new("demo");
    project::refresh(&f.store).unwrap();
    assert_eq!(
        f.read("registry.json"),
        "{\n  \"schema_version\": 1,\n  \"project\": \"demo\",\n  \"created\": \"2026-11-24T09:53:33.639907Z\",\n  \"experiments\": []\n}"
    );
    assert_eq!(
        f.read("CHECKLIST.md"),
        "# Experiment Checklist\n\nProject: `demo` · 0 experiment(s) · auto-generated by ZO.\n\n_Succinct running log: what was tried, the result, and what's next. Regenerated after each experiment — do not edit by hand._\n\n_No experiments yet._\n"
    );
    let f = Fixture::new("");
    project::refresh(&f.store).unwrap();
    assert!(
        f.read("CHECKLIST.md")
            .contains("Project: `unknown` · 0 experiment(s)")
    );
}

/// The golden table: pipes and newlines, a long Unicode hypothesis, %g edge cases, computed and
/// given (negative) deltas, running and failed experiments, and `## Next planned` from the most
/// recently created experiment (the first minted of two created at the same time).
pub fn golden_fixture() -> Fixture {
    let f = Fixture::new("prod-001");
    let long = "Température élevée → régularisation plus forte du décodeur: 注意力头 réduits de moitié pour limiter le sur-apprentissage";
    f.append_all(&[
        (
            1,
            mint("exp-001", None, "TFT | beats\n LSTM  on long-horizon"),
        ),
        (2, mint("exp-002", Some("exp-001"), long)),
        (
            3,
            result("exp-001", OracleTier::ShouldPass, "mae", 0.041234567, None),
        ),
        (4, ideas("exp-001", &["older idea"])),
        (5, result("exp-002", OracleTier::Fail, "mae", 0.0327, None)),
        (6, mint("exp-003", Some("exp-002"), "")),
        (7, mint("exp-004", Some("exp-002"), "tiny | values")),
        (7, mint("exp-005", None, "round-off")),
        (
            8,
            result("exp-004", OracleTier::CouldPass, "acc", 1e-05, Some(1e6)),
        ),
        (
            9,
            result(
                "exp-005",
                OracleTier::MustPass,
                "acc",
                0.1 + 0.2,
                Some(100000.0),
            ),
        ),
        (10, mint("exp-006", Some("exp-005"), "integers")),
        (11, result("exp-006", OracleTier::Fail, "acc", 3.0, None)),
        (
            12,
            status("exp-006", ExperimentStatus::Failed, "OOM at epoch 3"),
        ),
        (13, mint("exp-007", None, "huge")),
        (
            14,
            result("exp-007", OracleTier::Fail, "loss", 1e16, Some(-2.5)),
        ),
        (
            15,
            ideas("exp-005", &["exp-008: idea from exp-005 (minted second)"]),
        ),
        (
            16,
            ideas(
                "exp-004",
                &["Add gradient clipping | at 1.0", "Halve the LR"],
            ),
        ),
    ]);
    // A shortfall to show in the last column.
    f.append(
        17,
        Payload::ResultRecorded(ResultRecorded {
            experiment_id: id("exp-003"),
            oracle_tier: OracleTier::Fail,
            primary_metric: PrimaryMetric {
                name: "mae".into(),
                value: 0.04,
                delta_vs_parent: None,
            },
            secondary_metrics: Metrics(vec![("rmse".into(), 0.07), ("r2".into(), f64::NAN)]),
            shortfalls: vec![
                "Horizon-3 | error\n  still   high on weekends and on public holidays in every region we have".into(),
                "second".into(),
            ],
            evaluated_at: Timestamp(T0 + 20_000_000_000),
        }),
    );
    f.append(
        18,
        status("exp-003", ExperimentStatus::Running, "re-evaluating"),
    );
    f
}

pub const GOLDEN_CHECKLIST: &str = "\
# Experiment Checklist

Project: `prod-001` · 7 experiment(s) · auto-generated by ZO.

_Succinct running log: what was tried, the result, and what's next. Regenerated after each experiment — do not edit by hand._

| Exp | Parent | Status | Hypothesis | Metric | Δ vs parent | Tier | Top shortfall |
|-----|--------|--------|------------|--------|------------|------|---------------|
| exp-001 | — | complete | TFT \\| beats LSTM on long-horizon | mae=0.0412346 | — | should_pass | — |
| exp-002 | exp-001 | complete | Température élevée → régularisation plus forte du décodeur: 注意力头 rédu… | mae=0.0327 | -0.00853457 | fail | — |
| exp-003 | exp-002 | running | — | mae=0.04 | +0.0073 | fail | Horizon-3 \\| error still high on weekends and on public holidays in e… |
| exp-004 | exp-002 | complete | tiny \\| values | acc=1e-05 | +1e+06 | could_pass | — |
| exp-005 | — | complete | round-off | acc=0.3 | +100000 | must_pass | — |
| exp-006 | exp-005 | failed | integers | acc=3 | +2.7 | fail | — |
| exp-007 | — | complete | huge | loss=1e+16 | -2.5 | fail | — |

## Next planned

- Add gradient clipping | at 1.0
- Halve the LR
";

#[test]
fn golden_checklist() {
    let f = golden_fixture();
    project::refresh(&f.store).unwrap();
    if let Ok(d) = std::env::var("ZOLOG_DUMP_GOLDEN") {
        for n in ["registry.json", "CHECKLIST.md"] {
            std::fs::write(Path::new(&d).join(n), f.read(n)).unwrap();
        }
    }
    assert_eq!(f.read("CHECKLIST.md"), GOLDEN_CHECKLIST);
}

pub const GOLDEN_REGISTRY_TAIL: &str = r#"    {
      "id": "exp-003",
      "phase": "phase_4",
      "parent_id": "exp-002",
      "created": "2026-11-24T09:53:39.639907Z",
      "hypothesis": "",
      "rationale": "",
      "status": "running",
      "result": {
        "oracle_tier": "fail",
        "primary_metric": {
          "name": "mae",
          "value": 0.04,
          "delta_vs_parent": 0.007300000000000001
        },
        "secondary_metrics": {
          "rmse": 0.07,
          "r2": null
        },
        "shortfalls": [
          "Horizon-3 | error\n  still   high on weekends and on public holidays in every region we have",
          "second"
        ],
        "evaluated_at": "2026-11-24T09:53:53.639907Z"
      },
      "next_ideas": [],
      "artifacts_dir": ".zo/experiments/exp-003"
    },
    {
      "id": "exp-004",
      "phase": "phase_4",
      "parent_id": "exp-002",
      "created": "2026-11-24T09:53:40.639907Z",
      "hypothesis": "tiny | values",
      "rationale": "",
      "status": "complete",
      "result": {
        "oracle_tier": "could_pass",
        "primary_metric": {
          "name": "acc",
          "value": 0.00001,
          "delta_vs_parent": 1000000.0
        },
        "secondary_metrics": {},
        "shortfalls": [],
        "evaluated_at": "2026-11-24T10:53:33.639907Z"
      },
      "next_ideas": [
        "Add gradient clipping | at 1.0",
        "Halve the LR"
      ],
      "artifacts_dir": ".zo/experiments/exp-004"
    },"#;

#[test]
fn golden_registry() {
    let f = golden_fixture();
    project::refresh(&f.store).unwrap();
    let reg = f.read("registry.json");
    assert!(
        reg.starts_with("{\n  \"schema_version\": 1,\n  \"project\": \"prod-001\",\n  \"created\": \"2026-11-24T09:53:33.639907Z\",\n  \"experiments\": [\n    {\n      \"id\": \"exp-001\",\n      \"phase\": \"phase_4\",\n      \"parent_id\": null,\n      \"created\": \"2026-11-24T09:53:34.639907Z\",\n      \"hypothesis\": \"TFT | beats\\n LSTM  on long-horizon\",\n"),
        "{reg}"
    );
    assert!(reg.contains(GOLDEN_REGISTRY_TAIL), "{reg}");
    // The whole file, as pydantic's `model_dump_json(indent=2)` writes the same registry (checked
    // against pydantic when this golden was made).
    assert_eq!(reg, include_str!("golden/registry.json"));
    assert!(reg.contains("\"value\": 0.30000000000000004,"), "{reg}");
    assert!(
        reg.contains("\"value\": 1e+16,\n          \"delta_vs_parent\": -2.5\n"),
        "{reg}"
    );
    assert!(
        reg.contains("\"value\": 3.0,\n          \"delta_vs_parent\": 2.7\n"),
        "{reg}"
    );
    assert!(reg.contains("\"delta_vs_parent\": -0.008534567\n"), "{reg}");
    assert!(reg.ends_with("\"artifacts_dir\": \".zo/experiments/exp-007\"\n    }\n  ]\n}"));
    assert!(reg.contains("注意力头"), "UTF-8 is written as is");
    // The same bytes from a rebuild.
    project::rebuild(&f.store).unwrap();
    assert_eq!(f.read("registry.json"), reg);
}

#[test]
fn diagnosis_reports_numbers_alerts_and_kill() {
    let f = Fixture::new("demo");
    let e = |epoch, loss, acc| epoch_loss_acc("exp-001", epoch, loss, acc);
    f.append_all(&[
        (1, mint("exp-001", None, "h")),
        (
            2,
            Payload::TrainingStarted(TrainingStarted {
                experiment_id: id("exp-001"),
                experiment_name: Some("tft-small".into()),
                pid: Some(4242),
                host: Some("gpu-1".into()),
                total_epochs: Some(20),
                config: Default::default(),
            }),
        ),
        (3, e(0, 1.5, 0.5)),
        (4, e(1, 0.75, 0.6)),
        (5, e(2, 0.9, 0.55)),
        (6, e(3, f64::NAN, 0.4)),
        (
            7,
            checkpoint_saved(
                id("exp-001"),
                1,
                "models/checkpoints/tft/best.pt",
                CheckpointReason::Best,
            ),
        ),
        (
            8,
            Payload::AlertRaised(AlertRaised {
                experiment_id: id("exp-001"),
                rule: "nan_inf".into(),
                severity: Severity::Stop,
                epoch: Some(3),
                observed: Metrics(vec![("train_loss".into(), f64::NAN)]),
                thresholds: Metrics::new(),
                evidence_seqs: vec![6],
                config_seq: None,
                message: "train_loss is NaN at epoch 3.".into(),
                likely_cause: "Learning rate too high.".into(),
                recommended_action: "Lower the LR 10x and add warm-up.".into(),
            }),
        ),
        (
            9,
            Payload::RunKilled(RunKilled {
                experiment_id: id("exp-001"),
                pid: Some(4242),
                alert_seqs: vec![9],
                signal: "SIGTERM".into(),
                by: "checker".into(),
                reason: "nan_inf at epoch 3".into(),
            }),
        ),
        (
            10,
            Payload::TrainingEnded(TrainingEnded {
                experiment_id: id("exp-001"),
                epoch: Some(3),
                metrics: Metrics::new(),
                wall_time_seconds: Some(31.0),
                exit_code: None,
                signal: Some(15),
            }),
        ),
        (
            11,
            status(
                "exp-001",
                ExperimentStatus::Aborted,
                "killed by the checker",
            ),
        ),
        (
            12,
            Payload::NoteAdded(NoteAdded {
                experiment_id: id("exp-001"),
                section: NoteSection::Mechanism,
                text: "Attention logits overflow in fp16 once the LR warms up.".into(),
            }),
        ),
    ]);
    project::refresh(&f.store).unwrap();
    let d = f.read("exp-001/diagnosis.md");
    for want in [
        "# Diagnosis: tft-small (exp-001)\n\n## What happened\n",
        "- Status: aborted (killed by the checker) since 2026-11-24T09:53:44.639907Z.\n",
        "- Training: 4 epoch(s) run (epochs 0–3 of 20 planned); started 2026-11-24T09:53:35.639907Z (pid 4242 on gpu-1)",
        "- Outcome: killed by checker with SIGTERM at 2026-11-24T09:53:42.639907Z: nan_inf at epoch 3 (alert seq 9).\n",
        "- train_loss: best 0.75 at epoch 1 (lowest), final nan at epoch 3, first 1.5 at epoch 0 (4 sample(s); 1 non-finite, the first nan at epoch 3).\n",
        "- val_acc: final 0.4 at epoch 3, lowest 0.4 at epoch 3, highest 0.6 at epoch 1 (4 sample(s)).\n",
        "- Checkpoints: 1 taken (best ×1); latest models/checkpoints/tft/best.pt at epoch 1; best models/checkpoints/tft/best.pt at epoch 1.\n",
        "## Mechanism\n- Checker rule `nan_inf` (stop; 1 alert(s), epoch 3): train_loss is NaN at epoch 3. Observed at epoch 3: train_loss=nan. Likely cause: Learning rate too high.\n\nAttention logits overflow in fp16 once the LR warms up.\n",
        "## Recommended next experiment(s)\n- Lower the LR 10x and add warm-up. (checker rule `nan_inf`, stop at epoch 3)\n",
    ] {
        assert!(d.contains(want), "missing {want:?} in:\n{d}");
    }
    let n = f.read("exp-001/next.md");
    assert_eq!(
        n,
        "# Next experiments\n\n## From the checker\n- Lower the LR 10x and add warm-up. (checker rule `nan_inf`, stop at epoch 3)\n- The run was killed by checker (SIGTERM): nan_inf at epoch 3\n"
    );
}

/// Commands of the property test: each appends one batch, then maybe refreshes.
#[derive(Debug, Clone)]
enum Op {
    Mint {
        parent: Option<usize>,
        hyp: String,
    },
    Result {
        exp: usize,
        value: f64,
        delta: Option<f64>,
        metric: bool,
    },
    Status {
        exp: usize,
        s: u8,
    },
    Next {
        exp: usize,
        n: usize,
        labelled: bool,
    },
    Note {
        exp: usize,
        section: u8,
        text: String,
    },
    Epochs {
        exp: usize,
        from: u64,
        n: u64,
        nan_at: Option<u64>,
    },
    Checkpoint {
        exp: usize,
        epoch: u64,
        best: bool,
    },
    Alert {
        exp: usize,
        sev: u8,
        rule: u8,
    },
    Kill {
        exp: usize,
    },
    Ended {
        exp: usize,
        code: i32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let exp = 0usize..6;
    let val = prop_oneof![
        Just(0.1 + 0.2),
        Just(1e-05),
        Just(-3.5),
        Just(f64::NAN),
        -10.0f64..10.0
    ];
    prop_oneof![
        3 => (proptest::option::of(0usize..6), "[a-z |\n é]{0,90}")
            .prop_map(|(parent, hyp)| Op::Mint { parent, hyp }),
        2 => (exp.clone(), val, proptest::option::of(-1.0f64..1.0), any::<bool>())
            .prop_map(|(exp, value, delta, metric)| Op::Result { exp, value, delta, metric }),
        1 => (exp.clone(), 0u8..4).prop_map(|(exp, s)| Op::Status { exp, s }),
        1 => (exp.clone(), 0usize..3, any::<bool>())
            .prop_map(|(exp, n, labelled)| Op::Next { exp, n, labelled }),
        1 => (exp.clone(), 0u8..3, "[a-z ]{1,30}")
            .prop_map(|(exp, section, text)| Op::Note { exp, section, text }),
        // Sometimes more epochs than a curve keeps unmerged (its buckets then downsample).
        3 => (exp.clone(), 0u64..5, prop_oneof![6 => 1u64..6, 1 => Just(600u64)], proptest::option::of(0u64..10))
            .prop_map(|(exp, from, n, nan_at)| Op::Epochs { exp, from, n, nan_at }),
        1 => (exp.clone(), 0u64..10, any::<bool>())
            .prop_map(|(exp, epoch, best)| Op::Checkpoint { exp, epoch, best }),
        1 => (exp.clone(), 0u8..3, 0u8..2).prop_map(|(exp, sev, rule)| Op::Alert { exp, sev, rule }),
        1 => exp.clone().prop_map(|exp| Op::Kill { exp }),
        1 => (exp, -1i32..2).prop_map(|(exp, code)| Op::Ended { exp, code }),
    ]
}

/// The payloads of one op, given how many experiments exist (ops on missing ones still append:
/// the fold must ignore them the same way incrementally and in a rebuild).
fn payloads(op: &Op, minted: &mut usize) -> Vec<Payload> {
    let eid = |i: usize| ExpId::from_number(i as u32 + 1);
    match op {
        Op::Mint { parent, hyp } => {
            *minted += 1;
            vec![Payload::ExperimentMinted(ExperimentMinted {
                experiment_id: eid(*minted - 1),
                parent_id: parent.map(eid),
                phase: "phase_4".into(),
                hypothesis: hyp.clone(),
                rationale: String::new(),
            })]
        }
        Op::Result {
            exp,
            value,
            delta,
            metric,
        } => vec![result(
            eid(*exp).as_str(),
            OracleTier::Fail,
            if *metric { "mae" } else { "acc" },
            *value,
            *delta,
        )],
        Op::Status { exp, s } => vec![status(
            eid(*exp).as_str(),
            [
                ExperimentStatus::Running,
                ExperimentStatus::Complete,
                ExperimentStatus::Failed,
                ExperimentStatus::Aborted,
            ][*s as usize],
            "because",
        )],
        Op::Next { exp, n, labelled } => vec![Payload::NextIdeasRecorded(NextIdeasRecorded {
            experiment_id: eid(*exp),
            ideas: (0..*n)
                .map(|k| NextIdea {
                    label: labelled.then(|| format!("exp-{:03}", 10 + k)),
                    idea: format!("idea {k}"),
                    details: vec!["Rationale: r".into()],
                })
                .collect(),
        })],
        Op::Note { exp, section, text } => vec![Payload::NoteAdded(NoteAdded {
            experiment_id: eid(*exp),
            section: [
                NoteSection::WhatHappened,
                NoteSection::Mechanism,
                NoteSection::Next,
            ][*section as usize],
            text: text.clone(),
        })],
        Op::Epochs {
            exp,
            from,
            n,
            nan_at,
        } => (*from..from + n)
            .map(|e| {
                Payload::EpochEnded(EpochEnded {
                    experiment_id: eid(*exp),
                    epoch: e,
                    step: None,
                    metrics: Metrics(vec![
                        (
                            "train_loss".into(),
                            if Some(e) == *nan_at {
                                if e % 2 == 0 { f64::NAN } else { f64::INFINITY }
                            } else {
                                1.0 / (e as f64 + 1.0)
                            },
                        ),
                        ("val_acc".into(), 0.5 + e as f64 / 100.0),
                    ]),
                    learning_rate: Some(0.01 / (e as f64 + 1.0)),
                    wall_time_seconds: Some(e as f64),
                    gpu_memory_mb: None,
                })
            })
            .collect(),
        Op::Checkpoint { exp, epoch, best } => vec![checkpoint_saved(
            eid(*exp),
            *epoch,
            format!("ck/{epoch}.pt"),
            if *best {
                CheckpointReason::Best
            } else {
                CheckpointReason::Periodic
            },
        )],
        Op::Alert { exp, sev, rule } => vec![Payload::AlertRaised(AlertRaised {
            experiment_id: eid(*exp),
            rule: ["divergence", "overfit"][*rule as usize].into(),
            severity: [Severity::Info, Severity::Warn, Severity::Stop][*sev as usize],
            epoch: Some(*sev as u64),
            observed: Metrics(vec![("val_loss".into(), 2.0)]),
            thresholds: Metrics::new(),
            evidence_seqs: vec![],
            config_seq: None,
            message: "seen".into(),
            likely_cause: "cause".into(),
            recommended_action: format!("action {rule}"),
        })],
        Op::Kill { exp } => vec![Payload::RunKilled(RunKilled {
            experiment_id: eid(*exp),
            pid: Some(1),
            alert_seqs: vec![],
            signal: "SIGTERM".into(),
            by: "user".into(),
            reason: "stop".into(),
        })],
        Op::Ended { exp, code } => vec![Payload::TrainingEnded(TrainingEnded {
            experiment_id: eid(*exp),
            epoch: Some(3),
            metrics: Metrics::new(),
            wall_time_seconds: None,
            exit_code: Some(*code),
            signal: None,
        })],
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Files maintained incrementally (a refresh after some of the appends, folding from the
    /// checkpoint or from a state loaded before the append) equal a fresh rebuild from the log
    /// alone, byte for byte, and so does the state the checkpoint holds.
    #[test]
    fn incremental_projections_equal_a_rebuild(
        ops in proptest::collection::vec((op(), any::<bool>()), 1..14)
    ) {
        let f = Fixture::new("prop");
        let mut minted = 0;
        for (i, (op, refresh)) in ops.iter().enumerate() {
            let batch: Vec<(i64, Payload)> = payloads(op, &mut minted)
                .into_iter()
                .map(|p| (i as i64, p))
                .collect();
            // Half the time, as the `exp` commands do: load the state, append, then refresh
            // going on from the state loaded before the append.
            let before = (i % 2 == 1).then(|| project::load(&f.store).unwrap());
            f.append_all(&batch);
            match (refresh, before) {
                (true, Some(cur)) => drop(project::refresh_from(&f.store, cur).unwrap()),
                (true, None) => project::refresh(&f.store).unwrap(),
                (false, _) => {}
            }
        }
        project::refresh(&f.store).unwrap();
        let incremental = snapshot(&f.exp_dir());
        let state_incremental = project::current(&f.store).unwrap();
        // Every experiment's curves, as the curve cache holds them.
        let ids: Vec<ExpId> = state_incremental.experiments.iter().map(|e| e.id.clone()).collect();
        let curves_incremental: Vec<String> = project::current_with_curves(&f.store, &ids)
            .unwrap()
            .experiments
            .iter()
            .map(|e| format!("{:?}", e.curves().expect("loaded")))
            .collect();

        std::fs::remove_dir_all(f.exp_dir()).unwrap();
        std::fs::remove_dir_all(f.store.state_dir()).unwrap();
        project::rebuild(&f.store).unwrap();
        let rebuilt = snapshot(&f.exp_dir());
        assert_same_files(&incremental, &rebuilt);
        let mut fresh = project::State::new();
        for ev in f.store.events(1).unwrap() {
            project::apply(&mut fresh, &ev);
        }
        // Compared as checkpoint bytes: floats by their bits, so NaN equals NaN.
        let covers = checkpoint::Covers { seq: fresh.seq, pos: None, header_crc: 0, first_header_crc: 0 };
        prop_assert!(checkpoint::encode(&state_incremental, &covers, &[]) == checkpoint::encode(&fresh, &covers, &[]));
        let curves_fresh: Vec<String> = fresh
            .experiments
            .iter()
            .map(|e| format!("{:?}", e.curves().expect("minted in this fold")))
            .collect();
        prop_assert_eq!(curves_incremental, curves_fresh);
    }
}

#[test]
fn rebuild_after_deleting_experiments_restores_every_file_byte_for_byte() {
    let f = golden_fixture();
    f.append(
        30,
        Payload::NoteAdded(NoteAdded {
            experiment_id: id("exp-002"),
            section: NoteSection::Next,
            text: "try dropout 0.3".into(),
        }),
    );
    project::refresh(&f.store).unwrap();
    let before = snapshot(&f.exp_dir());
    assert!(before.contains_key(Path::new("exp-002/next.md")));
    assert!(before.contains_key(Path::new("exp-003/diagnosis.md")));
    std::fs::remove_dir_all(f.exp_dir()).unwrap();
    let r = project::rebuild(&f.store).unwrap();
    assert_eq!(r.checkpoint, "not used");
    assert_same_files(&before, &snapshot(&f.exp_dir()));
}

#[test]
fn trainer_and_agent_files_are_never_written_or_deleted() {
    let f = golden_fixture();
    project::refresh(&f.store).unwrap();
    let dir = f.exp_dir().join("exp-001");
    let theirs = [
        ("metrics.jsonl", "{\"event\":\"epoch_end\"}\n"),
        ("training_status.json", "{}"),
        ("hypothesis.md", "# Hypothesis\n"),
        ("result.md", "---\noracle_tier: fail\n---\n"),
    ];
    for (name, text) in theirs {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let mtimes: Vec<_> = theirs
        .iter()
        .map(|(n, _)| std::fs::metadata(dir.join(n)).unwrap().modified().unwrap())
        .collect();
    f.append(40, ideas("exp-001", &["new idea"]));
    project::refresh(&f.store).unwrap();
    project::rebuild(&f.store).unwrap();
    for ((name, text), mtime) in theirs.iter().zip(mtimes) {
        assert_eq!(std::fs::read_to_string(dir.join(name)).unwrap(), *text);
        assert_eq!(
            std::fs::metadata(dir.join(name))
                .unwrap()
                .modified()
                .unwrap(),
            mtime
        );
    }
}

/// Refresh with a planted checkpoint: it must be discarded (saying why) and the files must equal
/// a rebuild.
fn assert_discarded(f: &Fixture, planted: &[u8], why: &str) {
    let p = checkpoint::path(&f.store.state_dir());
    std::fs::write(&p, planted).unwrap();
    std::fs::remove_dir_all(f.exp_dir()).unwrap();
    let r = project::refresh_report(&f.store).unwrap();
    assert!(
        r.checkpoint.starts_with("discarded") && r.checkpoint.contains(why),
        "{why}: {}",
        r.checkpoint
    );
    assert_eq!(r.from_seq, 1, "folded from the start");
    let refreshed = snapshot(&f.exp_dir());
    project::rebuild(&f.store).unwrap();
    assert_same_files(&refreshed, &snapshot(&f.exp_dir()));
    // And the checkpoint it saved instead is trusted next time.
    let r = project::refresh_report(&f.store).unwrap();
    assert_eq!(r.checkpoint, "used");
}

#[test]
fn corrupt_wrong_version_stale_and_foreign_checkpoints_are_discarded() {
    let f = golden_fixture();
    project::refresh(&f.store).unwrap();
    let p = checkpoint::path(&f.store.state_dir());
    let good = std::fs::read(&p).unwrap();
    assert_eq!(
        project::refresh_report(&f.store).unwrap().checkpoint,
        "used"
    );

    let mut corrupt = good.clone();
    let at = corrupt.len() / 2;
    corrupt[at] ^= 0x40;
    assert_discarded(&f, &corrupt, "checksum");
    assert_discarded(&f, &good[..good.len() - 3], "corrupt");
    assert_discarded(&f, b"garbage", "magic");
    let mut version = good.clone();
    version[8..12].copy_from_slice(&(checkpoint::VERSION + 1).to_le_bytes());
    assert_discarded(&f, &version, "version");

    // Foreign: a valid checkpoint of another store with the same shape of log.
    let other = Fixture::new("prod-001 (a copy)");
    other.append_all(&[
        (1, mint("exp-001", None, "TFT")),
        (2, mint("exp-002", None, "x")),
    ]);
    for k in 3..19 {
        other.append(k, ideas("exp-001", &["filler"]));
    }
    project::refresh(&other.store).unwrap();
    let foreign = std::fs::read(checkpoint::path(&other.store.state_dir())).unwrap();
    assert_discarded(&f, &foreign, "foreign");

    // Stale: the log was cut back below the checkpoint's record and grew different records.
    let g = Fixture::new("stale");
    g.append(1, mint("exp-001", None, "first"));
    project::refresh(&g.store).unwrap();
    let old = std::fs::read(checkpoint::path(&g.store.state_dir())).unwrap();
    let log = g.store.log();
    let first = zolog::log::RecordPos {
        segment_first_seq: 1,
        offset: 32,
        seq: 1,
    };
    let h = log.frame_header_at(&first).unwrap().unwrap();
    log.cut_at(1, 32 + h.frame_len() as u64).unwrap();
    // Beyond the end of the log now.
    assert_discarded(&g, &old, "stale");
    g.append(2, mint("exp-001", None, "a different first"));
    assert_discarded(&g, &old, "stale");
    assert!(g.read("CHECKLIST.md").contains("a different first"));
}

fn mechanism(n: &str, text: &str) -> Payload {
    Payload::NoteAdded(NoteAdded {
        experiment_id: id(n),
        section: NoteSection::Mechanism,
        text: text.into(),
    })
}

/// A refresh folds only what came after the checkpoint on disk. It saves the checkpoint when it
/// renders the registry (or many experiments' files): folding that again would be dear; a cheap
/// refresh (one experiment's note) leaves the checkpoint lagging, and the refresh that brings the
/// lag to SAVE_EVERY_EVENTS saves.
#[test]
fn refresh_folds_only_what_is_new() {
    let f = golden_fixture();
    let r = project::refresh_report(&f.store).unwrap();
    assert_eq!((r.checkpoint.as_str(), r.from_seq), ("missing", 1));
    let seq = r.seq;
    // A registry event: registry.json, CHECKLIST.md (Next planned is unchanged but the registry
    // changed) and exp-002/next.md are rendered, and the checkpoint is saved.
    f.append(50, ideas("exp-002", &["one more"]));
    let r = project::refresh_report(&f.store).unwrap();
    assert_eq!(
        (r.checkpoint.as_str(), r.from_seq, r.events),
        ("used", seq + 1, 1)
    );
    assert!(r.files_written >= 2, "{r:?}");
    let r = project::refresh_report(&f.store).unwrap();
    assert_eq!((r.from_seq, r.events, r.files_written), (seq + 2, 0, 0));
    // A note on one experiment: its diagnosis.md is rendered, the checkpoint is not saved, and
    // the next refresh folds that one event again and writes nothing.
    f.append(55, mechanism("exp-001", "it overfits"));
    let r = project::refresh_report(&f.store).unwrap();
    assert_eq!((r.from_seq, r.events), (seq + 2, 1));
    assert!(r.files_written >= 1, "{r:?}");
    let r = project::refresh_report(&f.store).unwrap();
    assert_eq!((r.from_seq, r.events, r.files_written), (seq + 2, 1, 0));
    // Once the lag reaches SAVE_EVERY_EVENTS the refresh saves, and the next one folds nothing.
    let more: Vec<(i64, Payload)> = (1..project::SAVE_EVERY_EVENTS)
        .map(|k| (60, mechanism("exp-001", &format!("note {k}"))))
        .collect();
    f.append_all(&more);
    let r = project::refresh_report(&f.store).unwrap();
    assert_eq!(
        (r.from_seq, r.events),
        (seq + 2, project::SAVE_EVERY_EVENTS)
    );
    let r = project::refresh_report(&f.store).unwrap();
    assert_eq!(
        (r.from_seq, r.events, r.files_written),
        (seq + 2 + project::SAVE_EVERY_EVENTS, 0, 0)
    );
}

/// `Log::reader_after` (what a refresh resumes from) delivers exactly the records a reader from
/// the start delivers after that record, including when the record ends a segment.
#[test]
fn reader_after_resumes_exactly_where_a_full_read_would() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(".zo");
    std::fs::create_dir_all(&root).unwrap();
    let mut opts = StoreOptions::default();
    opts.log.segment_size = 1024;
    let store = Store::open_with(std::sync::Arc::new(zolog::log::fs::RealFs), &root, opts).unwrap();
    let log = store.log();
    let mut w = log.writer().unwrap();
    for i in 0..60u32 {
        let batch: Vec<Vec<u8>> = (0..(i % 3 + 1))
            .map(|k| vec![k as u8; 40 + i as usize])
            .collect();
        w.append(&batch).unwrap();
    }
    drop(w);
    assert!(log.segments().unwrap().len() > 5, "several segments");
    let mut all = Vec::new();
    let mut positions = Vec::new();
    let mut r = log.reader(1);
    r.poll(|rec| -> Result<(), ()> {
        all.push((rec.seq, rec.payload.to_vec()));
        Ok(())
    })
    .unwrap();
    // Every record's position, as a reader reports it after delivering it.
    for seq in 1..=all.len() as u64 {
        let mut r = log.reader(1);
        let mut n = 0;
        let _ = r.poll(|rec| -> Result<(), ()> {
            n += 1;
            if rec.seq > seq { Err(()) } else { Ok(()) }
        });
        let pos = r.last_delivered().unwrap();
        assert_eq!(pos.seq, seq);
        positions.push(pos);
    }
    for pos in positions {
        let h = log
            .frame_header_at(&pos)
            .unwrap()
            .expect("the record is there");
        let mut r = log.reader_after(&pos, &h).unwrap();
        let mut got = Vec::new();
        r.poll(|rec| -> Result<(), ()> {
            got.push((rec.seq, rec.payload.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, all[pos.seq as usize..], "after seq {}", pos.seq);
        let last = r.last_delivered().unwrap();
        assert_eq!(last.seq, all.len() as u64);
        // A position that does not hold that record is refused.
        let wrong = zolog::log::RecordPos {
            seq: pos.seq + 1,
            ..pos
        };
        assert!(log.frame_header_at(&wrong).unwrap().is_none());
    }
}

/// A long-running appender keeps the state `refresh_from` returns and never reloads the
/// checkpoint; its files still equal a rebuild's.
#[test]
fn chained_refresh_from_equals_a_rebuild() {
    let f = golden_fixture();
    let (r, mut cur) = project::refresh_from(&f.store, project::load(&f.store).unwrap()).unwrap();
    assert_eq!(r.checkpoint, "missing");
    for k in 0..5u64 {
        f.append(
            100 + k as i64,
            Payload::EpochEnded(EpochEnded {
                experiment_id: id("exp-003"),
                epoch: k,
                step: None,
                metrics: Metrics(vec![("val_loss".into(), 1.0 / (k as f64 + 1.0))]),
                learning_rate: None,
                wall_time_seconds: None,
                gpu_memory_mb: None,
            }),
        );
        let (r, next) = project::refresh_from(&f.store, cur).unwrap();
        assert_eq!((r.checkpoint.as_str(), r.events), ("in memory", 1));
        // A new epoch changes exp-003's diagnosis.md and its curves.svg, nothing else.
        assert_eq!(
            r.files_written, 2,
            "exp-003/diagnosis.md and curves.svg only: {r:?}"
        );
        cur = next;
    }
    assert!(
        cur.state()
            .get(&id("exp-003"))
            .unwrap()
            .details()
            .run
            .epochs
            == 5
    );
    let chained = snapshot(&f.exp_dir());
    std::fs::remove_dir_all(f.exp_dir()).unwrap();
    project::rebuild(&f.store).unwrap();
    assert_same_files(&chained, &snapshot(&f.exp_dir()));
}

/// A log of several read chunks (1 MiB each) is folded on two threads by a rebuild, while each
/// refresh after a small append folds its tail on one: the two give the same files, byte for
/// byte, and the same state.
#[test]
fn a_log_of_many_chunks_folds_the_same_on_two_threads_as_in_small_steps() {
    let f = Fixture::new("chunks");
    f.append(0, mint("exp-001", None, "first"));
    f.append(0, mint("exp-002", Some("exp-001"), "second"));
    project::refresh(&f.store).unwrap();
    for b in 0..16u64 {
        let batch: Vec<(i64, Payload)> = (0..1_000u64)
            .map(|k| {
                let epoch = b * 500 + k / 2;
                let x = epoch as f64;
                let metrics = vec![
                    ("train_loss_of_a_rather_long_name".into(), 1.0 / (1.0 + x)),
                    (
                        "val_loss".into(),
                        if epoch == 3_333 {
                            f64::NAN
                        } else {
                            2.0 / (1.0 + x)
                        },
                    ),
                    ("val_acc".into(), 1.0 - 1.0 / (1.0 + x)),
                ];
                let p = Payload::EpochEnded(EpochEnded {
                    experiment_id: id(if k % 2 == 0 { "exp-001" } else { "exp-002" }),
                    epoch,
                    step: Some(epoch * 10),
                    metrics: Metrics(metrics),
                    learning_rate: Some(1e-3 / (1.0 + x)),
                    wall_time_seconds: Some(x),
                    gpu_memory_mb: None,
                });
                (b as i64, p)
            })
            .collect();
        let before = project::load(&f.store).unwrap();
        f.append_all(&batch);
        let (r, _) = project::refresh_from(&f.store, before).unwrap();
        assert_eq!(
            r.events, 1_000,
            "each refresh folds only its own batch: {r:?}"
        );
    }
    let log_bytes: u64 = std::fs::read_dir(f.store.root().join("log"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        log_bytes > 2 << 20,
        "the log must span several chunks: {log_bytes} bytes"
    );
    let incremental = snapshot(&f.exp_dir());
    let state_incremental = project::current(&f.store).unwrap();

    std::fs::remove_dir_all(f.exp_dir()).unwrap();
    std::fs::remove_dir_all(f.store.state_dir()).unwrap();
    let r = project::rebuild(&f.store).unwrap();
    assert_eq!(r.events, 16_003);
    assert_same_files(&incremental, &snapshot(&f.exp_dir()));
    let covers = checkpoint::Covers {
        seq: state_incremental.seq,
        pos: None,
        header_crc: 0,
        first_header_crc: 0,
    };
    let rebuilt = project::current(&f.store).unwrap();
    assert!(
        checkpoint::encode(&state_incremental, &covers, &[])
            == checkpoint::encode(&rebuilt, &covers, &[])
    );
}

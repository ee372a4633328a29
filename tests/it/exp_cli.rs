//! `zolog exp`, `note`, `rebuild` and `import` as a user runs them.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

use super::projections::snapshot;

struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Cli {
        let c = Cli {
            dir: tempfile::tempdir().unwrap(),
        };
        c.ok(&["init", "--project", "demo"]);
        c
    }

    fn cmd(&self, args: &[&str]) -> assert_cmd::assert::Assert {
        Command::cargo_bin("zolog")
            .unwrap()
            .current_dir(self.dir.path())
            .env_remove("ZO_STORE")
            .args(args)
            .assert()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).success().get_output().stdout.clone();
        String::from_utf8(out).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.cmd(args).failure().get_output().stderr.clone();
        String::from_utf8(out).unwrap()
    }

    fn exp_dir(&self) -> PathBuf {
        self.dir.path().join(".zo/experiments")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Number of events in the log.
    fn events(&self) -> usize {
        self.ok(&["log"]).lines().count()
    }
}

#[test]
fn mint_result_next_note_list_show() {
    let c = Cli::new();
    assert_eq!(
        c.ok(&["exp", "mint", "--hypothesis", "TFT beats LSTM"]),
        "exp-001\n"
    );
    let j: serde_json::Value = serde_json::from_str(&c.ok(&[
        "exp", "mint", "--parent", "exp-001", "--phase", "phase_5", "--json",
    ]))
    .unwrap();
    assert_eq!(j["id"], "exp-002");
    c.ok(&[
        "exp",
        "result",
        "exp-001",
        "--tier",
        "should_pass",
        "--metric",
        "mae=0.05",
    ]);
    let j: serde_json::Value = serde_json::from_str(&c.ok(&[
        "exp",
        "result",
        "exp-002",
        "--tier",
        "fail",
        "--metric",
        "mae=0.04",
        "--secondary",
        "rmse=0.1",
        "--shortfall",
        "weak at horizon 3",
        "--json",
    ]))
    .unwrap();
    assert_eq!(j["status"], "complete");
    assert!((j["delta_vs_parent"].as_f64().unwrap() + 0.01).abs() < 1e-12);
    c.ok(&[
        "exp", "status", "exp-002", "aborted", "--reason", "diverged",
    ]);
    let next = c.write(
        "next.md",
        "# Next experiments\n\n## exp-003\n- Add clipping at 1.0\n- Rationale: grad_norm spiked\n",
    );
    c.ok(&["exp", "next", "exp-002", "--from", next.to_str().unwrap()]);
    c.ok(&[
        "note",
        "exp-002",
        "--section",
        "mechanism",
        "fp16 overflow in attention",
    ]);

    let list: serde_json::Value = serde_json::from_str(&c.ok(&["exp", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[1]["status"], "aborted");
    assert_eq!(list[1]["phase"], "phase_5");
    assert_eq!(list[1]["next_ideas"][0], "exp-003: Add clipping at 1.0");
    let text = c.ok(&["exp", "list"]);
    assert!(
        text.contains("exp-002   exp-001   aborted   mae=0.04"),
        "{text}"
    );

    let show: serde_json::Value =
        serde_json::from_str(&c.ok(&["exp", "show", "exp-002", "--json"])).unwrap();
    assert_eq!(show["lineage"], serde_json::json!(["exp-001", "exp-002"]));
    assert_eq!(
        show["experiment"]["result"]["secondary_metrics"]["rmse"],
        0.1
    );
    assert_eq!(show["status_reason"], "diverged");
    let text = c.ok(&["exp", "show", "exp-002"]);
    assert!(text.contains("lineage:     exp-001 → exp-002"), "{text}");
    assert!(text.contains("fp16 overflow in attention"), "{text}");

    let next_md = std::fs::read_to_string(c.exp_dir().join("exp-002/next.md")).unwrap();
    assert_eq!(
        next_md,
        "# Next experiments\n\n## exp-003\n- Add clipping at 1.0\n- Rationale: grad_norm spiked\n"
    );
    let checklist = std::fs::read_to_string(c.exp_dir().join("CHECKLIST.md")).unwrap();
    assert!(
        checklist.contains(
            "| exp-002 | exp-001 | aborted | — | mae=0.04 | -0.01 | fail | weak at horizon 3 |"
        ),
        "{checklist}"
    );
    assert!(checklist.ends_with("## Next planned\n\n- exp-003: Add clipping at 1.0\n"));
}

#[test]
fn result_from_result_md_and_malformed_front_matter_appends_nothing() {
    let c = Cli::new();
    c.ok(&["exp", "mint"]);
    let before = c.events();
    let bad = c.write(
        "result.md",
        "---\noracle_tier: should_pass\nprimary_metric:\n  name: mae\nsecondary_metrics: {rmse: 0.1}\n---\n\n## Shortfalls\n- x\n",
    );
    let err = c.fails(&["exp", "result", "exp-001", "--from", bad.to_str().unwrap()]);
    assert!(err.contains("result.md:3:"), "names file and line: {err}");
    assert!(
        err.contains("primary_metric.value"),
        "names what is missing: {err}"
    );
    let none = c.write("none.md", "# Result\n\nno front matter\n");
    let err = c.fails(&["exp", "result", "exp-001", "--from", none.to_str().unwrap()]);
    assert!(err.contains("none.md:1: no YAML front matter"), "{err}");
    let yaml = c.write("yaml.md", "---\noracle_tier: [fail\n---\n");
    let err = c.fails(&["exp", "result", "exp-001", "--from", yaml.to_str().unwrap()]);
    assert!(
        err.contains("yaml.md:") && err.contains("invalid YAML"),
        "{err}"
    );
    assert_eq!(c.events(), before, "nothing appended");

    let good = c.write(
        "good.md",
        "---\noracle_tier: could_pass\nprimary_metric:\n  name: mae\n  value: 0.0412\n  delta_vs_parent: -0.0086\nevaluated_at: 2026-11-24T09:53:33.639907Z\n---\n\n## Shortfalls\n- Horizon 3 still weak\n- Slow\n",
    );
    c.ok(&["exp", "result", "exp-001", "--from", good.to_str().unwrap()]);
    let reg = std::fs::read_to_string(c.exp_dir().join("registry.json")).unwrap();
    assert!(reg.contains("\"delta_vs_parent\": -0.0086"), "{reg}");
    assert!(
        reg.contains("\"evaluated_at\": \"2026-11-24T09:53:33.639907Z\""),
        "{reg}"
    );
    assert!(
        reg.contains("\"Horizon 3 still weak\",\n          \"Slow\""),
        "{reg}"
    );
}

#[test]
fn path_traversing_and_unknown_ids_are_refused_before_anything_is_written() {
    let c = Cli::new();
    c.ok(&["exp", "mint"]);
    let before = c.events();
    let files = snapshot(&c.exp_dir());
    for bad in [
        "../x",
        "/abs",
        "",
        "exp-1/../../x",
        "exp-001/..",
        "..",
        "exp-",
        "EXP-001",
    ] {
        for args in [
            vec!["exp", "result", bad, "--tier", "fail", "--metric", "a=1"],
            vec!["exp", "status", bad, "failed", "--reason", "r"],
            vec!["exp", "next", bad, "--idea", "i"],
            vec!["exp", "show", bad],
            vec!["note", bad, "--section", "next", "t"],
            vec!["exp", "mint", "--parent", bad],
        ] {
            let err = c.fails(&args);
            assert!(err.contains("invalid experiment id"), "{args:?}: {err}");
        }
    }
    assert!(
        zolog::event::ExpId::parse("exp-1\0").is_err(),
        "NUL cannot pass"
    );
    let err = c.fails(&[
        "exp", "result", "exp-009", "--tier", "fail", "--metric", "a=1",
    ]);
    assert!(err.contains("unknown experiment exp-009"), "{err}");
    let err = c.fails(&["exp", "mint", "--parent", "exp-042"]);
    assert!(err.contains("unknown experiment exp-042"), "{err}");
    let err = c.fails(&["note", "exp-002", "--section", "mechanism", "x"]);
    assert!(err.contains("unknown experiment exp-002"), "{err}");
    assert_eq!(c.events(), before, "nothing appended");
    assert_eq!(snapshot(&c.exp_dir()), files, "no file written");
    assert!(!c.dir.path().join("x").exists() && !Path::new("/abs").exists());
}

#[test]
fn rebuild_command_restores_deleted_projections() {
    let c = Cli::new();
    c.ok(&["exp", "mint", "--hypothesis", "h"]);
    c.ok(&[
        "exp",
        "result",
        "exp-001",
        "--tier",
        "fail",
        "--metric",
        "loss=1e-05",
    ]);
    c.ok(&["note", "exp-001", "--section", "next", "try again"]);
    let before = snapshot(&c.exp_dir());
    std::fs::remove_dir_all(c.exp_dir()).unwrap();
    let out = c.ok(&["rebuild"]);
    assert!(out.contains("1 experiment(s)"), "{out}");
    assert_eq!(snapshot(&c.exp_dir()), before);
    let j: serde_json::Value = serde_json::from_str(&c.ok(&["rebuild", "--json"])).unwrap();
    assert_eq!(j["files_written"], 0);
}

/// A registry as the Python layer (pydantic `model_dump_json(indent=2)`) writes it, checked
/// against pydantic itself: non-ASCII text as is, floats in shortest form (`0.00001`), NaN as
/// null, datetimes without a fraction when their microseconds are zero, next ideas with
/// `exp-NNN:` labels, every status, results with given and absent deltas (exp-004 was evaluated
/// before its parent's result was recorded), and no trailing newline.
pub const PYTHON_REGISTRY: &str = r#"{
  "schema_version": 1,
  "project": "prod-001",
  "created": "2026-11-20T08:00:00.000001Z",
  "experiments": [
    {
      "id": "exp-001",
      "phase": "phase_4",
      "parent_id": null,
      "created": "2026-11-20T08:05:12.120000Z",
      "hypothesis": "LSTM baseline | horizon 1–6",
      "rationale": "",
      "status": "complete",
      "result": {
        "oracle_tier": "should_pass",
        "primary_metric": {
          "name": "mae_t+3",
          "value": 0.041234567,
          "delta_vs_parent": null
        },
        "secondary_metrics": {
          "rmse": 0.07,
          "r2": 0.91,
          "mape": null
        },
        "shortfalls": [
          "Horizon 3 error still above target",
          "Weekend effects under-fit"
        ],
        "evaluated_at": "2026-11-20T10:00:00.500000Z"
      },
      "next_ideas": [
        "exp-002: Temporal Fusion Transformer with static covariates",
        "exp-003: Add holiday calendar features"
      ],
      "artifacts_dir": ".zo/experiments/exp-001"
    },
    {
      "id": "exp-002",
      "phase": "phase_4",
      "parent_id": "exp-001",
      "created": "2026-11-21T09:00:00Z",
      "hypothesis": "TFT beats LSTM on long-horizon (≥ t+3) — attention über Zeit",
      "rationale": "LSTM degrades past horizon-3",
      "status": "complete",
      "result": {
        "oracle_tier": "must_pass",
        "primary_metric": {
          "name": "mae_t+3",
          "value": 0.0327,
          "delta_vs_parent": -0.008534567
        },
        "secondary_metrics": {},
        "shortfalls": [],
        "evaluated_at": "2026-11-21T12:30:00Z"
      },
      "next_ideas": [],
      "artifacts_dir": ".zo/experiments/exp-002"
    },
    {
      "id": "exp-003",
      "phase": "phase_4",
      "parent_id": "exp-001",
      "created": "2026-11-22T09:00:00Z",
      "hypothesis": "",
      "rationale": "",
      "status": "failed",
      "result": null,
      "next_ideas": [
        "plain idea without a label"
      ],
      "artifacts_dir": ".zo/experiments/exp-003"
    },
    {
      "id": "exp-004",
      "phase": "phase_4",
      "parent_id": "exp-002",
      "created": "2026-11-23T09:00:00Z",
      "hypothesis": "Evaluated before its parent's re-run",
      "rationale": "",
      "status": "aborted",
      "result": {
        "oracle_tier": "fail",
        "primary_metric": {
          "name": "mae_t+3",
          "value": 0.00001,
          "delta_vs_parent": null
        },
        "secondary_metrics": {},
        "shortfalls": [],
        "evaluated_at": "2026-11-23T10:00:00Z"
      },
      "next_ideas": [],
      "artifacts_dir": ".zo/experiments/exp-004"
    },
    {
      "id": "exp-010",
      "phase": "phase_5",
      "parent_id": "exp-002",
      "created": "2026-11-24T09:53:33.639907Z",
      "hypothesis": "Still running",
      "rationale": "",
      "status": "running",
      "result": null,
      "next_ideas": [],
      "artifacts_dir": ".zo/experiments/exp-010"
    }
  ]
}"#;

#[test]
fn import_reproduces_a_python_registry_and_is_idempotent() {
    let c = Cli::new();
    let text = PYTHON_REGISTRY.to_owned();
    let path = c.write("registry-from-python.json", &text);
    let before = c.events();
    let j: serde_json::Value =
        serde_json::from_str(&c.ok(&["import", path.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(j["minted"], 5);
    assert_eq!(j["reproduces_file"], true, "{j}");
    assert_eq!(j["warnings"], serde_json::json!([]));
    let reg = c.exp_dir().join("registry.json");
    assert_eq!(std::fs::read_to_string(&reg).unwrap(), text);
    let after = c.events();
    assert!(after > before);

    // Twice: nothing appended.
    let out = c.ok(&["import", path.to_str().unwrap()]);
    assert!(out.contains("0 event(s) appended"), "{out}");
    assert_eq!(c.events(), after);

    // From the log alone, byte for byte.
    std::fs::remove_dir_all(c.exp_dir()).unwrap();
    c.ok(&["rebuild"]);
    assert_eq!(std::fs::read_to_string(&reg).unwrap(), text);
    let checklist = std::fs::read_to_string(c.exp_dir().join("CHECKLIST.md")).unwrap();
    assert!(
        checklist.contains("Project: `prod-001` · 5 experiment(s)"),
        "{checklist}"
    );
    assert!(checklist.contains("| exp-004 | exp-002 | aborted | Evaluated before its parent's re-run | mae_t+3=1e-05 | — | fail | — |"), "{checklist}");
    assert!(
        checklist.ends_with("## Next planned\n\n- plain idea without a label\n"),
        "{checklist}"
    );

    // The next mint continues the numbering.
    assert_eq!(c.ok(&["exp", "mint"]), "exp-011\n");

    // A conflicting registry is refused whole.
    let conflicting = text.replace("LSTM degrades past horizon-3", "something else");
    let p2 = c.write("conflict.json", &conflicting);
    let n = c.events();
    let err = c.fails(&["import", p2.to_str().unwrap()]);
    assert!(err.contains("exp-002 already exists"), "{err}");
    assert_eq!(c.events(), n);
    // A path-escaping id in a registry is refused too.
    let evil = text.replace("\"id\": \"exp-010\"", "\"id\": \"../../etc\"");
    let p3 = c.write("evil.json", &evil);
    let err = c.fails(&["import", p3.to_str().unwrap()]);
    assert!(err.contains("invalid experiment id"), "{err}");
    assert_eq!(c.events(), n);
}

#[test]
fn import_brings_later_python_changes_in() {
    let c = Cli::new();
    let text = PYTHON_REGISTRY.to_owned();
    // First the registry as it was before exp-010 got a result and exp-003 was marked failed.
    let older = text.replace("\"status\": \"failed\"", "\"status\": \"running\"");
    let p = c.write("older.json", &older);
    c.ok(&["import", p.to_str().unwrap()]);
    let p = c.write("newer.json", &text);
    let j: serde_json::Value =
        serde_json::from_str(&c.ok(&["import", p.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(
        (j["minted"].as_u64(), j["updated"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(j["events"], 1);
    assert_eq!(
        std::fs::read_to_string(c.exp_dir().join("registry.json")).unwrap(),
        text
    );
}

/// Every byte `exp list` and `exp show` print, text and `--json`, as the zolog before the read
/// path was made faster printed them (tests/it/golden/exp-read.txt; `ZOLOG_DUMP_GOLDEN=dir`
/// writes it there): the golden table (pipes, newlines, Unicode cut at 70 code points, %g edge
/// cases), a run with NaN, a checkpoint, an alert, a kill and notes, labelled ideas, ids wider
/// than their column, a NaN delta, a subnormal and a negative zero, a datetime on a whole second,
/// and an imported Python registry. Each store is read from the log alone (no checkpoint yet)
/// and again from the checkpoint: the same bytes.
#[test]
fn list_and_show_print_the_golden_bytes() {
    use super::common::checkpoint_saved;
    use super::projections::{T0, epoch_loss_acc, golden_fixture, id, mint, result};
    use zolog::event::{
        AlertRaised, CheckpointReason, Metrics, NewEvent, NextIdea, NextIdeasRecorded, NoteAdded,
        NoteSection, OracleTier, Payload, RunKilled, Source, SourceKind, Timestamp, TrainingEnded,
        TrainingStarted,
    };

    fn outputs(root: &Path, ids: &[&str]) -> String {
        let mut runs: Vec<Vec<&str>> = vec![vec!["exp", "list"], vec!["exp", "list", "--json"]];
        for i in ids {
            runs.push(vec!["exp", "show", i]);
            runs.push(vec!["exp", "show", i, "--json"]);
        }
        let mut all = String::new();
        for args in runs {
            let out = super::common::zolog(root).args(&args).assert().success();
            let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
            let dir = root.display().to_string();
            all.push_str(&format!("==> zolog {} <==\n", args.join(" ")));
            all.push_str(&text.replace(&dir, "<store>"));
        }
        all
    }

    let f = golden_fixture();
    let e = |epoch, loss, acc| epoch_loss_acc("exp-002", epoch, loss, acc);
    let note = |section, text: &str| {
        Payload::NoteAdded(NoteAdded {
            experiment_id: id("exp-002"),
            section,
            text: text.into(),
        })
    };
    f.append_all(&[
        (
            20,
            Payload::TrainingStarted(TrainingStarted {
                experiment_id: id("exp-002"),
                experiment_name: Some("tft-big".into()),
                pid: Some(7),
                host: Some("gpu-2".into()),
                total_epochs: Some(4),
                config: Default::default(),
            }),
        ),
        (21, e(0, 1.5, 0.5)),
        (22, e(1, 0.75, 0.6)),
        (23, e(2, f64::NAN, 0.55)),
        (
            24,
            checkpoint_saved(
                id("exp-002"),
                1,
                "models/checkpoints/tft/best.pt",
                CheckpointReason::Best,
            ),
        ),
        (
            25,
            Payload::AlertRaised(AlertRaised {
                experiment_id: id("exp-002"),
                rule: "nan_inf".into(),
                severity: zolog::event::Severity::Stop,
                epoch: Some(2),
                observed: Metrics(vec![("train_loss".into(), f64::NAN)]),
                thresholds: Metrics::new(),
                evidence_seqs: vec![23],
                config_seq: None,
                message: "train_loss is NaN at epoch 2.".into(),
                likely_cause: "Learning rate too high.".into(),
                recommended_action: "Lower the LR 10x.".into(),
            }),
        ),
        (
            26,
            Payload::RunKilled(RunKilled {
                experiment_id: id("exp-002"),
                pid: Some(7),
                alert_seqs: vec![25],
                signal: "SIGTERM".into(),
                by: "checker".into(),
                reason: "nan_inf at epoch 2".into(),
            }),
        ),
        (
            27,
            Payload::TrainingEnded(TrainingEnded {
                experiment_id: id("exp-002"),
                epoch: Some(2),
                metrics: Metrics::new(),
                wall_time_seconds: Some(21.0),
                exit_code: None,
                signal: Some(15),
            }),
        ),
        (
            28,
            note(NoteSection::WhatHappened, "Loss spiked\nat epoch 2 | twice"),
        ),
        (29, note(NoteSection::Next, "Try bf16.")),
        (30, mint("exp-1000", Some("exp-002"), "\twide\u{1f}id  ")),
        (
            31,
            result(
                "exp-1000",
                OracleTier::Fail,
                "a_really_long_metric_name",
                -123456789.0,
                Some(f64::NAN),
            ),
        ),
        (
            33,
            Payload::NextIdeasRecorded(NextIdeasRecorded {
                experiment_id: id("exp-1000"),
                ideas: vec![
                    NextIdea {
                        label: Some("exp-1001".into()),
                        idea: "Wider | deeper".into(),
                        details: vec!["- Rationale: why".into()],
                    },
                    NextIdea {
                        label: None,
                        idea: "Plain".into(),
                        details: vec![],
                    },
                ],
            }),
        ),
    ]);
    // Minted on a whole second: registry datetimes then have no fraction.
    let whole = Timestamp((T0 / 1_000_000_000 + 60) * 1_000_000_000);
    f.store
        .append(&[NewEvent {
            time: whole,
            appended: None,
            source: Source {
                kind: SourceKind::Cli,
                pid: None,
                host: None,
            },
            payload: mint("exp-123456789", Some("exp-1000"), &"x ".repeat(40)),
        }])
        .unwrap();
    f.append(
        61,
        result(
            "exp-123456789",
            OracleTier::MustPass,
            "loss",
            5e-324,
            Some(-0.0),
        ),
    );
    let root = f.store.root().to_path_buf();
    let ids = [
        "exp-001",
        "exp-002",
        "exp-003",
        "exp-004",
        "exp-006",
        "exp-1000",
        "exp-123456789",
    ];
    let from_log = outputs(&root, &ids);
    zolog::project::refresh(&f.store).unwrap();
    assert!(
        root.join("state")
            .join(zolog::project::checkpoint::FILE_NAME)
            .exists(),
        "a checkpoint to read from"
    );
    let from_checkpoint = outputs(&root, &ids);
    assert_eq!(
        from_log, from_checkpoint,
        "the log alone and the checkpoint"
    );

    // An imported Python registry.
    let c = Cli::new();
    let path = c.write("registry.json", PYTHON_REGISTRY);
    c.ok(&["import", path.to_str().unwrap()]);
    let imported = outputs(
        &c.dir.path().join(".zo"),
        &["exp-001", "exp-002", "exp-003", "exp-004", "exp-010"],
    );

    let all = format!("{from_checkpoint}{imported}");
    if let Ok(d) = std::env::var("ZOLOG_DUMP_GOLDEN") {
        std::fs::write(Path::new(&d).join("exp-read.txt"), &all).unwrap();
    }
    let golden = include_str!("golden/exp-read.txt");
    if all != golden {
        let line = all
            .lines()
            .zip(golden.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "differs from tests/it/golden/exp-read.txt at line {}:\n  got  {:?}\n  want {:?}",
            line + 1,
            all.lines().nth(line),
            golden.lines().nth(line)
        );
    }
}

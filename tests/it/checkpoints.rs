//! Checkpoint cadence, record/list/verify, and resume (issue 4).

use std::fs;
use std::path::Path;

use zolog::checkpoint::{self, FileCheck, RecordRequest, RunKind};
use zolog::event::{
    CheckpointReason, Json, Metrics, NewEvent, Payload, Source, SourceKind, TrainingStarted,
};

use super::ingest::{Project, exp};

fn run(p: &Project, args: &[&str]) -> (i32, String, String) {
    let out = p.zolog().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const FULL: &[&str] = &[
    "epoch",
    "model_state_dict",
    "optimizer_state_dict",
    "rng_state",
];

/// Write a checkpoint file under the project and record it.
fn save(
    p: &Project,
    rel: &str,
    epoch: u64,
    reason: CheckpointReason,
    keys: &[&str],
) -> checkpoint::Record {
    save_with(p, rel, Some(epoch), reason, keys, None, None)
}

fn save_with(
    p: &Project,
    rel: &str,
    epoch: Option<u64>,
    reason: CheckpointReason,
    keys: &[&str],
    fold: Option<u32>,
    trial: Option<u64>,
) -> checkpoint::Record {
    let file = p.dir.join(rel);
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(
        &file,
        format!("weights of {rel} at epoch {epoch:?}").repeat(1000),
    )
    .unwrap();
    checkpoint::record(
        &p.store,
        RecordRequest {
            experiment_id: exp(),
            epoch,
            path: file,
            reason,
            state_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            fold,
            trial,
            metrics: Metrics::default(),
        },
        Source::this_process(SourceKind::Cli),
    )
    .unwrap()
}

fn started_with(p: &Project, config: serde_json::Value) {
    p.store
        .append(&[NewEvent::now(
            Source::this_process(SourceKind::Trainer),
            Payload::TrainingStarted(TrainingStarted {
                experiment_id: exp(),
                experiment_name: None,
                pid: None,
                host: None,
                total_epochs: Some(100),
                config: Json(config),
            }),
        )])
        .unwrap();
}

#[test]
fn should_cli_follows_the_reference_table() {
    let p = Project::new();
    // (args, expected): every row of zo-reference.md's table.
    let rows: &[(&[&str], bool)] = &[
        (&["--epoch", "9", "--total", "100"], true),
        (&["--epoch", "19", "--total", "100"], true),
        (&["--epoch", "99", "--total", "100"], true),
        (&["--epoch", "6", "--total", "7"], true),
        (&["--epoch", "0", "--total", "1"], true),
        (&["--epoch", "8", "--total", "100"], false),
        (&["--epoch", "5", "--total", "100"], false),
        (&["--epoch", "-1", "--total", "100"], false),
        (&["--epoch", "0", "--total", "0"], false),
        (&["--epoch", "10", "--total", "10"], false),
        (&["--epoch", "5", "--total", "10", "--every", "20"], false),
        (&["--epoch", "3", "--total", "100", "--best"], true),
        (&["--epoch", "0", "--total", "0", "--best"], true),
        (&["--epoch", "10", "--total", "10", "--best"], true),
        (&["--epoch", "0", "--total", "5", "--every", "0"], true),
        (&["--epoch", "3", "--total", "5", "--every", "0"], true),
        (&["--epoch", "2", "--total", "5", "--every", "-3"], true),
        (&["--epoch", "9", "--total", "10", "--every", "20"], true),
    ];
    for (args, want) in rows {
        let mut a = vec!["checkpoint", "should"];
        a.extend_from_slice(args);
        let (code, out, err) = run(&p, &a);
        assert_eq!(out.trim(), want.to_string(), "{args:?}: {err}");
        assert_eq!(code, if *want { 0 } else { 1 }, "{args:?}");
    }
    // total 25: fires at epochs 9, 19, 24.
    let fired: Vec<i64> = (0..25)
        .filter(|e| {
            let e = e.to_string();
            run(
                &p,
                &["checkpoint", "should", "--epoch", &e, "--total", "25"],
            )
            .0 == 0
        })
        .collect();
    assert_eq!(fired, vec![9, 19, 24]);
}

#[test]
fn record_list_and_verify_report_missing_and_changed_files() {
    let p = Project::new();
    let models = p.dir.join("models/checkpoints/mlp");
    fs::create_dir_all(&models).unwrap();
    for name in ["a.pt", "b.pt", "c.pt"] {
        fs::write(models.join(name), name.repeat(100_000)).unwrap();
    }
    let outside = tempfile::tempdir().unwrap();
    let abs = outside.path().canonicalize().unwrap().join("elsewhere.pt");
    fs::write(&abs, b"outside").unwrap();
    // Relative to the current directory (the project), and absolute outside the project.
    for (path, reason) in [
        ("models/checkpoints/mlp/a.pt", "periodic"),
        ("models/checkpoints/mlp/b.pt", "best"),
        ("models/checkpoints/mlp/c.pt", "last"),
        (abs.to_str().unwrap(), "manual"),
    ] {
        let (code, out, err) = run(
            &p,
            &[
                "checkpoint",
                "record",
                "exp-001",
                "--epoch",
                "9",
                "--path",
                path,
                "--reason",
                reason,
                "--keys",
                "epoch,model_state_dict,optimizer_state_dict,rng_state",
            ],
        );
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("recorded checkpoint"), "{out}");
    }
    let (code, out, _) = run(&p, &["checkpoint", "list", "exp-001", "--json"]);
    assert_eq!(code, 0);
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(list.len(), 4);
    assert_eq!(list[0]["path"], "models/checkpoints/mlp/a.pt");
    assert_eq!(list[0]["size_bytes"], 400_000);
    let want = format!(
        "blake3:{}",
        blake3::hash("a.pt".repeat(100_000).as_bytes()).to_hex()
    );
    assert_eq!(list[0]["content_hash"], want.as_str());
    assert_eq!(list[0]["state_keys"][1], "model_state_dict");
    assert_eq!(list[3]["path"], abs.to_str().unwrap());
    let (code, out, _) = run(&p, &["checkpoint", "verify", "exp-001"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 missing or changed"), "{out}");

    fs::write(models.join("b.pt"), b"overwritten by someone").unwrap();
    fs::remove_file(models.join("c.pt")).unwrap();
    let (code, out, _) = run(&p, &["checkpoint", "verify", "exp-001"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("best epoch 9 models/checkpoints/mlp/b.pt: CHANGED"),
        "{out}"
    );
    assert!(
        out.contains("last epoch 9 models/checkpoints/mlp/c.pt: MISSING"),
        "{out}"
    );
    assert!(out.contains("a.pt: ok"), "{out}");
    assert!(out.contains("2 missing or changed"), "{out}");

    // A file recorded again (last.pt on every checkpoint) supersedes its earlier record.
    fs::write(models.join("c.pt"), b"epoch 19").unwrap();
    fs::write(models.join("b.pt"), "b.pt".repeat(100_000)).unwrap();
    let (code, _, err) = run(
        &p,
        &[
            "checkpoint",
            "record",
            "exp-001",
            "--epoch",
            "19",
            "--path",
            "models/checkpoints/mlp/c.pt",
            "--reason",
            "last",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v = checkpoint::verify(&p.store, &exp()).unwrap();
    let checks: Vec<&FileCheck> = v.iter().map(|x| &x.check).collect();
    assert!(
        matches!(checks[2], FileCheck::Superseded { .. }),
        "{checks:?}"
    );
    assert!(checks.iter().all(|c| !c.is_problem()), "{checks:?}");

    // An experiment that was never minted is refused.
    let (code, _, err) = run(
        &p,
        &[
            "checkpoint",
            "record",
            "exp-404",
            "--path",
            "models/checkpoints/mlp/a.pt",
            "--reason",
            "manual",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("unknown experiment exp-404"), "{err}");
}

/// The newest checkpoint has `defect`; resume must take the one before.
fn check_resume_skips(defect: &str, why: &str) {
    let p = Project::new();
    save(&p, "ck/e9.pt", 9, CheckpointReason::Periodic, FULL);
    let keys: Vec<&str> = if defect == "no optimizer" {
        vec!["epoch", "model_state_dict", "rng_state"]
    } else {
        FULL.to_vec()
    };
    save(&p, "ck/e19.pt", 19, CheckpointReason::Periodic, &keys);
    match defect {
        "missing" => fs::remove_file(p.dir.join("ck/e19.pt")).unwrap(),
        "corrupted" => {
            let f = p.dir.join("ck/e19.pt");
            let mut b = fs::read(&f).unwrap();
            b[100] ^= 1; // same size, one bit flipped
            fs::write(&f, b).unwrap();
        }
        _ => {}
    }
    let plan = checkpoint::resume(&p.store, &exp()).unwrap();
    assert_eq!(plan.kind, RunKind::DeepLearning);
    let chosen = plan.checkpoint.as_ref().expect(defect);
    assert_eq!(chosen.checkpoint.path, "ck/e9.pt", "{defect}");
    assert_eq!(plan.candidates.len(), 2);
    assert!(!plan.candidates[0].qualifies);
    let reasons = plan.candidates[0].why_not.join("; ");
    assert!(reasons.contains(why), "{defect}: {reasons}");
    // The command says the same, and prints the file to load.
    let (code, out, err) = run(&p, &["resume", "exp-001"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(Path::new(out.trim()), p.dir.join("ck/e9.pt"));
    assert!(err.contains("skipped seq"), "{err}");
    assert!(err.contains(why), "{err}");
}

#[test]
fn resume_skips_a_missing_newest_checkpoint() {
    check_resume_skips("missing", "file missing");
}

#[test]
fn resume_skips_a_corrupted_newest_checkpoint() {
    check_resume_skips("corrupted", "file changed since it was recorded");
}

#[test]
fn resume_skips_a_newest_checkpoint_without_optimizer_state() {
    check_resume_skips("no optimizer", "lacks optimizer_state_dict");
}

#[test]
fn resume_with_nothing_usable_says_why_for_each_candidate() {
    let p = Project::new();
    save(
        &p,
        "ck/a.pt",
        0,
        CheckpointReason::Periodic,
        &["model_state_dict"],
    );
    save(&p, "ck/b.pt", 1, CheckpointReason::Best, FULL);
    fs::remove_file(p.dir.join("ck/b.pt")).unwrap();
    // A checkpoint known only from metrics.jsonl: no hash, no keys.
    fs::write(
        p.metrics(),
        "{\"timestamp\": \"2026-11-24T09:50:05+00:00\", \"event\": \"checkpoint_saved\", \"experiment_id\": \"exp-001\", \"epoch\": 2, \"metrics\": {}, \"checkpoint_path\": \"ck/last.pt\"}\n",
    )
    .unwrap();
    fs::write(p.dir.join("ck/last.pt"), b"x").unwrap();
    let (code, _, err) = run(&p, &["ingest", p.metrics().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&p, &["resume", "exp-001", "--json"]);
    assert_eq!(code, 1, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["found"], false);
    let c = v["plan"]["candidates"].as_array().unwrap();
    assert_eq!(c.len(), 3);
    let why = |i: usize| c[i]["why_not"].to_string();
    assert!(why(0).contains("no state keys recorded"), "{}", why(0));
    assert!(why(1).contains("file missing"), "{}", why(1));
    assert!(
        why(2).contains("lacks epoch, optimizer_state_dict, rng_state"),
        "{}",
        why(2)
    );
    let (code, out, err) = run(&p, &["resume", "exp-001"]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.matches("skipped seq").count(), 3, "{err}");
    assert!(err.contains("no checkpoint of exp-001 qualifies"), "{err}");
}

#[test]
fn resume_requires_scheduler_and_scaler_state_when_the_run_used_them() {
    // Evidence from the TrainingStarted config.
    for (config, key) in [
        (
            serde_json::json!({"lr": 0.1, "scheduler": "cosine"}),
            "scheduler_state_dict",
        ),
        (
            serde_json::json!({"training": {"amp": true}}),
            "scaler_state_dict",
        ),
    ] {
        let p = Project::new();
        started_with(&p, config.clone());
        let mut with: Vec<&str> = FULL.to_vec();
        with.push(key);
        save(&p, "ck/old.pt", 9, CheckpointReason::Periodic, &with);
        save(&p, "ck/new.pt", 19, CheckpointReason::Last, FULL);
        let plan = checkpoint::resume(&p.store, &exp()).unwrap();
        assert_eq!(
            plan.checkpoint.unwrap().checkpoint.path,
            "ck/old.pt",
            "{config}"
        );
        let why = plan.candidates[0].why_not.join("; ");
        assert!(why.contains(key), "{why}");
        assert!(why.contains("TrainingStarted config"), "{why}");
    }
    // Evidence from an earlier checkpoint's keys.
    let p = Project::new();
    started_with(&p, serde_json::json!({"lr": 0.1, "scheduler": null}));
    let mut with: Vec<&str> = FULL.to_vec();
    with.push("scheduler_state_dict");
    save(&p, "ck/old.pt", 9, CheckpointReason::Periodic, &with);
    save(&p, "ck/new.pt", 19, CheckpointReason::Last, FULL);
    let plan = checkpoint::resume(&p.store, &exp()).unwrap();
    assert_eq!(plan.checkpoint.unwrap().checkpoint.path, "ck/old.pt");
    // Without any evidence, the base keys are enough.
    let p = Project::new();
    started_with(&p, serde_json::json!({"lr": 0.1, "amp": false}));
    save(&p, "ck/old.pt", 9, CheckpointReason::Periodic, FULL);
    save(&p, "ck/new.pt", 19, CheckpointReason::Last, FULL);
    let plan = checkpoint::resume(&p.store, &exp()).unwrap();
    assert_eq!(plan.checkpoint.unwrap().checkpoint.path, "ck/new.pt");
    assert_eq!(plan.required_keys.len(), 4);
}

#[test]
fn resume_classical_takes_the_latest_search_state_and_completed_folds() {
    let p = Project::new();
    let fold = |rel: &str, f: u32| {
        save_with(&p, rel, None, CheckpointReason::Fold, &[], Some(f), None);
    };
    let search = |rel: &str, t: u64| {
        save_with(
            &p,
            rel,
            None,
            CheckpointReason::SearchState,
            &[],
            None,
            Some(t),
        );
    };
    fold("cv/fold0.joblib", 0);
    search("cv/study_t3.pkl", 3);
    fold("cv/fold1.joblib", 1);
    fold("cv/fold1_retry.joblib", 1);
    search("cv/study_t4.pkl", 4);
    save_with(
        &p,
        "cv/best.joblib",
        None,
        CheckpointReason::Best,
        &[],
        None,
        None,
    );
    // The newest fold-1 file is corrupted and the newest search state is gone.
    fs::write(p.dir.join("cv/fold1_retry.joblib"), b"truncated").unwrap();
    fs::remove_file(p.dir.join("cv/study_t4.pkl")).unwrap();
    let plan = checkpoint::resume(&p.store, &exp()).unwrap();
    assert_eq!(plan.kind, RunKind::Classical);
    assert_eq!(plan.checkpoint.as_ref().unwrap().checkpoint.trial, Some(3));
    let folds: Vec<(Option<u32>, &str)> = plan
        .folds
        .iter()
        .map(|r| (r.checkpoint.fold, r.checkpoint.path.as_str()))
        .collect();
    assert_eq!(
        folds,
        vec![(Some(0), "cv/fold0.joblib"), (Some(1), "cv/fold1.joblib")]
    );
    assert_eq!(
        plan.best.as_ref().unwrap().checkpoint.path,
        "cv/best.joblib"
    );
    let (code, out, err) = run(&p, &["resume", "exp-001"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("search_state ") && lines[0].ends_with("cv/study_t3.pkl"));
    assert!(lines[1].starts_with("fold 0 ") && lines[1].ends_with("cv/fold0.joblib"));
    assert!(lines[2].starts_with("fold 1 ") && lines[2].ends_with("cv/fold1.joblib"));
    assert!(lines[3].starts_with("best "));
    assert!(err.contains("study_t4.pkl: file missing"), "{err}");
    assert!(err.contains("fold1_retry.joblib: file changed"), "{err}");
}

#[test]
fn a_symlinked_checkpoint_is_recorded_under_its_own_name() {
    let p = Project::new();
    fs::create_dir_all(p.dir.join("ck")).unwrap();
    fs::write(p.dir.join("ck/e19.pt"), b"epoch 19").unwrap();
    std::os::unix::fs::symlink("e19.pt", p.dir.join("ck/last.pt")).unwrap();
    let (code, out, err) = run(
        &p,
        &[
            "checkpoint",
            "record",
            "exp-001",
            "--epoch",
            "19",
            "--path",
            "ck/./last.pt",
            "--reason",
            "last",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["path"], "ck/last.pt");
    assert_eq!(v["size_bytes"], 8);
}

//! `zolog run` and `zolog demo` against real processes and the real binary: a trainer that writes
//! NaN is killed by the checker and the audit reproduces the decision; a crash is recorded failed
//! with its exit status; a clean exit leaves TrainingEnded and the experiment running; Ctrl-C is
//! forwarded and recorded as a user kill; the demo runs end to end. The TrainingStarted pair
//! (`zolog run`'s, with the pid, then the trainer's own) folds as one run.
//!
//! Every process is bounded: children are killed and reaped on drop, every wait has a deadline.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Guard, TestStore, fixture};
use zolog::event::{
    Event, ExpId, ExperimentStatus, Json, NewEvent, Payload, RunKilled, Source, SourceKind,
    TrainingEnded, TrainingStarted,
};

const BIN: &str = env!("CARGO_BIN_EXE_zolog");
const LIMIT: Duration = Duration::from_secs(30);

/// Kill and reap a trainer that a failed test may have left behind (its own process group).
struct Reaper(Option<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

struct Proj {
    t: TestStore,
}

impl std::ops::Deref for Proj {
    type Target = TestStore;

    fn deref(&self) -> &TestStore {
        &self.t
    }
}

impl Proj {
    fn new() -> Proj {
        Proj {
            t: TestStore::with_exp001("it", None),
        }
    }

    fn zolog(&self) -> Command {
        let mut c = self.t.zolog();
        c.current_dir(self.dir.path());
        c
    }

    /// `zolog run --exp exp-001 [flags] -- python3 run_trainer.py [trainer args]`, to completion:
    /// (exit status, stderr).
    fn run(&self, flags: &[&str], trainer: &[&str]) -> (ExitStatus, String) {
        let err = self.dir.path().join("run-stderr.txt");
        let mut g = Guard::spawn(
            "zolog",
            self.zolog()
                .args(["run", "--exp", "exp-001"])
                .args(flags)
                .arg("--")
                .arg("python3")
                .arg(fixture("run_trainer.py"))
                .args(trainer)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&err).unwrap()),
        );
        let st = g.wait(LIMIT);
        (st, std::fs::read_to_string(&err).unwrap())
    }

    /// Another zolog command to completion: (exit code, stdout).
    fn cmd(&self, args: &[&str]) -> (i32, String) {
        let o = self.zolog().args(args).output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    fn events(&self) -> Vec<Event> {
        self.store.events(1).unwrap()
    }

    fn metrics_path(&self) -> PathBuf {
        self.root.join("experiments/exp-001/metrics.jsonl")
    }

    fn diagnosis(&self) -> String {
        std::fs::read_to_string(self.root.join("experiments/exp-001/diagnosis.md")).unwrap()
    }
}

fn exp() -> ExpId {
    ExpId::parse("exp-001").unwrap()
}

fn starts(ev: &[Event]) -> Vec<(&Event, &TrainingStarted)> {
    ev.iter()
        .filter_map(|e| match &e.payload {
            Payload::TrainingStarted(t) => Some((e, t)),
            _ => None,
        })
        .collect()
}

fn ends(ev: &[Event]) -> Vec<(&Event, &TrainingEnded)> {
    ev.iter()
        .filter_map(|e| match &e.payload {
            Payload::TrainingEnded(t) => Some((e, t)),
            _ => None,
        })
        .collect()
}

fn kills(ev: &[Event]) -> Vec<&RunKilled> {
    ev.iter()
        .filter_map(|e| match &e.payload {
            Payload::RunKilled(k) => Some(k),
            _ => None,
        })
        .collect()
}

fn statuses(ev: &[Event]) -> Vec<(ExperimentStatus, String)> {
    ev.iter()
        .filter_map(|e| match &e.payload {
            Payload::ExperimentStatusChanged(s) => Some((s.status, s.reason.clone())),
            _ => None,
        })
        .collect()
}

/// The run's TrainingStarted (pid, host, source cli) comes first; the trainer's own, ingested
/// from its training_start line, carries the planned epochs and config (and the environment the
/// fixture saw).
fn check_start_pair(p: &Proj, ev: &[Event]) -> u32 {
    let s = starts(ev);
    assert_eq!(s.len(), 2, "{s:?}");
    let (run_ev, run) = s[0];
    assert_eq!(run_ev.source.kind, SourceKind::Cli);
    let pid = run.pid.expect("zolog run records the pid");
    assert_eq!(run.host.as_deref(), Some(zolog::event::hostname().as_str()));
    let (tr_ev, tr) = s[1];
    assert_eq!(tr_ev.source.kind, SourceKind::Trainer);
    assert_eq!(tr.pid, None);
    assert!(tr.total_epochs.is_some());
    let env = &tr.config.0["env"];
    assert_eq!(env["ZO_EXPERIMENT"], "exp-001");
    assert_eq!(
        Path::new(env["ZO_METRICS"].as_str().unwrap()),
        p.metrics_path().canonicalize().unwrap()
    );
    let store = Path::new(env["ZO_STORE"].as_str().unwrap());
    assert_eq!(
        store.canonicalize().unwrap(),
        p.root.canonicalize().unwrap()
    );
    pid
}

#[test]
fn run_kill_stops_a_trainer_that_writes_nan_and_audit_reproduces_it() {
    let p = Proj::new();
    let (st, err) = p.run(
        &["--kill", "--grace", "5"],
        &[
            "--epochs",
            "200",
            "--nan-at",
            "4",
            "--epoch-seconds",
            "0.05",
        ],
    );
    assert_eq!(st.code(), Some(2), "killed by the checker: {err}");
    let ev = p.events();
    let pid = check_start_pair(&p, &ev);
    let _reap = Reaper(Some(pid));

    let alerts: Vec<_> = ev
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::AlertRaised(a) if a.rule == "nan_inf" => Some((e.seq, a)),
            _ => None,
        })
        .collect();
    assert_eq!(alerts.len(), 1, "{err}");
    let (alert_seq, alert) = alerts[0];
    assert_eq!(alert.epoch, Some(4));
    let k = kills(&ev);
    assert_eq!(k.len(), 1, "{k:?}");
    assert_eq!(k[0].by, "checker");
    assert_eq!(k[0].pid, Some(pid));
    assert_eq!(k[0].signal, "SIGTERM");
    assert_eq!(k[0].alert_seqs, vec![alert_seq]);
    let s = statuses(&ev);
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].0, ExperimentStatus::Aborted);
    // How the process ended is recorded too, after the kill.
    let e = ends(&ev);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].1.exit_code, e[0].1.signal), (None, Some(15)));
    assert!(err.contains("killed by the checker"), "{err}");

    let (code, json) = p.cmd(&["audit", "exp-001", "--json"]);
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let a = &v["kill"]["alerts"][0];
    assert_eq!(a["seq"], serde_json::json!(alert_seq));
    assert_eq!(a["replay"]["reproduced"], true, "{a:#}");
    assert_eq!(a["replay"]["identical"], true, "{a:#}");
    assert_eq!(a["evidence"][0]["epoch"], 4);
    let (code, text) = p.cmd(&["audit", "exp-001"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("reproduced: the same nan_inf alert at the same seq"),
        "{text}"
    );
    // Projections: one run, with the pid and the planned epochs.
    let d = p.diagnosis();
    assert!(d.contains(&format!("(pid {pid} on ")), "{d}");
    assert!(d.contains("of 200 planned"), "{d}");
    assert!(!d.contains("starts"), "{d}");
    assert!(d.contains("killed by checker with SIGTERM"), "{d}");

    // Regression: running the experiment again with --kill must not be killed by the previous
    // run's stop alert, which the watcher replays from the log.
    let (st, err) = p.run(&["--kill"], &["--epochs", "2"]);
    assert_eq!(st.code(), Some(0), "{err}");
    let ev = p.events();
    assert_eq!(kills(&ev).len(), 1, "{err}");
    assert_eq!(statuses(&ev).last().unwrap().0, ExperimentStatus::Running);
}

#[test]
fn run_records_a_crashed_trainer_as_failed_with_its_exit_status() {
    let p = Proj::new();
    let (st, err) = p.run(&["--kill"], &["--epochs", "3", "--exit-code", "3"]);
    assert_eq!(st.code(), Some(3), "the trainer's exit status: {err}");
    let ev = p.events();
    check_start_pair(&p, &ev);
    let e = ends(&ev);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].1.exit_code, e[0].1.signal), (Some(3), None));
    assert_eq!(e[0].0.source.kind, SourceKind::Cli);
    let s = statuses(&ev);
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].0, ExperimentStatus::Failed);
    assert!(s[0].1.contains("exit code 3"), "{}", s[0].1);
    assert!(kills(&ev).is_empty());
    // Every epoch the trainer wrote reached the log before the ending.
    let last_epoch = ev
        .iter()
        .filter(|e| e.payload.kind() == "EpochEnded")
        .count();
    assert_eq!(last_epoch, 3);
    assert!(
        ev.iter()
            .position(|x| x.payload.kind() == "EpochEnded")
            .unwrap()
            < ev.len()
    );
    let d = p.diagnosis();
    assert!(d.contains("exit code 3 (a failure)"), "{d}");
    let (code, text) = p.cmd(&["audit", "exp-001"]);
    assert_eq!(code, 0);
    assert!(text.contains("status failed"), "{text}");
    assert!(text.contains("exit code 3"), "{text}");
    // Run again: the failed experiment is running again, with a new start.
    let (st, err) = p.run(&[], &["--epochs", "1"]);
    assert_eq!(st.code(), Some(0), "{err}");
    let s = statuses(&p.events());
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(s[1].0, ExperimentStatus::Running);
    assert_eq!(s[1].1, "run again by zolog run (was failed)");
}

#[test]
fn run_of_a_trainer_that_exits_0_leaves_training_ended_and_status_running() {
    let p = Proj::new();
    let (st, err) = p.run(&["--kill"], &["--epochs", "4"]);
    assert_eq!(st.code(), Some(0), "{err}");
    let ev = p.events();
    check_start_pair(&p, &ev);
    // The trainer's training_end (epoch, metrics, wall time), then the run's (exit code 0).
    let e = ends(&ev);
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(e[0].0.source.kind, SourceKind::Trainer);
    assert_eq!(e[0].1.epoch, Some(3));
    assert_eq!(e[1].0.source.kind, SourceKind::Cli);
    assert_eq!((e[1].1.exit_code, e[1].1.signal), (Some(0), None));
    assert!(statuses(&ev).is_empty());
    assert!(kills(&ev).is_empty());
    let (code, out) = p.cmd(&["exp", "show", "exp-001", "--json"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"running\""), "{out}");
    // The pair folds into one ending with both halves.
    let d = p.diagnosis();
    assert!(
        d.contains("- Outcome: training ended at epoch 3, exit code 0"),
        "{d}"
    );
    assert!(
        d.contains("4 epoch(s) run (epochs 0–3 of 4 planned)"),
        "{d}"
    );
    assert!(d.contains("final metrics train_loss="), "{d}");
    // A second run of the same experiment is a new start.
    let (st, err) = p.run(&[], &["--epochs", "2"]);
    assert_eq!(st.code(), Some(0), "{err}");
    let ev = p.events();
    assert_eq!(starts(&ev).len(), 4);
    assert!(p.diagnosis().contains("over 2 starts"), "{}", p.diagnosis());
}

#[test]
fn ctrl_c_is_forwarded_to_the_trainer_and_recorded_as_a_user_kill() {
    let p = Proj::new();
    let err = p.dir.path().join("run-stderr.txt");
    let mut g = Guard::spawn(
        "zolog",
        p.zolog()
            .args(["run", "--exp", "exp-001", "--kill", "--grace", "5", "--"])
            .arg("python3")
            .arg(fixture("run_trainer.py"))
            .args(["--epochs", "1000", "--epoch-seconds", "0.05"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap()),
    );
    // Wait until the trainer is running and its epochs are being ingested.
    let deadline = Instant::now() + LIMIT;
    let pid = loop {
        let ev = p.events();
        if ev.iter().any(|e| e.payload.kind() == "EpochEnded") {
            break starts(&ev)[0].1.pid.unwrap();
        }
        assert!(
            g.try_status().is_none(),
            "{}",
            std::fs::read_to_string(&err).unwrap()
        );
        assert!(Instant::now() < deadline, "no epoch ingested");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _reap = Reaper(Some(pid));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(g.pid() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let st = g.wait(LIMIT);
    let text = std::fs::read_to_string(&err).unwrap();
    // Python dies of the forwarded SIGINT (KeyboardInterrupt): 128 + 2.
    assert_eq!(st.code(), Some(130), "{st:?} {text}");
    assert!(st.signal().is_none());
    assert!(
        text.contains("SIGINT: forwarding it to trainer pid"),
        "{text}"
    );
    assert!(
        !zolog::checker::process::ProcessControl::alive(&zolog::checker::process::OsProcesses, pid),
        "the trainer is gone"
    );
    let ev = p.events();
    let k = kills(&ev);
    assert_eq!(k.len(), 1, "{k:?}");
    assert_eq!(k[0].by, "user");
    assert_eq!(k[0].signal, "SIGINT");
    assert_eq!(k[0].pid, Some(pid));
    assert!(k[0].alert_seqs.is_empty());
    let s = statuses(&ev);
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].0, ExperimentStatus::Aborted);
    assert!(s[0].1.contains("killed by the user: SIGINT"), "{}", s[0].1);
    let e = ends(&ev);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].1.signal, Some(2));
    let (code, text) = p.cmd(&["audit", "exp-001"]);
    assert_eq!(code, 0);
    assert!(text.contains("killed by user"), "{text}");
}

#[test]
fn run_refuses_an_unknown_experiment_without_starting_anything() {
    let p = Proj::new();
    let marker = p.dir.path().join("started");
    let o = p
        .zolog()
        .args(["run", "--exp", "exp-002", "--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(!marker.exists());
    assert!(starts(&p.events()).is_empty());
    // A command that cannot be started records nothing.
    let o = p
        .zolog()
        .args(["run", "--exp", "exp-001", "--", "/nonexistent/trainer"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/trainer"));
    assert!(starts(&p.events()).is_empty());
    // --mint makes one.
    let (st, err) = {
        let o = p
            .zolog()
            .args([
                "run",
                "--mint",
                "--hypothesis",
                "touch works",
                "--",
                "touch",
            ])
            .arg(&marker)
            .output()
            .unwrap();
        (o.status, String::from_utf8_lossy(&o.stderr).into_owned())
    };
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(marker.exists());
    assert!(err.contains("minted exp-002"), "{err}");
}

#[test]
fn the_training_started_pair_is_one_run_for_the_checker() {
    use zolog::checker::{Checker, CheckerConfig};
    let mut s = zolog::checker::synth::Synth::new("exp-001");
    s.mint();
    let run_start = TrainingStarted {
        experiment_id: exp(),
        experiment_name: None,
        pid: Some(4242),
        host: Some("gpu-1".into()),
        total_epochs: None,
        config: Json::default(),
    };
    let trainer_start = TrainingStarted {
        experiment_id: exp(),
        experiment_name: Some("mlp".into()),
        pid: None,
        host: None,
        total_epochs: Some(50),
        config: Json(serde_json::json!({"scheduler": "cosine"})),
    };
    let first = s.push(Payload::TrainingStarted(run_start.clone()));
    s.push(Payload::TrainingStarted(trainer_start.clone()));
    let mut c = Checker::new(exp(), CheckerConfig::default(), None);
    let mut out = Vec::new();
    for e in s.events() {
        c.observe(e, &mut out);
    }
    let r = c.run();
    assert_eq!(r.pid, Some(4242));
    assert_eq!(r.host.as_deref(), Some("gpu-1"));
    assert_eq!(r.started_seq, Some(first));
    assert_eq!(r.total_epochs, Some(50));
    assert!(r.schedule_configured);
    // After the run ended, a start without a pid is a new run (pid unknown).
    s.push(Payload::TrainingEnded(TrainingEnded {
        experiment_id: exp(),
        epoch: None,
        metrics: Default::default(),
        wall_time_seconds: None,
        exit_code: Some(0),
        signal: None,
    }));
    let again = s.push(Payload::TrainingStarted(trainer_start));
    let mut c = Checker::new(exp(), CheckerConfig::default(), None);
    for e in s.events() {
        c.observe(e, &mut out);
    }
    assert_eq!(c.run().pid, None);
    assert_eq!(c.run().started_seq, Some(again));
}

#[test]
fn demo_runs_end_to_end_and_shows_the_kill_the_checklist_and_the_audit() {
    let work = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args(["demo", "--epoch-seconds", "0.1"])
        .current_dir(work.path())
        .env_remove("ZO_STORE")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{text}");
    for want in [
        "[STOP] nan_inf",
        "killed trainer pid",
        "killed by the checker",
        "# Experiment Checklist",
        "| exp-001 | — | aborted |",
        "# Diagnosis",
        "- Outcome: killed by checker with SIGTERM",
        "exp-001: killed by checker (status aborted)",
        "reproduced: the same nan_inf alert at the same seq",
        "trainer: epoch  7  train_loss NaN",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // Nothing left behind: the temporary project is gone, the working directory untouched.
    let dir = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("zolog demo: a project in "))
        .and_then(|l| l.split(" (").next())
        .expect("first line names the project");
    assert!(!Path::new(dir).exists(), "{dir} still exists");
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
}

#[test]
fn demo_keep_leaves_a_project_that_the_other_commands_read() {
    let work = tempfile::tempdir().unwrap();
    let keep = work.path().join("demo");
    let o = Command::new(BIN)
        .args(["demo", "--epoch-seconds", "0.05", "--keep"])
        .arg(&keep)
        .env_remove("ZO_STORE")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let a = Command::new(BIN)
        .args(["audit", "exp-001"])
        .current_dir(&keep)
        .env_remove("ZO_STORE")
        .output()
        .unwrap();
    assert_eq!(a.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&a.stdout).contains("killed by checker"));
    // A second demo into the same directory refuses.
    let again = Command::new(BIN)
        .args(["demo", "--keep"])
        .arg(&keep)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
}

#[test]
fn hidden_subcommands_stay_out_of_help() {
    let o = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("demo"), "{help}");
    assert!(help.contains("run"), "{help}");
    assert!(!help.contains("__demo"), "{help}");
    let o = Command::new(BIN).args(["demo", "--help"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&o.stdout).contains("epoch-seconds"));
}

#[test]
fn the_training_started_pair_is_one_run_in_the_projections() {
    let p = Proj::new();
    let append = |payload: Payload| {
        p.store
            .append(&[NewEvent::now(
                Source::this_process(SourceKind::Cli),
                payload,
            )])
            .unwrap();
    };
    let start = |pid: Option<u32>, total: Option<u64>| {
        Payload::TrainingStarted(TrainingStarted {
            experiment_id: exp(),
            experiment_name: pid.is_none().then(|| "mlp".to_owned()),
            pid,
            host: pid.map(|_| "gpu-1".to_owned()),
            total_epochs: total,
            config: Json::default(),
        })
    };
    let run = || {
        zolog::project::refresh(&p.store).unwrap();
        let state = zolog::project::current(&p.store).unwrap();
        state.get(&exp()).unwrap().details().run.clone()
    };
    append(start(Some(4242), None));
    append(start(None, Some(50)));
    let r = run();
    assert_eq!(r.starts, 1);
    assert_eq!((r.pid, r.host.as_deref()), (Some(4242), Some("gpu-1")));
    assert_eq!((r.total_epochs, r.name.as_deref()), (Some(50), Some("mlp")));
    // Killed (no TrainingEnded): the experiment is aborted, so a later start is a new run.
    append(Payload::RunKilled(RunKilled {
        experiment_id: exp(),
        pid: Some(4242),
        alert_seqs: vec![],
        signal: "SIGTERM".into(),
        by: "checker".into(),
        reason: "test".into(),
    }));
    append(Payload::ExperimentStatusChanged(
        zolog::event::ExperimentStatusChanged {
            experiment_id: exp(),
            status: ExperimentStatus::Aborted,
            reason: "test".into(),
        },
    ));
    append(start(None, Some(10)));
    let r = run();
    assert_eq!(r.starts, 2);
    assert_eq!(r.pid, None);
    // Incremental folds and a rebuild agree.
    zolog::project::refresh(&p.store).unwrap();
    let before = std::fs::read(p.root.join("experiments/exp-001/diagnosis.md")).unwrap();
    zolog::project::rebuild(&p.store).unwrap();
    let after = std::fs::read(p.root.join("experiments/exp-001/diagnosis.md")).unwrap();
    assert_eq!(before, after);
}

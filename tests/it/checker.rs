//! The training checker against real processes and the real binary: `zolog watch` kills a
//! trainer that writes NaN, escalates to SIGKILL, flags a hung (SIGSTOPped) trainer and a vanished
//! one, never appends an alert twice, refuses to signal a reused pid; `zolog audit` reproduces
//! the decisions, including under a configuration that differs from today's defaults.
//!
//! Every process is bounded: children are killed and reaped by [`Guard`] on drop, and every wait
//! has a deadline.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Guard, SPIKY_ALERTS, TestStore, alert_rules, fixture, race, spiky_loss};
use zolog::event::{
    AlertRaised, EpochEnded, Event, ExpId, ExperimentStatus, Json, Metrics, NewEvent, Payload,
    Source, SourceKind, Timestamp, TrainingStarted,
};

const BIN: &str = env!("CARGO_BIN_EXE_zolog");

struct Proj {
    t: TestStore,
    exp: ExpId,
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
            exp: ExpId::parse("exp-001").unwrap(),
        }
    }

    fn append(&self, p: Payload) -> u64 {
        self.append_at(None, p)
    }

    fn append_at(&self, time: Option<Timestamp>, p: Payload) -> u64 {
        let src = Source::this_process(SourceKind::Trainer);
        let ev = match time {
            Some(t) => NewEvent::at(t, src, p),
            None => NewEvent::now(src, p),
        };
        self.store.append(&[ev]).unwrap().first_seq
    }

    fn start(&self, pid: Option<u32>, time: Option<Timestamp>) -> u64 {
        self.append_at(
            time,
            Payload::TrainingStarted(TrainingStarted {
                experiment_id: self.exp.clone(),
                experiment_name: None,
                pid,
                host: Some(zolog::event::hostname()),
                total_epochs: Some(100),
                config: Json::default(),
            }),
        )
    }

    fn epoch(&self, epoch: u64, loss: f64) -> u64 {
        self.append(Payload::EpochEnded(EpochEnded {
            experiment_id: self.exp.clone(),
            epoch,
            step: None,
            metrics: Metrics(vec![("train_loss".into(), loss)]),
            learning_rate: Some(0.1),
            wall_time_seconds: None,
            gpu_memory_mb: None,
        }))
    }

    fn events(&self) -> Vec<Event> {
        self.store.events(1).unwrap()
    }

    fn alerts(&self) -> Vec<(u64, AlertRaised)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e.payload {
                Payload::AlertRaised(a) => Some((e.seq, a)),
                _ => None,
            })
            .collect()
    }

    /// Run a zolog command to completion (bounded), returning status and stdout.
    fn run(&self, args: &[&str]) -> (i32, String) {
        let out_path = self
            .root
            .join(format!("out-{}.txt", args.join("_").replace('/', "_")));
        let out = std::fs::File::create(&out_path).unwrap();
        let mut g = Guard::spawn(
            "zolog",
            self.zolog().args(args).stdout(out).stderr(Stdio::inherit()),
        );
        let st = g.wait(Duration::from_secs(60));
        let text = std::fs::read_to_string(&out_path).unwrap();
        (st.code().unwrap_or(-1), text)
    }

    fn write_config(&self, v: serde_json::Value) -> PathBuf {
        let p = self.root.join("checker.json");
        std::fs::write(&p, v.to_string()).unwrap();
        p
    }

    /// Wait (bounded) until `f` holds for the log's events.
    #[track_caller]
    fn wait_log(&self, limit: Duration, what: &str, mut f: impl FnMut(&[Event]) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if f(&self.events()) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn trainer(p: &Proj, extra: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(fixture("checker_trainer.py"))
        .arg("--zolog")
        .arg(BIN)
        .arg("--store")
        .arg(&p.root)
        .args(extra)
        .stdout(Stdio::null());
    c
}

fn count(events: &[Event], kind: &str) -> usize {
    events.iter().filter(|e| e.payload.kind() == kind).count()
}

fn status_changes(events: &[Event]) -> Vec<(ExperimentStatus, String)> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::ExperimentStatusChanged(s) => Some((s.status, s.reason.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn watch_kill_stops_a_trainer_that_writes_nan_and_audit_reproduces_it() {
    let p = Proj::new();
    let mut watch = Guard::spawn(
        "zolog watch",
        p.zolog()
            .args(["watch", "exp-001", "--kill", "--grace", "5"])
            .stdout(Stdio::null()),
    );
    let mut t = Guard::spawn(
        "trainer",
        &mut trainer(
            &p,
            &[
                "--epochs",
                "200",
                "--nan-at",
                "4",
                "--epoch-seconds",
                "0.05",
            ],
        ),
    );
    let st = t.wait(Duration::from_secs(30));
    assert_eq!(
        st.signal(),
        Some(15),
        "trainer should die of SIGTERM: {st:?}"
    );
    assert_eq!(watch.wait(Duration::from_secs(30)).code(), Some(2));

    let ev = p.events();
    let alerts = p.alerts();
    let nan: Vec<_> = alerts.iter().filter(|(_, a)| a.rule == "nan_inf").collect();
    assert_eq!(nan.len(), 1, "{alerts:?}");
    let (alert_seq, alert) = nan[0];
    assert_eq!(alert.epoch, Some(4));
    assert_eq!(alert.observed.0[0].0, "train_loss");
    assert!(alert.observed.0[0].1.is_nan());
    let killed: Vec<_> = ev
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::RunKilled(k) => Some(k),
            _ => None,
        })
        .collect();
    assert_eq!(killed.len(), 1);
    assert_eq!(killed[0].signal, "SIGTERM");
    assert_eq!(killed[0].by, "checker");
    assert_eq!(killed[0].pid, Some(t.pid()));
    assert!(killed[0].alert_seqs.contains(alert_seq), "{:?}", killed[0]);
    let st = status_changes(&ev);
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].0, ExperimentStatus::Aborted);
    assert!(st[0].1.contains("nan_inf"), "{}", st[0].1);
    // The configuration came first.
    let cfg_seq = ev
        .iter()
        .find(|e| e.payload.kind() == "CheckerConfigured")
        .unwrap()
        .seq;
    assert!(cfg_seq < *alert_seq && alert.config_seq == Some(cfg_seq));

    let (code, json) = p.run(&["audit", "exp-001", "--json"]);
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let a = &v["kill"]["alerts"][0];
    assert_eq!(a["seq"], serde_json::json!(alert_seq));
    assert_eq!(a["replay"]["reproduced"], true, "{a:#}");
    assert_eq!(a["replay"]["identical"], true, "{a:#}");
    assert_eq!(a["evidence"][0]["epoch"], 4);
    assert!(a["config_vs_today"].as_array().unwrap().is_empty());
    let (code, text) = p.run(&["audit", "exp-001"]);
    assert_eq!(code, 0);
    assert!(text.contains("killed by checker"), "{text}");
    assert!(
        text.contains("reproduced: the same nan_inf alert at the same seq"),
        "{text}"
    );
}

#[test]
fn a_trainer_that_ignores_sigterm_gets_sigkill_after_the_grace_period() {
    let p = Proj::new();
    let mut watch = Guard::spawn(
        "zolog watch",
        p.zolog()
            .args(["watch", "exp-001", "--kill", "--grace", "0.5"])
            .stdout(Stdio::null()),
    );
    let mut t = Guard::spawn(
        "trainer",
        &mut trainer(
            &p,
            &[
                "--epochs",
                "200",
                "--nan-at",
                "2",
                "--epoch-seconds",
                "0.05",
                "--ignore-term",
            ],
        ),
    );
    let st = t.wait(Duration::from_secs(30));
    assert_eq!(st.signal(), Some(9), "{st:?}");
    watch.wait(Duration::from_secs(30));
    let killed = p
        .events()
        .into_iter()
        .find_map(|e| match e.payload {
            Payload::RunKilled(k) => Some(k),
            _ => None,
        })
        .expect("RunKilled");
    assert_eq!(killed.signal, "SIGKILL");
}

#[test]
fn a_stopped_trainer_raises_a_stall_and_a_vanished_one_fails_the_experiment() {
    let p = Proj::new();
    let cfg = p.write_config(serde_json::json!({
        "stall": {"k": 3.0, "floor_seconds": 1.5, "gone_grace_seconds": 0.3}
    }));
    let mut watch = Guard::spawn(
        "zolog watch",
        p.zolog()
            .args(["watch", "exp-001", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null()),
    );
    let mut t = Guard::spawn(
        "trainer",
        &mut trainer(&p, &["--epochs", "500", "--epoch-seconds", "0.1"]),
    );
    p.wait_log(Duration::from_secs(30), "three epochs", |ev| {
        count(ev, "EpochEnded") >= 3
    });
    t.signal(nix::sys::signal::Signal::SIGSTOP);
    let stopped_at = Instant::now();
    p.wait_log(Duration::from_secs(30), "a stall alert", |ev| {
        ev.iter()
            .any(|e| matches!(&e.payload, Payload::AlertRaised(a) if a.rule == "stall.no_progress"))
    });
    assert!(stopped_at.elapsed() >= Duration::from_millis(900));
    let stall = p
        .alerts()
        .into_iter()
        .find(|(_, a)| a.rule == "stall.no_progress")
        .unwrap()
        .1;
    assert_eq!(stall.severity, zolog::event::Severity::Warn);
    assert_eq!(stall.observed.get("pid_alive"), Some(1.0), "{stall:?}");
    assert!(stall.observed.get("seconds_since_progress").unwrap() >= 1.5);
    assert!(stall.message.contains("hung"), "{}", stall.message);
    // Still hung: no second stall alert for the same silence.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        p.alerts()
            .iter()
            .filter(|(_, a)| a.rule == "stall.no_progress")
            .count(),
        1
    );

    // Now the trainer dies without TrainingEnded (reaped at once, so no zombie lingers).
    t.signal(nix::sys::signal::Signal::SIGKILL);
    t.wait(Duration::from_secs(10));
    assert_eq!(watch.wait(Duration::from_secs(30)).code(), Some(2));
    let ev = p.events();
    let gone: Vec<_> = p
        .alerts()
        .into_iter()
        .filter(|(_, a)| a.rule == "stall.process_gone")
        .collect();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].1.severity, zolog::event::Severity::Stop);
    assert_eq!(gone[0].1.observed.get("pid"), Some(f64::from(t.pid())));
    let st = status_changes(&ev);
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!(st[0].0, ExperimentStatus::Failed);
    assert_eq!(count(&ev, "RunKilled"), 0);

    // The audit names the checker's status change as the ending and re-derives the decision
    // from the log and the liveness the alert recorded.
    let (code, json) = p.run(&["audit", "exp-001", "--json"]);
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["status"], "failed");
    assert_eq!(v["ended_by"]["kind"], "ExperimentStatusChanged");
    assert_eq!(v["ended_by"]["source"]["kind"], "checker");
    let stop = &v["stop_alerts"][0];
    assert_eq!(stop["alert"]["rule"], "stall.process_gone");
    assert_eq!(stop["replay"]["identical"], true, "{stop:#}");
}

#[test]
fn audit_replays_with_the_configuration_in_force_not_todays_defaults() {
    let p = Proj::new();
    // The trainer: any process of ours that started before its TrainingStarted.
    let mut sleeper = Guard::spawn(
        "sleep",
        Command::new("sleep").arg("60").stdout(Stdio::null()),
    );
    p.start(Some(sleeper.pid()), None);
    for e in 0..12 {
        p.epoch(e, if e < 5 { 2.0 - 0.2 * e as f64 } else { 1.0 });
    }
    // 4× the running mean: a warn spike by default (severe from 11×), a stop spike with
    // severe_rtol 2.5.
    let spike_seq = p.epoch(12, 4.0);
    let cfg = p.write_config(serde_json::json!({"divergence": {"severe_rtol": 2.5}}));
    let (code, out) = p.run(&[
        "watch",
        "exp-001",
        "--once",
        "--kill",
        "--grace",
        "5",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}");
    assert_eq!(sleeper.wait(Duration::from_secs(10)).signal(), Some(15));
    let alerts = p.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let (aseq, a) = &alerts[0];
    assert_eq!(
        (a.rule.as_str(), a.severity),
        ("divergence.spike", zolog::event::Severity::Stop)
    );
    assert_eq!(a.evidence_seqs.last(), Some(&spike_seq));

    let (code, json) = p.run(&["audit", "exp-001", "--json"]);
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let k = &v["kill"];
    assert_eq!(k["signal"], "SIGTERM");
    let a = &k["alerts"][0];
    assert_eq!(a["seq"], serde_json::json!(aseq));
    assert_eq!(a["replay"]["identical"], true, "{a:#}");
    assert_eq!(
        a["replay"]["raised_after_seq"],
        serde_json::json!(spike_seq)
    );
    assert_eq!(a["config_in_force"]["divergence"]["severe_rtol"], 2.5);
    let diff = a["config_vs_today"].as_array().unwrap();
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert!(
        diff[0]
            .as_str()
            .unwrap()
            .starts_with("divergence.severe_rtol: 2.5")
    );
    // With today's defaults the same spike is only a warning: no kill.
    let today = &a["replay_with_today_defaults"];
    assert_eq!(today["reproduced"], false);
    assert_eq!(today["replayed"]["severity"], "warn");
    let (_, text) = p.run(&["audit", "exp-001"]);
    assert!(
        text.contains("today's defaults would raise it with severity warn"),
        "{text}"
    );
}

#[test]
fn watching_twice_never_appends_the_same_alert_twice() {
    let p = Proj::new();
    p.start(None, None);
    for e in 0..20 {
        let v = match e {
            7 => 5.0,
            15.. => f64::NAN,
            _ => 1.0 + 1.0 / (e + 1) as f64,
        };
        p.epoch(e, v);
    }
    let (code, out) = p.run(&["watch", "exp-001", "--once"]);
    assert_eq!(code, 2, "{out}");
    let first = p.alerts();
    let rules: Vec<&str> = first.iter().map(|(_, a)| a.rule.as_str()).collect();
    assert_eq!(rules, ["divergence.spike", "nan_inf"]);
    let configured = count(&p.events(), "CheckerConfigured");

    let (code, out) = p.run(&["watch", "exp-001", "--once"]);
    assert_eq!(code, 2);
    assert!(out.contains("reused"), "{out}");
    assert_eq!(p.alerts().len(), first.len());
    assert_eq!(count(&p.events(), "CheckerConfigured"), configured);

    // Another configuration is recorded, and only what it adds is appended.
    let cfg = p.write_config(serde_json::json!({"divergence": {"rtol": 0.3}}));
    let (_, out) = p.run(&[
        "watch",
        "exp-001",
        "--once",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(!out.contains("reused"), "{out}");
    assert_eq!(count(&p.events(), "CheckerConfigured"), configured + 1);
    let after = p.alerts();
    let mut keys: Vec<_> = after
        .iter()
        .map(|(_, a)| zolog::checker::AlertKey::of(a))
        .collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "duplicate alert keys in {after:?}");
}

#[test]
fn a_pid_reused_by_a_later_process_is_never_signalled() {
    let p = Proj::new();
    let mut bystander = Guard::spawn(
        "sleep",
        Command::new("sleep").arg("60").stdout(Stdio::null()),
    );
    // TrainingStarted an hour before the process with that pid began.
    let hour_ago = Timestamp(Timestamp::now().nanos() - 3_600_000_000_000);
    p.start(Some(bystander.pid()), Some(hour_ago));
    p.epoch(0, f64::NAN);
    let (code, out) = p.run(&["watch", "exp-001", "--once", "--kill", "--grace", "0.2"]);
    assert_eq!(code, 2);
    assert!(out.contains("cannot kill the run"), "{out}");
    assert!(out.contains("another process"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        bystander.try_status().is_none(),
        "the bystander was signalled"
    );
    assert_eq!(count(&p.events(), "RunKilled"), 0);
}

#[test]
fn watch_refuses_unknown_experiments_and_bad_configs() {
    let p = Proj::new();
    let (code, _) = p.run(&["watch", "exp-009", "--once"]);
    assert_eq!(code, 1);
    let cfg = p.write_config(serde_json::json!({"divergence": {"rtoll": 1}}));
    let out = p
        .zolog()
        .args(["watch", "exp-001", "--once", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rtoll"), "{err}");
    // --print-config prints the full default configuration, which is what docs/checker.md shows.
    let out = p
        .zolog()
        .args(["watch", "exp-001", "--print-config"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, zolog::checker::CheckerConfig::default().to_json());
}

#[test]
fn concurrent_watchers_append_each_alert_once() {
    let p = Proj::new();
    p.start(None, None);
    for e in 0..40 {
        p.epoch(e, spiky_loss(e));
    }
    race(4, Duration::from_secs(60), 2, || {
        let mut c = p.zolog();
        c.args(["watch", "exp-001", "--once"]).stdout(Stdio::null());
        c
    });
    assert_eq!(
        alert_rules(p.events()),
        SPIKY_ALERTS,
        "each alert exactly once"
    );
}

#[test]
fn a_later_watch_with_kill_acts_on_a_stop_alert_already_in_the_log() {
    let p = Proj::new();
    let mut sleeper = Guard::spawn(
        "sleep",
        Command::new("sleep").arg("60").stdout(Stdio::null()),
    );
    p.start(Some(sleeper.pid()), None);
    p.epoch(0, 1.0);
    p.epoch(1, f64::NAN);
    let (code, _) = p.run(&["watch", "exp-001", "--once"]);
    assert_eq!(code, 2);
    let alerts = p.alerts();
    assert_eq!(alerts.len(), 1);
    assert!(
        sleeper.try_status().is_none(),
        "a watch without --kill signalled"
    );
    let (code, out) = p.run(&["watch", "exp-001", "--once", "--kill", "--grace", "5"]);
    assert_eq!(code, 2, "{out}");
    assert_eq!(sleeper.wait(Duration::from_secs(10)).signal(), Some(15));
    assert_eq!(p.alerts().len(), 1, "the alert is not appended again");
    let killed = p
        .events()
        .into_iter()
        .find_map(|e| match e.payload {
            Payload::RunKilled(k) => Some(k),
            _ => None,
        })
        .expect("RunKilled");
    assert_eq!(killed.alert_seqs, [alerts[0].0]);
}

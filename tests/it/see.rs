//! Seeing a run: `zolog plot`, the curves.svg beside diagnosis.md, and the `zolog watch` panel
//! in a real terminal (tmux).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{TestStore, checkpoint_saved};
use zolog::event::{
    AlertRaised, CheckpointReason, EpochEnded, ExpId, Json, Metrics, NewEvent, Payload, RunKilled,
    Severity, Source, SourceKind, Timestamp, TrainingStarted,
};

const BIN: &str = env!("CARGO_BIN_EXE_zolog");
const T0: i64 = 1_790_000_000_000_000_000;

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
        let p = Proj {
            t: TestStore::with_exp001("see", Some(Timestamp(T0))),
            exp: ExpId::parse("exp-001").unwrap(),
        };
        p.append(
            1,
            Payload::TrainingStarted(TrainingStarted {
                experiment_id: p.exp.clone(),
                experiment_name: Some("tft-small".into()),
                pid: None,
                host: None,
                total_epochs: Some(40),
                config: Json::default(),
            }),
        );
        p
    }

    fn append(&self, secs: i64, payload: Payload) -> u64 {
        let src = Source {
            kind: SourceKind::Trainer,
            pid: None,
            host: None,
        };
        let ev = NewEvent::at(Timestamp(T0 + secs * 1_000_000_000), src, payload);
        self.store.append(&[ev]).unwrap().first_seq
    }

    fn epoch(&self, epoch: u64, loss: f64, grad: f64) {
        self.append(
            10 + epoch as i64 * 10,
            Payload::EpochEnded(EpochEnded {
                experiment_id: self.exp.clone(),
                epoch,
                step: None,
                metrics: Metrics(vec![
                    ("train_loss".into(), loss),
                    ("val_acc".into(), 0.5 + epoch as f64 / 100.0),
                    ("grad_norm".into(), grad),
                ]),
                learning_rate: Some(0.01 / (epoch as f64 + 1.0)),
                wall_time_seconds: Some(epoch as f64 * 10.0),
                gpu_memory_mb: None,
            }),
        );
    }

    fn checkpoint(&self, epoch: u64) {
        self.append(
            15 + epoch as i64 * 10,
            checkpoint_saved(
                self.exp.clone(),
                epoch,
                format!("ck/{epoch}.pt"),
                CheckpointReason::Periodic,
            ),
        );
    }

    fn run_ok(&self, args: &[&str]) -> Vec<u8> {
        let out = self.zolog().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "zolog {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

/// A run with a spike, NaN, +Inf and -Inf, checkpoints, a stop alert and a kill.
fn broken_run() -> Proj {
    let p = Proj::new();
    for e in 0..16u64 {
        let loss = match e {
            6 => 250.0,
            11 => f64::NAN,
            12 => f64::INFINITY,
            _ => 2.0 / (e as f64 + 1.0),
        };
        let grad = if e == 9 {
            f64::NEG_INFINITY
        } else {
            1.0 + e as f64 * 0.1
        };
        p.epoch(e, loss, grad);
        if e % 5 == 4 {
            p.checkpoint(e);
        }
    }
    let alert = p.append(
        180,
        Payload::AlertRaised(AlertRaised {
            experiment_id: p.exp.clone(),
            rule: "nan_inf".into(),
            severity: Severity::Stop,
            epoch: Some(11),
            observed: Metrics(vec![("train_loss".into(), f64::NAN)]),
            thresholds: Metrics::new(),
            evidence_seqs: vec![],
            config_seq: None,
            message: "train_loss is NaN at epoch 11.".into(),
            likely_cause: "Learning rate too high.".into(),
            recommended_action: "Lower the LR.".into(),
        }),
    );
    p.append(
        181,
        Payload::AlertRaised(AlertRaised {
            experiment_id: p.exp.clone(),
            rule: "spike".into(),
            severity: Severity::Warn,
            epoch: Some(6),
            observed: Metrics(vec![("train_loss".into(), 250.0)]),
            thresholds: Metrics::new(),
            evidence_seqs: vec![],
            config_seq: None,
            message: "train_loss spiked.".into(),
            likely_cause: String::new(),
            recommended_action: String::new(),
        }),
    );
    p.append(
        190,
        Payload::RunKilled(RunKilled {
            experiment_id: p.exp.clone(),
            pid: Some(4242),
            alert_seqs: vec![alert],
            signal: "SIGTERM".into(),
            by: "checker".into(),
            reason: "nan_inf at epoch 11".into(),
        }),
    );
    p
}

fn texts(doc: &roxmltree::Document<'_>) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_owned())
        .collect()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn plot_of_a_run_with_nan_inf_and_a_spike_is_valid_marked_and_rebuilt_byte_for_byte() {
    let p = broken_run();
    let out = p.root.join("plot.svg");
    p.run_ok(&["plot", "exp-001", "--out", out.to_str().unwrap()]);
    let svg = String::from_utf8(read(&out)).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("the SVG parses as XML");
    assert!(doc.root_element().has_tag_name("svg"));
    let t = texts(&doc);
    let has = |s: &str| t.iter().any(|x| x.contains(s));
    // One panel per monitored series; val_acc is not monitored.
    for want in ["train_loss", "grad_norm", "learning_rate"] {
        assert!(t.iter().any(|x| x == want), "no panel {want}: {t:?}");
    }
    assert!(!t.iter().any(|x| x == "val_acc"));
    // Alert markers (labelled, severity coloured), gap markers, the kill, the checkpoints.
    assert!(has("nan_inf (stop)"), "{t:?}");
    assert!(has("spike (warn)"), "{t:?}");
    assert!(
        svg.contains("#D62728") && svg.contains("#FF7F0E"),
        "severity colours"
    );
    assert!(
        has("non-finite train_loss: NaN at epoch 11, +Inf at epoch 12"),
        "{t:?}"
    );
    assert!(has("non-finite grad_norm: -Inf at epoch 9"), "{t:?}");
    for gap in ["NaN", "+Inf", "-Inf"] {
        assert!(t.iter().any(|x| x == gap), "no gap marker {gap}");
    }
    assert!(has("killed"));
    assert!(has("killed after epoch 15"), "{t:?}");
    assert!(svg.contains("#2CA02C"), "checkpoint ticks");
    // The axis comes from finite values only: every coordinate is a finite number.
    for n in doc.descendants().filter(|n| n.is_element()) {
        for a in n.attributes() {
            if [
                "x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "r", "width", "height",
            ]
            .contains(&a.name())
            {
                let v: f64 = a.value().parse().unwrap_or_else(|_| panic!("{a:?}"));
                assert!(v.is_finite(), "{a:?}");
            }
            if a.name() == "points" || a.name() == "d" {
                assert!(!a.value().to_lowercase().contains("nan"), "{a:?}");
                assert!(!a.value().to_lowercase().contains("inf"), "{a:?}");
            }
        }
    }
    // --metric picks series; an unknown one is an error naming what exists.
    let one = String::from_utf8(p.run_ok(&["plot", "exp-001", "--metric", "val_acc"])).unwrap();
    let doc1 = roxmltree::Document::parse(&one).unwrap();
    assert!(texts(&doc1).iter().any(|x| x == "val_acc"));
    let bad = p
        .zolog()
        .args(["plot", "exp-001", "--metric", "nope"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("train_loss"));

    // diagnosis.md embeds the same plot, written beside it.
    zolog::project::refresh(&p.store).unwrap();
    let dir = p.root.join("experiments/exp-001");
    let curves = read(&dir.join("curves.svg"));
    assert_eq!(curves, svg.as_bytes(), "curves.svg is the default plot");
    let diag = String::from_utf8(read(&dir.join("diagnosis.md"))).unwrap();
    assert!(diag.contains("](curves.svg)"), "{diag}");

    // Rebuilt from the log alone: byte for byte.
    std::fs::remove_dir_all(p.root.join("experiments")).unwrap();
    std::fs::remove_dir_all(p.store.state_dir()).unwrap();
    p.run_ok(&["rebuild"]);
    assert_eq!(read(&dir.join("curves.svg")), curves);
    assert_eq!(read(&dir.join("diagnosis.md")), diag.as_bytes());
    // And plotting again gives the same bytes.
    p.run_ok(&["plot", "exp-001", "--out", out.to_str().unwrap()]);
    assert_eq!(read(&out), curves);
}

#[test]
fn experiments_without_epochs_get_no_curves() {
    let p = Proj::new();
    zolog::project::refresh(&p.store).unwrap();
    let dir = p.root.join("experiments/exp-001");
    assert!(dir.join("diagnosis.md").exists());
    assert!(!dir.join("curves.svg").exists());
    assert!(
        !String::from_utf8(read(&dir.join("diagnosis.md")))
            .unwrap()
            .contains("curves.svg")
    );
    let out = p.zolog().args(["plot", "exp-001"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no epoch samples"));
}

#[test]
fn watch_in_a_terminal_with_plain_prints_lines_and_errors_restore_the_terminal() {
    if !Tmux::available() {
        println!(
            "SKIPPED watch_in_a_terminal_with_plain_prints_lines_and_errors_restore_the_terminal: \
             tmux is not installed (install it with `apt-get install -y tmux`)"
        );
        return;
    }
    let p = Proj::new();
    p.epoch(0, f64::NAN, 1.0);
    let root = sh_quote(p.root.to_str().unwrap());
    // --plain on a terminal: lines, no panel; --once returns.
    let cmd = format!(
        "{} --store {root} watch exp-001 --plain --once; echo \"EXITED $?\"; sleep 60",
        sh_quote(BIN)
    );
    let t = Tmux::start(&cmd, 100, 30);
    let screen = t.wait_for("the plain watch to exit", Duration::from_secs(60), |s| {
        s.contains("EXITED")
    });
    assert!(screen.contains("EXITED 2"), "{screen}");
    assert!(screen.contains("nan_inf"), "{screen}");
    assert!(
        !screen.contains("q quit"),
        "no panel with --plain:\n{screen}"
    );
    drop(t);
    // An unknown experiment: the error is printed on the restored terminal, exit status 1.
    let cmd = format!(
        "{} --store {root} watch exp-009; echo \"EXITED $?\"; sleep 60",
        sh_quote(BIN)
    );
    let t = Tmux::start(&cmd, 100, 30);
    let screen = t.wait_for("the failed watch to exit", Duration::from_secs(60), |s| {
        s.contains("EXITED")
    });
    assert!(screen.contains("EXITED 1"), "{screen}");
    assert!(screen.contains("exp-009"), "{screen}");
    assert!(
        !screen.contains("q quit"),
        "the panel was left on screen:\n{screen}"
    );
}

/// A private tmux server (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn available() -> bool {
        Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket, "-f", "/dev/null"]);
        c
    }

    /// A detached session of a fixed size running `shell_cmd`.
    fn start(shell_cmd: &str, width: u16, height: u16) -> Tmux {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = Tmux {
            socket: format!("zolog-see-{}-{n}", std::process::id()),
        };
        let st = t
            .cmd()
            .args(["new-session", "-d", "-s", "see", "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .arg(shell_cmd)
            .env("TERM", "xterm-256color")
            .status()
            .unwrap();
        assert!(st.success(), "tmux new-session failed");
        t
    }

    fn capture(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "see"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn send(&self, keys: &str) {
        let st = self
            .cmd()
            .args(["send-keys", "-t", "see", keys])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Wait (bounded) until the pane shows what `f` wants; returns the screen.
    #[track_caller]
    fn wait_for(&self, what: &str, limit: Duration, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let screen = self.capture();
            if f(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the pane shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn watch_shows_a_live_panel_in_a_real_terminal_and_q_exits_cleanly() {
    if !Tmux::available() {
        println!(
            "SKIPPED watch_shows_a_live_panel_in_a_real_terminal_and_q_exits_cleanly: tmux is not \
             installed (install it with `apt-get install -y tmux`)"
        );
        return;
    }
    let p = Proj::new();
    for e in 0..8u64 {
        let loss = if e == 6 {
            f64::NAN
        } else {
            2.0 / (e as f64 + 1.0)
        };
        p.epoch(e, loss, 1.0 + e as f64 * 0.1);
        if e == 4 {
            p.checkpoint(e);
        }
    }
    let cmd = format!(
        "{} --store {} watch exp-001; echo \"EXITED $?\"; sleep 60",
        sh_quote(BIN),
        sh_quote(p.root.to_str().unwrap())
    );
    let t = Tmux::start(&cmd, 120, 40);
    let screen = t.wait_for(
        "the panel with the epoch and the NaN alert",
        Duration::from_secs(60),
        |s| s.contains("epoch 7 of 40") && s.contains("nan_inf") && s.contains("[STOP]"),
    );
    assert!(screen.contains("exp-001 (tft-small)"), "{screen}");
    assert!(screen.contains("train_loss"), "{screen}");
    assert!(
        screen.contains("grad_norm") && screen.contains("learning_rate"),
        "{screen}"
    );
    assert!(
        screen.chars().any(|c| ('▁'..='█').contains(&c)),
        "no sparkline in:\n{screen}"
    );
    assert!(
        screen.contains("×"),
        "the NaN is marked in the sparkline:\n{screen}"
    );
    assert!(screen.contains("checkpoints: 1 taken"), "{screen}");
    // ETA from event times: 32 epochs left at the pace since the start (79 s for 8 epochs).
    assert!(screen.contains("ETA 5m16s"), "{screen}");
    // A new epoch redraws the panel in place.
    p.epoch(8, 0.2, 1.8);
    t.wait_for("epoch 8 on the panel", Duration::from_secs(30), |s| {
        s.contains("epoch 8 of 40")
    });
    // A resize redraws the panel at the new size.
    let st = t
        .cmd()
        .args(["resize-window", "-t", "see", "-x", "90", "-y", "30"])
        .status()
        .unwrap();
    assert!(st.success());
    t.wait_for(
        "the panel redrawn at 90 columns",
        Duration::from_secs(30),
        |s| {
            let first = s.lines().next().unwrap_or("");
            first.starts_with('┌') && first.chars().count() == 90 && s.contains("epoch 8 of 40")
        },
    );
    t.send("q");
    let after = t.wait_for("zolog watch to exit", Duration::from_secs(30), |s| {
        s.contains("EXITED")
    });
    // Exit status 2: the experiment has a stop alert; the terminal is back (the panel is gone).
    assert!(after.contains("EXITED 2"), "{after}");
    assert!(
        !after.contains("[STOP]"),
        "the panel was left on screen:\n{after}"
    );
}

#[test]
fn the_projection_checkpoint_stays_bounded_as_epochs_grow() {
    // Per-experiment state is bounded by metrics, not samples: curves keep at most `CAP` buckets.
    let p = Proj::new();
    // The checkpoint and the run's curve shard (.zo/state/curves/), together.
    let size = |p: &Proj| {
        zolog::project::refresh(&p.store).unwrap();
        let dir = p.store.state_dir();
        let shards: u64 = std::fs::read_dir(dir.join(zolog::project::shard::DIR))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(shards > 0, "the curves are in the curve cache");
        std::fs::metadata(dir.join("projections.ckpt"))
            .unwrap()
            .len()
            + shards
    };
    for e in 0..1000u64 {
        p.epoch(e, 1.0 / (e as f64 + 1.0), 1.0);
    }
    let at_1000 = size(&p);
    for e in 1000..4000u64 {
        p.epoch(e, 1.0 / (e as f64 + 1.0), 1.0);
    }
    let at_4000 = size(&p);
    assert!(
        at_1000 < 32 * 1024,
        "checkpoint of a 1,000-epoch run is {at_1000} bytes"
    );
    assert!(
        at_4000 <= at_1000 + 1024,
        "checkpoint grew with samples: {at_1000} bytes at 1,000 epochs, {at_4000} at 4,000"
    );
}

//! `zolog ingest`: metrics.jsonl lines into events, exactly once (issue 4).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{append, epoch_line, ts};
use zolog::event::{ExpId, ExperimentMinted, NewEvent, Payload, Source, SourceKind};
use zolog::ingest::{
    FollowOptions, Follower, IngestOptions, Ingester, NewGenerationReason, Notice,
};
use zolog::store::{Store, StoreOptions};

pub const BIN: &str = env!("CARGO_BIN_EXE_zolog");

/// A project directory with a store and experiment exp-001 minted.
pub struct Project {
    pub _dir: tempfile::TempDir,
    pub dir: PathBuf,
    pub store: Store,
}

impl Project {
    pub fn new() -> Project {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let store = Store::init(&dir.join(".zo"), "p", StoreOptions::default()).unwrap();
        store
            .append(&[NewEvent::now(
                Source::this_process(SourceKind::Cli),
                Payload::ExperimentMinted(ExperimentMinted {
                    experiment_id: exp(),
                    parent_id: None,
                    phase: "phase_4".into(),
                    hypothesis: String::new(),
                    rationale: String::new(),
                }),
            )])
            .unwrap();
        fs::create_dir_all(dir.join(".zo/experiments/exp-001")).unwrap();
        Project {
            _dir: tmp,
            dir,
            store,
        }
    }

    pub fn metrics(&self) -> PathBuf {
        self.dir.join(".zo/experiments/exp-001/metrics.jsonl")
    }

    pub fn zolog(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--store").arg(self.dir.join(".zo"));
        c.current_dir(&self.dir);
        c.env_remove("ZO_STORE");
        c
    }
}

pub fn exp() -> ExpId {
    ExpId::parse("exp-001").unwrap()
}

/// Events of the experiment made from lines (no IngestAdvanced), in log order.
fn trainer_events(store: &Store) -> Vec<zolog::event::Event> {
    store
        .events(1)
        .unwrap()
        .into_iter()
        .filter(|e| {
            e.source.kind == SourceKind::Trainer && !matches!(e.payload, Payload::IngestAdvanced(_))
        })
        .collect()
}

fn advances(store: &Store) -> Vec<zolog::event::IngestAdvanced> {
    store
        .events(1)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.payload {
            Payload::IngestAdvanced(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn epochs(store: &Store) -> Vec<u64> {
    trainer_events(store)
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::EpochEnded(x) => Some(x.epoch),
            _ => None,
        })
        .collect()
}

fn collecting(ing: &mut Ingester) -> Arc<Mutex<Vec<Notice>>> {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let n = notices.clone();
    ing.set_sink(move |x| n.lock().unwrap().push(x.clone()));
    notices
}

fn open(p: &Project) -> Ingester {
    Ingester::open(
        p.store.clone(),
        IngestOptions::new(p.metrics(), Some(exp())),
    )
    .unwrap()
}

#[test]
fn every_line_kind_nonfinite_garbage_and_a_torn_last_line() {
    let p = Project::new();
    let m = p.metrics();
    let lines = [
        // 1
        format!(
            r#"{{"timestamp": "{}", "event": "training_start", "experiment_id": "exp-001", "experiment_name": "mlp", "epoch": null, "total_epochs": 3, "metrics": {{}}, "learning_rate": null, "checkpoint_path": null, "wall_time_seconds": null, "gpu_memory_mb": null, "config": {{"lr": 0.1, "scheduler": "cosine"}}}}"#,
            ts(0)
        ),
        // 2
        epoch_line(0, "NaN").trim_end().to_owned(),
        // 3: broken JSON
        r#"{"timestamp": "2026-11-24T09:00:00+00:00", "event": "epoch_end", "epoch": 1,"#
            .to_owned(),
        // 4: unknown event
        format!(
            r#"{{"timestamp": "{}", "event": "epoch_begin", "epoch": 1}}"#,
            ts(1)
        ),
        // 5: wrong type
        format!(
            r#"{{"timestamp": "{}", "event": "epoch_end", "epoch": 1, "metrics": {{"train_loss": "low"}}}}"#,
            ts(1)
        ),
        // 6: blank
        String::new(),
        // 7: infinities
        format!(
            r#"{{"timestamp": "{}", "event": "epoch_end", "experiment_id": "exp-001", "epoch": 1, "metrics": {{"train_loss": Infinity, "grad_norm": -Infinity}}, "learning_rate": 0.01}}"#,
            ts(2)
        ),
        // 8
        format!(
            r#"{{"timestamp": "{}", "event": "checkpoint_saved", "experiment_id": "exp-001", "epoch": 1, "metrics": {{"val_loss": 0.4}}, "checkpoint_path": "models/checkpoints/mlp/best.pt"}}"#,
            ts(3)
        ),
        // 9
        format!(
            r#"{{"timestamp": "{}", "event": "training_end", "experiment_id": "exp-001", "epoch": 1, "metrics": {{"val_loss": 0.4}}, "wall_time_seconds": 3.2}}"#,
            ts(4)
        ),
    ];
    let mut text = lines.join("\n");
    text.push('\n');
    // 10: a torn last line (the trainer died mid-write).
    let torn = epoch_line(2, "0.3");
    text.push_str(&torn[..40]);
    fs::write(&m, &text).unwrap();

    let mut ing = open(&p);
    let notices = collecting(&mut ing);
    let o = ing.poll(true).unwrap();
    assert_eq!((o.events, o.lines, o.rejected), (5, 9, 3));
    assert_eq!(o.pending_bytes, 40);

    let evs = trainer_events(&p.store);
    let kinds: Vec<&str> = evs.iter().map(|e| e.payload.kind()).collect();
    assert_eq!(
        kinds,
        [
            "TrainingStarted",
            "EpochEnded",
            "EpochEnded",
            "CheckpointSaved",
            "TrainingEnded"
        ]
    );
    // Event time is the line's timestamp; `appended` records when it was appended.
    assert_eq!(evs[0].time.to_string(), "2026-11-24T09:00:00Z");
    assert!(evs[0].appended.is_some());
    match &evs[1].payload {
        Payload::EpochEnded(e) => {
            assert!(e.metrics.0[0].1.is_nan());
            assert_eq!(e.metrics.0[1], ("val_loss".to_owned(), 0.5));
        }
        other => panic!("{other:?}"),
    }
    match &evs[2].payload {
        Payload::EpochEnded(e) => {
            assert_eq!(e.metrics.0[0].1, f64::INFINITY);
            assert_eq!(e.metrics.0[1].1, f64::NEG_INFINITY);
        }
        other => panic!("{other:?}"),
    }
    match &evs[3].payload {
        Payload::CheckpointSaved(c) => {
            assert_eq!(c.path, "models/checkpoints/mlp/best.pt");
            assert_eq!(c.reason, zolog::event::CheckpointReason::Best);
        }
        other => panic!("{other:?}"),
    }

    let n = notices.lock().unwrap().clone();
    let rejected: Vec<(u64, String)> = n
        .iter()
        .filter_map(|x| match x {
            Notice::Rejected { line, reason, .. } => Some((*line, reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    assert_eq!(rejected[0].0, 3);
    assert!(
        rejected[0].1.contains("malformed JSON"),
        "{}",
        rejected[0].1
    );
    assert_eq!(rejected[1].0, 4);
    assert!(rejected[1].1.contains("unknown event"), "{}", rejected[1].1);
    assert_eq!(rejected[2].0, 5);
    assert!(rejected[2].1.contains("train_loss"), "{}", rejected[2].1);
    assert!(
        n.iter().any(|x| matches!(
            x,
            Notice::IncompleteLine {
                line: 10,
                bytes: 40,
                ..
            }
        )),
        "{n:?}"
    );
    // The offset stops before the torn line.
    let adv = advances(&p.store);
    let last = adv.last().unwrap();
    assert_eq!(last.offset as usize, text.len() - 40);
    assert_eq!((last.line, last.rejected), (9, 3));

    // Running it again adds nothing and reports no bad line again.
    let mut again = open(&p);
    let n2 = collecting(&mut again);
    let o = again.poll(true).unwrap();
    assert_eq!((o.events, o.lines), (0, 0));
    assert!(
        !n2.lock()
            .unwrap()
            .iter()
            .any(|x| matches!(x, Notice::Rejected { .. }))
    );

    // The trainer's line completes: it is ingested once.
    append(&m, &torn[40..]);
    let o = open(&p).poll(true).unwrap();
    assert_eq!((o.events, o.lines, o.pending_bytes), (1, 1, 0));
    assert_eq!(epochs(&p.store), vec![0, 1, 2]);
    let o = open(&p).poll(true).unwrap();
    assert_eq!(o.events, 0);
}

#[test]
fn cli_reports_file_line_and_reason_and_exit_status() {
    let p = Project::new();
    let m = p.metrics();
    fs::write(
        &m,
        format!(
            "{}{{oops\n{}",
            epoch_line(0, "1.0"),
            &epoch_line(1, "0.9")[..20]
        ),
    )
    .unwrap();
    let out = p.zolog().arg("ingest").arg(&m).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("metrics.jsonl:2: malformed JSON"), "{err}");
    assert!(
        err.contains("metrics.jsonl:3: last line has no newline"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ingested 1 event(s) from 2 line(s)"),
        "{stdout}"
    );
    // Nothing new: success, nothing appended.
    let out = p
        .zolog()
        .args(["ingest", "--json"])
        .arg(&m)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["events"], 0);
    assert_eq!(v["line"], 2);
    assert_eq!(v["experiment_id"], "exp-001");
    assert_eq!(epochs(&p.store), vec![0]);
}

#[test]
fn two_ingests_of_one_file_at_once_never_duplicate() {
    let p = Project::new();
    let m = p.metrics();
    let mut a = open(&p);
    let mut b = open(&p);
    let na = collecting(&mut a);
    let _nb = collecting(&mut b);
    let mut next = 0;
    for round in 0..30 {
        let mut text = String::new();
        for _ in 0..(round % 4 + 1) {
            text.push_str(&epoch_line(next, "0.5"));
            next += 1;
        }
        append(&m, &text);
        // Interleave: sometimes both see the same new lines.
        if round % 3 != 0 {
            a.poll(false).unwrap();
        }
        b.poll(false).unwrap();
        a.poll(false).unwrap();
    }
    a.poll(true).unwrap();
    b.poll(true).unwrap();
    assert_eq!(epochs(&p.store), (0..next).collect::<Vec<_>>());
    assert!(
        na.lock()
            .unwrap()
            .iter()
            .any(|n| matches!(n, Notice::Adopted { .. })),
        "the test should exercise a conflict"
    );
}

/// Write `text` to a new file and rename it over `path` (a new inode).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn generations(n: &Arc<Mutex<Vec<Notice>>>) -> Vec<NewGenerationReason> {
    n.lock()
        .unwrap()
        .iter()
        .filter_map(|x| match x {
            Notice::NewGeneration { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn replaced_file_is_a_new_generation() {
    let p = Project::new();
    let m = p.metrics();
    fs::write(&m, epoch_line(0, "1.0") + &epoch_line(1, "0.9")).unwrap();
    open(&p).poll(true).unwrap();
    // The trainer restarts and writes a new file (a new inode), longer than the old one.
    replace(
        &m,
        &(epoch_line(100, "2.0") + &epoch_line(101, "1.9") + &epoch_line(102, "1.8")),
    );
    let mut ing = open(&p);
    let n = collecting(&mut ing);
    ing.poll(true).unwrap();
    assert!(
        matches!(generations(&n)[..], [NewGenerationReason::Replaced { .. }]),
        "{:?}",
        n.lock().unwrap()
    );
    assert_eq!(epochs(&p.store), vec![0, 1, 100, 101, 102]);
    // The log marks the new generation at offset 0 of the new file.
    let adv = advances(&p.store);
    assert!(adv.iter().any(|a| a.offset == 0 && a.line == 0));
    assert_eq!(adv.last().unwrap().line, 3);
    // And it is stable: nothing more on a re-run.
    let mut again = open(&p);
    let n2 = collecting(&mut again);
    assert_eq!(again.poll(true).unwrap().events, 0);
    assert!(generations(&n2).is_empty());
}

#[test]
fn replaced_while_open_drains_the_old_file_first() {
    let p = Project::new();
    let m = p.metrics();
    fs::write(&m, epoch_line(0, "1.0")).unwrap();
    let mut ing = open(&p);
    let n = collecting(&mut ing);
    ing.poll(false).unwrap();
    // The old file gains a line, then is replaced before the ingest looks again.
    let old = File::open(&m).unwrap();
    append(&m, &epoch_line(1, "0.9"));
    replace(&m, &epoch_line(50, "3.0"));
    drop(old);
    ing.poll(false).unwrap();
    assert_eq!(epochs(&p.store), vec![0, 1, 50]);
    assert_eq!(generations(&n).len(), 1);
}

#[test]
fn shrunk_file_is_a_new_generation() {
    let p = Project::new();
    let m = p.metrics();
    fs::write(&m, epoch_line(0, "1.0") + &epoch_line(1, "0.9")).unwrap();
    open(&p).poll(true).unwrap();
    // Truncated in place (same inode) and restarted with a shorter content.
    let f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&m)
        .unwrap();
    drop(f);
    append(&m, &epoch_line(7, "1.0"));
    let mut ing = open(&p);
    let n = collecting(&mut ing);
    ing.poll(true).unwrap();
    assert!(
        matches!(generations(&n)[..], [NewGenerationReason::Shrunk { .. }]),
        "{:?}",
        n.lock().unwrap()
    );
    assert_eq!(epochs(&p.store), vec![0, 1, 7]);
}

#[test]
fn same_inode_rewritten_past_the_old_offset_is_detected() {
    let p = Project::new();
    let m = p.metrics();
    fs::write(&m, epoch_line(0, "1.0") + &epoch_line(1, "0.9")).unwrap();
    open(&p).poll(true).unwrap();
    let ino = |path: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).unwrap());
    let before = ino(&m);
    // Truncated and rewritten in place while no ingest ran: by now it is longer than the old
    // offset, so only the content check can tell.
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&m)
        .unwrap();
    f.write_all(
        (epoch_line(10, "5.0") + &epoch_line(11, "4.0") + &epoch_line(12, "3.0")).as_bytes(),
    )
    .unwrap();
    drop(f);
    assert_eq!(ino(&m), before);
    let mut ing = open(&p);
    let n = collecting(&mut ing);
    ing.poll(true).unwrap();
    assert!(
        matches!(generations(&n)[..], [NewGenerationReason::Rewritten { .. }]),
        "{:?}",
        n.lock().unwrap()
    );
    assert_eq!(epochs(&p.store), vec![0, 1, 10, 11, 12]);
}

#[test]
fn experiment_from_the_lines_and_foreign_lines_refused() {
    let p = Project::new();
    let m = p.metrics();
    let other = epoch_line(5, "1.0").replace("exp-001", "exp-002");
    fs::write(&m, epoch_line(0, "1.0") + &other + &epoch_line(1, "0.9")).unwrap();
    let mut ing = Ingester::open(p.store.clone(), IngestOptions::new(&m, None)).unwrap();
    let n = collecting(&mut ing);
    let o = ing.poll(true).unwrap();
    assert_eq!(ing.experiment(), Some(&exp()));
    assert_eq!((o.events, o.rejected), (2, 1));
    assert!(n.lock().unwrap().iter().any(|x| matches!(
        x,
        Notice::Rejected { line: 2, reason, .. } if reason.contains("exp-002")
    )));
    // A later ingest without --exp finds the experiment in the log.
    append(&m, &epoch_line(2, "0.8"));
    let mut again = Ingester::open(p.store.clone(), IngestOptions::new(&m, None)).unwrap();
    assert_eq!(again.experiment(), Some(&exp()));
    again.poll(true).unwrap();
    assert_eq!(epochs(&p.store), vec![0, 1, 2]);
}

#[test]
fn follower_library_api_with_polling_fallback() {
    let p = Project::new();
    let m = p.metrics();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ing = open(&p);
    rt.block_on(async {
        let opts = FollowOptions {
            use_notify: false,
            ..FollowOptions::default()
        };
        let follower = Follower::new(ing, opts);
        let mut status = follower.status();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(follower.run(async move {
            let _ = stop_rx.await;
        }));
        // The file does not exist yet: the follower waits for it.
        tokio::time::timeout(
            Duration::from_secs(20),
            status.wait_for(|s| s.waiting_for_file),
        )
        .await
        .expect("status within 20 s")
        .unwrap();
        append(&m, &epoch_line(0, "1.0"));
        append(&m, &epoch_line(1, "0.9"));
        tokio::time::timeout(Duration::from_secs(20), status.wait_for(|s| s.events >= 2))
            .await
            .expect("two events within 20 s")
            .unwrap();
        assert!(!status.borrow().notify_active);
        // Written just before the stop: still ingested by the final poll. A half line is not.
        append(&m, &epoch_line(2, "0.8"));
        append(&m, &epoch_line(3, "0.7")[..10]);
        stop_tx.send(()).unwrap();
        let ing = task.await.unwrap().unwrap();
        assert_eq!(ing.totals().events, 3);
    });
    assert_eq!(epochs(&p.store), vec![0, 1, 2]);
}

/// Wait (bounded) until the log holds `n` epochs.
fn wait_for_epochs(store: &Store, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while epochs(store).len() < n {
        assert!(Instant::now() < deadline, "ingest did not catch up in 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn follow_stops_cleanly_on_sigterm_and_sigint() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for (round, sig) in [Signal::SIGTERM, Signal::SIGINT].into_iter().enumerate() {
        let p = Project::new();
        let m = p.metrics();
        append(&m, &epoch_line(0, "1.0"));
        let mut child = p
            .zolog()
            .args(["ingest", "--exp", "exp-001", "--follow"])
            .arg(&m)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The first line in the log means the follower is up (and its handlers installed).
        wait_for_epochs(&p.store, 1);
        let mut text = String::new();
        for i in 1..=20 {
            text.push_str(&epoch_line(i, "0.5"));
        }
        append(&m, &text);
        kill(Pid::from_raw(child.id() as i32), sig).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "round {round}: {status:?}");
        // Every line written before the signal is in the log, once.
        assert_eq!(epochs(&p.store), (0..=20).collect::<Vec<_>>(), "{sig}");
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
        assert!(out.contains("ingested"), "{out}");
    }
}

/// A tiny deterministic generator (xorshift64*), seeded per run and printed on failure.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The exactly-once proof: a writer appends lines (some garbage, some written in two pieces)
/// while ingest processes are killed with SIGKILL at random moments, sometimes two at once.
/// After a final catch-up, the log's events equal the file's complete lines, once each, in order.
#[test]
fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill -9 test seed {seed}");
    let p = Project::new();
    let m = p.metrics();
    fs::write(&m, "").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let m = m.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(seed.rotate_left(17) | 1);
            let mut f = OpenOptions::new().append(true).open(&m).unwrap();
            let mut i = 0u64;
            let mut garbage = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = rng.below(20);
                let line = if r == 0 {
                    garbage += 1;
                    format!("{{\"garbage\": {i}\n")
                } else {
                    let loss = match r {
                        1 => "NaN".to_owned(),
                        2 => "Infinity".to_owned(),
                        _ => format!("{}", 1.0 / (i + 1) as f64),
                    };
                    let l = epoch_line(i, &loss);
                    i += 1;
                    l
                };
                if rng.below(4) == 0 {
                    // In two pieces: a reader may see half a line.
                    let cut = rng.below(line.len() as u64 - 1) as usize + 1;
                    f.write_all(&line.as_bytes()[..cut]).unwrap();
                    std::thread::sleep(Duration::from_micros(500));
                    f.write_all(&line.as_bytes()[cut..]).unwrap();
                } else {
                    f.write_all(line.as_bytes()).unwrap();
                }
                std::thread::sleep(Duration::from_micros(200 + rng.below(1500)));
            }
            (i, garbage)
        })
    };
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut cycles = 0;
    while cycles < 60 && started.elapsed() < Duration::from_secs(20) {
        cycles += 1;
        let n = if cycles % 4 == 0 { 2 } else { 1 };
        let mut children: Vec<_> = (0..n)
            .map(|_| {
                p.zolog()
                    .args(["ingest", "--exp", "exp-001", "--follow"])
                    .arg(&m)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in &mut children {
            std::thread::sleep(Duration::from_millis(rng.below(150)));
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (written, garbage) = writer.join().unwrap();
    // Catch up with what is left.
    let out = p
        .zolog()
        .args(["ingest", "--exp", "exp-001"])
        .arg(&m)
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Expected: every complete valid line, in file order.
    let text = fs::read_to_string(&m).unwrap();
    assert!(text.ends_with('\n'));
    let expected: Vec<(u64, String)> = text
        .lines()
        .filter(|l| !l.starts_with("{\"garbage\""))
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(&zolog::event::json::normalize_nonfinite(l)).unwrap();
            (
                v["epoch"].as_u64().unwrap(),
                v["timestamp"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(expected.len() as u64, written);
    let got: Vec<(u64, String)> = trainer_events(&p.store)
        .iter()
        .map(|e| match &e.payload {
            Payload::EpochEnded(x) => (
                x.epoch,
                zolog::event::Timestamp::parse(&ts(x.epoch)).unwrap() == e.time,
            ),
            other => panic!("unexpected {other:?}"),
        })
        .map(|(epoch, time_ok)| {
            assert!(
                time_ok,
                "epoch {epoch}: event time is not the line's timestamp"
            );
            (epoch, ts(epoch))
        })
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "seed {seed}: {} events for {} lines after {cycles} kill cycles",
        got.len(),
        expected.len()
    );
    assert_eq!(got, expected, "seed {seed}");
    let last = advances(&p.store).pop().unwrap();
    assert_eq!(last.offset, text.len() as u64, "seed {seed}");
    assert_eq!(last.line, written + garbage, "seed {seed}");
    assert_eq!(last.rejected, garbage, "seed {seed}");
    eprintln!(
        "kill -9 test: {cycles} cycles, {written} lines, {garbage} garbage, {} batches",
        advances(&p.store).len()
    );
    assert!(cycles >= 10, "only {cycles} kill cycles ran");
}

/// A big file goes through the parallel parser, several read chunks and batches split in the
/// middle of a piece: order, line numbers and the final position must be those of the file.
#[test]
fn big_file_in_parallel_pieces_keeps_order_and_line_numbers() {
    let p = Project::new();
    let m = p.metrics();
    let mut text = String::new();
    let mut bad_lines = Vec::new();
    let mut want = Vec::new();
    for i in 0..6000u64 {
        let lineno = i + 1;
        if i % 211 == 7 {
            text.push_str("{broken\n");
            bad_lines.push(lineno);
        } else if i % 307 == 11 {
            text.push('\n');
        } else {
            text.push_str(&epoch_line(i, "0.25"));
            want.push(i);
        }
    }
    fs::write(&m, &text).unwrap();
    let mut opts = IngestOptions::new(&m, Some(exp()));
    opts.read_chunk = 1 << 20;
    opts.max_batch_events = 700;
    let mut ing = Ingester::open(p.store.clone(), opts).unwrap();
    let n = collecting(&mut ing);
    let o = ing.poll(true).unwrap();
    assert!(
        text.len() > 3 << 19,
        "several 1 MiB chunks, each parsed in parallel pieces"
    );
    assert_eq!(o.events as usize, want.len());
    assert_eq!(epochs(&p.store), want);
    let rejected: Vec<u64> = n
        .lock()
        .unwrap()
        .iter()
        .filter_map(|x| match x {
            Notice::Rejected { line, .. } => Some(*line),
            _ => None,
        })
        .collect();
    assert_eq!(rejected, bad_lines);
    let adv = advances(&p.store);
    assert!(adv.len() >= 9, "{} batches", adv.len());
    let last = adv.last().unwrap();
    assert_eq!((last.offset, last.line), (text.len() as u64, 6000));
    assert_eq!(last.rejected, bad_lines.len() as u64);
    // Every batch boundary is a line boundary with the right line count.
    for a in &adv {
        let prefix = &text[..a.offset as usize];
        assert!(prefix.is_empty() || prefix.ends_with('\n'));
        assert_eq!(prefix.matches('\n').count() as u64, a.line);
    }
}

#[test]
fn over_long_lines_are_rejected_and_skipped() {
    let p = Project::new();
    let m = p.metrics();
    let long_in_chunk = format!("{{\"pad\": \"{}\"}}\n", "x".repeat(1500));
    let longer_than_a_read = format!("{{\"pad\": \"{}\"}}\n", "y".repeat(20_000));
    fs::write(
        &m,
        epoch_line(0, "1.0") + &long_in_chunk + &epoch_line(1, "0.9") + &longer_than_a_read,
    )
    .unwrap();
    let opts = || {
        let mut o = IngestOptions::new(&m, Some(exp()));
        o.max_line_bytes = 1000;
        o.read_chunk = 4096;
        o
    };
    let mut ing = Ingester::open(p.store.clone(), opts()).unwrap();
    let n = collecting(&mut ing);
    let o = ing.poll(true).unwrap();
    assert_eq!((o.events, o.rejected, o.lines), (2, 2, 4));
    let reasons: Vec<(u64, String)> = n
        .lock()
        .unwrap()
        .iter()
        .filter_map(|x| match x {
            Notice::Rejected { line, reason, .. } => Some((*line, reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[0].0, 2);
    assert!(
        reasons[0].1.contains("over the 1000-byte limit"),
        "{reasons:?}"
    );
    assert_eq!(reasons[1].0, 4);
    // The position after an over-long line survives a restart, and the file goes on.
    append(&m, &epoch_line(2, "0.8"));
    let mut again = Ingester::open(p.store.clone(), opts()).unwrap();
    let n2 = collecting(&mut again);
    assert_eq!(again.poll(true).unwrap().events, 1);
    assert!(generations(&n2).is_empty(), "{:?}", n2.lock().unwrap());
    assert_eq!(epochs(&p.store), vec![0, 1, 2]);
}

/// With inotify: lines, then the trainer restarts and replaces the file (rename over it), then
/// more lines. The follower drains the old file, takes the new one as a new generation.
#[test]
fn follow_with_inotify_sees_a_replaced_file() {
    let p = Project::new();
    let m = p.metrics();
    append(&m, &epoch_line(0, "1.0"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut ing = open(&p);
    let notices = collecting(&mut ing);
    rt.block_on(async {
        let follower = Follower::new(ing, FollowOptions::default());
        let status = follower.status();
        let follower_status = follower.status();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(follower.run(async move {
            let _ = stop_rx.await;
        }));
        let wait = |n: u64| {
            let mut s = status.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(20), s.wait_for(|s| s.events >= n))
                    .await
                    .expect("events within 20 s")
                    .unwrap();
            }
        };
        wait(1).await;
        assert!(follower_status.borrow().notify_active);
        append(&m, &epoch_line(1, "0.9"));
        wait(2).await;
        replace(&m, &(epoch_line(0, "2.0") + &epoch_line(1, "1.9")));
        wait(4).await;
        append(&m, &epoch_line(2, "1.8"));
        wait(5).await;
        stop_tx.send(()).unwrap();
        task.await.unwrap().unwrap();
    });
    assert_eq!(epochs(&p.store), vec![0, 1, 0, 1, 2]);
    assert!(matches!(
        generations(&notices)[..],
        [NewGenerationReason::Replaced { .. }]
    ));
}

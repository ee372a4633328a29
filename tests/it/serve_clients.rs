//! `zolog ingest`, `zolog watch` and `zolog run` while a `zolog serve` holds the store, with
//! other clients appending all the while: they go through the server (each command is given a
//! 0.3 s lock timeout, so the direct path would fail on the lock), and their check-then-appends
//! (`if_no_key_since`, docs/serve.md) keep ingest exactly-once and alerts unduplicated without
//! starving under the unrelated traffic.
//!
//! Every wait is bounded (deadlines, `Guard::wait`); children are killed and reaped on drop.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use zolog::Error;
use zolog::checker::AlertKey;
use zolog::event::{
    EpochEnded, Event, ExpId, ExperimentMinted, IngestAdvanced, Json, Metrics, NewEvent, Payload,
    Source, SourceKind, TrainingStarted,
};
use zolog::serve::{self, ServeOptions};
use zolog::store::{Store, StoreOptions, ingest_key};

use crate::common::{
    Guard, SPIKY_ALERTS, alert_rules, append, epoch_line, fixture, race, spiky_loss,
};

const BIN: &str = env!("CARGO_BIN_EXE_zolog");
/// Longest any one step of these tests may take before the test fails.
const LIMIT: Duration = Duration::from_secs(60);

fn exp(n: u32) -> ExpId {
    ExpId::from_number(n)
}

/// A project with exp-001 (what the commands under test write) and exp-002 (the load) minted.
struct Proj {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
    store: Store,
}

impl Proj {
    fn new() -> Proj {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let root = dir.join(".zo");
        let store = Store::init(&root, "p", opts()).unwrap();
        for n in [1, 2] {
            store
                .append(&[cli(Payload::ExperimentMinted(ExperimentMinted {
                    experiment_id: exp(n),
                    parent_id: None,
                    phase: "phase_4".into(),
                    hypothesis: String::new(),
                    rationale: String::new(),
                }))])
                .unwrap();
        }
        fs::create_dir_all(root.join("experiments/exp-001")).unwrap();
        Proj {
            _tmp: tmp,
            dir,
            root,
            store,
        }
    }

    fn metrics(&self) -> PathBuf {
        self.root.join("experiments/exp-001/metrics.jsonl")
    }

    /// `zolog --store .. --lock-timeout 0.3 <args>`: the lock is the server's, so only the socket
    /// can serve these commands.
    fn zolog(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--store")
            .arg(&self.root)
            .args(["--lock-timeout", "0.3"])
            .args(args)
            .current_dir(&self.dir)
            .env_remove("ZO_STORE")
            .env_remove("RUST_LOG");
        c
    }

    /// A command to completion (bounded): exit code, stdout, stderr.
    fn cmd(&self, name: &'static str, args: &[&str]) -> (Option<i32>, String, String) {
        let out = self.dir.join(format!("{name}.out"));
        let err = self.dir.join(format!("{name}.err"));
        let mut g = Guard::spawn(
            name,
            self.zolog(args)
                .stdin(Stdio::null())
                .stdout(fs::File::create(&out).unwrap())
                .stderr(fs::File::create(&err).unwrap()),
        );
        let st = g.wait(LIMIT);
        (
            st.code(),
            fs::read_to_string(&out).unwrap(),
            fs::read_to_string(&err).unwrap(),
        )
    }

    fn events(&self) -> Vec<Event> {
        self.store.events(1).unwrap()
    }
}

fn opts() -> StoreOptions {
    StoreOptions::default().with_lock_timeout(Duration::from_millis(300))
}

fn cli(p: Payload) -> NewEvent {
    NewEvent::now(Source::this_process(SourceKind::Cli), p)
}

fn epoch_event(exp_id: ExpId, epoch: u64, loss: f64) -> NewEvent {
    NewEvent::now(
        Source::this_process(SourceKind::Trainer),
        Payload::EpochEnded(EpochEnded {
            experiment_id: exp_id,
            epoch,
            step: None,
            metrics: Metrics(vec![("train_loss".into(), loss)]),
            learning_rate: Some(0.1),
            wall_time_seconds: None,
            gpu_memory_mb: None,
        }),
    )
}

/// A `zolog serve` child; stopped with SIGTERM (and must exit 0) by `stop`, killed on drop.
struct Server {
    child: Child,
}

impl Server {
    fn start(root: &Path) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--workers", "2", "--store"])
            .arg(root)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The banner comes once it accepts connections (or stdout closes if it fails).
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.starts_with("serving"), "zolog serve said {first:?}");
        Server { child }
    }

    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "zolog serve exited with {st}");
                return;
            }
            assert!(Instant::now() < deadline, "zolog serve did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Another client appending through the server all the while: batches of 20 EpochEnded of
/// exp-002, one every 2 ms, so the log's next seq moves on under everything else.
struct Load {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    /// Start it, and return once it has appended something (so the server is busy).
    fn start(root: &Path) -> Load {
        let store = Store::open(root, opts()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, count) = (stop.clone(), count.clone());
            std::thread::spawn(move || {
                let mut appender = store.appender();
                let mut epoch = 0;
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<NewEvent> = (0..20)
                        .map(|i| epoch_event(exp(2), epoch + i, 0.5))
                        .collect();
                    appender.append(&batch).expect("the load appends");
                    assert!(appender.via_server(), "the load goes through the server");
                    epoch += 20;
                    count.fetch_add(20, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let load = Load {
            stop,
            count,
            thread: Some(thread),
        };
        load.wait_for(100);
        load
    }

    fn wait_for(&self, n: u64) {
        let deadline = Instant::now() + LIMIT;
        while self.count.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "the load did not get going");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stop it; how many events it appended.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the load thread failed");
        }
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn append_lines(path: &Path, from: u64, to: u64) {
    let text: String = (from..to).map(|i| epoch_line(i, "0.5")).collect();
    append(path, &text);
}

/// (seq, epoch) of every EpochEnded of `e`.
fn epochs_of(events: &[Event], e: &ExpId) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(|ev| match &ev.payload {
            Payload::EpochEnded(x) if &x.experiment_id == e => Some((ev.seq, x.epoch)),
            _ => None,
        })
        .collect()
}

fn advances(events: &[Event]) -> Vec<(u64, IngestAdvanced)> {
    events
        .iter()
        .filter_map(|ev| match &ev.payload {
            Payload::IngestAdvanced(a) => Some((ev.seq, a.clone())),
            _ => None,
        })
        .collect()
}

/// Every line of `metrics` is in the log exactly once and in order (epochs 0..lines), and every
/// IngestAdvanced is right: its line count is the number of lines whose events precede it, and
/// its offset is where that line ends in the file.
fn check_exactly_once(p: &Proj, lines: u64) -> Vec<(u64, IngestAdvanced)> {
    let ev = p.events();
    let got: Vec<u64> = epochs_of(&ev, &exp(1)).into_iter().map(|x| x.1).collect();
    assert_eq!(got.len() as u64, lines, "every line once");
    assert_eq!(
        got,
        (0..lines).collect::<Vec<_>>(),
        "each line once, in order"
    );
    let text = fs::read(p.metrics()).unwrap();
    let mut ends = vec![0u64];
    ends.extend(
        text.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i as u64 + 1),
    );
    let seqs: Vec<u64> = epochs_of(&ev, &exp(1)).into_iter().map(|x| x.0).collect();
    let adv = advances(&ev);
    assert!(!adv.is_empty());
    for (seq, a) in &adv {
        assert_eq!(a.path, ".zo/experiments/exp-001/metrics.jsonl");
        assert_eq!(a.experiment_id, exp(1));
        let before = seqs.iter().filter(|&&s| s < *seq).count() as u64;
        assert_eq!(a.line, before, "IngestAdvanced at seq {seq}: {a:?}");
        assert_eq!(a.offset, ends[a.line as usize], "offset of line {}", a.line);
    }
    let last = &adv.last().unwrap().1;
    assert_eq!(
        (last.line, last.offset),
        (lines, text.len() as u64),
        "the last position is the end of the file"
    );
    adv
}

#[test]
fn ingest_through_a_busy_server_appends_every_line_once_even_across_a_kill_9() {
    let p = Proj::new();
    let m = p.metrics();
    let m_arg = m.to_str().unwrap();
    let server = Server::start(&p.root);
    let load = Load::start(&p.root);
    // 5000 lines before the follower starts: as one batch they are over the server's 1 MiB line
    // limit, so the ingester has to split them.
    append_lines(&m, 0, 5000);
    let err = p.dir.join("follow.err");
    let mut follower = Guard::spawn(
        "zolog ingest --follow",
        p.zolog(&["ingest", "--exp", "exp-001", "--follow", m_arg])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err).unwrap()),
    );
    // The trainer goes on writing while it is followed.
    let writer = {
        let m = m.clone();
        std::thread::spawn(move || {
            for k in 0..100 {
                append_lines(&m, 5000 + k * 20, 5020 + k * 20);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // kill -9 part-way through the live lines.
    let deadline = Instant::now() + LIMIT;
    loop {
        let n = epochs_of(&p.events(), &exp(1)).len();
        if n >= 5500 {
            break;
        }
        assert!(
            follower.try_status().is_none(),
            "the follower stopped: {}",
            fs::read_to_string(&err).unwrap()
        );
        assert!(Instant::now() < deadline, "ingested only {n} lines in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    follower.signal(Signal::SIGKILL);
    follower.wait(LIMIT);
    writer.join().unwrap();
    append_lines(&m, 7000, 8000);
    // A restarted ingest takes exactly what is not in the log yet.
    let (code, out, err) = p.cmd("ingest", &["ingest", "--exp", "exp-001", "--json", m_arg]);
    assert_eq!(code, Some(0), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["line"], 8000, "{v}");
    // And once more: nothing left.
    let (code, out, err) = p.cmd("ingest2", &["ingest", "--exp", "exp-001", "--json", m_arg]);
    assert_eq!(code, Some(0), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["events"], 0, "{v}");
    assert!(load.finish() > 0);
    server.stop();
    check_exactly_once(&p, 8000);
}

#[test]
fn two_followers_of_one_file_through_a_busy_server_never_both_append_a_line() {
    let p = Proj::new();
    let m = p.metrics();
    let m_arg = m.to_str().unwrap();
    append_lines(&m, 0, 1);
    let server = Server::start(&p.root);
    let load = Load::start(&p.root);
    let mut followers: Vec<Guard> = (0..2)
        .map(|_| {
            Guard::spawn(
                "zolog ingest --follow",
                p.zolog(&["ingest", "--exp", "exp-001", "--follow", "--poll", m_arg])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
        })
        .collect();
    // Small chunks, often: both followers see most of them.
    for k in 0..150 {
        append_lines(&m, 1 + k * 4, 5 + k * 4);
        std::thread::sleep(Duration::from_millis(4));
    }
    let lines = 601;
    let deadline = Instant::now() + LIMIT;
    while epochs_of(&p.events(), &exp(1)).len() < lines as usize {
        for f in &mut followers {
            assert!(f.try_status().is_none(), "a follower stopped");
        }
        assert!(Instant::now() < deadline, "not every line was ingested");
        std::thread::sleep(Duration::from_millis(20));
    }
    for f in &mut followers {
        f.signal(Signal::SIGTERM);
        assert!(f.wait(LIMIT).success());
    }
    assert!(load.finish() > 0);
    server.stop();
    check_exactly_once(&p, lines);
}

#[test]
fn a_key_appended_since_n_is_a_conflict_with_or_without_a_server_and_nothing_is_appended() {
    let p = Proj::new();
    let path = ".zo/experiments/exp-001/metrics.jsonl";
    let key = ingest_key(&exp(1), path);
    let adv = |offset: u64, line: u64| {
        cli(Payload::IngestAdvanced(IngestAdvanced {
            experiment_id: exp(1),
            path: path.into(),
            file_id: "1:2".into(),
            offset,
            line,
            rejected: 0,
        }))
    };
    // The same with or without a server: direct (under the lock), then through one.
    for through_server in [false, true] {
        let (server, load) = if through_server {
            let server = serve::start(
                Store::open(&p.root, opts()).unwrap(),
                ServeOptions {
                    workers: 2,
                    ..ServeOptions::default()
                },
            )
            .unwrap();
            (Some(server), Some(Load::start(&p.root)))
        } else {
            (None, None)
        };
        let base = if through_server { 1000 } else { 0 };
        let mut appender = p.store.appender();
        // An ingester read the log up to n - 1...
        let n = p.events().last().map_or(1, |e| e.seq + 1);
        // ...and meanwhile another ingest of the same file advanced it.
        let theirs = p.store.append(&[adv(10, 1)]).unwrap().first_seq;
        assert!(theirs >= n);
        let mine = [epoch_event(exp(1), base, 0.5), adv(10, 1)];
        let err = appender
            .append_unless_keys_since(n, std::slice::from_ref(&key), &mine)
            .unwrap_err();
        let Error::KeyConflict {
            since,
            next_seq,
            reason,
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(*since, n);
        assert!(*next_seq > theirs, "{err}");
        assert!(
            reason.contains(&format!("the event at seq {theirs} has key")),
            "{err}"
        );
        assert_eq!(appender.via_server(), through_server);
        // Unrelated appends (the load, an IngestAdvanced of another file) do not conflict...
        let other = ingest_key(&exp(1), "elsewhere.jsonl");
        if let Some(load) = &load {
            let c = load.count.load(Ordering::Relaxed);
            load.wait_for(c + 60);
            // ... where a compare-and-append on the whole log would.
            assert!(matches!(
                appender.append_if(theirs + 1, &[epoch_event(exp(1), base + 1, 0.5)]),
                Err(Error::Conflict { .. })
            ));
        }
        appender
            .append_unless_keys_since(theirs + 1, &[other], &[epoch_event(exp(1), base + 2, 0.5)])
            .unwrap();
        // ...and after reading on past theirs, the same append goes in, once.
        appender
            .append_unless_keys_since(theirs + 1, std::slice::from_ref(&key), &mine)
            .unwrap();
        if through_server {
            // A `since` before the server started: it cannot tell, so it says conflict.
            let err = appender
                .append_unless_keys_since(1, &["alert nothing".to_owned()], &mine)
                .unwrap_err();
            assert!(
                matches!(&err, Error::KeyConflict { reason, .. } if reason.contains("started at seq")),
                "{err}"
            );
        }
        drop(load);
        if let Some(s) = server {
            s.stop().unwrap();
        }
        let ev = p.events();
        let mine_in_log: Vec<u64> = epochs_of(&ev, &exp(1))
            .into_iter()
            .map(|x| x.1)
            .filter(|e| (base..base + 1000).contains(e))
            .collect();
        assert_eq!(
            mine_in_log,
            [base + 2, base],
            "nothing of a conflicting batch appended, and the retried one once"
        );
    }
}

/// Four `zolog watch --once` at the same moment, three times over as the run goes on (a spike,
/// a stop-sized spike, NaN), while the server is busy: each alert is in the log once.
#[test]
fn concurrent_watchers_through_a_busy_server_raise_each_alert_once() {
    let p = Proj::new();
    p.store
        .append(&[NewEvent::now(
            Source::this_process(SourceKind::Trainer),
            Payload::TrainingStarted(TrainingStarted {
                experiment_id: exp(1),
                experiment_name: None,
                pid: None,
                host: Some(zolog::event::hostname()),
                total_epochs: Some(100),
                config: Json::default(),
            }),
        )])
        .unwrap();
    let server = Server::start(&p.root);
    let load = Load::start(&p.root);
    // Each round brings one new alert for the four watchers to race on.
    for (epochs, code) in [(0..15, 0), (15..30, 2), (30..40, 2)] {
        let batch: Vec<NewEvent> = epochs
            .map(|e| epoch_event(exp(1), e, spiky_loss(e)))
            .collect();
        p.store.append(&batch).unwrap();
        race(4, LIMIT, code, || {
            let mut c = p.zolog(&["watch", "exp-001", "--once"]);
            c.stdout(Stdio::null()).stderr(Stdio::null());
            c
        });
    }
    assert!(load.finish() > 0);
    server.stop();
    assert_eq!(
        alert_rules(p.events()),
        SPIKY_ALERTS,
        "each alert exactly once"
    );
}

/// `zolog run` (trainer, live ingest, watcher with --kill) while a server runs: a clean run
/// completes with every line once; a NaN run is killed by the checker with one alert.
#[test]
fn zolog_run_works_while_a_server_runs() {
    let p = Proj::new();
    let server = Server::start(&p.root);
    let load = Load::start(&p.root);
    let trainer = fixture("run_trainer.py");
    let trainer = trainer.to_str().unwrap();
    let (code, out, err) = p.cmd(
        "run",
        &[
            "run",
            "--exp",
            "exp-001",
            "--kill",
            "--",
            "python3",
            trainer,
            "--epochs",
            "6",
            "--epoch-seconds",
            "0.02",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let ev = p.events();
    let epochs: Vec<u64> = epochs_of(&ev, &exp(1)).into_iter().map(|x| x.1).collect();
    assert_eq!(epochs, [0, 1, 2, 3, 4, 5], "{err}");
    let kinds = |kind: &str| ev.iter().filter(|e| e.payload.kind() == kind).count();
    assert_eq!(kinds("TrainingStarted"), 2, "the run's and the trainer's");
    assert_eq!(kinds("TrainingEnded"), 2, "the trainer's and the run's");
    assert_eq!(kinds("CheckerConfigured"), 1);
    let last = advances(&ev).pop().expect("ingested").1;
    assert_eq!(last.offset, fs::metadata(p.metrics()).unwrap().len());
    // A trainer that writes NaN: the watcher's alert and kill go through the server too.
    let (code, out, err) = p.cmd(
        "run-nan",
        &[
            "run",
            "--exp",
            "exp-001",
            "--kill",
            "--grace",
            "5",
            "--",
            "python3",
            trainer,
            "--epochs",
            "200",
            "--nan-at",
            "3",
            "--epoch-seconds",
            "0.05",
        ],
    );
    assert_eq!(code, Some(2), "killed by the checker: {out}{err}");
    assert!(load.finish() > 0);
    server.stop();
    let ev = p.events();
    let alerts: Vec<AlertKey> = ev
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::AlertRaised(a) => Some(AlertKey::of(a)),
            _ => None,
        })
        .collect();
    let nan = alerts.iter().filter(|k| k.rule == "nan_inf").count();
    assert_eq!(nan, 1, "{alerts:?}\n{err}");
    let unique: std::collections::BTreeSet<&AlertKey> = alerts.iter().collect();
    assert_eq!(unique.len(), alerts.len(), "no alert twice: {alerts:?}");
    let killed: Vec<&str> = ev
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::RunKilled(k) => Some(k.by.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(killed, ["checker"]);
}

/// A server that goes away after making a batch durable but before acknowledging it: the
/// ingester cannot know whether the batch landed. Its next poll reads the log, finds its own
/// IngestAdvanced, says so (not "another ingest"), and appends nothing twice.
#[test]
fn a_batch_whose_ack_was_lost_with_the_server_is_recognised_and_not_appended_again() {
    use std::os::unix::net::UnixListener;
    use zolog::ingest::{IngestOptions, Ingester, Notice};
    use zolog::serve::protocol::{self, Request};

    let p = Proj::new();
    append_lines(&p.metrics(), 0, 5);
    // The fake server holds the writer lock, as a real one does, so the ingester must use it.
    let listener = UnixListener::bind(p.root.join(serve::SOCKET_NAME)).unwrap();
    let store = p.store.clone();
    let fake = std::thread::spawn(move || {
        let mut w = store.writer().unwrap();
        let (conn, _) = listener.accept().unwrap();
        let mut out = conn.try_clone().unwrap();
        out.write_all(b"{\"zolog\":\"0.1.0\",\"protocol\":1,\"max_line\":1048576,\"pid\":1}\n")
            .unwrap();
        let mut lines = BufReader::new(conn).lines();
        let events = loop {
            let line = lines
                .next()
                .expect("a batch before the client hangs up")
                .unwrap();
            match protocol::parse_line(&line) {
                Ok(Request::Batch(events, Some(_))) => break events,
                Ok(Request::Batch(..) | Request::Event(_)) => {
                    panic!("expected a conditional batch, got {line:?}")
                }
                _ => {}
            }
        };
        let src = Source::this_process(SourceKind::Trainer);
        let payloads: Vec<Vec<u8>> = events
            .into_iter()
            .map(|e| zolog::event::codec::encode(&e.into_new(&src)))
            .collect();
        w.append(&payloads).unwrap();
        // Durable, and the connection closes with no acknowledgement.
        drop(out);
        drop(w);
        std::fs::remove_file(listener.local_addr().unwrap().as_pathname().unwrap()).unwrap();
    });
    let mut ing = Ingester::open(
        p.store.clone(),
        IngestOptions::new(p.metrics(), Some(exp(1))),
    )
    .unwrap();
    let notices = Arc::new(std::sync::Mutex::new(Vec::new()));
    let n = notices.clone();
    ing.set_sink(move |x| n.lock().unwrap().push(x.clone()));
    let err = ing.poll(true).unwrap_err();
    assert!(
        matches!(err, Error::Serve(_)),
        "the lost server is an error of this poll: {err}"
    );
    fake.join().unwrap();
    // The server is gone: the ingester takes the lock itself, reads back its batch, goes on.
    let out = ing.poll(true).unwrap();
    assert_eq!(out.events, 0, "nothing appended twice: {out:?}");
    let notices = notices.lock().unwrap().clone();
    assert!(
        notices
            .iter()
            .any(|x| matches!(x, Notice::Landed { position, .. } if position.line == 5)),
        "{notices:?}"
    );
    assert!(
        !notices.iter().any(|x| matches!(x, Notice::Adopted { .. })),
        "its own batch is not another ingest's: {notices:?}"
    );
    append_lines(&p.metrics(), 5, 8);
    assert_eq!(ing.poll(true).unwrap().events, 3);
    check_exactly_once(&p, 8);
}

//! `zolog serve`: acknowledgements only after durability, group commit, bad clients, shutdown,
//! kill -9, and writing commands routed through a running server.
//!
//! Every wait is bounded (socket read timeouts); no assertion is about time.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use zolog::event::{EpochEnded, ExpId, Metrics, NewEvent, Payload, Source, SourceKind};
use zolog::serve::{self, ServeOptions, TcpOptions};
use zolog::store::{Store, StoreOptions};

const BIN: &str = env!("CARGO_BIN_EXE_zolog");
/// Longest any single read in these tests may wait before the test fails.
const WAIT: Duration = Duration::from_secs(20);

fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join(".zo"), "t", opts()).unwrap();
    (dir, store)
}

fn opts() -> StoreOptions {
    StoreOptions::default().with_lock_timeout(Duration::from_millis(300))
}

fn epoch_line(epoch: u64) -> String {
    format!(
        r#"{{"type":"EpochEnded","experiment_id":"exp-001","epoch":{epoch},"metrics":{{"loss":NaN,"acc":0.5}}}}"#
    )
}

fn epoch_event(epoch: u64) -> NewEvent {
    NewEvent::now(
        Source::this_process(SourceKind::Cli),
        Payload::EpochEnded(EpochEnded {
            experiment_id: ExpId::parse("exp-001").unwrap(),
            epoch,
            step: None,
            metrics: Metrics(vec![("loss".into(), 0.25)]),
            learning_rate: None,
            wall_time_seconds: None,
            gpu_memory_mb: None,
        }),
    )
}

/// seq → epoch of every EpochEnded in the log (after recovering a torn tail).
fn epochs_by_seq(root: &Path) -> BTreeMap<u64, u64> {
    let store = Store::open(root, opts()).unwrap();
    store.log().recover().unwrap();
    store
        .events(1)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.payload {
            Payload::EpochEnded(p) => Some((e.seq, p.epoch)),
            _ => None,
        })
        .collect()
}

fn verify_clean(root: &Path) {
    let out = Command::new(BIN)
        .args(["verify", "--store"])
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "zolog verify: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A raw protocol client with bounded reads.
struct Raw {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Raw {
    fn connect(path: &Path) -> Raw {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut raw = Raw {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        let g = raw.line();
        assert_eq!(g["protocol"], 1, "greeting {g}");
        raw
    }

    fn send(&mut self, text: &str) {
        self.w.write_all(text.as_bytes()).unwrap();
    }

    fn line(&mut self) -> Value {
        let mut s = String::new();
        let n = self
            .r
            .read_line(&mut s)
            .expect("a response within the wait");
        assert!(n > 0, "connection closed");
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn eof(&mut self) -> bool {
        let mut s = String::new();
        matches!(self.r.read_line(&mut s), Ok(0))
    }
}

fn serve_opts() -> ServeOptions {
    ServeOptions {
        workers: 2,
        ..ServeOptions::default()
    }
}

#[test]
fn serve_acknowledges_each_form_and_the_log_holds_exactly_that() {
    let (_d, store) = new_store();
    let root = store.root().to_path_buf();
    let server = serve::start(store, serve_opts()).unwrap();
    let mut c = Raw::connect(&server.ready().socket);
    let (e1, e2, e3, e4, e5) = (
        epoch_line(1),
        epoch_line(2),
        epoch_line(3),
        epoch_line(4),
        epoch_line(5),
    );
    c.send(&format!(
        "{e1}\n{{\"batch\":[{e2},{e3}]}}\n#acks flush\n{e4}\n\n{e5}\n#flush\n#acks each\n#flush\n"
    ));
    let a = c.line();
    assert_eq!(
        (a["seq"].as_u64(), a["line"].as_u64()),
        (Some(2), Some(1)),
        "{a}"
    );
    let b = c.line();
    assert_eq!(
        (
            b["seq"].as_u64(),
            b["last_seq"].as_u64(),
            b["line"].as_u64()
        ),
        (Some(3), Some(4), Some(2)),
        "{b}"
    );
    let f = c.line();
    assert_eq!(
        (
            f["flushed"].as_u64(),
            f["first_seq"].as_u64(),
            f["last_seq"].as_u64(),
            f["line"].as_u64()
        ),
        (Some(5), Some(2), Some(6), Some(7)),
        "{f}"
    );
    let f2 = c.line();
    assert_eq!(
        (f2["flushed"].as_u64(), f2["line"].as_u64()),
        (Some(0), Some(9)),
        "{f2}"
    );
    // A source set for the connection applies to later lines.
    c.send("#source {\"kind\":\"checker\",\"pid\":7}\n");
    c.send(&format!("{}\n", epoch_line(6)));
    assert_eq!(c.line()["seq"], 7);
    drop(c);
    let report = server.stop().unwrap();
    assert_eq!(report.events, 6);
    let got = epochs_by_seq(&root);
    assert_eq!(
        got,
        BTreeMap::from([(2, 1), (3, 2), (4, 3), (5, 4), (6, 5), (7, 6)])
    );
    let evs = Store::open(&root, opts()).unwrap().events(7).unwrap();
    assert_eq!(evs[0].source.kind, SourceKind::Checker);
    assert_eq!(evs[0].source.pid, Some(7));
    let Payload::EpochEnded(p) = &evs[0].payload else {
        panic!()
    };
    assert!(
        p.metrics.get("loss").unwrap().is_nan(),
        "bare NaN round-trips"
    );
    verify_clean(&root);
}

#[test]
fn malformed_lines_are_refused_alone_and_the_connection_goes_on() {
    let (_d, store) = new_store();
    let root = store.root().to_path_buf();
    let server = serve::start(store, serve_opts()).unwrap();
    let mut c = Raw::connect(&server.ready().socket);
    let mut other = Raw::connect(&server.ready().socket);
    let good = epoch_line(1);
    let cases: &[(&str, &str)] = &[
        ("{not json", "malformed JSON"),
        (r#"{"type":"EpochFinished"}"#, "unknown event type"),
        (
            r#"{"type":"EpochEnded","experiment_id":"../../etc","epoch":1}"#,
            "invalid experiment id",
        ),
        (
            &format!(r#"{{"batch":[{good},{{"type":"Nope"}}]}}"#),
            "batch item 1",
        ),
        ("#frobnicate", "unknown command"),
        ("AUTH x", "first line of a TCP"),
    ];
    for (line, _) in cases {
        c.send(line);
        c.send("\n");
    }
    c.w.write_all(b"\xff\xfe{\n").unwrap();
    c.send(&format!("{good}\n"));
    for (i, (_, want)) in cases.iter().enumerate() {
        let r = c.line();
        assert_eq!(r["line"], i as u64 + 1, "{r}");
        assert!(
            r["error"].as_str().unwrap().contains(want),
            "{r} should say {want}"
        );
    }
    let r = c.line();
    assert!(r["error"].as_str().unwrap().contains("UTF-8"), "{r}");
    let ok = c.line();
    assert_eq!(ok["seq"], 2, "{ok}");
    assert_eq!(ok["line"], cases.len() as u64 + 2);
    other.send(&format!("{}\n", epoch_line(2)));
    assert_eq!(other.line()["seq"], 3);
    drop((c, other));
    let report = server.stop().unwrap();
    assert_eq!(report.rejected_lines, cases.len() as u64 + 1);
    // Nothing of the refused batch reached the log.
    assert_eq!(epochs_by_seq(&root), BTreeMap::from([(2, 1), (3, 2)]));
}

#[test]
fn an_oversized_line_is_refused_as_it_arrives_and_never_buffered() {
    let (_d, store) = new_store();
    let root = store.root().to_path_buf();
    let max_line = 64 * 1024;
    let server = serve::start(
        store,
        ServeOptions {
            max_line,
            ..serve_opts()
        },
    )
    .unwrap();
    let mut c = Raw::connect(&server.ready().socket);
    c.send(&format!("{}\n", epoch_line(1)));
    assert_eq!(c.line()["seq"], 2);
    // A 16 MiB line, in pieces: the error comes before the line ends.
    let piece = vec![b'x'; 256 * 1024];
    c.w.write_all(&piece).unwrap();
    let r = c.line();
    assert_eq!(r["line"], 2, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("longer than 65536"),
        "{r}"
    );
    for _ in 0..63 {
        c.w.write_all(&piece).unwrap();
    }
    // A line exactly at the limit is fine; one byte more is not.
    let at_limit = format!(
        r#"{{"type":"NoteAdded","experiment_id":"exp-001","section":"next","text":"{}"}}"#,
        "a".repeat(max_line - 73)
    );
    assert_eq!(at_limit.len(), max_line);
    c.send(&format!("\n{at_limit}\n{}\n", epoch_line(3)));
    let ok = c.line();
    assert_eq!(
        (ok["seq"].as_u64(), ok["line"].as_u64()),
        (Some(3), Some(3)),
        "{ok}"
    );
    assert_eq!(c.line()["seq"], 4);
    drop(c);
    server.stop().unwrap();
    assert_eq!(epochs_by_seq(&root), BTreeMap::from([(2, 1), (4, 3)]));
    verify_clean(&root);
}

#[test]
fn a_client_that_disconnects_mid_line_leaves_nothing_of_that_line() {
    let (_d, store) = new_store();
    let root = store.root().to_path_buf();
    let server = serve::start(store, serve_opts()).unwrap();
    let socket = server.ready().socket.clone();
    let full = epoch_line(1);
    let partial_event = epoch_line(2);
    let partial_batch = format!(r#"{{"batch":[{},{}]}}"#, epoch_line(3), epoch_line(4));
    for partial in [
        &partial_event[..],
        &partial_event[..partial_event.len() - 1],
        &partial_batch[..40],
    ] {
        let mut c = Raw::connect(&socket);
        c.send(&format!("{full}\n{partial}"));
        // Closing our write side: the server sees the end mid-line.
        c.w.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(c.line()["seq"].is_u64());
        let r = c.line();
        assert_eq!(r["line"], 2, "{r}");
        assert!(r["error"].as_str().unwrap().contains("no newline"), "{r}");
        assert!(c.eof());
    }
    // And a client that vanishes without a word.
    {
        let mut c = Raw::connect(&socket);
        c.send(&format!("{full}\n{}", &partial_event[..20]));
        assert!(c.line()["seq"].is_u64());
    }
    let mut c = Raw::connect(&socket);
    c.send(&format!("{}\n", epoch_line(9)));
    assert_eq!(c.line()["seq"], 6);
    drop(c);
    server.stop().unwrap();
    let got: Vec<u64> = epochs_by_seq(&root).into_values().collect();
    assert_eq!(got, [1, 1, 1, 1, 9]);
    verify_clean(&root);
}

#[test]
fn a_client_that_never_reads_its_acks_is_held_back_alone_then_dropped() {
    let (_d, store) = new_store();
    let root = store.root().to_path_buf();
    let server = serve::start(
        store,
        ServeOptions {
            ack_timeout: Duration::from_millis(1500),
            conn_inflight: 4,
            ..serve_opts()
        },
    )
    .unwrap();
    let socket = server.ready().socket.clone();
    // The slow client writes as fast as it can and reads nothing.
    let slow = UnixStream::connect(&socket).unwrap();
    slow.set_write_timeout(Some(WAIT)).unwrap();
    let slow_writer = {
        let mut w = slow.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut chunk = String::new();
            for i in 0..1000 {
                chunk.push_str(&epoch_line(1_000_000 + i));
                chunk.push('\n');
            }
            let mut sent = 0u64;
            // Bounded: at most 400,000 events (about 40 MiB); the server stops reading long before.
            while sent < 400_000 {
                if w.write_all(chunk.as_bytes()).is_err() {
                    return (sent, true);
                }
                sent += 1000;
            }
            (sent, false)
        })
    };
    // Meanwhile others are served as usual.
    let mut acked = Vec::new();
    for round in 0..20u64 {
        let mut c = Raw::connect(&socket);
        for i in 0..50 {
            c.send(&format!("{}\n", epoch_line(round * 100 + i)));
        }
        for i in 0..50 {
            let r = c.line();
            acked.push((r["seq"].as_u64().unwrap(), round * 100 + i));
        }
    }
    let (sent, cut_off) = slow_writer.join().unwrap();
    assert!(
        cut_off,
        "the slow client was dropped (it wrote {sent} events' worth)"
    );
    let report = server.stop().unwrap();
    assert_eq!(report.dropped_clients, 1);
    let log = epochs_by_seq(&root);
    for (seq, epoch) in &acked {
        assert_eq!(log.get(seq), Some(epoch));
    }
    // What the slow client got in is whole events, in the order it sent them.
    let slow_epochs: Vec<u64> = log.values().copied().filter(|&e| e >= 1_000_000).collect();
    assert!(slow_epochs.len() < sent as usize);
    for (i, e) in slow_epochs.iter().enumerate() {
        assert_eq!(*e, 1_000_000 + (i as u64 % 1000));
    }
    verify_clean(&root);
}

#[test]
fn three_hundred_connections_at_once_and_the_limit_beyond() {
    let (_d, store) = new_store();
    let root = store.root().to_path_buf();
    let server = serve::start(
        store,
        ServeOptions {
            max_connections: 300,
            ..serve_opts()
        },
    )
    .unwrap();
    let socket = server.ready().socket.clone();
    let mut conns: Vec<Raw> = (0..300).map(|_| Raw::connect(&socket)).collect();
    // One more is refused with a reason, and the others do not notice.
    let extra = UnixStream::connect(&socket).unwrap();
    extra.set_read_timeout(Some(WAIT)).unwrap();
    let mut r = String::new();
    BufReader::new(extra).read_line(&mut r).unwrap();
    assert!(
        r.contains("too many connections") && r.contains("\"fatal\":true"),
        "{r}"
    );
    for (i, c) in conns.iter_mut().enumerate() {
        for j in 0..5 {
            c.send(&format!("{}\n", epoch_line((i * 10 + j) as u64)));
        }
    }
    let mut acked = HashMap::new();
    for (i, c) in conns.iter_mut().enumerate() {
        for j in 0..5 {
            let r = c.line();
            acked.insert(r["seq"].as_u64().unwrap(), (i * 10 + j) as u64);
        }
    }
    assert_eq!(acked.len(), 1500);
    drop(conns);
    // Slots are freed: a new client gets in.
    let mut last = None;
    for _ in 0..200 {
        let s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut g = String::new();
        BufReader::new(s).read_line(&mut g).unwrap();
        if g.contains("\"protocol\"") {
            last = Some(g);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        last.is_some(),
        "a new connection is served once the others closed"
    );
    let report = server.stop().unwrap();
    assert!(report.refused_connections >= 1);
    let log = epochs_by_seq(&root);
    for (seq, epoch) in acked {
        assert_eq!(log.get(&seq), Some(&epoch));
    }
}

#[test]
fn tcp_is_loopback_only_and_needs_the_token() {
    let (_d, store) = new_store();
    let bad = serve::run(
        &store,
        ServeOptions {
            tcp: Some(TcpOptions {
                addr: "0.0.0.0:0".parse().unwrap(),
                token: "t".into(),
            }),
            ..serve_opts()
        },
        || Ok(std::future::pending::<()>()),
        |_| {},
    );
    assert!(bad.unwrap_err().to_string().contains("only loopback"));
    let server = serve::start(
        store,
        ServeOptions {
            tcp: Some(TcpOptions {
                addr: "127.0.0.1:0".parse().unwrap(),
                token: "s3cret-token".into(),
            }),
            ..serve_opts()
        },
    )
    .unwrap();
    let addr: SocketAddr = server.ready().tcp.unwrap();
    let connect = |first: &str| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(first.as_bytes()).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        (s, r, l)
    };
    for first in [
        "AUTH wrong\n",
        "AUTH s3cret-toke\n",
        "AUTH \n",
        &format!("{}\n", epoch_line(1)),
    ] {
        let (_s, mut r, l) = connect(first);
        assert!(
            l.contains("authentication failed") && l.contains("fatal"),
            "{first:?}: {l}"
        );
        let mut rest = String::new();
        assert_eq!(r.read_line(&mut rest).unwrap(), 0, "closed after refusing");
    }
    let (s, mut r, g) = connect(&format!("AUTH s3cret-token\r\n{}\n", epoch_line(1)));
    assert!(g.contains("\"protocol\":1"), "{g}");
    let mut ack = String::new();
    r.read_line(&mut ack).unwrap();
    assert!(
        ack.contains("\"seq\":2") && ack.contains("\"line\":2"),
        "{ack}"
    );
    // The blocking client speaks it too.
    let mut client = serve::client::Client::connect_tcp(addr, "s3cret-token", WAIT).unwrap();
    let a = client.append(&[epoch_event(5)]).unwrap();
    assert_eq!((a.first_seq, a.last_seq), (3, 3));
    assert!(serve::client::Client::connect_tcp(addr, "nope", WAIT).is_err());
    s.shutdown(std::net::Shutdown::Both).unwrap();
    let report = server.stop().unwrap();
    assert_eq!(report.events, 2);
    assert_eq!(report.refused_connections, 5);
}

#[test]
fn one_server_per_store_its_socket_is_private_and_a_stale_one_is_replaced() {
    let (_d, store) = new_store();
    let root = store.root().to_path_buf();
    let socket = serve::socket_path(&root);
    let a = serve::start(store.clone(), serve_opts()).unwrap();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let second = serve::start(store.clone(), serve_opts()).unwrap_err();
    assert!(second.to_string().contains("locked by"), "{second}");
    // The first server is unharmed by the attempt.
    Raw::connect(&socket);
    a.stop().unwrap();
    assert!(!socket.exists(), "a server removes its socket on stop");
    // A socket left by a killed server: nobody listens on it.
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    assert!(matches!(
        serve::client::connect_store(&root, WAIT),
        Ok(None)
    ));
    // Direct appends ignore it.
    store.append(&[epoch_event(1)]).unwrap();
    let b = serve::start(store.clone(), serve_opts()).unwrap();
    let mut c = Raw::connect(&socket);
    c.send(&format!("{}\n", epoch_line(2)));
    assert_eq!(c.line()["seq"], 3);
    drop(c);
    b.stop().unwrap();
    // Something else at the socket path is never removed.
    std::fs::write(&socket, "not a socket").unwrap();
    let err = serve::start(store, serve_opts()).unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
}

#[test]
fn writing_commands_go_through_a_running_server() {
    let (_d, store) = new_store();
    let root = store.root().to_path_buf();
    let server = serve::start(store.clone(), serve_opts()).unwrap();
    // In process: the lock is held (with a 300 ms lock timeout the direct path would fail).
    let a = store.append(&[epoch_event(1), epoch_event(2)]).unwrap();
    assert_eq!((a.first_seq, a.last_seq), (2, 3));
    // `zolog append`, streaming and --atomic, and `zolog log` while the server runs.
    let run = |args: &[&str], input: String| {
        let mut child = Command::new(BIN)
            .args(args)
            .arg("--store")
            .arg(&root)
            .args(["--lock-timeout", "0.3"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let many: String = (10..2010).map(|i| epoch_line(i) + "\n").collect();
    let (ok, out, err) = run(&["append"], many.clone());
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("appended 2000 event(s), last seq 2003"),
        "{out}"
    );
    let (ok, out, err) = run(
        &["append", "--atomic", "--json"],
        format!("{}\n{}\n", epoch_line(7), epoch_line(8)),
    );
    assert!(ok, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["first_seq"].as_u64(), v["last_seq"].as_u64()),
        (Some(2004), Some(2005))
    );
    // Bad lines are still reported by line, locally.
    let (ok, out, err) = run(&["append"], format!("{}\nbad\n", epoch_line(9)));
    assert!(
        !ok && err.contains("<stdin>:2") && out.contains("appended 1"),
        "{out}{err}"
    );
    let (ok, out, _) = run(&["log", "--since", "2004"], String::new());
    assert!(ok);
    assert_eq!(out.lines().count(), 3);
    // Experiment commands check-then-append through the server too (compare-and-append on the
    // next seq), instead of failing on the lock.
    let (ok, out, err) = run(
        &["exp", "mint", "--hypothesis", "via the server"],
        String::new(),
    );
    assert!(ok && out.trim() == "exp-001", "{out}{err}");
    let (ok, out, err) = run(&["exp", "mint", "--parent", "exp-001"], String::new());
    assert!(ok && out.trim() == "exp-002", "{out}{err}");
    let (ok, out, err) = run(
        &[
            "note",
            "exp-002",
            "--section",
            "mechanism",
            "noted via the server",
        ],
        String::new(),
    );
    assert!(ok, "{out}{err}");
    let report = server.stop().unwrap();
    assert_eq!(report.events, 2 + 2000 + 2 + 1 + 3);
    // Atomic batches too large for one line are refused whole, with the reason.
    let server = serve::start(
        store.clone(),
        ServeOptions {
            max_line: 4096,
            ..serve_opts()
        },
    )
    .unwrap();
    let big: Vec<NewEvent> = (0..100).map(epoch_event).collect();
    let err = store.append(&big).unwrap_err();
    assert!(
        err.to_string().contains("over the server's line limit"),
        "{err}"
    );
    // The streaming path splits instead.
    let (ok, out, err) = run(&["append"], many);
    assert!(ok && out.contains("appended 2000"), "{out}{err}");
    server.stop().unwrap();
    // With the server gone, the same calls take the lock again.
    store.append(&[epoch_event(3)]).unwrap();
    verify_clean(&root);
}

/// A `zolog serve` child process.
struct ServerProc {
    child: Child,
    socket: PathBuf,
}

impl ServerProc {
    fn spawn(root: &Path) -> ServerProc {
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--store")
            .arg(root)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.starts_with("serving"), "zolog serve said {first:?}");
        ServerProc {
            child,
            socket: serve::socket_path(root),
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait (bounded by WAIT) until `count` reaches `n`.
fn wait_for(count: &AtomicU64, n: u64) {
    let t0 = Instant::now();
    while count.load(Ordering::Relaxed) < n && t0.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a load client saw: (seq, epoch) of each acknowledged event, and the epochs refused.
#[derive(Default)]
struct Seen {
    acks: Vec<(u64, u64)>,
    refused: Vec<u64>,
    /// The last line the server read, as its `bye` said.
    bye_line: Option<u64>,
}

/// One load client: sends event lines with unique epochs (`base` + line number - 1) until `stop`
/// or the connection fails, and reads every response.
fn load_client(socket: PathBuf, base: u64, stop: Arc<AtomicBool>, count: Arc<AtomicU64>) -> Seen {
    let mut seen = Seen::default();
    let Ok(s) = UnixStream::connect(&socket) else {
        return seen;
    };
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut g = String::new();
    if r.read_line(&mut g).unwrap_or(0) == 0 {
        return seen;
    }
    let writer = {
        let mut w = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut i = 0u64;
            // Bounded: at most 200,000 events per client.
            while !stop.load(Ordering::Relaxed) && i < 200_000 {
                let mut chunk = String::new();
                for k in 0..20 {
                    chunk.push_str(&epoch_line(base + i + k));
                    chunk.push('\n');
                }
                if w.write_all(chunk.as_bytes()).is_err() {
                    break;
                }
                i += 20;
                std::thread::sleep(Duration::from_micros(200));
            }
            let _ = w.shutdown(std::net::Shutdown::Write);
        })
    };
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(n) if n > 0 && line.ends_with('\n') => {}
            _ => break,
        }
        let v: Value = serde_json::from_str(&line).unwrap();
        if let Some(seq) = v["seq"].as_u64() {
            seen.acks
                .push((seq, base + v["line"].as_u64().unwrap() - 1));
            count.fetch_add(1, Ordering::Relaxed);
        } else if v["error"].is_string() {
            seen.refused.push(base + v["line"].as_u64().unwrap() - 1);
        } else {
            assert!(v["bye"].is_string(), "unexpected {v}");
            seen.bye_line = v["line"].as_u64();
        }
    }
    let _ = writer.join();
    seen
}

#[test]
fn kill_9_during_load_loses_no_acknowledged_event() {
    let (_d, store) = new_store();
    let root = store.root().to_path_buf();
    drop(store);
    let mut acked: Vec<(u64, u64)> = Vec::new();
    for cycle in 0..3u64 {
        let server = ServerProc::spawn(&root);
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let clients: Vec<_> = (0..8u64)
            .map(|c| {
                let (socket, stop, count) = (server.socket.clone(), stop.clone(), count.clone());
                std::thread::spawn(move || {
                    load_client(socket, (cycle * 8 + c) * 1_000_000, stop, count)
                })
            })
            .collect();
        // Let acknowledgements flow, then kill -9 in the middle of the load.
        let t0 = Instant::now();
        wait_for(&count, 2_000);
        std::thread::sleep(Duration::from_millis(50 + 100 * cycle));
        server.signal(nix::sys::signal::Signal::SIGKILL);
        let killed_after = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        let mut n = 0;
        for c in clients {
            let seen = c.join().unwrap();
            assert!(seen.refused.is_empty());
            n += seen.acks.len();
            acked.extend(seen.acks);
        }
        assert!(
            n > 0,
            "cycle {cycle}: no acknowledgement before the kill at {killed_after:?}"
        );
        drop(server);
        // Every acknowledged event so far is in the log, at the seq it was acknowledged with.
        let log = epochs_by_seq(&root);
        for (seq, epoch) in &acked {
            assert_eq!(
                log.get(seq),
                Some(epoch),
                "cycle {cycle}: acknowledged seq {seq}"
            );
        }
        // And nothing appears twice or out of the order its client sent it.
        let mut last_of: HashMap<u64, u64> = HashMap::new();
        for &epoch in log.values() {
            if let Some(prev) = last_of.insert(epoch / 1_000_000, epoch) {
                assert!(epoch > prev, "epoch {epoch} after {prev}");
            }
        }
        verify_clean(&root);
    }
}

#[test]
fn sigterm_acknowledges_everything_received_and_exits_zero() {
    let (_d, store) = new_store();
    let root = store.root().to_path_buf();
    drop(store);
    let mut server = ServerProc::spawn(&root);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            let (socket, stop, count) = (server.socket.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || load_client(socket, c * 1_000_000, stop, count))
        })
        .collect();
    wait_for(&count, 1_000);
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let mut out = String::new();
    server
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains("stopped:"), "{out}");
    stop.store(true, Ordering::Relaxed);
    let mut acked: Vec<(u64, u64)> = Vec::new();
    for (c, handle) in clients.into_iter().enumerate() {
        let seen = handle.join().unwrap();
        // Every line the server read (all event lines) was acknowledged before its bye.
        let bye = seen.bye_line.expect("a bye");
        assert_eq!(bye, seen.acks.len() as u64);
        // At most one refusal: the line the client was in the middle of when the server stopped.
        let base = c as u64 * 1_000_000;
        assert!(
            seen.refused.is_empty() || seen.refused == [base + bye],
            "refused {:?} with bye at line {bye}",
            seen.refused
        );
        acked.extend(seen.acks);
    }
    assert!(!acked.is_empty());
    acked.sort_unstable();
    // Graceful: every event the server appended was acknowledged to its client, and vice versa.
    let log: Vec<(u64, u64)> = epochs_by_seq(&root).into_iter().collect();
    assert_eq!(log, acked);
    assert!(!server.socket.exists());
    verify_clean(&root);
}

#[test]
fn acknowledged_events_survive_power_loss_and_a_failed_sync_acknowledges_nothing() {
    use zolog::log::fs::{CrashMode, FaultFs, Faults};
    let fs = FaultFs::new();
    // The log lives in memory; the path is still a real, private one, for anything (projection
    // refreshes) that writes beside it.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mem").join(".zo");
    let store = Store::init_with(Arc::new(fs.clone()), &root, "t", opts()).unwrap();
    let socket = dir.path().join("serve.sock");
    let server = serve::start(
        store,
        ServeOptions {
            socket: Some(socket.clone()),
            ..serve_opts()
        },
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            let (socket, stop, count) = (socket.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || load_client(socket, c * 1_000_000, stop, count))
        })
        .collect();
    // Once syncs are flowing, the next one fails.
    let t0 = Instant::now();
    while fs.sync_count() < 20 && t0.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(5));
    }
    fs.set_faults(Faults {
        fail_next_sync: true,
        ..Faults::default()
    });
    // The server stops by itself, with the error.
    let err = server.stop().unwrap_err();
    assert!(err.to_string().contains("fdatasync"), "{err}");
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    for c in clients {
        let seen = c.join().unwrap();
        acked.extend(seen.acks);
        refused.extend(seen.refused);
    }
    assert!(!acked.is_empty() && !refused.is_empty());
    // Power loss: only what was synced survives.
    fs.crash(CrashMode::DropUnsynced);
    let store = Store::open_with(Arc::new(fs.clone()), &root, opts()).unwrap();
    store.log().recover().unwrap();
    let log: BTreeMap<u64, u64> = store
        .events(1)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.payload {
            Payload::EpochEnded(p) => Some((e.seq, p.epoch)),
            _ => None,
        })
        .collect();
    for (seq, epoch) in &acked {
        assert_eq!(log.get(seq), Some(epoch), "acknowledged seq {seq} lost");
    }
    // Here the failed group's bytes were dropped: nothing refused is in the log.
    let in_log: std::collections::HashSet<u64> = log.values().copied().collect();
    for epoch in &refused {
        assert!(!in_log.contains(epoch), "refused epoch {epoch} in the log");
    }
    assert_eq!(
        log.len(),
        acked.len(),
        "the log holds exactly the acknowledged events"
    );
}

#[test]
fn zolog_append_streaming_through_a_server_that_stops_loses_and_repeats_nothing() {
    let (_d, store) = new_store();
    let root = store.root().to_path_buf();
    let server = serve::start(store, serve_opts()).unwrap();
    let mut child = Command::new(BIN)
        .args(["append", "--store"])
        .arg(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stopper = None;
    let mut server = Some(server);
    for chunk in 0..50u64 {
        let lines: String = (0..100)
            .map(|i| epoch_line(chunk * 100 + i) + "\n")
            .collect();
        // A child that died shows in its exit status and stderr, asserted below.
        if stdin
            .write_all(lines.as_bytes())
            .and_then(|()| stdin.flush())
            .is_err()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(3));
        if chunk == 20 {
            // Stop the server once some of the stream went through it (bounded: a loaded machine
            // can start the child late), so the stop lands mid-stream.
            let deadline = Instant::now() + Duration::from_secs(30);
            let reader = Store::open(&root, opts()).unwrap();
            let through = || {
                reader
                    .events(1)
                    .unwrap()
                    .iter()
                    .any(|e| matches!(e.payload, Payload::EpochEnded(_)))
            };
            while !through() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let s = server.take().unwrap();
            stopper = Some(std::thread::spawn(move || s.stop().unwrap()));
        }
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = stopper.unwrap().join().unwrap();
    assert!(stdout.contains("appended 5000 event(s)"), "{stdout}");
    assert!(report.events > 0, "some went through the server");
    let got: Vec<u64> = epochs_by_seq(&root).into_values().collect();
    assert_eq!(
        got,
        (0..5000).collect::<Vec<_>>(),
        "each line once, in order"
    );
}

#[test]
fn conditional_appends_are_check_then_append_with_or_without_a_server() {
    use zolog::Error;
    use zolog::event::codec;
    let (_d, store) = new_store();
    let root = store.root().to_path_buf();
    // Directly: right seq appends, a stale one conflicts and appends nothing.
    let a = store.appender().append_if(2, &[epoch_event(1)]).unwrap();
    assert_eq!((a.first_seq, a.last_seq), (2, 2));
    let err = store
        .appender()
        .append_if(2, &[epoch_event(2)])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict {
                expected: 2,
                actual: 3
            }
        ),
        "{err}"
    );
    // Through a server: the same, and the check is made when the batch is appended, after
    // whatever precedes it in the same group.
    let server = serve::start(store.clone(), serve_opts()).unwrap();
    let a = store
        .appender()
        .append_if(3, &[epoch_event(3), epoch_event(4)])
        .unwrap();
    assert_eq!((a.first_seq, a.last_seq), (3, 4));
    let err = store
        .appender()
        .append_if(3, &[epoch_event(5)])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict {
                expected: 3,
                actual: 5
            }
        ),
        "{err}"
    );
    let mut c = Raw::connect(&server.ready().socket);
    let (e6, e7, e8) = (epoch_line(6), epoch_line(7), epoch_line(8));
    c.send(&format!(
        "{{\"batch\":[{e6}],\"if_next_seq\":5}}\n{{\"batch\":[{e7}],\"if_next_seq\":5}}\n{{\"batch\":[{e8}],\"if_next_seq\":6}}\n"
    ));
    let first = c.line();
    assert_eq!(
        (first["seq"].as_u64(), first["line"].as_u64()),
        (Some(5), Some(1)),
        "{first}"
    );
    let second = c.line();
    assert!(
        second["error"].as_str().unwrap().starts_with("conflict"),
        "{second}"
    );
    assert_eq!(
        (second["next_seq"].as_u64(), second["line"].as_u64()),
        (Some(6), Some(2))
    );
    let third = c.line();
    assert_eq!(third["seq"], 6, "{third}");
    drop(c);
    // Encoded payloads (what ingest and `zolog append` build) go through too.
    let p = codec::encode(&epoch_event(9));
    let a = store.appender().append_encoded(&[&p, &p], Some(7)).unwrap();
    assert_eq!((a.first_seq, a.last_seq), (7, 8));
    let err = store.appender().append_encoded(&[&p], Some(7)).unwrap_err();
    assert!(matches!(err, Error::Conflict { actual: 9, .. }), "{err}");
    server.stop().unwrap();
    let a = store.appender().append_encoded(&[&p], None).unwrap();
    assert_eq!(a.first_seq, 9);
    let got: Vec<u64> = epochs_by_seq(&root).into_values().collect();
    assert_eq!(got, [1, 3, 4, 6, 8, 9, 9, 9]);
}

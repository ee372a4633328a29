//! kill -9 loop: a child process appends and reports every acknowledged seq on stdout; the parent
//! kills it (SIGKILL) at random moments, hundreds of times. After each recovery every acknowledged
//! event is present, seqs have no gaps, and each event is the one the child wrote at that seq.
//!
//! The child is this test binary itself: the parent re-runs it with `--exact kill9::child
//! --nocapture` and `ZOLOG_TEST_CHILD=<store>`; without that variable the child test returns at
//! once.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{Rng, exp};
use zolog::event::codec;
use zolog::event::{NewEvent, NoteAdded, NoteSection, Payload, Source, SourceKind, Timestamp};
use zolog::log::LogOptions;
use zolog::store::{Store, StoreOptions};

const CHILD_ENV: &str = "ZOLOG_TEST_CHILD";
/// At most this many cycles, and no new cycle after the time budget once MIN_CYCLES have run.
const MAX_CYCLES: usize = 300;
const MIN_CYCLES: usize = 20;
const TIME_BUDGET: Duration = Duration::from_secs(25);

fn opts() -> StoreOptions {
    StoreOptions {
        log: LogOptions {
            // Small segments, so kills also land around rotations.
            segment_size: 32 * 1024,
            lock_timeout: Duration::from_secs(20),
            ..StoreOptions::default().log
        },
    }
}

/// The event the child writes at `seq`: its text names the seq, so the parent can tell that the
/// event at each seq is the one that was written there.
fn event_for(seq: u64, pad: usize) -> NewEvent {
    NewEvent {
        time: Timestamp(1_795_000_000_000_000_000 + seq as i64),
        appended: None,
        source: Source {
            kind: SourceKind::Trainer,
            pid: Some(std::process::id()),
            host: None,
        },
        payload: Payload::NoteAdded(NoteAdded {
            experiment_id: exp(1),
            section: NoteSection::WhatHappened,
            text: format!("seq {seq} {}", "z".repeat(pad)),
        }),
    }
}

fn text_seq(p: &Payload) -> Option<u64> {
    match p {
        Payload::NoteAdded(n) => n.text.strip_prefix("seq ")?.split(' ').next()?.parse().ok(),
        _ => None,
    }
}

/// The child: append random batches forever, printing `ACK <last seq>` after each is
/// acknowledged. Holds the writer for a while, or takes it per batch as `zolog append` does.
#[test]
fn child() {
    let Ok(root) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open(Path::new(&root), opts()).expect("child: open store");
    let mut rng = Rng::new(u64::from(std::process::id()) ^ Timestamp::now().nanos() as u64);
    let hold = rng.chance(50);
    let mut w = Some(store.writer().expect("child: writer"));
    let mut out = std::io::stdout();
    loop {
        let writer = match &mut w {
            Some(w) => w,
            None => w.insert(store.writer().expect("child: writer")),
        };
        let first = writer.next_seq();
        let n = rng.range(1, 8);
        let batch: Vec<Vec<u8>> = (first..first + n)
            .map(|s| codec::encode(&event_for(s, rng.below(300) as usize)))
            .collect();
        let a = writer.append(&batch).expect("child: append");
        assert_eq!(a.first_seq, first);
        writeln!(out, "ACK {}", a.last_seq).expect("child: stdout");
        out.flush().expect("child: flush");
        if !hold {
            w = None;
        }
    }
}

struct Cycle {
    acked: Option<u64>,
    stderr: String,
}

/// Run the child once and SIGKILL it at a random moment; return the highest acknowledged seq.
fn run_child(exe: &Path, root: &Path, rng: &mut Rng) -> Cycle {
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "kill9::child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, root)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<u64>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("ACK ") {
                let _ = tx.send(n.parse().expect("ACK number"));
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut acked = None;
    if rng.chance(20) {
        // Anywhere, including while it recovers the tail.
        std::thread::sleep(Duration::from_micros(rng.below(30_000)));
    } else {
        // While it appends.
        if let Ok(n) = rx.recv_timeout(Duration::from_secs(20)) {
            acked = Some(n);
        }
        std::thread::sleep(Duration::from_micros(rng.below(10_000)));
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    reader.join().unwrap();
    for n in rx.try_iter() {
        acked = Some(n);
    }
    let stderr = err_reader.join().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "the child must die of SIGKILL, not on its own: {status:?}\n{stderr}"
    );
    Cycle { acked, stderr }
}

#[test]
fn kill_9_at_random_moments_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = dir.path().join(".zo");
    std::fs::create_dir_all(&root).unwrap();
    Store::init(&root, "kill9", opts()).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::new(0x0c0f_fee9);
    let start = Instant::now();
    let mut max_acked = 1u64;
    let mut verified = 1u64; // seqs 1..=verified checked
    let mut cycles = 0;
    while cycles < MAX_CYCLES && (cycles < MIN_CYCLES || start.elapsed() < TIME_BUDGET) {
        cycles += 1;
        let c = run_child(&exe, &root, &mut rng);
        if let Some(n) = c.acked {
            assert!(n >= max_acked, "acks only grow");
            max_acked = max_acked.max(n);
        }
        // Recover as the next writer would, then check what is there.
        let store = Store::open(&root, opts()).unwrap();
        let w = store
            .writer()
            .unwrap_or_else(|e| panic!("cycle {cycles}: recovery failed: {e}\n{}", c.stderr));
        let last = w.next_seq() - 1;
        drop(w);
        assert!(
            last >= max_acked,
            "cycle {cycles}: seq {max_acked} was acknowledged but the log ends at {last}"
        );
        let mut next = verified + 1;
        store
            .read(verified + 1, |ev| {
                assert_eq!(ev.seq, next, "cycle {cycles}: gap in seqs");
                assert_eq!(
                    text_seq(&ev.payload),
                    Some(ev.seq),
                    "cycle {cycles}: the event at seq {} is not the one written there",
                    ev.seq
                );
                next += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(
            next - 1,
            last,
            "cycle {cycles}: read ends where recovery did"
        );
        verified = last;
    }
    // Every segment intact and chained, every payload an event.
    let store = Store::open(&root, opts()).unwrap();
    let check = |seq: u64, p: &[u8]| codec::decode(seq, p).map(|_| ()).map_err(|e| e.0);
    let report = store.log().verify(&check, &mut |_, _| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.last_seq, Some(verified));
    assert!(max_acked > 1, "the child never acknowledged anything");
    let cut = std::fs::read_dir(root.join("log"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".broken")
        })
        .count();
    eprintln!(
        "kill -9 loop: {cycles} cycles in {:?}, {verified} events, {} segments, {cut} torn tails cut",
        start.elapsed(),
        report.segments.len()
    );
}

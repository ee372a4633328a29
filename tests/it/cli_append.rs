//! `zolog append` from the command line: four processes at once, the writer lock, bad input.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Rng, init_store, zolog, zolog_bin};
use zolog::event::{Event, Payload};
use zolog::log::frame::{FRAME_HEADER_LEN, SegmentHeader, parse_frame};
use zolog::store::{Store, StoreOptions};

fn note(w: usize, b: usize, i: usize) -> String {
    format!(
        "{{\"type\":\"NoteAdded\",\"experiment_id\":\"exp-00{}\",\"section\":\"next\",\"text\":\"w{w} b{b} i{i}\"}}\n",
        w + 1
    )
}

fn tag(ev: &Event) -> (usize, usize, usize) {
    let Payload::NoteAdded(n) = &ev.payload else {
        panic!("seq {}: not a note", ev.seq)
    };
    let mut it = n.text.split(' ').map(|s| s[1..].parse::<usize>().unwrap());
    (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
}

/// The log's batches, read from the raw frames: the seqs of each batch, in order.
fn raw_batches(log_dir: &Path) -> Vec<Vec<u64>> {
    let mut names: Vec<_> = std::fs::read_dir(log_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".zlog"))
        .collect();
    names.sort();
    let mut batches = Vec::new();
    let mut open = Vec::new();
    let mut next = None;
    for n in names {
        let bytes = std::fs::read(log_dir.join(&n)).unwrap();
        let (h, mut at) = SegmentHeader::decode(&bytes).unwrap();
        let mut seq = next.unwrap_or(h.first_seq);
        while at < bytes.len() {
            let (fh, _) = parse_frame(&bytes[at..], seq, 1 << 24).unwrap();
            open.push(fh.seq);
            if fh.batch_end() {
                batches.push(std::mem::take(&mut open));
            }
            at += FRAME_HEADER_LEN + fh.len as usize;
            seq += 1;
        }
        assert!(open.is_empty(), "a batch spans segments");
        next = Some(seq);
    }
    batches
}

/// Four `zolog append` processes at once, each sending several `--atomic` batches and then a long
/// stream that becomes many batches: one total order, gap-free seqs, every batch from one writer
/// and contiguous, each writer's events in its own order, nothing lost.
#[test]
fn four_processes_appending_at_once_interleave_only_whole_batches() {
    const ATOMIC: usize = 3;
    const ATOMIC_LEN: usize = 100;
    const STREAM: usize = 1500;
    let (_dir, root) = init_store();
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let root = root.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(w as u64 + 1);
                for b in 0..ATOMIC {
                    let input: String = (0..ATOMIC_LEN).map(|i| note(w, b, i)).collect();
                    zolog(&root)
                        .args(["append", "--atomic", "--lock-timeout", "60"])
                        .write_stdin(input)
                        .assert()
                        .success();
                }
                // A long stream, written in bursts, so the reader cuts it into many batches.
                let mut child = Command::new(zolog_bin())
                    .args(["append", "--lock-timeout", "60"])
                    .env("ZO_STORE", &root)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut stdin = child.stdin.take().unwrap();
                let mut i = 0;
                while i < STREAM {
                    let n = (rng.range(1, 120) as usize).min(STREAM - i);
                    let burst: String = (i..i + n).map(|k| note(w, ATOMIC, k)).collect();
                    stdin.write_all(burst.as_bytes()).unwrap();
                    stdin.flush().unwrap();
                    i += n;
                    std::thread::sleep(Duration::from_micros(rng.below(2000)));
                }
                drop(stdin);
                let out = child.wait_with_output().unwrap();
                assert!(out.status.success());
                let text = String::from_utf8(out.stdout).unwrap();
                assert!(
                    text.starts_with(&format!("appended {STREAM} event(s)")),
                    "{text}"
                );
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }

    let store = Store::open(&root, StoreOptions::default()).unwrap();
    let events = store.events(1).unwrap();
    let per_writer = ATOMIC * ATOMIC_LEN + STREAM;
    assert_eq!(events.len(), 1 + 4 * per_writer);
    for (k, ev) in events.iter().enumerate() {
        assert_eq!(ev.seq, k as u64 + 1, "gap-free");
    }
    let by_seq: BTreeMap<u64, (usize, usize, usize)> =
        events[1..].iter().map(|e| (e.seq, tag(e))).collect();
    // Each writer's events, in log order, are exactly what it sent, in its order.
    for w in 0..4 {
        let got: Vec<(usize, usize)> = by_seq
            .values()
            .filter(|t| t.0 == w)
            .map(|t| (t.1, t.2))
            .collect();
        let want: Vec<(usize, usize)> = (0..ATOMIC)
            .flat_map(|b| (0..ATOMIC_LEN).map(move |i| (b, i)))
            .chain((0..STREAM).map(|i| (ATOMIC, i)))
            .collect();
        assert_eq!(got, want, "writer {w}");
    }
    // Every log batch comes from one writer, contiguous; an --atomic input is one batch.
    let batches = raw_batches(&root.join("log"));
    let mut streamed_batches = 0;
    for batch in &batches[1..] {
        let tags: Vec<_> = batch.iter().map(|s| by_seq[s]).collect();
        let (w, b, i0) = tags[0];
        for (k, t) in tags.iter().enumerate() {
            assert_eq!(*t, (w, b, i0 + k), "batch {batch:?} interleaves");
        }
        if b < ATOMIC {
            assert_eq!(
                (i0, tags.len()),
                (0, ATOMIC_LEN),
                "an --atomic input is one batch"
            );
        } else {
            streamed_batches += 1;
        }
    }
    assert!(streamed_batches > 4, "the streams must form many batches");
}

/// A writer that cannot get the lock in time fails, naming the holder; --lock-timeout is honoured;
/// a writer that waits long enough gets in once the holder lets go.
#[test]
fn lock_timeout_names_the_holder_and_waiting_writers_get_in() {
    let (_dir, root) = init_store();
    let store = Store::open(&root, StoreOptions::default()).unwrap();
    let held = store.writer().unwrap();
    let holder = format!("pid {} on {}", std::process::id(), zolog::event::hostname());
    let lock_file = std::fs::read_to_string(root.join("log/LOCK")).unwrap();
    assert!(lock_file.starts_with(&holder), "{lock_file}");
    let exe = std::env::current_exe().unwrap();
    let exe_name = exe.file_name().unwrap().to_string_lossy().into_owned();

    let started = Instant::now();
    let out = zolog(&root)
        .args(["append", "--lock-timeout", "0.4"])
        .write_stdin(note(0, 0, 0))
        .output()
        .unwrap();
    let waited = started.elapsed();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("locked by {holder} ({exe_name}")),
        "{stderr}"
    );
    assert!(stderr.contains("gave up after 400ms"), "{stderr}");
    assert!(waited >= Duration::from_millis(400), "it waited {waited:?}");
    // Nothing was appended.
    assert_eq!(store.events(1).unwrap().len(), 1);

    // A patient writer gets in when the holder lets go.
    let mut child = Command::new(zolog_bin())
        .args(["append", "--lock-timeout", "60"])
        .env("ZO_STORE", &root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(note(0, 0, 1).as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "it waits for the lock");
    drop(held);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(store.events(1).unwrap().len(), 2);
}

const GOOD_1: &str =
    r#"{"type":"EpochEnded","experiment_id":"exp-001","epoch":0,"metrics":{"loss":NaN,"acc":0.5}}"#;
const GOOD_2: &str =
    r#"{"type":"NoteAdded","experiment_id":"exp-001","section":"next","text":"ok"}"#;

/// Each bad line is reported with its line number and what is wrong with it (the field path where
/// there is one); the good lines are appended; the exit status is non-zero.
#[test]
fn bad_lines_are_reported_with_line_numbers_and_good_lines_appended() {
    let lines = [
        GOOD_1,
        r#"{"type":"NoteAdded","experiment_id":"exp-001","#,
        r#"{"type":"EpochEnded","experiment_id":"exp-001","epoch":1,"metrics":{"loss":"abc"}}"#,
        r#"{"type":"EpochEnded","experiment_id":"exp-001","epoch":1,"lr":0.1}"#,
        r#"{"type":"EpochFinished","experiment_id":"exp-001"}"#,
        r#"{"type":"ExperimentMinted","experiment_id":"../../etc"}"#,
        r#"{"time":"2026-11-24T09:50:05Z","payload":{"type":"EpochEnded","experiment_id":"exp-001","epoch":"two"}}"#,
        "",
        GOOD_2,
        GOOD_2, // the last line, without its newline
    ];
    let mut input = lines.join("\n");
    assert!(!input.ends_with('\n'));
    let expect: [(usize, &[&str]); 7] = [
        (2, &["malformed JSON", "EOF"]),
        (3, &["metrics.loss", "string \"abc\"", "number"]),
        (4, &["unknown field `lr`"]),
        (5, &["unknown event type \"EpochFinished\""]),
        (6, &["experiment_id", "invalid experiment id \"../../etc\""]),
        (7, &["payload.epoch", "\"two\""]),
        (10, &["no newline"]),
    ];

    for via_file in [false, true] {
        let (_dir, root) = init_store();
        let (mut cmd, name) = if via_file {
            let f = root.parent().unwrap().join("events.jsonl");
            std::fs::write(&f, &input).unwrap();
            let mut c = zolog(&root);
            c.arg("append").arg(&f);
            (c, f.display().to_string())
        } else {
            let mut c = zolog(&root);
            c.arg("append").write_stdin(input.clone());
            (c, "<stdin>".to_owned())
        };
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reported: Vec<&str> = stderr.lines().collect();
        assert_eq!(reported.len(), expect.len(), "{stderr}");
        for ((line, needles), got) in expect.iter().zip(&reported) {
            let prefix = format!("zolog: {name}:{line}");
            assert!(
                got.starts_with(&prefix),
                "{got:?} should start with {prefix:?}"
            );
            for n in *needles {
                assert!(got.contains(n), "line {line}: {n:?} not in {got:?}");
            }
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("appended 2 event(s), last seq 3; rejected 7 line(s)"),
            "{stdout}"
        );
        let events = Store::open(&root, StoreOptions::default())
            .unwrap()
            .events(1)
            .unwrap();
        let kinds: Vec<_> = events.iter().map(|e| e.payload.kind()).collect();
        assert_eq!(kinds, ["ProjectInitialized", "EpochEnded", "NoteAdded"]);
    }

    // --atomic: any bad line, nothing appended.
    let (_dir, root) = init_store();
    let out = zolog(&root)
        .args(["append", "--atomic"])
        .write_stdin(input.clone())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing appended (--atomic)"));
    let store = Store::open(&root, StoreOptions::default()).unwrap();
    assert_eq!(store.events(1).unwrap().len(), 1);
    // ... and with the input fixed, all of it, as one batch.
    input.push('\n');
    let good: String = input
        .lines()
        .filter(|l| *l == GOOD_1 || *l == GOOD_2)
        .map(|l| format!("{l}\n"))
        .collect();
    zolog(&root)
        .args(["append", "--atomic"])
        .write_stdin(good)
        .assert()
        .success()
        .stdout("appended 3 event(s), last seq 4\n");
    let batches = raw_batches(&root.join("log"));
    assert_eq!(batches, vec![vec![1], vec![2, 3, 4]]);
}

/// Line numbers stay right across the blocks a large input is read in, and a line that is not
/// UTF-8 is one rejected line (regression: it ended the whole input as an I/O error).
#[test]
fn line_numbers_hold_across_blocks_and_bad_bytes_reject_one_line() {
    let (_dir, root) = init_store();
    let mut input = Vec::new();
    let mut bad = Vec::new();
    for i in 1..=30_000usize {
        if i % 7919 == 0 {
            bad.push(i);
            input.extend_from_slice(b"{\"type\":\"NoteAdded\",\"text\":\"\xff\xfe\"}\n");
        } else if i % 10_007 == 0 {
            bad.push(i);
            input.extend_from_slice(b"{\"type\":\"Nope\"}\n");
        } else {
            input.extend_from_slice(note(0, 0, i).as_bytes());
        }
    }
    let mut child = Command::new(zolog_bin())
        .arg("append")
        .env("ZO_STORE", &root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Odd-sized writes, so reads end mid-line.
    let writer = std::thread::spawn(move || {
        for piece in input.chunks(77_777) {
            stdin.write_all(piece).unwrap();
        }
    });
    writer.join().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<usize> = stderr
        .lines()
        .map(|l| {
            let rest = l.strip_prefix("zolog: <stdin>:").unwrap();
            rest.split(':').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(lines, bad, "{stderr}");
    assert!(stderr.contains("not UTF-8"), "{stderr}");
    let events = Store::open(&root, StoreOptions::default())
        .unwrap()
        .events(2)
        .unwrap();
    assert_eq!(events.len(), 30_000 - bad.len());
    let want: Vec<usize> = (1..=30_000).filter(|i| !bad.contains(i)).collect();
    let got: Vec<usize> = events.iter().map(|e| tag(e).2).collect();
    assert_eq!(got, want);
}

/// A slow producer's lines are appended (durably) as they arrive, not held back until the input
/// ends or a batch fills.
#[test]
fn a_slow_producers_lines_are_appended_as_they_arrive() {
    let (_dir, root) = init_store();
    let mut child = Command::new(zolog_bin())
        .arg("append")
        .env("ZO_STORE", &root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let store = Store::open(&root, StoreOptions::default()).unwrap();
    for i in 0..3 {
        stdin.write_all(note(0, 0, i).as_bytes()).unwrap();
        stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.events(1).unwrap().len() < i + 2 {
            assert!(
                Instant::now() < deadline,
                "line {i} was not appended while stdin stayed open"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// An event over the maximum record size (16 MiB) is one rejected line, not the end of the input.
#[test]
fn an_event_over_the_maximum_record_size_is_one_rejected_line() {
    let (_dir, root) = init_store();
    let big = format!(
        "{{\"type\":\"NoteAdded\",\"experiment_id\":\"exp-001\",\"section\":\"next\",\"text\":\"{}\"}}\n",
        "x".repeat(16 * 1024 * 1024 + 1)
    );
    let input = format!("{}{big}{}", note(0, 0, 1), note(0, 0, 3));
    let out = zolog(&root)
        .arg("append")
        .write_stdin(input)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("zolog: <stdin>:2: the event is 16777")
            && stderr.contains("maximum record size of 16777216"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("appended 2 event(s), last seq 3"));
}

/// A store with exp-001 minted, whose projection checkpoint then had one bit flipped: the store's
/// temporary directory, `.zo`, the checkpoint's path and its corrupt bytes.
fn store_with_a_corrupt_checkpoint() -> (tempfile::TempDir, PathBuf, PathBuf, Vec<u8>) {
    let (dir, root) = init_store();
    zolog(&root)
        .args(["exp", "mint", "--hypothesis", "h"])
        .assert()
        .success();
    let ckpt = root.join("state/projections.ckpt");
    let mut bytes = std::fs::read(&ckpt).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&ckpt, &bytes).unwrap();
    (dir, root, ckpt, bytes)
}

/// `zolog append` loads the projection state on another thread while it appends. A warning that
/// thread prints (here: the checkpoint is corrupt, so it is discarded) must neither deadlock
/// against the appender's hold on stderr nor stop the refresh: the append succeeds, says why the
/// checkpoint was discarded, and the files and a new checkpoint follow.
#[test]
fn append_with_a_corrupt_projection_checkpoint_warns_refreshes_and_does_not_hang() {
    let (dir, root, ckpt, bytes) = store_with_a_corrupt_checkpoint();
    let line = |text: &str| {
        format!(
            "{{\"type\":\"NoteAdded\",\"experiment_id\":\"exp-001\",\"section\":\"next\",\"text\":\"{text}\"}}\n"
        )
    };
    // A deadlock shows as the timeout killing it: not a success.
    let append = |text: &str| {
        zolog(&root)
            .arg("append")
            .write_stdin(line(text))
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap()
    };
    let out = append("first idea");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.contains("discarded"), "says why: {stderr}");
    let next = dir.path().join(".zo/experiments/exp-001/next.md");
    assert!(
        std::fs::read_to_string(&next)
            .unwrap()
            .contains("first idea")
    );
    // The refresh saved a good checkpoint: the next append has nothing to say.
    assert_ne!(std::fs::read(&ckpt).unwrap(), bytes, "no new checkpoint");
    let out = append("second idea");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert!(
        std::fs::read_to_string(&next)
            .unwrap()
            .contains("second idea")
    );
}

/// Input that appends nothing (here a bad line under `--atomic`) does not load the projection
/// state: no warning about a corrupt checkpoint, which stays as it is for the next append to
/// discard, and the only complaint is the bad line.
#[test]
fn an_append_that_appends_nothing_does_not_load_the_projection_state() {
    let (dir, root, ckpt, bytes) = store_with_a_corrupt_checkpoint();
    let good = "{\"type\":\"NoteAdded\",\"experiment_id\":\"exp-001\",\"section\":\"next\",\"text\":\"idea\"}\n";
    let out = zolog(&root)
        .args(["append", "--atomic"])
        .write_stdin(format!("{good}{{not json\n"))
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.starts_with("zolog: <stdin>:2"), "{stderr}");
    assert!(!stderr.contains("discarded"), "loaded the state: {stderr}");
    assert!(stderr.contains("nothing appended (--atomic)"), "{stderr}");
    assert_eq!(std::fs::read(&ckpt).unwrap(), bytes, "checkpoint touched");
    let next = dir.path().join(".zo/experiments/exp-001/next.md");
    assert!(
        !std::fs::read_to_string(&next)
            .unwrap_or_default()
            .contains("idea")
    );
    // The next append that appends does discard it, and refreshes.
    let out = zolog(&root)
        .arg("append")
        .write_stdin(good)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("discarded"));
    assert!(std::fs::read_to_string(&next).unwrap().contains("idea"));
}

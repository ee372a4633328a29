//! Bit rot: 10,000 random single-bit flips in a 10,000-event log are every one detected by verify,
//! at the offset of the damaged record; damage before the last record is refused by the writer,
//! never skipped; `zolog recover --cut-at` cuts it explicitly and keeps the cut bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::common::{Rng, exp, fault_log, init_store, metrics, small_opts, zolog};
use zolog::event::codec;
use zolog::event::{EpochEnded, NewEvent, Payload, Source, SourceKind, Timestamp};
use zolog::log::fs::FaultFs;
use zolog::log::{Log, LogError, ProblemKind};
use zolog::store::{Store, StoreOptions};

fn epoch_event(i: u64) -> NewEvent {
    NewEvent {
        time: Timestamp(1_795_000_000_000_000_000 + i as i64 * 1_000_000),
        appended: None,
        source: Source {
            kind: SourceKind::Trainer,
            pid: None,
            host: None,
        },
        payload: Payload::EpochEnded(EpochEnded {
            experiment_id: exp(1 + (i % 3) as u32),
            epoch: i,
            step: Some(i * 100),
            metrics: metrics(&[("loss", if i.is_multiple_of(97) { f64::NAN } else { 0.5 })]),
            learning_rate: Some(1e-3),
            wall_time_seconds: None,
            gpu_memory_mb: None,
        }),
    }
}

/// The segment bytes of a 10,000-event log written in random batches, and where each record
/// starts.
fn ten_thousand_event_log(rng: &mut Rng) -> (FaultFs, Log, Vec<u8>, Vec<u64>) {
    let (fs, log) = fault_log(small_opts(1 << 30));
    let mut w = log.writer().unwrap();
    let mut i = 0;
    while i < 10_000 {
        let n = rng.range(1, 16).min(10_000 - i);
        let batch: Vec<Vec<u8>> = (i..i + n).map(|k| codec::encode(&epoch_event(k))).collect();
        w.append(&batch).unwrap();
        i += n;
    }
    drop(w);
    let mut starts = Vec::new();
    log.reader(1)
        .poll::<std::convert::Infallible>(|r| {
            starts.push(r.offset);
            Ok(())
        })
        .unwrap();
    assert_eq!(starts.len(), 10_000);
    let bytes = fs.read_live(&log.segment_path(1)).unwrap();
    (fs, log, bytes, starts)
}

/// Where a flip at `byte` must be reported: the segment header (0) or the start of the record
/// holding the byte.
fn damaged_record(starts: &[u64], byte: u64) -> u64 {
    if byte < 32 {
        return 0;
    }
    starts[starts.partition_point(|&s| s <= byte) - 1]
}

#[test]
fn ten_thousand_random_bit_flips_are_all_detected() {
    let mut rng = Rng::new(0x5eed_b17f);
    let (fs, _log, bytes, starts) = ten_thousand_event_log(&mut rng);
    let dir = PathBuf::from("/zo/log");
    let seg = dir.join("00000000000000000001.zlog");
    let last = *starts.last().unwrap();
    let (mut refused, mut torn) = (0, 0);
    for flip in 0..10_000u32 {
        let bit = rng.below(bytes.len() as u64 * 8);
        let byte = bit / 8;
        let mask = 1u8 << (bit % 8);
        assert!(fs.xor_byte(&seg, byte, mask));
        // A fresh handle each time: no in-process knowledge of the tail.
        let log = Log::open(Arc::new(fs.clone()), &dir, small_opts(1 << 30)).unwrap();
        let report = log
            .verify(&|_, _| Ok(()), &mut |_, _| {})
            .unwrap_or_else(|e| panic!("flip {flip} (bit {bit}): verify failed: {e}"));
        let at = damaged_record(&starts, byte);
        assert!(
            !report.is_clean(),
            "flip {flip}: bit {bit} in the record at {at} went undetected"
        );
        let p = &report.problems[0];
        assert_eq!(p.segment, seg);
        assert_eq!(p.offset, at, "flip {flip} at bit {bit}: {}", p.message);
        if at == last {
            // Damage in the very last record looks exactly like a torn write.
            assert_eq!(p.kind, ProblemKind::TornTail, "flip {flip}");
            torn += 1;
        } else {
            assert_eq!(p.kind, ProblemKind::Damage, "flip {flip}: {}", p.message);
            if flip.is_multiple_of(20) {
                // The writer refuses it, naming segment and offset; nothing is cut.
                match log.writer() {
                    Err(LogError::Corrupted {
                        segment, offset, ..
                    }) => {
                        assert_eq!(segment, seg);
                        assert_eq!(offset, at, "flip {flip}");
                    }
                    other => panic!("flip {flip}: writer must refuse, got {other:?}"),
                }
                assert!(crate::common::files_ending(&fs, &dir, ".broken").is_empty());
                refused += 1;
            }
        }
        assert!(fs.xor_byte(&seg, byte, mask), "undo the flip");
    }
    assert_eq!(fs.read_live(&seg).unwrap(), bytes);
    assert!(refused > 250, "{refused}");
    let _ = torn; // flips land in the last record rarely; the torn-tail tests cover it
}

/// Decoding catches what the CRC cannot: an intact record whose payload is not an event.
#[test]
fn verify_reports_a_record_that_is_not_an_event() {
    let (_fs, log) = fault_log(small_opts(1 << 20));
    let mut w = log.writer().unwrap();
    w.append(&[codec::encode(&epoch_event(1))]).unwrap();
    w.append(&[b"not an event".to_vec()]).unwrap();
    drop(w);
    let check = |seq: u64, p: &[u8]| codec::decode(seq, p).map(|_| ()).map_err(|e| e.0);
    let report = log.verify(&check, &mut |_, _| {}).unwrap();
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].kind, ProblemKind::Payload);
    assert!(report.problems[0].message.starts_with("record 2:"));
}

fn flip_file_bit(path: &Path, bit: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[(bit / 8) as usize] ^= 1 << (bit % 8);
    std::fs::write(path, b).unwrap();
}

/// A store of 40 events, one per batch, so every record ends a batch.
fn store_with_events() -> (tempfile::TempDir, PathBuf, Vec<u64>) {
    let (dir, root) = init_store();
    let store = Store::open(&root, StoreOptions::default()).unwrap();
    let mut w = store.writer().unwrap();
    for i in 0..40 {
        w.append(&[codec::encode(&epoch_event(i))]).unwrap();
    }
    drop(w);
    let mut starts = Vec::new();
    store
        .log()
        .reader(1)
        .poll::<std::convert::Infallible>(|r| {
            starts.push(r.offset);
            Ok(())
        })
        .unwrap();
    (dir, root, starts)
}

#[test]
fn cli_verify_names_segment_and_offset_of_a_flipped_bit() {
    let mut rng = Rng::new(7);
    for _ in 0..3 {
        let (_dir, root, starts) = store_with_events();
        let seg = root.join("log/00000000000000000001.zlog");
        let len = std::fs::metadata(&seg).unwrap().len();
        let bit = rng.range(32 * 8, len * 8 - 1);
        flip_file_bit(&seg, bit);
        let at = damaged_record(&starts, bit / 8);
        let out = zolog(&root).arg("verify").output().unwrap();
        assert!(!out.status.success(), "verify must fail");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = format!("{} offset {at}:", seg.display());
        assert!(stdout.contains(&line), "{line:?} not in:\n{stdout}");
        // And as JSON.
        let out = zolog(&root).args(["verify", "--json"]).output().unwrap();
        assert!(!out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["report"]["problems"][0]["offset"], at);
        assert_eq!(
            v["report"]["problems"][0]["segment"],
            seg.display().to_string()
        );
    }
}

#[test]
fn mid_log_damage_is_refused_then_cut_explicitly_keeping_the_bytes() {
    let (_dir, root, starts) = store_with_events();
    let seg = root.join("log/00000000000000000001.zlog");
    let full = std::fs::read(&seg).unwrap();
    // Damage the payload of the 11th record (seq 11).
    let at = starts[10];
    flip_file_bit(&seg, (at + 30) * 8 + 3);

    // Appending is refused, naming segment and offset; nothing is cut.
    let out = zolog(&root)
        .arg("append")
        .write_stdin("{\"type\":\"NoteAdded\",\"experiment_id\":\"exp-001\",\"section\":\"next\",\"text\":\"x\"}\n")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{} at offset {at}", seg.display())),
        "{stderr}"
    );
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), full.len() as u64);
    // Plain `recover` refuses too.
    let out = zolog(&root).arg("recover").output().unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), full.len() as u64);
    // A cut inside a record is refused with the nearest batch end.
    let out = zolog(&root)
        .args(["recover", "--cut-at", &format!("1:{}", at + 5)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("nearest earlier one is {at}")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The explicit cut at the damaged record's start.
    let out = zolog(&root)
        .args([
            "recover",
            "--cut-at",
            &format!("00000000000000000001.zlog:{at}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kept = root.join(format!("log/00000000000000000001.zlog.{at}.broken"));
    let mut want_kept = full[at as usize..].to_vec();
    let b = (30 * 8 + 3) as usize;
    want_kept[b / 8] ^= 1 << (b % 8);
    assert_eq!(std::fs::read(&kept).unwrap(), want_kept);
    assert_eq!(std::fs::read(&seg).unwrap(), &full[..at as usize]);
    zolog(&root).arg("verify").assert().success();
    let events = Store::open(&root, StoreOptions::default())
        .unwrap()
        .events(1)
        .unwrap();
    assert_eq!(events.len(), 10);
    // Appending works again and continues the seqs.
    zolog(&root)
        .arg("append")
        .write_stdin("{\"type\":\"NoteAdded\",\"experiment_id\":\"exp-001\",\"section\":\"next\",\"text\":\"x\"}\n")
        .assert()
        .success()
        .stdout(predicates::str::contains("last seq 11"));
}

//! The committed fixture log `tests/fixtures/v1/` (a store: `log/` holds its segments), written by
//! format version 1, stays readable: today's code reads exactly what was written, bit for bit.
//!
//! Regenerate it (only when the format version changes, into a new `vN` directory) with
//! `ZOLOG_WRITE_FIXTURE=1 cargo test --test it fixture`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::common::{assert_same_event, every_kind, source};
use zolog::event::codec;
use zolog::event::{Event, NewEvent, Payload, SourceKind, Timestamp};
use zolog::log::fs::RealFs;
use zolog::log::{Log, LogOptions};
use zolog::store::{Store, StoreOptions};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

/// What the fixture holds: the 14 kinds, in batches [1] [2 3] [4..8] [9] [10..14].
fn fixture_events() -> Vec<Event> {
    let kinds = [
        SourceKind::Cli,
        SourceKind::Trainer,
        SourceKind::Checker,
        SourceKind::Agent,
    ];
    every_kind()
        .into_iter()
        .enumerate()
        .map(|(i, payload)| {
            let seq = i as u64 + 1;
            Event {
                seq,
                time: Timestamp(1_795_000_000_000_000_000 + seq as i64 * 1_000_000_123),
                appended: seq
                    .is_multiple_of(3)
                    .then_some(Timestamp(1_795_000_100_000_000_000)),
                source: source(kinds[i % 4]),
                payload,
            }
        })
        .collect()
}

const BATCHES: [std::ops::Range<usize>; 5] = [0..1, 1..3, 3..8, 8..9, 9..14];

fn write_fixture(dir: &Path) {
    let log_dir = dir.join("log");
    if log_dir.exists() {
        std::fs::remove_dir_all(&log_dir).unwrap();
    }
    let opts = LogOptions {
        segment_size: 1024,
        holder: "fixture".into(),
        ..LogOptions::default()
    };
    let log = Log::open(Arc::new(RealFs), &log_dir, opts).unwrap();
    let mut w = log.writer().unwrap();
    let events = fixture_events();
    for r in BATCHES {
        let payloads: Vec<Vec<u8>> = events[r].iter().map(codec::encode_event).collect();
        w.append(&payloads).unwrap();
    }
    drop(w);
    // The fixture is the segments: the lock file and the tail hint (a cache) are not part of it.
    std::fs::remove_file(log_dir.join("LOCK")).unwrap();
    std::fs::remove_file(log_dir.join("TAIL")).unwrap();
}

#[test]
fn v1_fixture_reads_back_exactly() {
    let dir = fixture_dir();
    if std::env::var_os("ZOLOG_WRITE_FIXTURE").is_some() {
        write_fixture(&dir);
    }
    let want = fixture_events();

    // The segments are the ones written then: rotation at 1 KiB, chained.
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    let log = store.log();
    assert_eq!(log.segments().unwrap(), vec![1, 9]);
    let check = |seq: u64, p: &[u8]| codec::decode(seq, p).map(|_| ()).map_err(|e| e.0);
    let report = log.verify(&check, &mut |_, _| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!((report.records, report.last_seq), (14, Some(14)));

    // Every event, bit for bit, and every payload re-encodes to the committed bytes.
    let events = store.events(1).unwrap();
    assert_eq!(events.len(), want.len());
    for (got, want) in events.iter().zip(&want) {
        assert_same_event(got, want, false);
    }
    let mut raw = Vec::new();
    log.reader(1)
        .poll::<std::convert::Infallible>(|r| {
            raw.push(r.payload.to_vec());
            Ok(())
        })
        .unwrap();
    for (ev, bytes) in events.iter().zip(&raw) {
        assert_eq!(&codec::encode_event(ev), bytes, "seq {}", ev.seq);
    }

    // Spelled out, so a change to the helpers above cannot hide a change in what is read.
    let kinds: Vec<&str> = events.iter().map(|e| e.payload.kind()).collect();
    assert_eq!(
        kinds,
        [
            "ProjectInitialized",
            "ExperimentMinted",
            "ExperimentStatusChanged",
            "TrainingStarted",
            "EpochEnded",
            "CheckpointSaved",
            "CheckerConfigured",
            "AlertRaised",
            "RunKilled",
            "TrainingEnded",
            "ResultRecorded",
            "NextIdeasRecorded",
            "NoteAdded",
            "IngestAdvanced",
        ]
    );
    assert_eq!(events[0].time.to_string(), "2026-11-18T11:06:41.000000123Z");
    assert_eq!(
        events[2].appended,
        Some(Timestamp(1_795_000_100_000_000_000))
    );
    assert_eq!(events[1].source.kind, SourceKind::Trainer);
    assert_eq!(events[1].source.host.as_deref(), Some("gpu-1"));
    let Payload::EpochEnded(e) = &events[4].payload else {
        panic!("seq 5")
    };
    assert_eq!(e.experiment_id.as_str(), "exp-001");
    assert_eq!((e.epoch, e.step), (0, Some(100)));
    assert_eq!(
        e.metrics.get("val_loss").unwrap().to_bits(),
        0x7ff8_0000_0000_0000
    );
    assert_eq!(e.metrics.get("grad_norm"), Some(f64::INFINITY));
    assert_eq!(e.metrics.get("val_acc"), Some(f64::NEG_INFINITY));
    assert_eq!(
        e.metrics.get("zero").unwrap().to_bits(),
        0x8000_0000_0000_0000
    );
    let Payload::ResultRecorded(r) = &events[10].payload else {
        panic!("seq 11")
    };
    assert!(r.primary_metric.value.is_nan());
    assert_eq!(r.evaluated_at, Timestamp(1_795_000_000_123_456_789));
    let Payload::TrainingStarted(t) = &events[3].payload else {
        panic!("seq 4")
    };
    assert_eq!(t.config.0["lr"], 0.001);

    // A copy can be appended to: recovery finds a clean end and the seqs continue.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("log")).unwrap();
    for seg in log.segments().unwrap() {
        let name = log.segment_path(seg);
        std::fs::copy(
            &name,
            tmp.path().join("log").join(name.file_name().unwrap()),
        )
        .unwrap();
    }
    let copy = Store::open(tmp.path(), StoreOptions::default()).unwrap();
    let a = copy
        .append(&[NewEvent::now(
            source(SourceKind::Cli),
            want[0].payload.clone(),
        )])
        .unwrap();
    assert_eq!(a.first_seq, 15);
    assert!(std::fs::read_dir(tmp.path().join("log")).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".broken")
    }));
}

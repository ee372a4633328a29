//! Torn tail: a log whose last record is cut at every byte offset inside it recovers exactly the
//! complete prefix, keeps the cut bytes in a `.broken` file, and the truncation is durable.

use std::path::PathBuf;

use crate::common::{
    every_kind, fault_log, files_ending, put_file, read_payloads, small_opts, source,
};
use zolog::event::codec;
use zolog::event::{NewEvent, SourceKind, Timestamp};
use zolog::log::fs::{CrashMode, FaultFs};
use zolog::log::{Log, LogError};
use zolog::store::{Store, StoreOptions};

fn payload(i: usize) -> Vec<u8> {
    format!("record {i} {}", "x".repeat(i % 7)).into_bytes()
}

/// A one-segment log of batches [1], [2, 3], [4], ..., ending with `last` (payloads numbered from
/// 100). Returns the segment's bytes, the offset where the last batch starts, the payloads before
/// it, and the offset where the last record starts.
fn build(last: &[Vec<u8>]) -> (Vec<u8>, u64, Vec<Vec<u8>>, u64) {
    let (fs, log) = fault_log(small_opts(1 << 20));
    let mut w = log.writer().unwrap();
    let mut prefix = Vec::new();
    for batch in [
        vec![payload(1)],
        vec![payload(2), payload(3)],
        vec![payload(4)],
    ] {
        w.append(&batch).unwrap();
        prefix.extend(batch);
    }
    let seg = log.segment_path(1);
    let prefix_end = fs.read_live(&seg).unwrap().len() as u64;
    w.append(last).unwrap();
    let bytes = fs.read_live(&seg).unwrap();
    let last_len = 24 + last.last().unwrap().len() as u64;
    (
        bytes.clone(),
        prefix_end,
        prefix,
        bytes.len() as u64 - last_len,
    )
}

fn check_every_cut(last: Vec<Vec<u8>>) {
    let (bytes, prefix_end, prefix, last_at) = build(&last);
    let dir = PathBuf::from("/zo/log");
    let seg = dir.join("00000000000000000001.zlog");
    let mut cuts = 0;
    for cut in last_at..bytes.len() as u64 {
        let cut_us = cut as usize;
        let fs = FaultFs::new();
        let log = Log::open(std::sync::Arc::new(fs.clone()), &dir, small_opts(1 << 20)).unwrap();
        put_file(&fs, &seg, &bytes[..cut_us]);

        let mut w = log.writer().expect("a torn tail is recovered");
        // Exactly the complete batches survive ...
        assert_eq!(w.next_seq(), prefix.len() as u64 + 1, "cut at {cut}");
        assert_eq!(read_payloads(&log), prefix, "cut at {cut}");
        // ... and the cut bytes are kept.
        let broken = files_ending(&fs, &dir, ".broken");
        if cut > prefix_end {
            cuts += 1;
            assert_eq!(
                broken,
                vec![dir.join(format!("00000000000000000001.zlog.{prefix_end}.broken"))],
                "cut at {cut}"
            );
            assert_eq!(
                fs.read_live(&broken[0]).unwrap(),
                &bytes[prefix_end as usize..cut_us],
                "cut at {cut}"
            );
        } else {
            assert!(broken.is_empty(), "nothing to cut at {cut}: {broken:?}");
        }
        // The truncation is durable: after a power loss the segment still ends at the prefix,
        // and what the writer appends next follows it.
        fs.crash(CrashMode::DropUnsynced);
        assert_eq!(fs.read_live(&seg).unwrap(), &bytes[..prefix_end as usize]);
        if cut > prefix_end {
            assert_eq!(
                fs.read_live(&broken[0]).unwrap(),
                &bytes[prefix_end as usize..cut_us],
                "the .broken file is durable"
            );
        }
        w.append(&[b"after".to_vec()]).unwrap();
        drop(w);
        fs.crash(CrashMode::DropUnsynced);
        let mut want = prefix.clone();
        want.push(b"after".to_vec());
        assert_eq!(read_payloads(&log), want, "cut at {cut}");
        assert!(log.writer().is_ok());
    }
    assert!(cuts > 20);
}

#[test]
fn torn_single_record_batch_recovers_the_prefix_at_every_offset() {
    check_every_cut(vec![payload(5)]);
}

#[test]
fn torn_multi_record_batch_is_cut_whole_at_every_offset() {
    check_every_cut(vec![payload(5), payload(6), payload(7)]);
}

/// The same through a store on a real directory: every cut inside the last event's record.
#[test]
fn store_on_disk_recovers_complete_prefix_at_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(".zo");
    std::fs::create_dir_all(&root).unwrap();
    let store = Store::init(&root, "torn", StoreOptions::default()).unwrap();
    let ev = |i: usize, p| NewEvent {
        time: Timestamp(1_795_000_000_000_000_000 + i as i64),
        appended: None,
        source: source(SourceKind::Trainer),
        payload: p,
    };
    let kinds = every_kind();
    let (last, head) = kinds.split_last().unwrap();
    let head: Vec<NewEvent> = head
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, p)| ev(i, p))
        .collect();
    store.append(&head[..5]).unwrap();
    store.append(&head[5..]).unwrap();
    let seg = store.log().segment_path(1);
    let prefix_len = std::fs::metadata(&seg).unwrap().len();
    let want = store.events(1).unwrap();
    store.append(&[ev(99, last.clone())]).unwrap();
    let full = std::fs::read(&seg).unwrap();
    let last_at = prefix_len;
    assert_eq!(
        full.len() as u64 - last_at,
        24 + codec::encode(&ev(99, last.clone())).len() as u64
    );
    for cut in last_at + 1..full.len() as u64 {
        std::fs::write(&seg, &full[..cut as usize]).unwrap();
        for e in std::fs::read_dir(store.log().dir()).unwrap() {
            let p = e.unwrap().path();
            if p.to_string_lossy().ends_with(".broken") {
                std::fs::remove_file(p).unwrap();
            }
        }
        let store = Store::open(&root, StoreOptions::default()).unwrap();
        let w = store.writer().expect("recovers");
        assert_eq!(w.next_seq(), want.len() as u64 + 1);
        drop(w);
        let got = store.events(1).unwrap();
        assert_eq!(got.len(), want.len(), "cut at {cut}");
        for (a, b) in got.iter().zip(&want) {
            crate::common::assert_same_event(a, b, false);
        }
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), prefix_len);
        let kept = store
            .log()
            .dir()
            .join(format!("00000000000000000001.zlog.{prefix_len}.broken"));
        assert_eq!(
            std::fs::read(&kept).unwrap(),
            &full[prefix_len as usize..cut as usize]
        );
    }
}

/// A crashed writer that left only zeros (ext4 data=writeback) or garbage after the last batch:
/// both are a torn tail, cut on open.
#[test]
fn zeros_or_garbage_after_the_last_batch_are_a_torn_tail() {
    for zeros in [true, false] {
        for garbage_len in [1usize, 23, 24, 25, 4096] {
            let (fs, log) = fault_log(small_opts(1 << 20));
            let mut w = log.writer().unwrap();
            w.append(&[payload(1), payload(2)]).unwrap();
            drop(w);
            let seg = log.segment_path(1);
            let mut bytes = fs.read_live(&seg).unwrap();
            let end = bytes.len();
            bytes.extend((0..garbage_len).map(|i| if zeros { 0 } else { (i * 37 + 11) as u8 }));
            fs.write_raw(&seg, bytes);
            let w = log.writer().unwrap();
            assert_eq!(w.next_seq(), 3);
            assert_eq!(fs.read_live(&seg).unwrap().len(), end);
            assert!(matches!(log.writer(), Err(LogError::Locked { .. })));
        }
    }
}

/// `zolog recover` cuts a torn tail explicitly, says what it cut and where it kept it; `zolog
/// verify` reports the torn tail before and nothing after.
#[test]
fn cli_recover_cuts_a_torn_tail_and_keeps_it() {
    let (_dir, root) = crate::common::init_store();
    crate::common::zolog(&root)
        .arg("append")
        .write_stdin("{\"type\":\"NoteAdded\",\"experiment_id\":\"exp-001\",\"section\":\"next\",\"text\":\"kept\"}\n")
        .assert()
        .success();
    let seg = root.join("log/00000000000000000001.zlog");
    let good = std::fs::read(&seg).unwrap();
    let mut torn = good.clone();
    torn.extend_from_slice(&[0x17; 30]);
    std::fs::write(&seg, &torn).unwrap();
    let out = crate::common::zolog(&root).arg("verify").output().unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "torn tail: {} offset {}",
            seg.display(),
            good.len()
        )),
        "{stdout}"
    );
    let out = crate::common::zolog(&root).arg("recover").output().unwrap();
    assert!(out.status.success());
    let kept = root.join(format!(
        "log/00000000000000000001.zlog.{}.broken",
        good.len()
    ));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "cut 30 byte(s) from {} at offset {} ({}); kept in {}\n",
            seg.display(),
            good.len(),
            "record header checksum mismatch at offset ".to_owned() + &good.len().to_string(),
            kept.display()
        )
    );
    assert_eq!(std::fs::read(&kept).unwrap(), vec![0x17; 30]);
    assert_eq!(std::fs::read(&seg).unwrap(), good);
    crate::common::zolog(&root).arg("verify").assert().success();
    crate::common::zolog(&root)
        .arg("recover")
        .assert()
        .success()
        .stdout("nothing to cut: the log ends cleanly\n");
}

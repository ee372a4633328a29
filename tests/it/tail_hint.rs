//! The tail hint file (`.zo/log/TAIL`): a new process's writer finds the end of the log through
//! it instead of scanning the whole last segment, and never trusts it blindly. Every way the
//! hint can be wrong (missing, torn, corrupt, another version, older or newer than the log, in
//! another segment, naming a record that is not there, or bytes before it changed) falls back
//! to the scan and gives the right end; a torn tail after a good hint is cut as before; hints
//! that survived crashes (the file is never fsynced) are safe.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::common::{Rng, files_ending, read_payloads, small_opts};
use zolog::log::fs::{CrashMode, FaultFs, Faults, Fs};
use zolog::log::hint::TailHint;
use zolog::log::{Log, LogError, LogOptions, TailFrom};

const DIR: &str = "/zo/log";

fn tail_path() -> PathBuf {
    Path::new(DIR).join("TAIL")
}

fn seg(first_seq: u64) -> PathBuf {
    Path::new(DIR).join(format!("{first_seq:020}.zlog"))
}

/// The payload of record `seq`: its number, then filler whose length depends on it.
fn payload(seq: u64) -> Vec<u8> {
    let mut p = format!("#{seq}:").into_bytes();
    p.extend((0..(seq * 37) % 90).map(|i| (seq + i) as u8));
    p
}

fn expected(n: u64) -> Vec<Vec<u8>> {
    (1..=n).map(payload).collect()
}

/// A log over a fault file system, with a record count to check it against.
struct Setup {
    fs: FaultFs,
    opts: LogOptions,
    /// Records the log holds (seqs 1..=n).
    n: u64,
    /// Batches appended by `append`: batch b holds 1 + b % 3 records.
    batches: u64,
}

impl Setup {
    /// `batches` batches of 1 to 3 records, through one writer, so the hint file names the end.
    fn new(segment_size: u64, batches: u64) -> Setup {
        let mut s = Setup {
            fs: FaultFs::new(),
            opts: small_opts(segment_size),
            n: 0,
            batches: 0,
        };
        s.append(batches);
        s
    }

    /// A new process's view: a fresh handle, no hint in memory.
    fn log(&self) -> Log {
        Log::open(Arc::new(self.fs.clone()), DIR, self.opts.clone()).unwrap()
    }

    fn append(&mut self, batches: u64) {
        let log = self.log();
        let mut w = log.writer().unwrap();
        for _ in 0..batches {
            let k = 1 + self.batches % 3;
            self.batches += 1;
            let batch: Vec<Vec<u8>> = (self.n + 1..=self.n + k).map(payload).collect();
            let a = w.append(&batch).unwrap();
            assert_eq!(a.first_seq, self.n + 1);
            self.n += k;
        }
    }

    fn tail(&self) -> Vec<u8> {
        self.fs.read_live(&tail_path()).expect("a hint file")
    }

    fn hint(&self) -> TailHint {
        TailHint::decode(&self.tail()).expect("a valid hint")
    }

    fn put_tail(&self, bytes: Vec<u8>) {
        if self.fs.read_live(&tail_path()).is_none() {
            drop(self.fs.create_new(&tail_path()).unwrap());
        }
        self.fs.write_raw(&tail_path(), bytes);
    }

    fn last_segment(&self) -> PathBuf {
        seg(*self.log().segments().unwrap().last().unwrap())
    }

    /// A new process's writer finds the end by `from`, at seq n + 1 (and appends nothing).
    fn opens(&self, from: TailFrom, case: &str) {
        let w = self.log().writer().unwrap();
        assert_eq!(w.opened_from(), from, "{case}");
        assert_eq!(w.next_seq(), self.n + 1, "{case}");
    }

    /// Open a writer as a new process does: it must find the end by `from`, at seq n + 1; then
    /// append a batch after it and read the whole log back.
    fn check(&mut self, from: TailFrom, case: &str) {
        let log = self.log();
        let mut w = log
            .writer()
            .unwrap_or_else(|e| panic!("{case}: the writer must open: {e}"));
        assert_eq!(w.opened_from(), from, "{case}");
        assert_eq!(w.next_seq(), self.n + 1, "{case}");
        let a = w.append(&[payload(self.n + 1)]).unwrap();
        assert_eq!(a.first_seq, self.n + 1, "{case}");
        self.n += 1;
        drop(w);
        assert_eq!(read_payloads(&log), expected(self.n), "{case}");
        let report = log.verify(&|_, _| Ok(()), &mut |_, _| {}).unwrap();
        assert!(report.is_clean(), "{case}: {:?}", report.problems);
        // The writer left a hint that holds: the next process uses it.
        assert_eq!(self.hint().next_seq, self.n + 1, "{case}");
        let w = self.log().writer().unwrap();
        assert_eq!(w.opened_from(), TailFrom::HintFile, "{case}");
        assert_eq!(w.next_seq(), self.n + 1, "{case}");
    }
}

/// The hint's fields changed and the file's own checksum made right again: a hint that decodes
/// but lies about the segment.
fn lying(h: TailHint, change: impl FnOnce(&mut TailHint)) -> Vec<u8> {
    let mut h = h;
    change(&mut h);
    h.encode().to_vec()
}

/// The offsets of the records of the last segment, by seq.
fn record_offsets(s: &Setup) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    s.log()
        .reader(1)
        .poll::<std::convert::Infallible>(|r| {
            out.push((r.seq, r.offset));
            Ok(())
        })
        .unwrap();
    out
}

#[test]
fn a_new_process_finds_the_end_through_the_hint_file() {
    let mut s = Setup::new(1 << 20, 30);
    let h = s.hint();
    assert_eq!(h.segment_first_seq, 1);
    assert_eq!(h.next_seq, s.n + 1);
    assert_eq!(
        h.end,
        s.fs.read_live(&seg(1)).unwrap().len() as u64,
        "the hint names the end of the last batch"
    );
    s.check(TailFrom::HintFile, "hint file");
    // The same process opening again uses what it remembers.
    let log = s.log();
    drop(log.writer().unwrap());
    let w = log.writer().unwrap();
    assert_eq!(w.opened_from(), TailFrom::Memory);
    assert_eq!(w.next_seq(), s.n + 1);
}

/// Each way the hint file can be wrong: the writer scans the whole segment instead, finds the
/// right end, appends after it, and leaves a hint that holds.
#[test]
fn every_bad_hint_falls_back_to_a_scan_with_the_right_end() {
    type Mutate = Box<dyn Fn(&Setup)>;
    let mut cases: Vec<(String, Mutate)> = vec![
        (
            "missing".into(),
            Box::new(|s: &Setup| s.fs.remove_file(&tail_path()).unwrap()),
        ),
        ("empty".into(), Box::new(|s: &Setup| s.put_tail(Vec::new()))),
        (
            "zeros".into(),
            Box::new(|s: &Setup| s.put_tail(vec![0; 64])),
        ),
        (
            "garbage".into(),
            Box::new(|s: &Setup| {
                let mut rng = Rng::new(9);
                s.put_tail((0..64).map(|_| rng.next_u64() as u8).collect())
            }),
        ),
        (
            "another version".into(),
            Box::new(|s: &Setup| {
                let mut b = s.tail();
                b[8] = 2;
                let c = crc32fast::hash(&b[..60]);
                b[60..64].copy_from_slice(&c.to_le_bytes());
                s.put_tail(b)
            }),
        ),
        (
            "another version, longer".into(),
            Box::new(|s: &Setup| {
                let mut b = s.tail();
                b[8] = 2;
                b[10] = 100;
                b.resize(100, 7);
                s.put_tail(b)
            }),
        ),
        (
            "names a segment that does not exist".into(),
            Box::new(|s: &Setup| {
                s.put_tail(lying(s.hint(), |h| {
                    h.segment_first_seq = 5;
                    h.next_seq += 4;
                }))
            }),
        ),
        (
            "wrong record CRC".into(),
            Box::new(|s: &Setup| s.put_tail(lying(s.hint(), |h| h.last_crc ^= 1))),
        ),
        (
            "not at a record".into(),
            Box::new(|s: &Setup| {
                s.put_tail(lying(s.hint(), |h| {
                    h.last_record_at = h.last_record_at.map(|a| a - 1)
                }))
            }),
        ),
        (
            "wrong next seq".into(),
            Box::new(|s: &Setup| s.put_tail(lying(s.hint(), |h| h.next_seq += 1))),
        ),
        (
            "end past the end of the file".into(),
            Box::new(|s: &Setup| s.put_tail(lying(s.hint(), |h| h.end += 1))),
        ),
        (
            "wrong CRC of the bytes before the end".into(),
            Box::new(|s: &Setup| s.put_tail(lying(s.hint(), |h| h.prefix_crc ^= 1))),
        ),
        (
            "a record inside a batch".into(),
            Box::new(|s: &Setup| s.put_tail(inside_last_batch(s))),
        ),
    ];
    for len in [1, 8, 12, 30, 59, 63] {
        cases.push((
            format!("torn after {len} bytes"),
            Box::new(move |s: &Setup| s.put_tail(s.tail()[..len].to_vec())),
        ));
    }
    for bit in [0, 70, 130, 200, 260, 330, 385, 420, 500] {
        cases.push((
            format!("bit {bit} flipped"),
            Box::new(move |s: &Setup| {
                assert!(s.fs.xor_byte(&tail_path(), bit / 8, 1 << (bit % 8)));
            }),
        ));
    }
    for (case, mutate) in cases {
        // 30 batches: the last of them holds 3 records.
        let mut s = Setup::new(1 << 20, 30);
        s.opens(TailFrom::HintFile, &format!("{case}: before"));
        mutate(&s);
        s.check(TailFrom::Scan, &case);
    }
}

/// A hint naming the first record of the last batch (3 records), with everything else true of
/// it: its frame's CRC, where it ends, the seq after it, the CRC of the bytes before.
fn inside_last_batch(s: &Setup) -> Vec<u8> {
    let offs = record_offsets(s);
    let bytes = s.fs.read_live(&seg(1)).unwrap();
    let (seq, at) = offs[offs.len() - 3];
    let (_, next_at) = offs[offs.len() - 2];
    assert_eq!(seq, s.n - 2);
    let crc = u32::from_le_bytes(
        bytes[at as usize + 20..at as usize + 24]
            .try_into()
            .unwrap(),
    );
    lying(s.hint(), |h| {
        h.end = next_at;
        h.next_seq = seq + 1;
        h.last_record_at = Some(at);
        h.last_crc = crc;
        h.prefix_crc = crc32fast::hash(&bytes[..next_at as usize]);
    })
}

/// A hint inside a batch whose last record was then torn off: scanning on from the hint would
/// take the batch's first record for a whole batch. The hint is refused (its record does not
/// close a batch), and the whole batch is cut.
#[test]
fn a_hint_inside_a_batch_is_not_used() {
    let mut s = Setup::new(1 << 20, 30);
    let hint = inside_last_batch(&s);
    s.put_tail(hint);
    let mut bytes = s.fs.read_live(&seg(1)).unwrap();
    bytes.truncate(bytes.len() - 5);
    s.fs.write_raw(&seg(1), bytes);
    s.n -= 3;
    s.check(TailFrom::Scan, "hint inside a torn batch");
    assert_eq!(files_ending(&s.fs, Path::new(DIR), ".broken").len(), 1);
}

/// The segment lost synced bytes that the hint names (restored from an older copy, or a disk
/// that lied about a sync): the hint points past the end of the file; or the segment was
/// written again, the hint's record the same but other bytes before it.
#[test]
fn a_hint_newer_than_the_segment_is_not_used() {
    let mut s = Setup::new(1 << 20, 10);
    let older = s.fs.read_live(&seg(1)).unwrap();
    let n = s.n;
    s.append(5);
    let newer = s.tail();
    let newer_n = s.n;
    s.fs.write_raw(&seg(1), older.clone());
    s.n = n;
    s.check(TailFrom::Scan, "beyond the end of the file");

    // Other payloads of the same sizes, then the hint's record itself, byte for byte: the
    // record check holds, the CRC of the bytes before it does not.
    let s = Setup::new(1 << 20, 10);
    let log = s.log();
    let mut w = log.writer().unwrap();
    for seq in n + 1..newer_n {
        let mut p = payload(seq);
        p[0] = b'%';
        w.append(&[p]).unwrap();
    }
    w.append(&[payload(newer_n)]).unwrap();
    drop(w);
    s.put_tail(newer.clone());
    let w = s.log().writer().unwrap();
    assert_eq!(w.opened_from(), TailFrom::Scan);
    assert_eq!(w.next_seq(), newer_n + 1);
    drop(w);

    // The same payloads batched otherwise (one per batch): the bytes before the record differ
    // only in frame headers rewritten with valid checksums, which a CRC-32 of the bytes cannot
    // tell apart (the frames use the same polynomial). The hint is then true of these bytes: a
    // batch ends where it says, the next seq is the one it says. It is used, rightly.
    let mut s = Setup::new(1 << 20, 10);
    let log = s.log();
    let mut w = log.writer().unwrap();
    for seq in n + 1..=newer_n {
        w.append(&[payload(seq)]).unwrap();
    }
    drop(w);
    s.n = newer_n;
    s.put_tail(newer);
    s.check(TailFrom::HintFile, "same records batched otherwise");
}

/// A hint older than the log (the file was written back before later appends, which a crash
/// then kept): it holds, it is used, and the records after it are found by scanning on.
#[test]
fn a_stale_hint_is_used_and_the_rest_scanned() {
    let mut s = Setup::new(1 << 20, 10);
    let old = s.tail();
    let old_end = s.hint().end;
    s.append(7);
    s.put_tail(old);
    let log = s.log();
    let w = log.writer().unwrap();
    assert_eq!(w.opened_from(), TailFrom::HintFile);
    assert_eq!(w.next_seq(), s.n + 1);
    drop(w);
    // The writer brought the hint up to date at once.
    assert!(s.hint().end > old_end);
    assert_eq!(s.hint().next_seq, s.n + 1);
    s.check(TailFrom::HintFile, "after the stale hint");
}

/// After a good hint, the bytes a crashed append left are a torn tail: cut and kept, as by a
/// scan of the whole segment; damage after it (a bad frame, then a valid one) is refused.
#[test]
fn a_torn_tail_after_a_valid_hint_is_cut() {
    for (case, junk) in [
        ("zeros", vec![0u8; 100]),
        ("a partial frame", vec![0x10, 0, 0, 0, 1, 0, 0]),
        ("garbage", (0..300u32).map(|i| (i * 7 + 3) as u8).collect()),
    ] {
        let mut s = Setup::new(1 << 20, 12);
        let h = s.hint();
        let mut bytes = s.fs.read_live(&seg(1)).unwrap();
        bytes.extend_from_slice(&junk);
        s.fs.write_raw(&seg(1), bytes);
        let log = s.log();
        let w = log.writer().unwrap();
        assert_eq!(w.opened_from(), TailFrom::HintFile, "{case}");
        assert_eq!(w.next_seq(), s.n + 1, "{case}");
        drop(w);
        let broken = files_ending(&s.fs, Path::new(DIR), ".broken");
        assert_eq!(
            broken,
            vec![Path::new(DIR).join(format!("{:020}.zlog.{}.broken", 1, h.end))],
            "{case}"
        );
        assert_eq!(s.fs.read_live(&broken[0]).unwrap(), junk, "{case}");
        assert_eq!(s.fs.read_live(&seg(1)).unwrap().len() as u64, h.end);
        s.check(TailFrom::HintFile, case);
    }
    // A bad frame after the hint, then a valid one (a later batch, whole): damage, not cut.
    let s = Setup::new(1 << 20, 12);
    let mut other = Setup::new(1 << 20, 12);
    other.append(2);
    let h = s.hint();
    let later = other.fs.read_live(&seg(1)).unwrap();
    let mut bytes = s.fs.read_live(&seg(1)).unwrap();
    let mut tail = later[h.end as usize..].to_vec();
    tail[3] ^= 0x40; // the first new frame's length
    bytes.extend_from_slice(&tail);
    s.fs.write_raw(&seg(1), bytes.clone());
    match s.log().writer() {
        Err(LogError::Corrupted {
            segment, offset, ..
        }) => {
            assert_eq!(segment, seg(1));
            assert_eq!(offset, h.end);
        }
        other => panic!("damage after the hint must be refused, got {other:?}"),
    }
    assert_eq!(s.fs.read_live(&seg(1)).unwrap(), bytes, "nothing cut");
    assert!(files_ending(&s.fs, Path::new(DIR), ".broken").is_empty());
}

/// Damage before a hint that otherwise holds (its record intact): the CRC of the bytes before
/// the hint's end no longer matches, so the whole segment is scanned, and the writer refuses,
/// naming the damaged record, as it did before there were hints. `recover` trusts no hint.
#[test]
fn damage_before_a_valid_hint_is_refused_as_without_one() {
    let s = Setup::new(1 << 20, 20);
    let offs = record_offsets(&s);
    let (_, at) = offs[10];
    assert!(s.fs.xor_byte(&seg(1), at + 30, 0x08));
    for (what, r) in [
        ("writer", s.log().writer().map(drop)),
        ("recover", s.log().recover().map(drop)),
    ] {
        match r {
            Err(LogError::Corrupted {
                segment, offset, ..
            }) => {
                assert_eq!(segment, seg(1), "{what}");
                assert_eq!(offset, at, "{what}");
            }
            other => panic!("{what} must refuse damage before the hint, got {other:?}"),
        }
    }
    assert!(files_ending(&s.fs, Path::new(DIR), ".broken").is_empty());
}

/// A hint naming an older segment (left before the log rolled over to a new one, and kept by a
/// crash): not used; the new last segment is scanned.
#[test]
fn a_hint_from_before_a_segment_roll_is_not_used() {
    let mut s = Setup::new(2048, 4);
    assert_eq!(s.log().segments().unwrap().len(), 1);
    let old = s.tail();
    while s.log().segments().unwrap().len() < 3 {
        s.append(1);
    }
    s.put_tail(old);
    s.check(TailFrom::Scan, "hint in an older segment");
    // And one naming the previous segment's end, right after the roll.
    let before = s.log().segments().unwrap().len();
    let mut last_of_previous = s.tail();
    while s.log().segments().unwrap().len() == before {
        last_of_previous = s.tail();
        s.append(1);
    }
    s.put_tail(last_of_previous);
    assert_ne!(
        s.hint().segment_first_seq,
        *s.log().segments().unwrap().last().unwrap()
    );
    s.check(TailFrom::Scan, "hint at the end of the previous segment");
}

/// A new segment that holds no record yet (the batch after the roll did not fit on the disk):
/// the hint left for it names its header alone, and is used.
#[test]
fn a_hint_for_a_segment_without_records_is_used() {
    let mut s = Setup::new(2048, 1);
    let log = s.log();
    let mut w = log.writer().unwrap();
    let big = vec![7u8; 1500];
    let used = s.fs.used_bytes();
    // Room for the new segment's header, not for the batch.
    s.fs.set_faults(Faults {
        capacity: Some(used + 40),
        ..Faults::default()
    });
    let r = w.append(&[big.clone(), big]);
    s.fs.set_faults(Faults::default());
    assert!(r.is_err(), "{r:?}");
    drop(w);
    let last = s.last_segment();
    assert_eq!(
        s.fs.read_live(&last).unwrap().len(),
        32,
        "an empty new segment"
    );
    // The first writer scans it, and leaves a hint naming its header.
    let w = s.log().writer().unwrap();
    assert_eq!(w.opened_from(), TailFrom::Scan);
    assert_eq!(w.next_seq(), s.n + 1);
    drop(w);
    let h = s.hint();
    assert_eq!((h.end, h.last_record_at), (32, None));
    s.check(TailFrom::HintFile, "hint without a record");
}

/// `cut_at` removes the hint: the next writer scans. A hint that comes back anyway (its removal
/// lost) does not hold once other records are appended where it pointed; one that still holds
/// (the same records appended again, byte for byte) is true again.
#[test]
fn an_explicit_cut_forgets_the_hint() {
    let mut s = Setup::new(1 << 20, 20);
    let old = s.tail();
    let offs = record_offsets(&s);
    // The end of batch 9: batches 0..10 hold 10 + 3 × (0 + 1 + 2) = 19 records.
    let (seq, at) = offs[19];
    assert_eq!(seq, 20);
    let cuts = s.log().cut_at(1, at).unwrap();
    assert_eq!(cuts.len(), 1);
    assert!(
        s.fs.read_live(&tail_path()).is_none(),
        "no hint after a cut"
    );
    s.n = seq - 1;
    s.check(TailFrom::Scan, "after the cut");
    // The old hint back, other records at its offset.
    s.append(25);
    s.put_tail(old.clone());
    s.check(TailFrom::Scan, "old hint after other appends");
    // The same records as before the cut, byte for byte: the old hint is true again.
    let mut t = Setup::new(1 << 20, 20);
    let old = t.tail();
    let cuts = t.log().cut_at(1, at).unwrap();
    assert_eq!(cuts.len(), 1);
    t.n = seq - 1;
    t.batches = 10;
    t.append(10);
    t.put_tail(old);
    t.check(TailFrom::HintFile, "old hint, same bytes again");
}

/// The hint file is written without fsync. Across crashes it may be older than the log (written
/// back before later appends), torn, empty or gone: each is safe, and the log after recovery
/// holds exactly the acknowledged records.
#[test]
fn hints_that_survive_crashes_are_safe() {
    // Written back at some point, then more appends, then a crash mid-append leaving junk.
    let mut s = Setup::new(4096, 8);
    // The kernel wrote the hint file and its directory entry back on its own.
    s.fs.sync_dir(Path::new(DIR)).unwrap();
    s.fs.write_back(&tail_path());
    let written_back = s.hint();
    s.append(6);
    let log = s.log();
    let mut w = log.writer().unwrap();
    s.fs.set_faults(Faults {
        fail_next_sync: true,
        fail_set_len: true,
        ..Faults::default()
    });
    assert!(w.append(&[payload(s.n + 1), payload(s.n + 2)]).is_err());
    drop(w);
    s.fs.crash(CrashMode::Torn {
        keep: 20,
        garbage_len: 50,
        zeros: false,
        seed: 3,
    });
    assert_eq!(s.hint(), written_back, "the crash kept the older hint");
    let log = s.log();
    let w = log.writer().unwrap();
    let same_segment = written_back.segment_first_seq == *log.segments().unwrap().last().unwrap();
    let want = if same_segment {
        TailFrom::HintFile
    } else {
        TailFrom::Scan
    };
    assert_eq!(w.opened_from(), want);
    assert_eq!(w.next_seq(), s.n + 1);
    drop(w);
    assert_eq!(files_ending(&s.fs, Path::new(DIR), ".broken").len(), 1);
    assert_eq!(read_payloads(&log), expected(s.n));
    // Never written back: a crash leaves it torn (what was not synced, partly), empty, or
    // (its directory entry not durable either) gone.
    let torn = CrashMode::Torn {
        keep: 20,
        garbage_len: 10,
        zeros: false,
        seed: 1,
    };
    let whole = CrashMode::Torn {
        keep: 64,
        garbage_len: 0,
        zeros: true,
        seed: 1,
    };
    for (mode, entry_durable, from) in [
        (torn, true, TailFrom::Scan),
        (CrashMode::DropUnsynced, true, TailFrom::Scan),
        (CrashMode::DropUnsynced, false, TailFrom::Scan),
        // All of it kept, as the kernel may: it holds.
        (whole, true, TailFrom::HintFile),
    ] {
        let mut s = Setup::new(1 << 20, 8);
        if entry_durable {
            s.fs.sync_dir(Path::new(DIR)).unwrap();
        }
        s.fs.crash(mode);
        let case = format!("{mode:?}, entry durable: {entry_durable}");
        assert_eq!(
            s.fs.read_live(&tail_path()).is_some(),
            entry_durable,
            "{case}"
        );
        s.opens(from, &case);
        s.check(TailFrom::HintFile, &case);
    }
}

/// A hint file that cannot be written (the disk is full) is no error: the batch is durable and
/// acknowledged, and the next writer scans. One that exists is overwritten in place, which
/// needs no space.
#[test]
fn a_hint_file_that_cannot_be_written_is_no_error() {
    let mut s = Setup::new(1 << 20, 3);
    let log = s.log();
    let mut w = log.writer().unwrap();
    assert_eq!(w.opened_from(), TailFrom::HintFile);
    // Emptied meanwhile (a crash, say): writing it again needs room.
    s.put_tail(Vec::new());
    let p = payload(s.n + 1);
    s.fs.set_faults(Faults {
        capacity: Some(s.fs.used_bytes() + 24 + p.len() as u64),
        ..Faults::default()
    });
    assert_eq!(w.append(&[p]).unwrap().first_seq, s.n + 1);
    drop(w);
    s.fs.set_faults(Faults::default());
    assert_eq!(s.fs.read_live(&tail_path()), Some(Vec::new()));
    s.n += 1;
    s.check(TailFrom::Scan, "no room for the hint file");
    // It is whole again: a full disk does not stop it from being brought up to date.
    let p = payload(s.n + 1);
    s.fs.set_faults(Faults {
        capacity: Some(s.fs.used_bytes() + 24 + p.len() as u64),
        ..Faults::default()
    });
    let mut w = s.log().writer().unwrap();
    assert_eq!(w.append(&[p]).unwrap().first_seq, s.n + 1);
    drop(w);
    s.fs.set_faults(Faults::default());
    s.n += 1;
    s.check(
        TailFrom::HintFile,
        "full disk, hint file overwritten in place",
    );
}

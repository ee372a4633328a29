//! The log over the fault-injecting file system, checked against a reference model (a Vec of the
//! acknowledged payloads): seeded random sequences of appends, crashes (unsynced data dropped, or
//! torn: a prefix kept and zeros or garbage after it), failed fsyncs, writes failing half-way, a
//! full disk, reopens, and crashes during recovery itself. Shows wal-rules 4, 10, 11 and 12 hold.
//! The tail hint file is never fsynced; the kernel writing it back at random moments is modelled,
//! so that crashes leave it older than the log, torn, empty or gone.

use std::sync::Arc;

use crate::common::{Rng, read_payloads, small_opts};
use zolog::log::fs::{CrashMode, FaultFs, Faults, Fs};
use zolog::log::{Log, LogError, LogOptions, TailFrom, Writer};

const DIR: &str = "/zo/log";
const TAIL: &str = "/zo/log/TAIL";

struct Harness {
    rng: Rng,
    fs: FaultFs,
    opts: LogOptions,
    log: Log,
    writer: Option<Writer>,
    /// Set once an append failed because an fsync failed: every later append must fail.
    poisoned: bool,
    /// What the log must hold: every acknowledged payload, in order (seq = index + 1).
    acked: Vec<Vec<u8>>,
    /// A batch whose append failed: after recovery it may be there whole, or not at all.
    maybe: Option<Vec<Vec<u8>>>,
    next_id: u64,
    trace: Vec<String>,
    /// Set by a crash, cleared by the next writer.
    crashed: bool,
    /// New processes' writers that found the end through the hint file, and those of them
    /// right after a crash.
    hint_opens: usize,
    hint_opens_after_crash: usize,
}

impl Harness {
    fn new(seed: u64) -> Harness {
        let mut rng = Rng::new(seed);
        let segment_size = [512, 2048, 8192][rng.below(3) as usize];
        let opts = small_opts(segment_size);
        let fs = FaultFs::new();
        let log = Log::open(Arc::new(fs.clone()), DIR, opts.clone()).unwrap();
        Harness {
            rng,
            fs,
            opts,
            log,
            writer: None,
            poisoned: false,
            acked: Vec::new(),
            maybe: None,
            next_id: 0,
            trace: Vec::new(),
            crashed: false,
            hint_opens: 0,
            hint_opens_after_crash: 0,
        }
    }

    fn batch(&mut self) -> Vec<Vec<u8>> {
        let n = self.rng.range(1, 5);
        (0..n)
            .map(|_| {
                self.next_id += 1;
                let len = if self.rng.chance(3) {
                    self.rng.range(600, 3000)
                } else {
                    self.rng.range(0, 200)
                };
                let mut p = format!("#{} ", self.next_id).into_bytes();
                let fill = self.next_id as u8;
                p.extend((0..len).map(|i| fill.wrapping_add(i as u8)));
                p
            })
            .collect()
    }

    fn batch_bytes(batch: &[Vec<u8>]) -> u64 {
        batch.iter().map(|p| 24 + p.len() as u64).sum()
    }

    fn ctx(&self) -> String {
        let n = self.trace.len();
        self.trace[n.saturating_sub(12)..].join("\n  ")
    }

    /// Open a writer (recovering the tail) if there is none, and check the log against the model.
    fn ensure_writer(&mut self) {
        if self.writer.is_some() {
            return;
        }
        let new_process = self.rng.chance(50);
        if new_process {
            // A new process: no in-memory knowledge of the tail.
            self.log = Log::open(Arc::new(self.fs.clone()), DIR, self.opts.clone()).unwrap();
        }
        let w = self
            .log
            .writer()
            .unwrap_or_else(|e| panic!("recovery failed: {e}\n  {}", self.ctx()));
        self.trace
            .push(format!("  opened from {:?}", w.opened_from()));
        if new_process && w.opened_from() == TailFrom::HintFile {
            self.hint_opens += 1;
            if self.crashed {
                self.hint_opens_after_crash += 1;
            }
        }
        self.crashed = false;
        self.writer = Some(w);
        self.poisoned = false;
        self.check_content();
    }

    /// The log holds exactly the acknowledged payloads, plus perhaps (whole) the batch whose
    /// append failed.
    fn check_content(&mut self) {
        let got = read_payloads(&self.log);
        let n = self.acked.len();
        assert!(
            got.len() >= n && got[..n] == self.acked[..],
            "acknowledged data lost or changed: log has {} records, {} acknowledged\n  {}",
            got.len(),
            n,
            self.ctx()
        );
        let extra = &got[n..];
        match self.maybe.take() {
            Some(m) if extra == &m[..] => {
                self.trace
                    .push(format!("  (failed batch of {} is present)", m.len()));
                self.acked.extend(m);
            }
            _ => assert!(
                extra.is_empty(),
                "{} record(s) nobody acknowledged (a phantom or partial batch)\n  {}",
                extra.len(),
                self.ctx()
            ),
        }
        let w = self.writer.as_ref().unwrap();
        assert_eq!(w.next_seq(), self.acked.len() as u64 + 1, "{}", self.ctx());
    }

    fn append(&mut self) {
        self.ensure_writer();
        let batch = self.batch();
        self.trace.push(format!(
            "append {} ({} B)",
            batch.len(),
            Self::batch_bytes(&batch)
        ));
        let r = self.writer.as_mut().unwrap().append(&batch);
        if self.poisoned {
            assert!(
                matches!(r, Err(LogError::Poisoned { .. })),
                "a poisoned writer must refuse every append, got {r:?}\n  {}",
                self.ctx()
            );
            return;
        }
        let a = r.unwrap_or_else(|e| panic!("append failed with no fault: {e}\n  {}", self.ctx()));
        assert_eq!(a.first_seq, self.acked.len() as u64 + 1, "{}", self.ctx());
        assert_eq!(a.last_seq, a.first_seq + batch.len() as u64 - 1);
        self.maybe = None;
        self.acked.extend(batch);
    }

    /// An append with a fault armed: it must fail, cleanly.
    fn faulty_append(&mut self, kind: u64) {
        self.ensure_writer();
        let batch = self.batch();
        let bytes = Self::batch_bytes(&batch);
        let used = self.fs.used_bytes();
        let (faults, what) = match kind {
            0 => (
                Faults {
                    fail_next_sync: true,
                    ..Faults::default()
                },
                "fsync fails".to_owned(),
            ),
            1 => {
                let k = self.rng.below(bytes) as usize;
                (
                    Faults {
                        fail_next_write_after: Some(k),
                        ..Faults::default()
                    },
                    format!("write fails after {k} B"),
                )
            }
            2 => {
                let k = self.rng.below(bytes);
                (
                    Faults {
                        capacity: Some(used + k),
                        ..Faults::default()
                    },
                    format!("disk full after {k} B"),
                )
            }
            _ => (
                Faults {
                    fail_sync_dir: true,
                    ..Faults::default()
                },
                "directory fsyncs fail".to_owned(),
            ),
        };
        self.trace
            .push(format!("append {} ({bytes} B), {what}", batch.len()));
        self.fs.set_faults(faults);
        let r = self.writer.as_mut().unwrap().append(&batch);
        self.fs.set_faults(Faults::default());
        let err = match r {
            Err(e) => e,
            // Only a new segment needs a directory fsync.
            Ok(a) if kind == 3 && !self.poisoned => {
                assert_eq!(a.first_seq, self.acked.len() as u64 + 1, "{}", self.ctx());
                self.maybe = None;
                self.acked.extend(batch);
                return;
            }
            Ok(a) => panic!(
                "append succeeded despite the fault: {a:?}\n  {}",
                self.ctx()
            ),
        };
        if self.poisoned {
            assert!(matches!(err, LogError::Poisoned { .. }), "{err}");
            return;
        }
        match (&err, kind) {
            (LogError::Io { op, .. }, 0 | 3) => {
                assert!(
                    *op == "fdatasync" || *op == "fsync directory",
                    "{err}\n  {}",
                    self.ctx()
                );
                // wal-rules 10: a failed fsync cannot be retried.
                self.poisoned = true;
            }
            (LogError::Io { op, path, source }, 1) => {
                assert_eq!(*op, "write", "{err}");
                assert!(path.starts_with(DIR));
                assert!(source.to_string().contains("injected"));
            }
            (LogError::Io { op, path, source }, _) => {
                assert_eq!(*op, "write", "{err}");
                assert!(path.starts_with(DIR));
                assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{err}");
                assert!(
                    err.to_string().contains("No space left on device"),
                    "a clear message: {err}"
                );
            }
            _ => panic!("unexpected error {err}\n  {}", self.ctx()),
        }
        self.maybe = Some(batch);
    }

    /// Power loss. Sometimes in the middle of an append: its bytes were written but not synced.
    fn crash(&mut self, mid_append: bool) {
        let mode = if self.rng.chance(40) {
            CrashMode::DropUnsynced
        } else {
            CrashMode::Torn {
                keep: self.rng.below(4000) as usize,
                garbage_len: [0, 1, 7, 24, 100, 600][self.rng.below(6) as usize],
                zeros: self.rng.chance(50),
                seed: self.rng.next_u64(),
            }
        };
        if mid_append && !self.poisoned {
            self.ensure_writer();
            let batch = self.batch();
            self.trace
                .push(format!("append {} then crash {mode:?}", batch.len()));
            // The write lands, the sync fails and nothing can be truncated: the bytes sit
            // unsynced, as if the process died between write and fdatasync.
            self.fs.set_faults(Faults {
                fail_next_sync: true,
                fail_set_len: true,
                ..Faults::default()
            });
            let r = self.writer.as_mut().unwrap().append(&batch);
            assert!(r.is_err());
            self.maybe = Some(batch);
        } else {
            self.trace.push(format!("crash {mode:?}"));
        }
        self.fs.crash(mode);
        self.crashed = true;
        self.writer = None;
    }

    /// Drop the writer and open a new one (recovering), checking the content.
    fn reopen(&mut self) {
        self.trace.push("reopen".into());
        self.writer = None;
        self.ensure_writer();
    }

    /// A crash mid-append, then a fault during recovery, then a crash during recovery: the next
    /// recovery still recovers (wal-rules 12).
    fn crash_during_recovery(&mut self) {
        self.crash(true);
        let k = self.rng.below(64);
        let (faults, what) = match self.rng.below(5) {
            0 => (
                Faults {
                    fail_set_len: true,
                    ..Faults::default()
                },
                "truncate fails",
            ),
            1 => (
                Faults {
                    fail_next_sync: true,
                    ..Faults::default()
                },
                "fsync fails",
            ),
            2 => (
                Faults {
                    fail_sync_dir: true,
                    ..Faults::default()
                },
                "directory fsync fails",
            ),
            3 => (
                Faults {
                    fail_next_write_after: Some(k as usize),
                    ..Faults::default()
                },
                "write fails",
            ),
            _ => (
                Faults {
                    capacity: Some(self.fs.used_bytes() + k),
                    ..Faults::default()
                },
                "disk full",
            ),
        };
        self.trace.push(format!("recover with {what}"));
        self.fs.set_faults(faults);
        let log = Log::open(Arc::new(self.fs.clone()), DIR, self.opts.clone()).unwrap();
        let r = log.recover();
        self.trace.push(format!("  -> {r:?}"));
        self.fs.set_faults(Faults::default());
        if r.is_err() || self.rng.chance(50) {
            let mode = if self.rng.chance(50) {
                CrashMode::DropUnsynced
            } else {
                CrashMode::Torn {
                    keep: self.rng.below(100) as usize,
                    garbage_len: self.rng.below(50) as usize,
                    zeros: false,
                    seed: self.rng.next_u64(),
                }
            };
            self.trace.push(format!("crash {mode:?}"));
            self.fs.crash(mode);
            self.crashed = true;
        }
        self.ensure_writer();
    }

    /// The kernel writes the hint file back on its own (and sometimes commits the directory
    /// too): a later crash keeps this version of it.
    fn write_back_hint(&mut self) {
        self.trace.push("hint file written back".into());
        self.fs.write_back(std::path::Path::new(TAIL));
        if self.rng.chance(50) {
            self.fs.sync_dir(std::path::Path::new(DIR)).unwrap();
        }
    }

    fn step(&mut self) {
        if self.rng.chance(10) {
            self.write_back_hint();
        }
        match self.rng.below(100) {
            0..=49 => self.append(),
            50..=55 => self.faulty_append(0),
            56..=61 => self.faulty_append(1),
            62..=67 => self.faulty_append(2),
            68..=71 => self.faulty_append(3),
            72..=79 => self.crash(false),
            80..=86 => self.crash(true),
            87..=94 => self.reopen(),
            _ => self.crash_during_recovery(),
        }
    }

    fn finish(&mut self) {
        self.reopen();
        self.writer = None;
        self.fs.crash(CrashMode::DropUnsynced);
        self.reopen();
        self.writer = None;
        let report = self.log.verify(&|_, _| Ok(()), &mut |_, _| {}).unwrap();
        assert!(report.is_clean(), "{:?}\n  {}", report.problems, self.ctx());
        assert_eq!(report.records, self.acked.len() as u64);
    }
}

/// Segments at the end, and new processes' writers that used the hint file (all, after a crash).
fn run(seed: u64, ops: usize) -> (usize, usize, usize) {
    let mut h = Harness::new(seed);
    for _ in 0..ops {
        h.step();
    }
    h.finish();
    (
        h.log.segments().unwrap().len(),
        h.hint_opens,
        h.hint_opens_after_crash,
    )
}

#[test]
fn random_faults_and_crashes_lose_nothing_acknowledged() {
    let (mut segments, mut hinted, mut after_crash) = (0, 0, 0);
    for seed in 0..8 {
        let (s, h, c) = run(0xfa17_0000 + seed, 400);
        segments += s;
        hinted += h;
        after_crash += c;
    }
    assert!(segments > 50, "rotation must be exercised: {segments}");
    // The hint file must be exercised too, also as a crash left it.
    assert!(hinted > 100, "hint file used {hinted} times");
    assert!(
        after_crash > 10,
        "hint file used {after_crash} times after a crash"
    );
}

/// wal-rules 10, directly: after a failed fsync every later append fails, and a reopen loses
/// nothing acknowledged; and the failed batch does not come back to sit, unsynced, in the middle of
/// the log (fsyncgate: the kernel may have dropped those pages, so a later crash would leave a
/// hole of zeros before records that were acknowledged).
#[test]
fn failed_fsync_poisons_the_writer_and_its_batch_never_resurfaces() {
    let (fs, log) = crate::common::fault_log(small_opts(1 << 20));
    let mut w = log.writer().unwrap();
    w.append(&[b"one".to_vec()]).unwrap();
    fs.set_faults(Faults {
        fail_next_sync: true,
        ..Faults::default()
    });
    assert!(matches!(
        w.append(&[b"two".to_vec()]),
        Err(LogError::Io {
            op: "fdatasync",
            ..
        })
    ));
    for _ in 0..3 {
        assert!(matches!(
            w.append(&[b"three".to_vec()]),
            Err(LogError::Poisoned { .. })
        ));
    }
    drop(w);
    let mut w = log.writer().unwrap();
    assert_eq!(read_payloads(&log), vec![b"one".to_vec()]);
    w.append(&[b"four".to_vec()]).unwrap();
    drop(w);
    fs.crash(CrashMode::DropUnsynced);
    let _w = log.writer().expect("the log opens after the crash");
    assert_eq!(read_payloads(&log), vec![b"one".to_vec(), b"four".to_vec()]);
}

/// wal-rules 11, directly: a write that fails half-way leaves no half-record where the next
/// batch goes, even without a reopen.
#[test]
fn failed_write_is_truncated_away_before_the_next_append() {
    for after in [0usize, 1, 23, 24, 25, 40] {
        let (fs, log) = crate::common::fault_log(small_opts(1 << 20));
        let mut w = log.writer().unwrap();
        w.append(&[b"one".to_vec()]).unwrap();
        let seg = log.segment_path(1);
        let len = fs.read_live(&seg).unwrap().len();
        fs.set_faults(Faults {
            fail_next_write_after: Some(after),
            ..Faults::default()
        });
        assert!(w.append(&[vec![7u8; 30], vec![8u8; 30]]).is_err());
        assert_eq!(fs.read_live(&seg).unwrap().len(), len, "after {after}");
        let a = w.append(&[b"two".to_vec()]).unwrap();
        assert_eq!(a.first_seq, 2);
        drop(w);
        fs.crash(CrashMode::DropUnsynced);
        let _w = log.writer().unwrap();
        assert_eq!(read_payloads(&log), vec![b"one".to_vec(), b"two".to_vec()]);
    }
}

/// A full disk: a clear error, nothing acknowledged lost, and appends resume once there is room.
#[test]
fn disk_full_is_a_clear_error_and_loses_nothing() {
    let (fs, log) = crate::common::fault_log(small_opts(4096));
    let mut w = log.writer().unwrap();
    let mut acked = Vec::new();
    for i in 0..20u8 {
        let b = vec![vec![i; 100]];
        w.append(&b).unwrap();
        acked.extend(b);
    }
    fs.set_faults(Faults {
        capacity: Some(fs.used_bytes() + 50),
        ..Faults::default()
    });
    for _ in 0..3 {
        let e = w.append(&[vec![9u8; 100]]).unwrap_err();
        assert!(e.to_string().contains("No space left on device"), "{e}");
        assert!(e.to_string().contains(DIR), "names the file: {e}");
    }
    fs.set_faults(Faults::default());
    w.append(&[vec![10u8; 100]]).unwrap();
    acked.push(vec![10u8; 100]);
    drop(w);
    fs.crash(CrashMode::DropUnsynced);
    let _w = log.writer().unwrap();
    assert_eq!(read_payloads(&log), acked);
}

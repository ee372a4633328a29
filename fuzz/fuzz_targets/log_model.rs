//! A log-operations model: arbitrary appends, crashes that drop unsynced data or leave torn and
//! garbage tails, failed fsyncs, writes failing half-way, a full disk, reopen and recover, the
//! kernel writing the (never fsynced) tail hint file back at any moment — checked against a Vec of
//! acknowledged payloads.
//!
//! Oracle: after every recovery the log holds exactly the acknowledged payloads in order, plus at
//! most the one batch whose append failed (whole, or not at all); a poisoned writer refuses every
//! append; recovery never fails and never panics.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use zolog::log::fs::{CrashMode, FaultFs, Faults, Fs};
use zolog::log::{Log, LogError, LogOptions, Writer};

const DIR: &str = "/zo/log";

#[derive(Arbitrary, Debug)]
enum Op {
    Append { records: u8, len: u16 },
    Crash { keep: u16, garbage: u8, zeros: bool, seed: u64, torn: bool },
    FailNextSync,
    FailNextWrite { after: u16 },
    DiskFull { spare: u16 },
    Heal,
    Reopen,
    /// The kernel writes the hint file back (and perhaps its directory entry): a later crash
    /// keeps this version of it.
    WriteBackHint { entry: bool },
}

#[derive(Arbitrary, Debug)]
struct Input {
    segment_size: u16,
    ops: Vec<Op>,
}

struct Model {
    fs: FaultFs,
    opts: LogOptions,
    log: Log,
    writer: Option<Writer>,
    poisoned: bool,
    acked: Vec<Vec<u8>>,
    maybe: Option<Vec<Vec<u8>>>,
    next: u32,
}

fn payloads(log: &Log) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    log.reader(1)
        .poll::<()>(|r| {
            out.push(r.payload.to_vec());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("reading a recovered log failed: {e:?}"));
    out
}

impl Model {
    fn ensure_writer(&mut self) {
        if self.writer.is_some() {
            return;
        }
        let w = match self.log.writer() {
            Ok(w) => w,
            // An injected I/O fault may fail the open (creating a segment, cutting a tail): that
            // is an error the caller sees, not damage. Once the disk heals, recovery must work.
            Err(LogError::Io { .. }) => {
                self.fs.set_faults(Faults::default());
                self.log = Log::open(Arc::new(self.fs.clone()), DIR, self.opts.clone()).unwrap();
                self.log.writer().unwrap_or_else(|e| panic!("recovery failed after healing: {e}"))
            }
            Err(e) => panic!("recovery failed: {e}"),
        };
        let got = payloads(&self.log);
        let n = self.acked.len();
        assert!(got.len() >= n && got[..n] == self.acked[..], "acknowledged data lost or changed");
        let extra = &got[n..];
        match self.maybe.take() {
            Some(m) if extra == &m[..] => self.acked.extend(m),
            _ => assert!(extra.is_empty(), "{} record(s) nobody acknowledged", extra.len()),
        }
        assert_eq!(w.next_seq(), self.acked.len() as u64 + 1);
        self.writer = Some(w);
        self.poisoned = false;
    }

    fn append(&mut self, records: u8, len: u16) {
        self.ensure_writer();
        let batch: Vec<Vec<u8>> = (0..records % 4 + 1)
            .map(|_| {
                self.next += 1;
                let mut p = self.next.to_le_bytes().to_vec();
                p.extend((0..len % 700).map(|i| (i as u8).wrapping_mul(31) ^ self.next as u8));
                p
            })
            .collect();
        let w = self.writer.as_mut().expect("ensured");
        match w.append(&batch) {
            Ok(r) => {
                assert!(!self.poisoned, "a poisoned writer acknowledged a batch");
                assert_eq!(r.first_seq, self.acked.len() as u64 + 1, "sequence numbers have a gap");
                self.acked.extend(batch);
            }
            Err(LogError::Poisoned { .. }) => {
                assert!(self.poisoned || self.maybe.is_some(), "poisoned without a failure");
                self.writer = None;
            }
            Err(_) => {
                // Not acknowledged: it may survive whole, or not at all. Start over from disk.
                self.poisoned = true;
                self.maybe = Some(batch);
                self.writer = None;
                self.fs.set_faults(Faults::default());
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let fs = FaultFs::new();
    let opts = LogOptions {
        segment_size: 256 + u64::from(input.segment_size % 8192),
        max_record: 4096,
        ..LogOptions::default()
    };
    let log = Log::open(Arc::new(fs.clone()), DIR, opts.clone()).unwrap();
    let mut m = Model { fs, opts, log, writer: None, poisoned: false, acked: Vec::new(), maybe: None, next: 0 };
    for op in input.ops.into_iter().take(48) {
        match op {
            Op::Append { records, len } => m.append(records, len),
            Op::Crash { keep, garbage, zeros, seed, torn } => {
                m.writer = None;
                let mode = if torn {
                    CrashMode::Torn { keep: usize::from(keep), garbage_len: usize::from(garbage), zeros, seed }
                } else {
                    CrashMode::DropUnsynced
                };
                m.fs.crash(mode);
                m.log = Log::open(Arc::new(m.fs.clone()), DIR, m.opts.clone()).unwrap();
            }
            Op::FailNextSync => m.fs.set_faults(Faults { fail_next_sync: true, ..Faults::default() }),
            Op::FailNextWrite { after } => m.fs.set_faults(Faults {
                fail_next_write_after: Some(usize::from(after % 2048)),
                ..Faults::default()
            }),
            Op::DiskFull { spare } => {
                let used = m.fs.used_bytes();
                m.fs.set_faults(Faults { capacity: Some(used + u64::from(spare % 4096)), ..Faults::default() });
            }
            Op::Heal => m.fs.set_faults(Faults::default()),
            Op::Reopen => {
                m.writer = None;
                m.log = Log::open(Arc::new(m.fs.clone()), DIR, m.opts.clone()).unwrap();
            }
            Op::WriteBackHint { entry } => {
                m.fs.write_back(std::path::Path::new("/zo/log/TAIL"));
                if entry {
                    let _ = m.fs.sync_dir(std::path::Path::new(DIR));
                }
            }
        }
    }
    // Whatever happened, a final recovery holds everything acknowledged.
    m.fs.set_faults(Faults::default());
    m.writer = None;
    m.ensure_writer();
});

//! The single writer: group commit on its own thread.
//!
//! Connections parse and encode their lines, then hand the server a [`Submission`] through one
//! bounded channel. This thread takes the first waiting submission, then every other one that is
//! waiting (up to a byte cap), and appends them all with one `Writer::append`: one log batch, one
//! fdatasync (wal-rules 7). Everything that arrives while that sync is in flight waits in the
//! channel and goes into the next one. Only after `append` returns does it hand each submission's
//! acknowledgements to its connection, through a slot that connection reserved before submitting,
//! so this thread never waits on a client.
//!
//! Conditional batches are judged here, in group order, so a batch placed earlier in the same
//! group counts: `if_next_seq` against the seq the batch would get, `if_no_key_since` against the
//! last seq of each conflict key this server appended (a map kept on this thread; connections
//! derive each event's key, if any, when they parse it).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio::sync::{OwnedSemaphorePermit, mpsc::OwnedPermit};

use super::Stats;
use super::protocol::Cond;
use crate::log::{LogError, Writer};

/// What one response line will be about, in the order the client sent the lines.
#[derive(Debug)]
pub(crate) enum Unit {
    /// One event (one payload). `quiet`: acknowledged by the next `#flush` only.
    Event {
        line: u64,
        quiet: bool,
    },
    /// An atomic batch of `count` payloads; with a condition, only if it holds when the batch
    /// is appended. (Boxed: conditions are rare, and a unit per event should stay small.)
    Batch {
        line: u64,
        count: u64,
        cond: Option<Box<Cond>>,
    },
    /// An `if_next_seq` batch that found the log elsewhere: nothing of it appended.
    Conflict {
        line: u64,
        expected: u64,
        actual: u64,
    },
    /// An `if_no_key_since` batch whose condition failed: nothing of it appended.
    KeyConflict {
        line: u64,
        reason: Box<str>,
        actual: u64,
    },
    Flush {
        line: u64,
    },
    Error {
        line: u64,
        message: String,
    },
}

/// Lines of one connection, parsed and encoded, on their way to the log.
#[derive(Debug)]
pub(crate) struct Submission {
    /// The encoded payloads, back to back.
    pub data: Vec<u8>,
    /// End offset of each payload in `data`.
    pub ends: Vec<usize>,
    /// The conflict key of each payload that has one, by its index in `ends` (ascending).
    pub keys: Vec<(usize, String)>,
    pub units: Vec<Unit>,
    /// The slot in the connection's acknowledgement buffer; `None` when the client is gone (its
    /// events are still appended: they were received whole).
    pub ack: Option<OwnedPermit<Done>>,
    /// Share of the server-wide budget of bytes in flight, released once appended.
    pub budget: Option<OwnedSemaphorePermit>,
}

/// A submission's outcome, for its connection's responder.
#[derive(Debug)]
pub(crate) struct Done {
    /// Sequence number of the submission's first payload.
    pub first_seq: u64,
    pub units: Vec<Unit>,
    /// Set when the append failed: nothing of the submission is in the log.
    pub failed: Option<Arc<str>>,
}

/// Why an `if_no_key_since` batch may not be appended, if it may not: the server started after
/// `since` (it cannot tell what came before), or an event carrying one of `keys` has a seq at or
/// after `since`.
fn key_conflict(
    start: u64,
    last_of: &HashMap<String, u64>,
    since: u64,
    keys: &[String],
) -> Option<String> {
    if since < start {
        return Some(format!(
            "this zolog serve started at seq {start} and cannot tell what was appended since seq {since}; read the log on and retry"
        ));
    }
    keys.iter().find_map(|k| {
        last_of
            .get(k)
            .filter(|&&seq| seq >= since)
            .map(|seq| format!("the event at seq {seq} has key {k:?}"))
    })
}

/// Run the writer until every sender is gone. `on_commit(last_seq)` runs after each durable
/// group; `on_fatal` once, when an append fails (the server then shuts down: a failed fdatasync
/// cannot be retried, wal-rules 10). After a failure every later submission is refused.
pub(crate) fn run(
    mut writer: Writer,
    mut rx: mpsc::Receiver<Submission>,
    max_group_bytes: usize,
    stats: &Stats,
    on_commit: &dyn Fn(u64),
    on_fatal: &dyn Fn(),
) -> Result<(), LogError> {
    let mut group: Vec<Submission> = Vec::new();
    // (submission, start, end) of each payload to append.
    let mut refs: Vec<(usize, usize, usize)> = Vec::new();
    let mut failure: Option<(Arc<str>, LogError)> = None;
    // The seq this server started at, and the last seq of every conflict key it appended since.
    let started_at = writer.next_seq();
    let mut last_of: HashMap<String, u64> = HashMap::new();
    while let Some(first) = rx.blocking_recv() {
        let mut bytes = first.data.len();
        group.push(first);
        while bytes < max_group_bytes {
            match rx.try_recv() {
                Ok(s) => {
                    bytes += s.data.len();
                    group.push(s);
                }
                Err(_) => break,
            }
        }
        // Where each payload would land, in group order; a conditional batch whose seq would not
        // be the one it names is left out (and so moves nothing after it).
        let base = writer.next_seq();
        let mut next = base;
        let mut firsts = Vec::with_capacity(group.len());
        refs.clear();
        for (i, s) in group.iter_mut().enumerate() {
            firsts.push(next);
            let mut p = 0;
            let mut start = 0;
            let mut keys = std::mem::take(&mut s.keys).into_iter().peekable();
            for u in s.units.iter_mut() {
                let n = match *u {
                    Unit::Event { .. } => 1,
                    Unit::Batch { count, .. } => count as usize,
                    _ => 0,
                };
                let refused = match u {
                    Unit::Batch {
                        line,
                        cond: Some(c),
                        ..
                    } => match &**c {
                        Cond::NextSeq(expected) if *expected != next => Some(Unit::Conflict {
                            line: *line,
                            expected: *expected,
                            actual: next,
                        }),
                        Cond::NoKeySince { since, keys } => {
                            key_conflict(started_at, &last_of, *since, keys).map(|reason| {
                                Unit::KeyConflict {
                                    line: *line,
                                    reason: reason.into(),
                                    actual: next,
                                }
                            })
                        }
                        Cond::NextSeq(_) => None,
                    },
                    _ => None,
                };
                if let Some(r) = refused {
                    *u = r;
                    while keys.next_if(|(k, _)| *k < p + n).is_some() {}
                } else {
                    for &end in &s.ends[p..p + n] {
                        refs.push((i, start, end));
                        start = end;
                    }
                    // Remember the keys this unit carries, at the seqs they will have.
                    while let Some((k, key)) = keys.next_if(|(k, _)| *k < p + n) {
                        last_of.insert(key, next + (k - p) as u64);
                    }
                    next += n as u64;
                }
                if n > 0 {
                    start = s.ends[p + n - 1];
                }
                p += n;
            }
        }
        if failure.is_none() && !refs.is_empty() {
            let payloads: Vec<&[u8]> = refs.iter().map(|&(i, a, b)| &group[i].data[a..b]).collect();
            let t0 = std::time::Instant::now();
            let appended = writer.append(&payloads);
            stats.record_append(t0.elapsed());
            match appended {
                Ok(a) => {
                    debug_assert_eq!(a.first_seq, base);
                    stats
                        .events
                        .fetch_add(payloads.len() as u64, Ordering::Relaxed);
                    stats.syncs.fetch_add(1, Ordering::Relaxed);
                    stats.last_seq.store(a.last_seq, Ordering::Relaxed);
                    on_commit(a.last_seq);
                }
                Err(e) => {
                    tracing::error!("append failed; the server stops: {e}");
                    failure = Some((Arc::from(e.to_string()), e));
                    on_fatal();
                }
            }
        }
        let failed = failure.as_ref().map(|f| f.0.clone());
        for (s, first_seq) in group.drain(..).zip(firsts) {
            drop(s.budget);
            if let Some(slot) = s.ack {
                slot.send(Done {
                    first_seq,
                    units: s.units,
                    failed: failed.clone(),
                });
            }
        }
    }
    match failure {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

//! One connection: a reader that frames, parses and encodes lines and submits them to the
//! writer, and a responder that writes acknowledgements back once the writer says they are
//! durable.
//!
//! Bounds: a line is at most `max_line` bytes (a longer one is reported as soon as it passes the
//! limit and its bytes are dropped as they arrive, never buffered); a connection has at most
//! `conn_inflight` submissions waiting for acknowledgement (its reader stops reading until the
//! client takes its acknowledgements, which backpressures that client alone); a responder that
//! cannot write for `ack_timeout` drops its client.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Shared;
use super::group::{Done, Submission, Unit};
use super::protocol::{self, AckMode, Request};
use crate::event::{Source, Timestamp, codec};
use crate::store::conflict_key;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;
/// Acknowledgement bytes gathered before a write.
const WRITE_CHUNK: usize = 64 * 1024;

/// A line that went past the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLong;

/// Splits a byte stream into lines of at most `max_line` bytes without ever holding more than
/// `max_line` bytes of one line.
#[derive(Debug)]
pub(crate) struct Framer {
    max_line: usize,
    /// Lines completed so far (the next line's number is `lineno + 1`).
    lineno: u64,
    /// Dropping the rest of a line that went past the limit (already reported).
    discarding: bool,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
}

impl Framer {
    pub(crate) fn new(max_line: usize, lines_before: u64) -> Framer {
        Framer {
            max_line,
            lineno: lines_before,
            discarding: false,
            scanned: 0,
        }
    }

    /// Hand every complete line at the front of `buf` to `on_line` (without its newline) and
    /// remove it. A line longer than the limit is reported once, as soon as it passes the limit,
    /// and its bytes are dropped.
    pub(crate) fn feed(
        &mut self,
        buf: &mut Vec<u8>,
        mut on_line: impl FnMut(u64, Result<&[u8], TooLong>),
    ) {
        let mut start = 0;
        while let Some(i) = memchr::memchr(b'\n', &buf[self.scanned..]) {
            let end = self.scanned + i;
            self.lineno += 1;
            if self.discarding {
                self.discarding = false;
            } else if end - start > self.max_line {
                on_line(self.lineno, Err(TooLong));
            } else {
                on_line(self.lineno, Ok(&buf[start..end]));
            }
            start = end + 1;
            self.scanned = start;
        }
        if self.discarding {
            buf.clear();
        } else if buf.len() - start > self.max_line {
            on_line(self.lineno + 1, Err(TooLong));
            self.discarding = true;
            buf.clear();
        } else {
            buf.drain(..start);
        }
        self.scanned = buf.len();
    }

    /// At the end of input: the number of the unfinished last line, if it holds anything but
    /// whitespace (it is never appended).
    pub(crate) fn unfinished(&self, buf: &[u8]) -> Option<u64> {
        (!self.discarding && buf.iter().any(|b| !b.is_ascii_whitespace()))
            .then_some(self.lineno + 1)
    }
}

/// Lines parsed and encoded, not yet submitted.
#[derive(Debug, Default)]
pub(crate) struct Builder {
    data: Vec<u8>,
    ends: Vec<usize>,
    /// Conflict keys of the payloads that have one (rare: no allocation otherwise).
    keys: Vec<(usize, String)>,
    units: Vec<Unit>,
    rejected: u64,
}

impl Builder {
    /// Room for the lines in `buf` (an encoded event is smaller than its JSON), at most one
    /// read's worth: a long line arriving slowly must not cost an allocation of its size per read.
    fn for_input(buf: &[u8]) -> Builder {
        let n = buf.len().min(READ_CHUNK);
        Builder {
            data: Vec::with_capacity(n),
            ends: Vec::with_capacity(n / 128),
            keys: Vec::new(),
            units: Vec::with_capacity(n / 128),
            rejected: 0,
        }
    }

    fn error(&mut self, line: u64, message: String) {
        self.rejected += 1;
        self.units.push(Unit::Error { line, message });
    }

    fn is_empty(&self) -> bool {
        self.units.is_empty()
    }
}

/// What a connection remembers between lines.
#[derive(Debug)]
pub(crate) struct ConnState {
    pub mode: AckMode,
    pub source: Source,
    pub max_line: usize,
    /// The log's largest record: an event that encodes larger is refused alone.
    pub max_record: usize,
}

impl ConnState {
    fn too_large(&self) -> String {
        format!(
            "an event encodes to more than the log's maximum record size of {} bytes; nothing of this line appended",
            self.max_record
        )
    }

    fn handle(
        &mut self,
        line: u64,
        bytes: Result<&[u8], TooLong>,
        now: Timestamp,
        b: &mut Builder,
    ) {
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(TooLong) => {
                return b.error(
                    line,
                    format!(
                        "line longer than {} bytes; discarded, nothing of it appended",
                        self.max_line
                    ),
                );
            }
        };
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => return b.error(line, format!("line is not valid UTF-8: {e}")),
        };
        match protocol::parse_line(text) {
            Ok(Request::Blank) => {}
            Ok(Request::Event(ev)) => {
                let start = b.data.len();
                let key = conflict_key(&ev.payload);
                codec::encode_into(&protocol::to_new_event(ev, &self.source, now), &mut b.data);
                if b.data.len() - start > self.max_record {
                    b.data.truncate(start);
                    return b.error(line, self.too_large());
                }
                if let Some(k) = key {
                    b.keys.push((b.ends.len(), k));
                }
                b.ends.push(b.data.len());
                b.units.push(Unit::Event {
                    line,
                    quiet: self.mode == AckMode::Flush,
                });
            }
            Ok(Request::Batch(evs, cond)) => {
                let (start, ends, keys) = (b.data.len(), b.ends.len(), b.keys.len());
                let count = evs.len() as u64;
                for ev in evs {
                    let at = b.data.len();
                    let key = conflict_key(&ev.payload);
                    codec::encode_into(&protocol::to_new_event(ev, &self.source, now), &mut b.data);
                    if b.data.len() - at > self.max_record {
                        b.data.truncate(start);
                        b.ends.truncate(ends);
                        b.keys.truncate(keys);
                        return b.error(line, self.too_large());
                    }
                    if let Some(k) = key {
                        b.keys.push((b.ends.len(), k));
                    }
                    b.ends.push(b.data.len());
                }
                b.units.push(Unit::Batch {
                    line,
                    count,
                    cond: cond.map(Box::new),
                });
            }
            Ok(Request::Flush) => b.units.push(Unit::Flush { line }),
            Ok(Request::Acks(m)) => self.mode = m,
            Ok(Request::Source(s)) => self.source = s,
            Err(message) => b.error(line, message),
        }
    }
}

/// Feed `buf` through the framer and parser into a builder (the reader's synchronous half, also
/// used by tests).
pub(crate) fn process(framer: &mut Framer, st: &mut ConnState, buf: &mut Vec<u8>, b: &mut Builder) {
    let now = Timestamp::now();
    framer.feed(buf, |line, r| st.handle(line, r, now, b));
}

/// Serve one connection until the client closes, the server stops, or the client is dropped.
/// `buf` holds bytes already read (after an AUTH line); `lines_before` counts lines already
/// consumed.
pub(crate) async fn run<R, W>(
    rd: R,
    wr: W,
    buf: Vec<u8>,
    lines_before: u64,
    source: Source,
    sh: Arc<Shared>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (ack_tx, ack_rx) = mpsc::channel::<Done>(sh.opts.conn_inflight.max(1));
    let (lines_tx, lines_rx) = tokio::sync::oneshot::channel();
    let responder = tokio::spawn(respond(wr, ack_rx, lines_rx, sh.clone()));
    let lines = read(rd, buf, lines_before, source, ack_tx, &sh).await;
    let _ = lines_tx.send(lines);
    let _ = responder.await;
}

/// Returns the number of the last complete line read.
async fn read<R: AsyncRead + Unpin>(
    mut rd: R,
    mut buf: Vec<u8>,
    lines_before: u64,
    source: Source,
    ack_tx: mpsc::Sender<Done>,
    sh: &Shared,
) -> u64 {
    let max_line = sh.opts.max_line;
    let mut framer = Framer::new(max_line, lines_before);
    let mut st = ConnState {
        mode: AckMode::Each,
        source,
        max_line,
        max_record: sh.max_record,
    };
    let mut stop = sh.stop.clone();
    let mut end: Option<&'static str> = None;
    loop {
        let mut b = Builder::for_input(&buf);
        process(&mut framer, &mut st, &mut buf, &mut b);
        if let Some(why) = end
            && let Some(line) = framer.unfinished(&buf)
        {
            b.error(line, why.to_owned());
        }
        if !b.is_empty() {
            sh.stats.rejected.fetch_add(b.rejected, Ordering::Relaxed);
            if !submit(b, &ack_tx, sh).await {
                return framer.lineno;
            }
        }
        if end.is_some() {
            return framer.lineno;
        }
        if *stop.borrow() {
            end = Some("the server is shutting down: unfinished line not appended");
            continue;
        }
        if buf.capacity() > 4 * READ_CHUNK && buf.len() < READ_CHUNK {
            buf.shrink_to(2 * READ_CHUNK);
        }
        buf.reserve(READ_CHUNK);
        tokio::select! {
            biased;
            _ = stop.changed() => {
                end = Some("the server is shutting down: unfinished line not appended");
            }
            _ = ack_tx.closed() => return framer.lineno,
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => end = Some("last line has no newline (the client closed the connection mid-line); not appended"),
                Ok(_) => {}
                Err(_) => end = Some("connection failed mid-line; unfinished line not appended"),
            },
        }
    }
}

/// Hand lines to the writer: reserve an acknowledgement slot first (this is where a client that
/// does not read its acknowledgements is held back), then take budget, then queue. Returns
/// whether the connection is still worth reading.
async fn submit(b: Builder, ack_tx: &mpsc::Sender<Done>, sh: &Shared) -> bool {
    let ack = ack_tx.clone().reserve_owned().await.ok();
    let alive = ack.is_some();
    let kib = (b.data.len() / 1024 + 1).min(sh.budget_kib) as u32;
    let budget = sh.budget.clone().acquire_many_owned(kib).await.ok();
    let sub = Submission {
        data: b.data,
        ends: b.ends,
        keys: b.keys,
        units: b.units,
        ack,
        budget,
    };
    sh.writer_tx.send(sub).await.is_ok() && alive
}

/// Running totals for `#flush`.
#[derive(Debug, Default)]
struct FlushState {
    count: u64,
    first: Option<u64>,
    last: u64,
}

impl FlushState {
    fn add(&mut self, first: u64, last: u64) {
        self.count += last - first + 1;
        self.first.get_or_insert(first);
        self.last = last;
    }
}

fn format(done: Done, out: &mut Vec<u8>, fl: &mut FlushState) {
    let mut seq = done.first_seq;
    for u in done.units {
        match (u, &done.failed) {
            (Unit::Event { line, quiet }, None) => {
                if !quiet {
                    protocol::write_ack(out, seq, line);
                }
                fl.add(seq, seq);
                seq += 1;
            }
            (Unit::Batch { line, count, .. }, None) => {
                protocol::write_batch_ack(out, seq, seq + count - 1, line);
                fl.add(seq, seq + count - 1);
                seq += count;
            }
            (Unit::Event { line, .. } | Unit::Batch { line, .. }, Some(why)) => {
                protocol::write_error(
                    out,
                    &format!(
                        "not acknowledged: the append failed ({why}); the server is stopping; whether this line's events survive is decided by recovery when the store is next opened"
                    ),
                    Some(line),
                    false,
                );
            }
            (
                Unit::Conflict {
                    line,
                    expected,
                    actual,
                },
                _,
            ) => protocol::write_conflict(out, expected, actual, line),
            (
                Unit::KeyConflict {
                    line,
                    reason,
                    actual,
                },
                _,
            ) => protocol::write_key_conflict(out, &reason, actual, line),
            (Unit::Flush { line }, _) => {
                let range = fl.first.map(|f| (f, fl.last));
                protocol::write_flush_ack(out, fl.count, range, line);
                *fl = FlushState::default();
            }
            (Unit::Error { line, message }, _) => {
                protocol::write_error(out, &message, Some(line), false);
            }
        }
    }
}

/// Write with a deadline. `Err(true)` on timeout, `Err(false)` when the client is gone.
async fn write_timeout<W: AsyncWrite + Unpin>(
    wr: &mut W,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), bool> {
    match tokio::time::timeout(limit, wr.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(false),
        Err(_) => Err(true),
    }
}

async fn respond<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Done>,
    lines_read: tokio::sync::oneshot::Receiver<u64>,
    sh: Arc<Shared>,
) {
    let limit = sh.opts.ack_timeout;
    let dropped = |timed_out: bool| {
        if timed_out {
            sh.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "dropped a client that took no acknowledgements for {limit:?} (its received events are appended)"
            );
        }
    };
    if let Err(t) = write_timeout(&mut wr, &sh.greeting, limit).await {
        return dropped(t);
    }
    let mut out = Vec::with_capacity(4096);
    let mut fl = FlushState::default();
    while let Some(d) = rx.recv().await {
        format(d, &mut out, &mut fl);
        while out.len() < WRITE_CHUNK {
            match rx.try_recv() {
                Ok(d) => format(d, &mut out, &mut fl),
                Err(_) => break,
            }
        }
        if !out.is_empty() {
            if let Err(t) = write_timeout(&mut wr, &out, limit).await {
                return dropped(t);
            }
            out.clear();
        }
    }
    if *sh.stop.borrow() {
        // Every line after this one was never read, so none of it is in the log.
        let last = lines_read.await.unwrap_or(0);
        protocol::write_bye(&mut out, "server shutting down", last);
        let _ = write_timeout(&mut wr, &out, limit.min(Duration::from_secs(1))).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}

/// Read the `AUTH <token>` line of a TCP connection (at most [`protocol::MAX_AUTH_LINE`] bytes,
/// within `limit`). Returns the bytes that followed it.
pub(crate) async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    token: &str,
    limit: Duration,
) -> Result<Vec<u8>, &'static str> {
    let mut buf = Vec::with_capacity(256);
    let deadline = tokio::time::Instant::now() + limit;
    let reason = loop {
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&buf[..i]);
            let given = line
                .trim_end_matches('\r')
                .strip_prefix("AUTH ")
                .unwrap_or("");
            // blake3's Hash equality is constant-time, and hashing hides the token's length.
            if !given.is_empty() && blake3::hash(given.as_bytes()) == blake3::hash(token.as_bytes())
            {
                return Ok(buf.split_off(i + 1));
            }
            break "authentication failed: the first line must be `AUTH <token>` with the server's token";
        }
        if buf.len() > protocol::MAX_AUTH_LINE {
            break "authentication failed: AUTH line too long";
        }
        buf.reserve(1024);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err("closed before AUTH"),
            Ok(Ok(_)) => {}
            Err(_) => break "authentication failed: no AUTH line in time",
        }
    };
    let mut out = Vec::new();
    protocol::write_error(&mut out, reason, Some(1), true);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
    Err(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::SourceKind;

    fn frame(max: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut f = Framer::new(max, 0);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for c in chunks {
            buf.extend_from_slice(c);
            f.feed(&mut buf, |n, r| {
                got.push(match r {
                    Ok(b) => format!("{n}:{}", String::from_utf8_lossy(b)),
                    Err(TooLong) => format!("{n}:too long"),
                })
            });
            assert!(buf.len() <= max, "buffered {} > {max}", buf.len());
        }
        if let Some(n) = f.unfinished(&buf) {
            got.push(format!("{n}:unfinished"));
        }
        got
    }

    #[test]
    fn framing_cases() {
        let cases: &[(&[&[u8]], &[&str])] = &[
            (&[b"a\nb\n"], &["1:a", "2:b"]),
            (&[b"a", b"b\nc", b"\n"], &["1:ab", "2:c"]),
            (&[b"abc"], &["1:unfinished"]),
            (&[b"a\n  "], &["1:a"]),
            // Exactly the limit is fine; one more byte is too long, reported before its end.
            (&[b"12345678\n"], &["1:12345678"]),
            (&[b"123456789"], &["1:too long"]),
            (
                &[b"123456789", b"0000", b"0\nok\n"],
                &["1:too long", "2:ok"],
            ),
            (&[b"x\n123456789012\nok\n"], &["1:x", "2:too long", "3:ok"]),
            (&[b"1234", b"56789", b"\n"], &["1:too long"]),
        ];
        for (chunks, want) in cases {
            assert_eq!(frame(8, chunks), *want, "{chunks:?}");
        }
    }

    #[test]
    fn a_stream_of_garbage_never_buffers_more_than_the_limit() {
        let chunk = [b'x'; 1000];
        let chunks: Vec<&[u8]> = (0..100).map(|_| &chunk[..]).collect();
        assert_eq!(frame(4096, &chunks), ["1:too long"]);
    }

    #[test]
    fn lines_become_units_in_order() {
        let mut f = Framer::new(1 << 20, 0);
        let mut st = ConnState {
            mode: AckMode::Each,
            source: Source::this_process(SourceKind::Trainer),
            max_line: 1 << 20,
            max_record: 200,
        };
        let ev = r#"{"type":"EpochEnded","experiment_id":"exp-001","epoch":1}"#;
        let big = format!(
            r#"{{"type":"NoteAdded","experiment_id":"exp-001","section":"next","text":"{}"}}"#,
            "x".repeat(300)
        );
        let input = format!(
            "{ev}\nnope\n#acks flush\n{ev}\n\n#flush\n{{\"batch\":[{ev},{ev}]}}\n{big}\n{{\"batch\":[{ev},{big}]}}\n"
        );
        let mut buf = input.into_bytes();
        let mut b = Builder::default();
        process(&mut f, &mut st, &mut buf, &mut b);
        let units: Vec<String> = b
            .units
            .iter()
            .map(|u| match u {
                Unit::Event { line, quiet } => format!("event {line} {quiet}"),
                Unit::Batch { line, count, .. } => format!("batch {line} {count}"),
                Unit::Conflict { line, .. } | Unit::KeyConflict { line, .. } => {
                    format!("conflict {line}")
                }
                Unit::Flush { line } => format!("flush {line}"),
                Unit::Error { line, .. } => format!("error {line}"),
            })
            .collect();
        assert_eq!(
            units,
            [
                "event 1 false",
                "error 2",
                "event 4 true",
                "flush 6",
                "batch 7 2",
                "error 8",
                "error 9"
            ]
        );
        assert_eq!(b.ends.len(), 4);
        assert_eq!(
            b.ends.last(),
            Some(&b.data.len()),
            "refused events leave no bytes"
        );
        assert_eq!(b.rejected, 3);
    }

    #[test]
    fn acknowledgements_follow_units() {
        let done = Done {
            first_seq: 10,
            units: vec![
                Unit::Event {
                    line: 1,
                    quiet: false,
                },
                Unit::Error {
                    line: 2,
                    message: "bad".into(),
                },
                Unit::Event {
                    line: 3,
                    quiet: true,
                },
                Unit::Batch {
                    line: 4,
                    count: 2,
                    cond: None,
                },
                Unit::Flush { line: 5 },
                Unit::Flush { line: 6 },
            ],
            failed: None,
        };
        let mut out = Vec::new();
        format(done, &mut out, &mut FlushState::default());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                "{\"seq\":10,\"line\":1}\n",
                "{\"error\":\"bad\",\"line\":2}\n",
                "{\"seq\":12,\"last_seq\":13,\"line\":4}\n",
                "{\"flushed\":4,\"first_seq\":10,\"last_seq\":13,\"line\":5}\n",
                "{\"flushed\":0,\"line\":6}\n",
            )
        );
        let failed = Done {
            first_seq: 0,
            units: vec![Unit::Event {
                line: 1,
                quiet: true,
            }],
            failed: Some(Arc::from("fdatasync failed")),
        };
        let mut out = Vec::new();
        format(failed, &mut out, &mut FlushState::default());
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("not acknowledged: the append failed (fdatasync failed)")
        );
    }
}

/// The writer judges conditional batches in group order, against the conflict keys it appended.
#[cfg(test)]
mod group_tests {
    use std::sync::Arc;

    use tokio::sync::mpsc;

    use super::*;
    use crate::event::SourceKind;
    use crate::log::fs::FaultFs;
    use crate::log::{Log, LogOptions};

    const ADV: &str = r#"{"type":"IngestAdvanced","experiment_id":"exp-001","path":"a.jsonl","file_id":"1:2","offset":10,"line":1}"#;
    const EPOCH: &str = r#"{"type":"EpochEnded","experiment_id":"exp-001","epoch":1}"#;
    const ALERT: &str = r#"{"type":"AlertRaised","experiment_id":"exp-001","rule":"nan_inf","severity":"stop","observed":{"loss":NaN},"evidence_seqs":[4],"message":"NaN loss"}"#;

    /// Run one group made of one submission per entry of `conns` (each a connection's input),
    /// on a log whose next seq is 3; the response text of each connection.
    fn one_group(conns: &[String]) -> Vec<String> {
        let log = Log::open(
            Arc::new(FaultFs::new()),
            "/zo/log",
            LogOptions {
                lock_timeout: Duration::ZERO,
                ..LogOptions::default()
            },
        )
        .unwrap();
        let mut w = log.writer().unwrap();
        let ev = crate::event::NewEvent::now(
            Source::this_process(SourceKind::Cli),
            crate::event::json::parse_input_line(EPOCH).unwrap().payload,
        );
        w.append(&[codec::encode(&ev), codec::encode(&ev)]).unwrap();
        let (tx, rx) = mpsc::channel(conns.len());
        let mut acks = Vec::new();
        for input in conns {
            let mut st = ConnState {
                mode: AckMode::Each,
                source: Source::this_process(SourceKind::Trainer),
                max_line: 1 << 20,
                max_record: 1 << 20,
            };
            let mut b = Builder::default();
            let mut buf = input.clone().into_bytes();
            process(&mut Framer::new(1 << 20, 0), &mut st, &mut buf, &mut b);
            let (ack_tx, ack_rx) = mpsc::channel::<Done>(1);
            let sub = Submission {
                data: b.data,
                ends: b.ends,
                keys: b.keys,
                units: b.units,
                ack: Some(ack_tx.try_reserve_owned().unwrap()),
                budget: None,
            };
            tx.try_send(sub).unwrap();
            acks.push(ack_rx);
        }
        drop(tx);
        let stats = crate::serve::Stats::default();
        crate::serve::group::run(w, rx, usize::MAX, &stats, &|_| {}, &|| {}).unwrap();
        assert_eq!(stats.syncs.load(Ordering::Relaxed), 1, "one group");
        acks.into_iter()
            .map(|mut rx| {
                let mut out = Vec::new();
                format(rx.try_recv().unwrap(), &mut out, &mut FlushState::default());
                String::from_utf8(out).unwrap()
            })
            .collect()
    }

    #[test]
    fn key_conditions_are_judged_in_group_order() {
        let adv_key = r#"["ingest exp-001 a.jsonl"]"#;
        let alert_key = serde_json::to_string(&[crate::store::conflict_key(
            &crate::event::json::parse_input_line(ALERT).unwrap().payload,
        )
        .unwrap()])
        .unwrap();
        let got = one_group(&[
            // seq 3: an IngestAdvanced, unconditional (its key is remembered all the same).
            format!("{EPOCH}\n{ADV}\n"),
            // Since 4: the key is at seq 4 (placed earlier in this group): conflict.
            format!(r#"{{"batch":[{ADV}],"if_no_key_since":4,"keys":{adv_key}}}"#) + "\n",
            // Since 5: nothing of that key since; appended at 5 (and now the key is at 5).
            format!(r#"{{"batch":[{EPOCH},{ADV}],"if_no_key_since":5,"keys":{adv_key}}}"#) + "\n",
            // Before the server's start (3): it cannot tell, so a conflict.
            format!(r#"{{"batch":[{EPOCH}],"if_no_key_since":2,"keys":{alert_key}}}"#) + "\n",
            // Another key: unrelated appends never conflict. Appended at 7, the alert at 8.
            format!(r#"{{"batch":[{EPOCH},{ALERT}],"if_no_key_since":3,"keys":{alert_key}}}"#)
                + "\n",
            // The alert is now at 8: a second one since 8 conflicts, since 9 does not.
            format!(
                "{{\"batch\":[{ALERT}],\"if_no_key_since\":8,\"keys\":{alert_key}}}\n{{\"batch\":[{ALERT}],\"if_no_key_since\":9,\"keys\":{alert_key}}}\n"
            ),
        ]);
        assert_eq!(got[0], "{\"seq\":3,\"line\":1}\n{\"seq\":4,\"line\":2}\n");
        assert_eq!(
            got[1],
            "{\"error\":\"conflict: the event at seq 4 has key \\\"ingest exp-001 a.jsonl\\\"; nothing appended\",\"next_seq\":5,\"line\":1}\n"
        );
        assert_eq!(got[2], "{\"seq\":5,\"last_seq\":6,\"line\":1}\n");
        assert!(
            got[3].contains("started at seq 3") && got[3].contains("\"next_seq\":7"),
            "{}",
            got[3]
        );
        assert_eq!(got[4], "{\"seq\":7,\"last_seq\":8,\"line\":1}\n");
        let (a, b) = got[5].split_once('\n').unwrap();
        assert!(
            a.contains("conflict: the event at seq 8 has key") && a.contains("\"next_seq\":9"),
            "{a}"
        );
        assert_eq!(b, "{\"seq\":9,\"last_seq\":9,\"line\":2}\n");
    }

    /// One unit per event line: conditions and their conflicts are boxed so that the common unit
    /// stays as small as it was before they existed.
    #[test]
    fn a_unit_stays_small() {
        assert!(
            std::mem::size_of::<Unit>() <= 40,
            "{}",
            std::mem::size_of::<Unit>()
        );
    }

    #[test]
    fn keys_are_derived_for_the_events_that_have_them_only() {
        let mut st = ConnState {
            mode: AckMode::Each,
            source: Source::this_process(SourceKind::Trainer),
            max_line: 1 << 20,
            max_record: 300,
        };
        let big = format!(
            r#"{{"type":"NoteAdded","experiment_id":"exp-001","section":"next","text":"{}"}}"#,
            "x".repeat(400)
        );
        let input = format!(
            "{EPOCH}\n{ADV}\n{{\"batch\":[{EPOCH},{ALERT},{ADV}]}}\n{{\"batch\":[{ADV},{big}]}}\n{ALERT}\n"
        );
        let mut b = Builder::default();
        let mut buf = input.into_bytes();
        process(&mut Framer::new(1 << 20, 0), &mut st, &mut buf, &mut b);
        let keys: Vec<(usize, &str)> = b.keys.iter().map(|(i, k)| (*i, &k[..6])).collect();
        // Payloads: 0 epoch, 1 adv, 2 epoch, 3 alert, 4 adv; the refused batch leaves no key;
        // 5 alert.
        assert_eq!(
            keys,
            [(1, "ingest"), (3, "alert "), (4, "ingest"), (5, "alert ")]
        );
        assert_eq!(b.ends.len(), 6);
    }
}

//! The wire protocol of `zolog serve`: what one line means, and how responses are written.
//!
//! docs/serve.md is the contract. Everything here is a pure function of its input, so the
//! protocol is tested without sockets.
//!
//! Client → server, one request per LF-terminated line of at most `max_line` bytes:
//! ```text
//! AUTH <token>                TCP only, and only as the first line
//! <event>                     an envelope or a bare payload, as `zolog append` reads them
//! {"batch":[<event>, ...]}    an atomic batch: all of it is appended, in one log batch, or none
//! {"batch":[..],"if_next_seq":N}  the same, only if the log's next seq is still N when it is appended
//! {"batch":[..],"if_no_key_since":N,"keys":["k",..]}
//!                             the same, only if no event carrying one of these conflict keys has a
//!                             seq >= N when it is appended (N: the first seq the client had not read)
//! #flush                      a barrier: answered once every earlier event of the connection is durable
//! #acks each | #acks flush    acknowledge every event line (default), or only at #flush
//! #source {"kind":..,..}      the source recorded for later events that do not name one
//! ```
//! Server → client, one JSON object per line:
//! ```text
//! {"zolog":"0.1.0","protocol":1,"max_line":1048576,"pid":4242}   greeting (after AUTH on TCP)
//! {"seq":17,"line":3}                                           event on line 3 is durable
//! {"seq":18,"last_seq":20,"line":4}                             batch on line 4 is durable
//! {"flushed":3,"first_seq":18,"last_seq":21,"line":5}           #flush on line 5
//! {"error":"...","line":6}                                      line 6 was refused; nothing of it appended
//! {"error":"conflict: ...","next_seq":40,"line":7}              a conditional batch was not appended; the
//!                                                               log is at seq 40
//! {"error":"...","fatal":true}                                  the server closes this connection
//! {"bye":"server shutting down","line":9}                       the last line before a graceful close:
//!                                                               lines after line 9 were not read
//! ```
//!
//! Conflict keys (`if_no_key_since`): the server derives a key from each event it appends with
//! [`crate::store::conflict_key`] (`IngestAdvanced`: `ingest <exp> <path>`; `AlertRaised`:
//! `alert <exp> <severity> <trigger> "<rule>" <subject>`; every other event has none) and keeps the
//! last seq of each key it appended since it started. The batch is appended unless one of its
//! `keys` has a last seq >= N, counting batches placed before it in the same group. For N below
//! the seq the server started at, it cannot tell, so it answers a conflict with `next_seq`: a
//! client that reads the log on to there and retries sends an N the server can judge. The log
//! knows nothing of keys; they are in the server's memory only.

use std::io::Write;

use serde::Deserialize;

use crate::event::json::{self, InputEvent, LineError};
use crate::event::{NewEvent, Payload, Source, Timestamp};

/// Version of this protocol, sent in the greeting.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest line the server reads by default: 1 MiB.
pub const DEFAULT_MAX_LINE: usize = 1 << 20;
/// Longest `AUTH` line.
pub const MAX_AUTH_LINE: usize = 4096;
/// The name of the socket inside the store directory.
pub const SOCKET_NAME: &str = "serve.sock";

/// How a connection acknowledges plain event lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// One acknowledgement per event line (the default).
    Each,
    /// Event lines are acknowledged together by the next `#flush`; errors are still reported per
    /// line.
    Flush,
}

/// What one line asks the server to do.
// `Event` is the common case by far: boxing it would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Request {
    /// A blank line: ignored, no response.
    Blank,
    Event(InputEvent),
    /// Events, and the condition for them to be appended.
    Batch(Vec<InputEvent>, Option<Cond>),
    Flush,
    Acks(AckMode),
    Source(Source),
}

/// The condition of a conditional batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// `if_next_seq`: the batch's first event must get this seq.
    NextSeq(u64),
    /// `if_no_key_since` + `keys`: no event carrying one of `keys` may have a seq >= `since`.
    NoKeySince { since: u64, keys: Vec<String> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchIn {
    /// Raw, so each item is parsed from its own text: a `serde_json::Value` would sort object
    /// keys, and the order of a `Metrics` object is meaningful (an alert's subject is its first
    /// observed value).
    batch: Vec<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    if_next_seq: Option<u64>,
    #[serde(default)]
    if_no_key_since: Option<u64>,
    #[serde(default)]
    keys: Option<Vec<String>>,
}

impl BatchIn {
    fn cond(&mut self) -> Result<Option<Cond>, String> {
        match (self.if_next_seq, self.if_no_key_since, self.keys.take()) {
            (None, None, None) => Ok(None),
            (Some(n), None, None) => Ok(Some(Cond::NextSeq(n))),
            (None, Some(since), Some(keys)) if !keys.is_empty() => {
                Ok(Some(Cond::NoKeySince { since, keys }))
            }
            (None, Some(_), _) => Err("if_no_key_since needs a non-empty \"keys\" list".into()),
            (None, None, Some(_)) => Err("\"keys\" needs \"if_no_key_since\"".into()),
            (Some(_), _, _) => {
                Err("a batch takes one condition: if_next_seq, or if_no_key_since with keys".into())
            }
        }
    }
}

fn line_error(e: LineError) -> String {
    // serde_json's syntax errors already name the column.
    e.message
}

/// Whether the line is a JSON object whose first key is `batch`.
fn is_batch(text: &str) -> bool {
    text.strip_prefix('{')
        .map(|rest| rest.trim_start().starts_with("\"batch\""))
        .unwrap_or(false)
}

/// Parse one line (without its newline) into a request, or say why it is refused.
pub fn parse_line(line: &str) -> Result<Request, String> {
    let text = line.trim_end_matches('\r').trim();
    if text.is_empty() {
        return Ok(Request::Blank);
    }
    if let Some(cmd) = text.strip_prefix('#') {
        let (word, rest) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
        let rest = rest.trim();
        return match (word, rest) {
            ("flush", "") => Ok(Request::Flush),
            ("acks", "each") => Ok(Request::Acks(AckMode::Each)),
            ("acks", "flush") => Ok(Request::Acks(AckMode::Flush)),
            ("acks", other) => Err(format!(
                "unknown ack mode {other:?}: expected `#acks each` or `#acks flush`"
            )),
            ("source", json) => serde_json::from_str::<Source>(json)
                .map(Request::Source)
                .map_err(|e| format!("#source: {e}")),
            _ => Err(format!(
                "unknown command {text:?}: commands are #flush, #acks each|flush, #source {{...}}"
            )),
        };
    }
    if text.starts_with("AUTH ") {
        return Err("AUTH is only accepted as the first line of a TCP connection".into());
    }
    if is_batch(text) {
        let norm = json::normalize_nonfinite(text);
        let mut b: BatchIn = serde_json::from_str(&norm).map_err(|e| {
            format!("malformed batch (expected {{\"batch\":[event, ...]}}, optionally with \"if_next_seq\" or \"if_no_key_since\" and \"keys\"): {e}")
        })?;
        let cond = b.cond()?;
        if b.batch.is_empty() {
            return Err("empty batch".into());
        }
        let mut events = Vec::with_capacity(b.batch.len());
        for (i, item) in b.batch.iter().enumerate() {
            let ev = json::parse_input_line(item.get())
                .map_err(|e| format!("batch item {i}: {}; nothing appended", line_error(e)))?;
            events.push(ev);
        }
        return Ok(Request::Batch(events, cond));
    }
    // A line that parses as JSON has no bare NaN/Infinity tokens, so normalizing can wait until
    // the fast path fails.
    let fast = fast_payload(text).or_else(|| match json::normalize_nonfinite(text) {
        std::borrow::Cow::Owned(norm) => fast_payload(&norm),
        std::borrow::Cow::Borrowed(_) => None,
    });
    if let Some(payload) = fast {
        return Ok(Request::Event(InputEvent {
            time: None,
            source: None,
            payload,
        }));
    }
    json::parse_input_line(text)
        .map(Request::Event)
        .map_err(line_error)
}

/// Skip JSON whitespace.
fn ws(s: &str) -> &str {
    s.trim_start_matches([' ', '\t', '\n', '\r'])
}

/// The fast path for the common shape, a bare payload whose first key is `type` (what zolog and
/// Python's `json.dumps` of a dict built in that order write): deserialize the variant's struct
/// directly instead of buffering the object as serde's internally tagged enums do (the bulk of
/// the parsing cost). Only a success is trusted; anything else takes the general path, which
/// also explains errors. `text` has had its bare NaN/Infinity tokens normalized.
fn fast_payload(text: &str) -> Option<Payload> {
    let rest = ws(ws(text).strip_prefix('{')?).strip_prefix("\"type\"")?;
    let rest = ws(ws(rest).strip_prefix(':')?).strip_prefix('"')?;
    let end = rest.find(['"', '\\'])?;
    let (kind, rest) = (&rest[..end], rest[end..].strip_prefix('"')?);
    let rest = ws(rest);
    let body = if let Some(fields) = rest.strip_prefix(',') {
        let mut b = String::with_capacity(fields.len() + 1);
        b.push('{');
        b.push_str(fields);
        b
    } else if ws(rest.strip_prefix('}')?).is_empty() {
        "{}".to_owned()
    } else {
        return None;
    };
    macro_rules! by_kind {
        ($($v:ident),* $(,)?) => {
            match kind {
                $(stringify!($v) => serde_json::from_str(&body).ok().map(Payload::$v),)*
                _ => None,
            }
        };
    }
    crate::with_payload_kinds!(by_kind)
}

/// Give an input event its times and source: the server's clock reading `now` (one reading per
/// chunk of lines) stands in for `Timestamp::now()`.
pub fn to_new_event(ev: InputEvent, default_source: &Source, now: Timestamp) -> NewEvent {
    let source = ev.source.unwrap_or_else(|| default_source.clone());
    match ev.time {
        Some(t) => NewEvent {
            time: t,
            appended: (t != now).then_some(now),
            source,
            payload: ev.payload,
        },
        None => NewEvent {
            time: now,
            appended: None,
            source,
            payload: ev.payload,
        },
    }
}

/// The first line the server sends on a connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Greeting {
    /// The server's version.
    pub zolog: String,
    pub protocol: u32,
    pub max_line: usize,
    pub pid: u32,
}

impl Greeting {
    pub fn line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("a greeting always serializes");
        v.push(b'\n');
        v
    }
}

/// Any line the server sends after the greeting, as a client reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Response {
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub first_seq: Option<u64>,
    #[serde(default)]
    pub last_seq: Option<u64>,
    #[serde(default)]
    pub flushed: Option<u64>,
    #[serde(default)]
    pub line: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub fatal: bool,
    #[serde(default)]
    pub bye: Option<String>,
    /// With a conflict error: the seq the log was at.
    #[serde(default)]
    pub next_seq: Option<u64>,
}

impl Response {
    pub fn parse(line: &str) -> Result<Response, String> {
        serde_json::from_str(line.trim_end())
            .map_err(|e| format!("unexpected response from zolog serve {line:?}: {e}"))
    }
}

// Writers of response lines. `write!` into a Vec cannot fail.

/// `{"seq":S,"line":L}`
pub fn write_ack(out: &mut Vec<u8>, seq: u64, line: u64) {
    let _ = writeln!(out, "{{\"seq\":{seq},\"line\":{line}}}");
}

/// `{"seq":F,"last_seq":T,"line":L}`
pub fn write_batch_ack(out: &mut Vec<u8>, first: u64, last: u64, line: u64) {
    let _ = writeln!(
        out,
        "{{\"seq\":{first},\"last_seq\":{last},\"line\":{line}}}"
    );
}

/// `{"flushed":K,"first_seq":A,"last_seq":B,"line":L}` (no range when K is 0).
pub fn write_flush_ack(out: &mut Vec<u8>, count: u64, range: Option<(u64, u64)>, line: u64) {
    match range {
        Some((a, b)) if count > 0 => {
            let _ = writeln!(
                out,
                "{{\"flushed\":{count},\"first_seq\":{a},\"last_seq\":{b},\"line\":{line}}}"
            );
        }
        _ => {
            let _ = writeln!(out, "{{\"flushed\":0,\"line\":{line}}}");
        }
    }
}

/// `{"error":"...","line":L}`, or `{"error":"...","fatal":true}` when the connection closes.
pub fn write_error(out: &mut Vec<u8>, message: &str, line: Option<u64>, fatal: bool) {
    let msg = serde_json::to_string(message).expect("strings serialize");
    let _ = write!(out, "{{\"error\":{msg}");
    if let Some(l) = line {
        let _ = write!(out, ",\"line\":{l}");
    }
    if fatal {
        out.extend_from_slice(b",\"fatal\":true");
    }
    out.extend_from_slice(b"}\n");
}

/// `{"error":"conflict: ...","next_seq":M,"line":L}`
pub fn write_conflict(out: &mut Vec<u8>, expected: u64, actual: u64, line: u64) {
    let _ = writeln!(
        out,
        "{{\"error\":\"conflict: the batch was to be appended at seq {expected}, but the log is at seq {actual}; nothing appended\",\"next_seq\":{actual},\"line\":{line}}}"
    );
}

/// `{"error":"conflict: <reason>; nothing appended","next_seq":M,"line":L}` for an
/// `if_no_key_since` batch.
pub fn write_key_conflict(out: &mut Vec<u8>, reason: &str, actual: u64, line: u64) {
    let msg = serde_json::to_string(&format!("conflict: {reason}; nothing appended"))
        .expect("strings serialize");
    let _ = writeln!(
        out,
        "{{\"error\":{msg},\"next_seq\":{actual},\"line\":{line}}}"
    );
}

/// `{"bye":"...","line":L}`: L is the last line the server read; nothing after it was read.
pub fn write_bye(out: &mut Vec<u8>, reason: &str, last_line_read: u64) {
    let r = serde_json::to_string(reason).expect("strings serialize");
    let _ = writeln!(out, "{{\"bye\":{r},\"line\":{last_line_read}}}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::SourceKind;

    /// The fast path agrees with the general parser on every line it accepts, and leaves every
    /// line the general parser refuses to it.
    #[test]
    fn fast_path_agrees_with_the_general_parser() {
        let lines = [
            EPOCH,
            r#"{"type": "EpochEnded", "experiment_id": "exp-001", "epoch": 3, "metrics": {"loss": NaN, "acc": Infinity, "x": -Infinity}, "learning_rate": null}"#,
            r#" { "type" : "EpochEnded" , "experiment_id":"exp-001","epoch":3,"step":7,"metrics":{"a":1,"b":2.5e-3}}"#,
            r#"{"type":"ProjectInitialized","project":"p"}"#,
            r#"{"type":"TrainingEnded","experiment_id":"exp-002"}"#,
            r#"{"type":"TrainingStarted","experiment_id":"exp-002","total_epochs":10,"config":{"lr":0.1,"nested":[1,{"a":null}]}}"#,
            r#"{"type":"CheckpointSaved","experiment_id":"exp-002","path":"m/last.pt","reason":"last","epoch":4}"#,
            r#"{"type":"ResultRecorded","experiment_id":"exp-002","oracle_tier":"must_pass","primary_metric":{"name":"acc","value":0.9},"evaluated_at":"2026-11-24T09:50:05.866809+00:00"}"#,
            r#"{"type":"AlertRaised","experiment_id":"exp-001","rule":"nan","severity":"stop","message":"NaN loss","observed":{"loss":NaN}}"#,
            r#"{"type":"NoteAdded","experiment_id":"exp-001","section":"what-happened","text":"a "quoted" NaN"}"#,
            // Refused by both.
            r#"{"type":"EpochEnded","experiment_id":"exp-001"}"#,
            r#"{"type":"EpochEnded","experiment_id":"exp-001","epoch":1,"lr":1}"#,
            r#"{"type":"EpochEnded","type":"EpochEnded","experiment_id":"exp-001","epoch":1}"#,
            r#"{"type":"EpochEnded","experiment_id":"../x","epoch":1}"#,
            r#"{"type":"EpochEnded","experiment_id":"exp-001","epoch":-1}"#,
            r#"{"type":"EpochEnded","experiment_id":"exp-001","epoch":1.5}"#,
            r#"{"type":"EpochEnded","experiment_id":"exp-001","epoch":1,"metrics":{"l":"abc"}}"#,
            r#"{"type":"EpochEnded","experiment_id":"exp-001","epoch":1} trailing"#,
            r#"{"type":"EpochEnded","experiment_id":"exp-001","epoch":1}"#,
            r#"{"type":"Nope","x":1}"#,
            r#"{"type":"ProjectInitialized"}"#,
            r#"{"type":"ProjectInitialized","project":"p"},"#,
        ];
        for line in lines {
            let general = json::parse_input_line(line).map(|e| e.payload);
            let fast = fast_payload(&json::normalize_nonfinite(line));
            match (&general, &fast) {
                (Ok(g), Some(f)) => assert_eq!(format!("{g:?}"), format!("{f:?}"), "{line}"),
                (Err(_), Some(f)) => {
                    panic!("fast path accepted what the general one refuses: {line} → {f:?}")
                }
                (_, None) => {}
            }
            // And the whole request agrees.
            assert_eq!(
                general.is_ok(),
                matches!(parse_line(line), Ok(Request::Event(_))),
                "{line}"
            );
        }
        // The common shapes do take the fast path.
        assert!(
            fast_payload(EPOCH).is_none(),
            "bare NaN must be normalized first"
        );
        assert!(fast_payload(&json::normalize_nonfinite(EPOCH)).is_some());
        assert!(fast_payload(&json::normalize_nonfinite(lines[1])).is_some());
    }

    const EPOCH: &str =
        r#"{"type":"EpochEnded","experiment_id":"exp-001","epoch":3,"metrics":{"loss":NaN}}"#;

    fn kind(line: &str) -> String {
        match parse_line(line) {
            Ok(Request::Blank) => "blank".into(),
            Ok(Request::Event(e)) => format!("event {}", e.payload.kind()),
            Ok(Request::Batch(b, None)) => format!("batch {}", b.len()),
            Ok(Request::Batch(b, Some(Cond::NextSeq(n)))) => format!("batch {} if {n}", b.len()),
            Ok(Request::Batch(b, Some(Cond::NoKeySince { since, keys }))) => {
                format!("batch {} unless {keys:?} since {since}", b.len())
            }
            Ok(Request::Flush) => "flush".into(),
            Ok(Request::Acks(m)) => format!("acks {m:?}"),
            Ok(Request::Source(s)) => format!("source {}", s.kind),
            Err(e) => format!("error {e}"),
        }
    }

    #[test]
    fn each_line_form_is_recognised() {
        let cases: &[(&str, &str)] = &[
            ("", "blank"),
            ("  \r", "blank"),
            (EPOCH, "event EpochEnded"),
            (&format!("{EPOCH}\r"), "event EpochEnded"),
            (
                r#"{"time":"2026-11-24T09:50:05Z","payload":{"type":"ProjectInitialized","project":"p"}}"#,
                "event ProjectInitialized",
            ),
            (&format!(r#"{{"batch":[{EPOCH},{EPOCH}]}}"#), "batch 2"),
            (&format!(r#"{{ "batch" : [{EPOCH}] }}"#), "batch 1"),
            (
                &format!(r#"{{"batch":[{EPOCH}],"if_next_seq":40}}"#),
                "batch 1 if 40",
            ),
            (
                &format!(
                    r#"{{"batch":[{EPOCH}],"if_no_key_since":7,"keys":["ingest exp-001 m.jsonl","k2"]}}"#
                ),
                r#"batch 1 unless ["ingest exp-001 m.jsonl", "k2"] since 7"#,
            ),
            (
                &format!(r#"{{"batch":[{EPOCH}],"keys":["a"],"if_no_key_since":0}}"#),
                r#"batch 1 unless ["a"] since 0"#,
            ),
            ("#flush", "flush"),
            ("#acks each", "acks Each"),
            ("#acks   flush", "acks Flush"),
            (r#"#source {"kind":"checker","pid":7}"#, "source checker"),
        ];
        for (line, want) in cases {
            assert_eq!(kind(line), *want, "{line:?}");
        }
    }

    #[test]
    fn bad_lines_say_why() {
        let cases: &[(&str, &str)] = &[
            ("{not json", "malformed JSON"),
            (r#"{"type":"EpochEnded"}"#, "experiment_id"),
            ("#acks sometimes", "unknown ack mode"),
            ("#frobnicate", "unknown command"),
            ("#source {}", "#source"),
            ("AUTH secret", "first line of a TCP"),
            (r#"{"batch":[]}"#, "empty batch"),
            (r#"{"batch":[{"type":"Nope"}]}"#, "batch item 0"),
            (
                &format!(r#"{{"batch":[{EPOCH}],"x":1}}"#),
                "malformed batch",
            ),
            (
                &format!(r#"{{"batch":[{EPOCH}],"if_no_key_since":3}}"#),
                "non-empty \"keys\"",
            ),
            (
                &format!(r#"{{"batch":[{EPOCH}],"if_no_key_since":3,"keys":[]}}"#),
                "non-empty \"keys\"",
            ),
            (
                &format!(r#"{{"batch":[{EPOCH}],"keys":["a"]}}"#),
                "needs \"if_no_key_since\"",
            ),
            (
                &format!(
                    r#"{{"batch":[{EPOCH}],"if_next_seq":3,"if_no_key_since":3,"keys":["a"]}}"#
                ),
                "one condition",
            ),
            (
                &format!(r#"{{"batch":[{EPOCH}],"if_no_key_since":3,"keys":"a"}}"#),
                "malformed batch",
            ),
            (
                &format!(r#"{{"batch":[{EPOCH}],"if_no_key_since":-1,"keys":["a"]}}"#),
                "malformed batch",
            ),
        ];
        for (line, want) in cases {
            let got = kind(line);
            assert!(
                got.starts_with("error") && got.contains(want),
                "{line:?}: {got}"
            );
        }
    }

    /// Regression: batch items went through `serde_json::Value`, which sorts object keys, so an
    /// alert appended through a server lost its subject (the first observed value) and watchers
    /// no longer recognised it, appending it again.
    #[test]
    fn a_batch_keeps_the_order_of_metrics() {
        let alert = r#"{"type":"AlertRaised","experiment_id":"exp-001","rule":"divergence.spike","severity":"warn","observed":{"train_loss":9,"previous":1.5,"a":NaN},"message":"m"}"#;
        for line in [
            alert.to_owned(),
            format!(r#"{{"batch":[{alert},{{"payload":{alert}}}]}}"#),
        ] {
            let events = match parse_line(&line) {
                Ok(Request::Event(e)) => vec![e],
                Ok(Request::Batch(b, None)) => b,
                other => panic!("{other:?}"),
            };
            for e in events {
                let Payload::AlertRaised(a) = &e.payload else {
                    panic!("wrong kind")
                };
                let names: Vec<&str> = a.observed.0.iter().map(|(k, _)| k.as_str()).collect();
                assert_eq!(names, ["train_loss", "previous", "a"], "{line}");
            }
        }
    }

    #[test]
    fn nan_survives_a_batch() {
        let Ok(Request::Batch(b, _)) = parse_line(&format!(r#"{{"batch":[{EPOCH}]}}"#)) else {
            panic!("not a batch")
        };
        let Payload::EpochEnded(e) = &b[0].payload else {
            panic!("wrong kind")
        };
        assert!(e.metrics.get("loss").unwrap().is_nan());
    }

    #[test]
    fn events_get_the_connection_source_and_times() {
        let src = Source {
            kind: SourceKind::Trainer,
            pid: Some(1),
            host: None,
        };
        let now = Timestamp(5_000);
        let Ok(Request::Event(ev)) = parse_line(EPOCH) else {
            panic!()
        };
        let ne = to_new_event(ev, &src, now);
        assert_eq!((ne.time, ne.appended, &ne.source), (now, None, &src));
        let Ok(Request::Event(ev)) = parse_line(
            r#"{"time":"1970-01-01T00:00:00.000001Z","source":{"kind":"agent"},"payload":{"type":"ProjectInitialized","project":"p"}}"#,
        ) else {
            panic!()
        };
        let ne = to_new_event(ev, &src, now);
        assert_eq!(ne.time, Timestamp(1_000));
        assert_eq!(ne.appended, Some(now));
        assert_eq!(ne.source.kind, SourceKind::Agent);
    }

    #[test]
    fn responses_round_trip() {
        let mut out = Vec::new();
        write_ack(&mut out, 17, 3);
        write_batch_ack(&mut out, 18, 20, 4);
        write_flush_ack(&mut out, 3, Some((18, 21)), 5);
        write_flush_ack(&mut out, 0, None, 6);
        write_error(&mut out, "bad \"quote\"\n", Some(7), false);
        write_error(&mut out, "too many", None, true);
        write_bye(&mut out, "server shutting down", 9);
        write_conflict(&mut out, 40, 42, 10);
        write_key_conflict(
            &mut out,
            "the event at seq 41 has key \"alert \\\"x\\\"\"",
            43,
            11,
        );
        let text = String::from_utf8(out).unwrap();
        let r: Vec<Response> = text.lines().map(|l| Response::parse(l).unwrap()).collect();
        assert_eq!((r[0].seq, r[0].line), (Some(17), Some(3)));
        assert_eq!((r[1].seq, r[1].last_seq), (Some(18), Some(20)));
        assert_eq!(
            (r[2].flushed, r[2].first_seq, r[2].last_seq),
            (Some(3), Some(18), Some(21))
        );
        assert_eq!((r[3].flushed, r[3].first_seq), (Some(0), None));
        assert_eq!(r[4].error.as_deref(), Some("bad \"quote\"\n"));
        assert!(r[5].fatal && r[5].line.is_none());
        assert_eq!(r[6].bye.as_deref(), Some("server shutting down"));
        assert_eq!(r[6].line, Some(9));
        assert!(r[7].error.as_deref().unwrap().starts_with("conflict"));
        assert_eq!((r[7].next_seq, r[7].line), (Some(42), Some(10)));
        assert_eq!(
            r[8].error.as_deref(),
            Some(r#"conflict: the event at seq 41 has key "alert \"x\""; nothing appended"#)
        );
        assert_eq!((r[8].next_seq, r[8].line), (Some(43), Some(11)));
    }
}

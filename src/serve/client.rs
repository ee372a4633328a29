//! A blocking client of `zolog serve` (standard library sockets, no runtime): what `Store::append`
//! and `zolog append` use while a server holds the writer lock.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::protocol::{Greeting, Response};
use crate::event::{NewEvent, Payload, Source, Timestamp};
use crate::log::Appended;

/// How long a client waits for the greeting, and for each acknowledgement.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines a client sends ahead of their acknowledgements when it splits a chunk.
const WINDOW: usize = 8;

/// Why talking to a server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("cannot reach zolog serve at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    #[error("zolog serve at {endpoint} refused the connection: {message}")]
    Refused { endpoint: String, message: String },
    #[error("zolog serve rejected line {line}: {message}")]
    Rejected {
        line: u64,
        message: String,
        /// With a conflict: the seq the log was at.
        next_seq: Option<u64>,
    },
    /// A conditional append found the log at another seq; nothing was appended.
    #[error("the log moved on: the batch was for seq {expected}, the log is at seq {actual}")]
    Conflict { expected: u64, actual: u64 },
    /// An `if_no_key_since` append found one of its keys since `since` (or a server that cannot
    /// tell); nothing was appended.
    #[error("conflict since seq {since} (the log is at seq {next_seq}): {reason}")]
    KeyConflict {
        since: u64,
        next_seq: u64,
        reason: String,
    },
    /// The server stopped before reading the rest: the first `appended` events were appended,
    /// the others were not.
    #[error(
        "zolog serve at {endpoint} shut down after appending {appended} event(s) of the request; the rest was not appended"
    )]
    ShutDown {
        endpoint: String,
        appended: usize,
        /// Seq of the first event appended, when `appended > 0`.
        first_seq: Option<u64>,
    },
    #[error(
        "lost zolog serve at {endpoint} before the acknowledgement ({detail}); the batch may or may not be in the log (check with `zolog log`)"
    )]
    Lost { endpoint: String, detail: String },
    #[error(
        "one event of {bytes} bytes is over the server's line limit of {max} bytes (raise `zolog serve --max-line`)"
    )]
    EventTooLarge { bytes: usize, max: usize },
    #[error(
        "an atomic batch of {bytes} bytes is over the server's line limit of {max} bytes; split the input, or raise `zolog serve --max-line`"
    )]
    BatchTooLarge { bytes: usize, max: usize },
    #[error("unexpected response from zolog serve at {endpoint}: {detail}")]
    Protocol { endpoint: String, detail: String },
}

/// The condition of a conditional batch (docs/serve.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition<'a> {
    /// `if_next_seq`: only if the batch's first event gets this seq.
    NextSeq(u64),
    /// `if_no_key_since` with `keys`: only if no event carrying one of `keys` has a seq at or
    /// after `since`.
    NoKeySince { since: u64, keys: &'a [String] },
}

/// The JSON envelope a `NewEvent` travels in.
#[derive(Serialize)]
struct EnvelopeOut<'a> {
    time: &'a Timestamp,
    source: &'a Source,
    payload: &'a Payload,
}

/// One event as an envelope line (no newline).
pub fn envelope(ev: &NewEvent) -> String {
    serde_json::to_string(&EnvelopeOut {
        time: &ev.time,
        source: &ev.source,
        payload: &ev.payload,
    })
    .expect("events always serialize")
}

/// A connection to a server.
pub struct Client {
    reader: BufReader<Box<dyn Read + Send>>,
    writer: BufWriter<Box<dyn Write + Send>>,
    greeting: Greeting,
    endpoint: String,
    /// Lines sent so far.
    sent: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("greeting", &self.greeting)
            .finish()
    }
}

impl Client {
    /// Connect to the Unix socket at `path`.
    pub fn connect_unix(path: &Path, timeout: Duration) -> Result<Client, ServeError> {
        let endpoint = path.display().to_string();
        let connect = |source| ServeError::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let s = UnixStream::connect(path).map_err(connect)?;
        s.set_read_timeout(Some(timeout)).map_err(connect)?;
        let r = s.try_clone().map_err(connect)?;
        Self::handshake(Box::new(r), Box::new(s), endpoint.clone(), None)
    }

    /// Connect to a server's TCP port and authenticate with `token`.
    pub fn connect_tcp(
        addr: SocketAddr,
        token: &str,
        timeout: Duration,
    ) -> Result<Client, ServeError> {
        let endpoint = addr.to_string();
        let connect = |source| ServeError::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let s = TcpStream::connect_timeout(&addr, timeout).map_err(connect)?;
        s.set_read_timeout(Some(timeout)).map_err(connect)?;
        let _ = s.set_nodelay(true);
        let r = s.try_clone().map_err(connect)?;
        Self::handshake(Box::new(r), Box::new(s), endpoint.clone(), Some(token))
    }

    fn handshake(
        r: Box<dyn Read + Send>,
        w: Box<dyn Write + Send>,
        endpoint: String,
        token: Option<&str>,
    ) -> Result<Client, ServeError> {
        let mut c = Client {
            reader: BufReader::new(r),
            writer: BufWriter::with_capacity(1 << 16, w),
            greeting: Greeting {
                zolog: String::new(),
                protocol: 0,
                max_line: 0,
                pid: 0,
            },
            endpoint,
            sent: 0,
        };
        if let Some(t) = token {
            c.send_line(&format!("AUTH {t}"))?;
            c.flush()?;
        }
        let line = c.read_line()?.ok_or_else(|| ServeError::Refused {
            endpoint: c.endpoint.clone(),
            message: "closed the connection without a greeting".into(),
        })?;
        match serde_json::from_str::<Greeting>(&line) {
            Ok(g) => c.greeting = g,
            Err(_) => {
                let r = Response::parse(&line).map_err(|detail| c.protocol(detail))?;
                return Err(ServeError::Refused {
                    endpoint: c.endpoint.clone(),
                    message: r.error.unwrap_or(line),
                });
            }
        }
        Ok(c)
    }

    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    fn protocol(&self, detail: String) -> ServeError {
        ServeError::Protocol {
            endpoint: self.endpoint.clone(),
            detail,
        }
    }

    fn lost(&self, detail: impl std::fmt::Display) -> ServeError {
        ServeError::Lost {
            endpoint: self.endpoint.clone(),
            detail: detail.to_string(),
        }
    }

    fn send_line(&mut self, line: &str) -> Result<(), ServeError> {
        self.sent += 1;
        self.writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.write_all(b"\n"))
            .map_err(|e| self.lost(format!("write: {e}")))
    }

    fn flush(&mut self) -> Result<(), ServeError> {
        self.writer
            .flush()
            .map_err(|e| self.lost(format!("write: {e}")))
    }

    fn read_line(&mut self) -> Result<Option<String>, ServeError> {
        let mut s = String::new();
        match self.reader.read_line(&mut s) {
            Ok(0) => Ok(None),
            Ok(_) if s.ends_with('\n') => Ok(Some(s)),
            Ok(_) => Err(self.lost("connection closed mid-response")),
            Err(e) => Err(self.lost(format!("read: {e}"))),
        }
    }

    /// Read the response to line `line`: its acknowledgement as (first, last) seq.
    fn response_to(&mut self, line: u64) -> Result<(u64, u64), ServeError> {
        loop {
            let Some(text) = self.read_line()? else {
                return Err(self.lost("connection closed"));
            };
            let r = Response::parse(&text).map_err(|d| self.protocol(d))?;
            if r.bye.is_some() {
                return Err(ServeError::ShutDown {
                    endpoint: self.endpoint.clone(),
                    appended: 0,
                    first_seq: None,
                });
            }
            if let Some(message) = r.error {
                if r.line == Some(line) {
                    return Err(ServeError::Rejected {
                        line,
                        message,
                        next_seq: r.next_seq,
                    });
                }
                if r.fatal || r.line.is_none() {
                    return Err(self.lost(message));
                }
                continue;
            }
            if r.line == Some(line)
                && let Some(seq) = r.seq
            {
                return Ok((seq, r.last_seq.unwrap_or(seq)));
            }
        }
    }

    /// Append `events` as one atomic batch (one `{"batch":[..]}` line).
    pub fn append(&mut self, events: &[NewEvent]) -> Result<Appended, ServeError> {
        let envs: Vec<String> = events.iter().map(envelope).collect();
        self.append_envelopes(&envs, None)
    }

    /// Append envelope lines (see [`envelope`]) as one atomic batch; with a condition, only if
    /// it holds when the batch is appended (else [`ServeError::Conflict`] or
    /// [`ServeError::KeyConflict`]).
    pub fn append_envelopes(
        &mut self,
        envelopes: &[String],
        cond: Option<Condition<'_>>,
    ) -> Result<Appended, ServeError> {
        let mut line = batch_line(envelopes.iter().map(String::as_str));
        match cond {
            None => {}
            Some(Condition::NextSeq(n)) => {
                line.truncate(line.len() - 1);
                line.push_str(&format!(",\"if_next_seq\":{n}}}"));
            }
            Some(Condition::NoKeySince { since, keys }) => {
                line.truncate(line.len() - 1);
                line.push_str(&format!(",\"if_no_key_since\":{since},\"keys\":"));
                line.push_str(&serde_json::to_string(keys).expect("strings serialize"));
                line.push('}');
            }
        }
        if line.len() > self.greeting.max_line {
            return Err(ServeError::BatchTooLarge {
                bytes: line.len(),
                max: self.greeting.max_line,
            });
        }
        let (first, last, _) = match (self.pipeline(&[(line, envelopes.len())]), cond) {
            (
                Err(ServeError::Rejected {
                    next_seq: Some(actual),
                    ..
                }),
                Some(Condition::NextSeq(expected)),
            ) => return Err(ServeError::Conflict { expected, actual }),
            (
                Err(ServeError::Rejected {
                    next_seq: Some(next_seq),
                    message,
                    ..
                }),
                Some(Condition::NoKeySince { since, .. }),
            ) => {
                let reason = message
                    .strip_prefix("conflict: ")
                    .unwrap_or(&message)
                    .trim_end_matches("; nothing appended")
                    .to_owned();
                return Err(ServeError::KeyConflict {
                    since,
                    next_seq,
                    reason,
                });
            }
            (r, _) => r?,
        };
        Ok(Appended {
            first_seq: first,
            last_seq: last,
        })
    }

    /// Append `events`, split into batches that fit the server's line limit, several in flight
    /// at once. Each batch is atomic; the whole is not. Returns the first and last seq given
    /// (other clients' events may lie between them).
    pub fn append_split(&mut self, events: &[NewEvent]) -> Result<Appended, ServeError> {
        let envs: Vec<String> = events.iter().map(envelope).collect();
        self.append_split_envelopes(&envs)
    }

    /// [`Client::append_split`] for envelope lines.
    pub fn append_split_envelopes(&mut self, envelopes: &[String]) -> Result<Appended, ServeError> {
        let max = self.greeting.max_line;
        let target = max.min(512 * 1024);
        let mut lines: Vec<(String, usize)> = Vec::new();
        let mut cur: Vec<&str> = Vec::new();
        let mut cur_len = 0;
        for e in envelopes {
            if e.len() + 12 > max {
                return Err(ServeError::EventTooLarge {
                    bytes: e.len(),
                    max,
                });
            }
            if !cur.is_empty() && cur_len + e.len() + 12 > target {
                let n = cur.len();
                lines.push((batch_line(cur.drain(..)), n));
                cur_len = 0;
            }
            cur_len += e.len() + 1;
            cur.push(e);
        }
        if !cur.is_empty() {
            let n = cur.len();
            lines.push((batch_line(cur.drain(..)), n));
        }
        let (first, last, _) = self.pipeline(&lines)?;
        Ok(Appended {
            first_seq: first,
            last_seq: last,
        })
    }

    /// Send batch lines (each with its event count), up to [`WINDOW`] ahead of their
    /// acknowledgements. Returns (first seq, last seq, events appended). When the server shuts
    /// down part way, the error says how many events (a prefix) were appended.
    fn pipeline(&mut self, lines: &[(String, usize)]) -> Result<(u64, u64, usize), ServeError> {
        let mut first = None;
        let mut last = 0;
        let mut appended = 0;
        let mut pending: std::collections::VecDeque<(u64, usize)> = Default::default();
        let mut send_failed = None;
        for (l, count) in lines {
            if pending.len() >= WINDOW {
                let r = self.flush();
                if let Err(e) = r {
                    send_failed = Some(e);
                    break;
                }
                let (n, c) = pending.pop_front().expect("non-empty");
                let (a, b) = self.outcome(n, appended, first)?;
                first.get_or_insert(a);
                last = b;
                appended += c;
            }
            if let Err(e) = self.send_line(l) {
                send_failed = Some(e);
                break;
            }
            pending.push_back((self.sent, *count));
        }
        if send_failed.is_none()
            && let Err(e) = self.flush()
        {
            send_failed = Some(e);
        }
        while let Some((n, c)) = pending.pop_front() {
            match self.outcome(n, appended, first) {
                Ok((a, b)) => {
                    first.get_or_insert(a);
                    last = b;
                    appended += c;
                }
                // The server's own account (a shutdown) beats our failed write.
                Err(e @ ServeError::ShutDown { .. }) => return Err(e),
                Err(e) => return Err(send_failed.unwrap_or(e)),
            }
        }
        if let Some(e) = send_failed {
            // Every line the server read was acknowledged; did it say why it stopped reading?
            return match self.read_line() {
                Ok(Some(t)) if Response::parse(&t).is_ok_and(|r| r.bye.is_some()) => {
                    Err(ServeError::ShutDown {
                        endpoint: self.endpoint.clone(),
                        appended,
                        first_seq: first,
                    })
                }
                _ => Err(e),
            };
        }
        Ok((first.unwrap_or(0), last, appended))
    }

    fn outcome(
        &mut self,
        line: u64,
        appended: usize,
        first_seq: Option<u64>,
    ) -> Result<(u64, u64), ServeError> {
        match self.response_to(line) {
            Err(ServeError::ShutDown { endpoint, .. }) => Err(ServeError::ShutDown {
                endpoint,
                appended,
                first_seq,
            }),
            r => r,
        }
    }
}

fn batch_line<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut line = String::from("{\"batch\":[");
    for (i, e) in items.enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(e);
    }
    line.push_str("]}");
    line
}

/// Connect to the server on the store at `root`, if one answers. `Ok(None)`: no server (no
/// socket, or a stale one nobody listens on).
pub fn connect_store(root: &Path, timeout: Duration) -> Result<Option<Client>, ServeError> {
    let path = super::socket_path(root);
    if !path.exists() {
        return Ok(None);
    }
    match Client::connect_unix(&path, timeout) {
        Ok(c) => Ok(Some(c)),
        Err(ServeError::Connect { source, .. })
            if matches!(
                source.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

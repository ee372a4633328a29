//! The projection checkpoint's encoding of the state: varint integers, floats as their IEEE-754
//! bits (NaN and infinities survive), strings and lists length-prefixed. Hand-written so that the
//! codec stays the one bincode user, and so that decoding never trusts a length beyond the bytes
//! it has.

use crate::event::{
    CheckpointReason, ExpId, ExperimentStatus, Metrics, NextIdea, OracleTier, Severity, Timestamp,
};

use super::curve::{Bucket, Curve, ExpCurves, Thinned};
use super::state::{
    AlertAgg, AlertMark, Checkpoints, Ckpt, Detail, Details, Ended, Experiment, Kill, LrAgg,
    MetricAgg, REASONS, ResultState, Run, State, reason_index,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

type R<T> = Result<T, WireError>;

pub struct Dec<'a> {
    b: &'a [u8],
    at: usize,
    /// The same bytes, shared, when decoding a checkpoint (details keep ranges of it).
    shared: Option<&'a std::sync::Arc<Vec<u8>>>,
    /// Where `b` starts in `shared`.
    base: usize,
}

impl<'a> Dec<'a> {
    pub fn new(b: &'a [u8]) -> Dec<'a> {
        Dec {
            b,
            at: 0,
            shared: None,
            base: 0,
        }
    }

    /// Decode `shared[base..]`, letting details borrow ranges of `shared`.
    pub fn shared(shared: &'a std::sync::Arc<Vec<u8>>, base: usize) -> Dec<'a> {
        Dec {
            b: &shared[base..],
            at: 0,
            shared: Some(shared),
            base,
        }
    }
    pub fn done(&self) -> bool {
        self.at == self.b.len()
    }
    fn byte(&mut self) -> R<u8> {
        let v = *self
            .b
            .get(self.at)
            .ok_or_else(|| WireError("truncated".into()))?;
        self.at += 1;
        Ok(v)
    }
    fn bytes(&mut self, n: usize) -> R<&'a [u8]> {
        if n > self.b.len() - self.at {
            return Err(WireError(format!("length {n} beyond the end")));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    /// A length-prefixed string, borrowed.
    fn str(&mut self) -> R<&'a str> {
        let n = self.len()?;
        std::str::from_utf8(self.bytes(n)?).map_err(|_| WireError("invalid UTF-8".into()))
    }
    /// A list length, checked against the bytes left (every element takes at least one byte).
    fn len(&mut self) -> R<usize> {
        let n = u64::get(self)?;
        if n > (self.b.len() - self.at) as u64 {
            return Err(WireError(format!("list of {n} beyond the end")));
        }
        Ok(n as usize)
    }
}

pub trait Wire: Sized {
    fn put(&self, out: &mut Vec<u8>);
    fn get(d: &mut Dec<'_>) -> R<Self>;
}

impl Wire for u64 {
    fn put(&self, out: &mut Vec<u8>) {
        let mut v = *self;
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn get(d: &mut Dec<'_>) -> R<u64> {
        // Most are lengths, counts and flags: one byte.
        if let Some(&b) = d.b.get(d.at)
            && b < 0x80
        {
            d.at += 1;
            return Ok(u64::from(b));
        }
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = d.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError("varint too long".into()))
    }
}

macro_rules! via_u64 {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            fn put(&self, out: &mut Vec<u8>) {
                (*self as u64).put(out)
            }
            fn get(d: &mut Dec<'_>) -> R<$t> {
                let v = u64::get(d)?;
                <$t>::try_from(v).map_err(|_| WireError(format!("{v} out of range")))
            }
        }
    )*};
}
via_u64!(u32, usize);

impl Wire for i64 {
    fn put(&self, out: &mut Vec<u8>) {
        (((*self << 1) ^ (*self >> 63)) as u64).put(out)
    }
    fn get(d: &mut Dec<'_>) -> R<i64> {
        let v = u64::get(d)?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }
}

impl Wire for i32 {
    fn put(&self, out: &mut Vec<u8>) {
        i64::from(*self).put(out)
    }
    fn get(d: &mut Dec<'_>) -> R<i32> {
        let v = i64::get(d)?;
        i32::try_from(v).map_err(|_| WireError(format!("{v} out of range")))
    }
}

impl Wire for f64 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bits().to_le_bytes())
    }
    fn get(d: &mut Dec<'_>) -> R<f64> {
        let b = d.bytes(8)?;
        Ok(f64::from_bits(u64::from_le_bytes(
            b.try_into().expect("8 bytes"),
        )))
    }
}

impl Wire for bool {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self))
    }
    fn get(d: &mut Dec<'_>) -> R<bool> {
        match d.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(WireError(format!("bad bool {b}"))),
        }
    }
}

fn put_str(s: &str, out: &mut Vec<u8>) {
    s.len().put(out);
    out.extend_from_slice(s.as_bytes());
}

impl Wire for String {
    fn put(&self, out: &mut Vec<u8>) {
        put_str(self, out)
    }
    fn get(d: &mut Dec<'_>) -> R<String> {
        d.str().map(str::to_owned)
    }
}

impl<T: Wire> Wire for Option<T> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                v.put(out)
            }
        }
    }
    fn get(d: &mut Dec<'_>) -> R<Option<T>> {
        match d.byte()? {
            0 => Ok(None),
            1 => T::get(d).map(Some),
            b => Err(WireError(format!("bad option tag {b}"))),
        }
    }
}

impl<T: Wire> Wire for Vec<T> {
    fn put(&self, out: &mut Vec<u8>) {
        self.len().put(out);
        for v in self {
            v.put(out);
        }
    }
    fn get(d: &mut Dec<'_>) -> R<Vec<T>> {
        let n = d.len()?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(T::get(d)?);
        }
        Ok(v)
    }
}

impl<A: Wire, B: Wire> Wire for (A, B) {
    fn put(&self, out: &mut Vec<u8>) {
        self.0.put(out);
        self.1.put(out);
    }
    fn get(d: &mut Dec<'_>) -> R<(A, B)> {
        Ok((A::get(d)?, B::get(d)?))
    }
}

impl Wire for Timestamp {
    fn put(&self, out: &mut Vec<u8>) {
        self.0.put(out)
    }
    fn get(d: &mut Dec<'_>) -> R<Timestamp> {
        i64::get(d).map(Timestamp)
    }
}

impl Wire for ExpId {
    fn put(&self, out: &mut Vec<u8>) {
        put_str(self.as_str(), out)
    }
    fn get(d: &mut Dec<'_>) -> R<ExpId> {
        ExpId::parse(d.str()?).map_err(|e| WireError(e.to_string()))
    }
}

impl Wire for Metrics {
    fn put(&self, out: &mut Vec<u8>) {
        self.0.put(out)
    }
    fn get(d: &mut Dec<'_>) -> R<Metrics> {
        Vec::get(d).map(Metrics)
    }
}

/// Enums as their index in a fixed table.
macro_rules! enum_wire {
    ($t:ty, [$($v:expr),* $(,)?]) => {
        impl Wire for $t {
            fn put(&self, out: &mut Vec<u8>) {
                let all = [$($v),*];
                out.push(all.iter().position(|x| x == self).unwrap_or(0) as u8)
            }
            fn get(d: &mut Dec<'_>) -> R<$t> {
                let all = [$($v),*];
                let i = d.byte()? as usize;
                all.get(i).copied().ok_or_else(|| WireError(format!("bad {} {i}", stringify!($t))))
            }
        }
    };
}
enum_wire!(
    ExperimentStatus,
    [
        ExperimentStatus::Running,
        ExperimentStatus::Complete,
        ExperimentStatus::Failed,
        ExperimentStatus::Aborted
    ]
);
enum_wire!(
    OracleTier,
    [
        OracleTier::MustPass,
        OracleTier::ShouldPass,
        OracleTier::CouldPass,
        OracleTier::Fail
    ]
);
enum_wire!(Severity, [Severity::Info, Severity::Warn, Severity::Stop]);

impl Wire for CheckpointReason {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(reason_index(*self) as u8)
    }
    fn get(d: &mut Dec<'_>) -> R<CheckpointReason> {
        let i = d.byte()? as usize;
        REASONS
            .get(i)
            .copied()
            .ok_or_else(|| WireError(format!("bad checkpoint reason {i}")))
    }
}

/// Structs field by field, in declaration order.
macro_rules! struct_wire {
    ($t:ident { $($f:ident),* $(,)? }) => {
        impl Wire for $t {
            fn put(&self, out: &mut Vec<u8>) {
                $( self.$f.put(out); )*
            }
            fn get(d: &mut Dec<'_>) -> R<$t> {
                Ok($t { $( $f: Wire::get(d)?, )* })
            }
        }
    };
}
struct_wire!(NextIdea {
    label,
    idea,
    details
});
struct_wire!(ResultState {
    tier,
    metric,
    value,
    delta,
    secondary,
    shortfalls,
    evaluated_at
});
struct_wire!(MetricAgg {
    name,
    count,
    first,
    last,
    min,
    max,
    nonfinite,
    first_nonfinite
});
struct_wire!(LrAgg {
    first,
    last,
    min,
    max
});
struct_wire!(AlertMark {
    epoch,
    severity,
    rule
});
struct_wire!(Curve { width, buckets });
struct_wire!(ExpCurves { metrics, lr });

impl<T: Wire> Wire for Thinned<T> {
    fn put(&self, out: &mut Vec<u8>) {
        self.stride.put(out);
        self.seen.put(out);
        self.items.put(out);
    }
    fn get(d: &mut Dec<'_>) -> R<Thinned<T>> {
        Ok(Thinned {
            stride: Wire::get(d)?,
            seen: Wire::get(d)?,
            items: Wire::get(d)?,
        })
    }
}

/// A bucket, compactly: epochs as offsets from its first, one flag byte for what it has, a
/// one-sample finite bucket's single value once.
impl Wire for Bucket {
    fn put(&self, out: &mut Vec<u8>) {
        // Offsets wrap and are zigzag-signed: epochs may go back (a resumed run).
        let off = |e: u64| e.wrapping_sub(self.first) as i64;
        self.n.put(out);
        self.first.put(out);
        off(self.last).put(out);
        let same = self.min == self.max;
        let flags = u8::from(self.min.is_some())
            | u8::from(self.max.is_some() && !same) << 1
            | u8::from(self.nonfinite.is_some()) << 2;
        out.push(flags);
        for (e, v) in [self.min, if same { None } else { self.max }, self.nonfinite]
            .into_iter()
            .flatten()
        {
            off(e).put(out);
            v.put(out);
        }
    }
    fn get(d: &mut Dec<'_>) -> R<Bucket> {
        let n = u64::get(d)?;
        let first = u64::get(d)?;
        let last = first.wrapping_add(i64::get(d)? as u64);
        let flags = d.byte()?;
        if flags > 7 {
            return Err(WireError(format!("bad bucket flags {flags}")));
        }
        let mut point = |on: bool| -> R<Option<(u64, f64)>> {
            if !on {
                return Ok(None);
            }
            let e = first.wrapping_add(i64::get(d)? as u64);
            Ok(Some((e, f64::get(d)?)))
        };
        let min = point(flags & 1 != 0)?;
        let max = point(flags & 2 != 0)?;
        let nonfinite = point(flags & 4 != 0)?;
        Ok(Bucket {
            n,
            first,
            last,
            min,
            max: if flags & 2 != 0 { max } else { min },
            nonfinite,
        })
    }
}
struct_wire!(Ckpt {
    epoch,
    path,
    reason
});
struct_wire!(Ended {
    time,
    epoch,
    exit_code,
    signal,
    wall_time_seconds,
    metrics
});
struct_wire!(AlertAgg {
    rule,
    count,
    first_seq,
    first_epoch,
    last_epoch,
    severity,
    seq,
    epoch,
    observed,
    message,
    likely_cause,
    recommended_action
});
struct_wire!(Kill {
    time,
    seq,
    pid,
    signal,
    by,
    reason,
    alert_seqs,
    count,
    epoch
});
struct_wire!(Run {
    starts,
    name,
    started,
    pid,
    host,
    total_epochs,
    epochs,
    first_epoch,
    last_epoch,
    last_epoch_time,
    wall_time_seconds,
    metrics,
    lr,
    checkpoints,
    ended
});
struct_wire!(Details {
    notes_what_happened,
    notes_mechanism,
    notes_next,
    run,
    alerts,
    kill,
    alert_marks
});

/// An experiment: its registry entry, then its details as a length-prefixed blob that is only
/// decoded when something needs it.
impl Wire for Experiment {
    fn put(&self, out: &mut Vec<u8>) {
        self.id.put(out);
        self.phase.put(out);
        self.parent_id.put(out);
        self.created.put(out);
        self.hypothesis.put(out);
        self.rationale.put(out);
        self.status.put(out);
        self.status_reason.put(out);
        self.status_time.put(out);
        self.result.put(out);
        self.next_ideas.put(out);
        self.has_diagnosis.put(out);
        self.has_next.put(out);
        let d = self.detail.encoded();
        d.len().put(out);
        out.extend_from_slice(&d);
    }
    fn get(d: &mut Dec<'_>) -> R<Experiment> {
        Ok(Experiment {
            id: Wire::get(d)?,
            phase: Wire::get(d)?,
            parent_id: Wire::get(d)?,
            created: Wire::get(d)?,
            hypothesis: Wire::get(d)?,
            rationale: Wire::get(d)?,
            status: Wire::get(d)?,
            status_reason: Wire::get(d)?,
            status_time: Wire::get(d)?,
            result: Wire::get(d)?,
            next_ideas: Wire::get(d)?,
            has_diagnosis: Wire::get(d)?,
            has_next: Wire::get(d)?,
            detail: {
                let n = d.len()?;
                let start = d.base + d.at;
                let bytes = d.bytes(n)?;
                match d.shared {
                    Some(buf) => Detail::from_raw(buf, start..start + n),
                    None => {
                        let owned = std::sync::Arc::new(bytes.to_vec());
                        Detail::from_raw(&owned, 0..n)
                    }
                }
            },
            curves: None,
        })
    }
}

/// Length of the prefix of a cache file (the projection checkpoint, a curve shard): magic (8
/// bytes), version (u32), body length (u64), CRC-32 of the body (u32), little-endian.
pub const FRAME_PREFIX: usize = 24;

/// What a cache file is: its magic and version, and its name in errors.
pub struct CacheFile {
    pub magic: [u8; 8],
    pub version: u32,
    /// `projection checkpoint`, `curve shard`.
    pub name: &'static str,
    /// `checkpoint`, `shard`.
    pub short: &'static str,
}

impl CacheFile {
    /// The prefix of a body of `len` bytes whose CRC-32 is `crc`.
    pub fn prefix(&self, len: u64, crc: u32) -> [u8; FRAME_PREFIX] {
        let mut p = [0u8; FRAME_PREFIX];
        p[..8].copy_from_slice(&self.magic);
        p[8..12].copy_from_slice(&self.version.to_le_bytes());
        p[12..20].copy_from_slice(&len.to_le_bytes());
        p[20..24].copy_from_slice(&crc.to_le_bytes());
        p
    }

    /// Prefix and body.
    pub fn frame(&self, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAME_PREFIX + body.len());
        out.extend_from_slice(&self.prefix(body.len() as u64, crc32fast::hash(body)));
        out.extend_from_slice(body);
        out
    }

    /// The body of `bytes` once magic, version, length and CRC check out; else why not.
    pub fn body<'a>(&self, bytes: &'a [u8]) -> Result<&'a [u8], String> {
        if bytes.len() < FRAME_PREFIX || bytes[..8] != self.magic {
            return Err(format!(
                "not a zolog {} (bad magic or too short)",
                self.name
            ));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != self.version {
            return Err(format!(
                "{} version {version}, this zolog writes version {}",
                self.short, self.version
            ));
        }
        let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
        let body = &bytes[FRAME_PREFIX..];
        if body.len() as u64 != len {
            return Err(format!(
                "corrupt: body is {} bytes, the header says {len}",
                body.len()
            ));
        }
        if crc32fast::hash(body) != crc {
            return Err("corrupt: checksum mismatch".into());
        }
        Ok(body)
    }
}

pub fn encode_details(x: &Details) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    x.put(&mut out);
    out
}

pub fn decode_details(b: &[u8]) -> R<Details> {
    let mut d = Dec::new(b);
    let x = Details::get(&mut d)?;
    if !d.done() {
        return Err(WireError("trailing bytes after details".into()));
    }
    Ok(x)
}

impl Wire for Checkpoints {
    fn put(&self, out: &mut Vec<u8>) {
        self.count.put(out);
        for n in self.by_reason {
            n.put(out);
        }
        self.last.put(out);
        self.last_best.put(out);
        self.ticks.put(out);
    }
    fn get(d: &mut Dec<'_>) -> R<Checkpoints> {
        let count = u64::get(d)?;
        let mut by_reason = [0u64; 6];
        for n in &mut by_reason {
            *n = u64::get(d)?;
        }
        Ok(Checkpoints {
            count,
            by_reason,
            last: Wire::get(d)?,
            last_best: Wire::get(d)?,
            ticks: Wire::get(d)?,
        })
    }
}

/// The persisted part of the state (not the index, which is rebuilt, nor what is dirty).
pub fn put_state(s: &State, out: &mut Vec<u8>) {
    put_state_head(s, out);
    for e in &s.experiments {
        e.put(out);
    }
}

/// Everything before the experiments, and their count: [`put_state`] without the experiments
/// themselves, which follow, each as [`Wire::put`] writes it.
pub fn put_state_head(s: &State, out: &mut Vec<u8>) {
    s.seq.put(out);
    s.project.put(out);
    s.created.put(out);
    s.ignored.put(out);
    s.experiments.len().put(out);
}

pub fn get_state(d: &mut Dec<'_>) -> R<State> {
    let mut s = State {
        seq: Wire::get(d)?,
        project: Wire::get(d)?,
        created: Wire::get(d)?,
        ignored: Wire::get(d)?,
        experiments: Wire::get(d)?,
        ..State::default()
    };
    s.rebuild_index();
    if s.index.len() != s.experiments.len() {
        return Err(WireError("duplicate experiment ids".into()));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_round_trip_and_lengths_are_checked() {
        let mut out = Vec::new();
        for v in [0u64, 1, 127, 128, u64::MAX] {
            v.put(&mut out);
        }
        for v in [0i64, -1, i64::MIN, i64::MAX] {
            v.put(&mut out);
        }
        f64::NAN.put(&mut out);
        let mut d = Dec::new(&out);
        for v in [0u64, 1, 127, 128, u64::MAX] {
            assert_eq!(u64::get(&mut d).unwrap(), v);
        }
        for v in [0i64, -1, i64::MIN, i64::MAX] {
            assert_eq!(i64::get(&mut d).unwrap(), v);
        }
        assert_eq!(f64::get(&mut d).unwrap().to_bits(), f64::NAN.to_bits());
        assert!(d.done());
        // A string claiming 2^40 bytes fails without allocating them.
        let mut out = Vec::new();
        (1u64 << 40).put(&mut out);
        assert!(String::get(&mut Dec::new(&out)).is_err());
        assert!(Vec::<String>::get(&mut Dec::new(&out)).is_err());
    }
}

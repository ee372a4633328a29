//! The binary codec: the only module that calls bincode.
//!
//! bincode is pinned to 2.0.1 (3.0.0 is a tombstone release that does not compile; the project is
//! unmaintained). Swapping it means changing this file and the `Encode`/`Decode` derives on the
//! event types, nothing else.
//!
//! Format of a record payload (docs/format.md): one byte of event encoding version (1), then the
//! bincode (standard configuration: varint integers, little-endian) of
//! `(time, appended, source, payload)`. The seq is the log frame's.

use bincode::config::{self, Configuration};
use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};

use super::{Event, ExpId, Json, NewEvent, Payload, Source, Timestamp};

/// Version byte at the start of every encoded event.
pub const EVENT_ENCODING_VERSION: u8 = 1;

/// A payload that is not a valid event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable event: {0}")]
pub struct CodecError(pub String);

fn cfg() -> Configuration {
    config::standard()
}

/// bincode's output straight into a Vec. Most writes are one byte (a varint, a tag) or eight (a
/// float): those are pushed without a call to memcpy.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for VecWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        match bytes {
            [b] => self.0.push(*b),
            _ => match <[u8; 8]>::try_from(bytes) {
                Ok(a) => self.0.extend_from_slice(&a),
                Err(_) => self.0.extend_from_slice(bytes),
            },
        }
        Ok(())
    }
}

/// Append the encoding of an event body to `out`.
pub fn encode_into(event: &NewEvent, out: &mut Vec<u8>) {
    out.push(EVENT_ENCODING_VERSION);
    let body = (&event.time, &event.appended, &event.source, &event.payload);
    bincode::encode_into_writer(body, VecWriter(out), cfg()).expect("writing to a Vec cannot fail");
}

/// Append the encoding of an event body given by its parts (no need to own them).
pub fn encode_parts_into(
    time: Timestamp,
    appended: Option<Timestamp>,
    source: &Source,
    payload: &Payload,
    out: &mut Vec<u8>,
) {
    out.push(EVENT_ENCODING_VERSION);
    let body = (&time, &appended, source, payload);
    bincode::encode_into_writer(body, VecWriter(out), cfg()).expect("writing to a Vec cannot fail");
}

/// Encode an event body.
pub fn encode(event: &NewEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    encode_into(event, &mut out);
    out
}

/// Encode an event that already has a seq (its body only: the seq lives in the log frame).
pub fn encode_event(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(EVENT_ENCODING_VERSION);
    let body = (&event.time, &event.appended, &event.source, &event.payload);
    bincode::encode_into_writer(body, VecWriter(&mut out), cfg())
        .expect("writing to a Vec cannot fail");
    out
}

type Body = (Timestamp, Option<Timestamp>, Source, Payload);

/// Decode with a claim limit proportional to the input, so no payload can make the decoder
/// allocate much more than the bytes it is given: at most 64 KiB or 64 × the next power of two
/// of the input length (in-memory sizes of strings and vectors exceed their wire sizes, by at most
/// 24× for a vector of empty strings).
fn decode_limited(bytes: &[u8]) -> Result<(Body, usize), DecodeError> {
    macro_rules! with_limit {
        ($($n:literal),*) => {{
            let want = bytes.len().next_power_of_two().saturating_mul(64).max(64 * 1024);
            $(
                if want <= $n {
                    return bincode::decode_from_slice(bytes, cfg().with_limit::<$n>());
                }
            )*
            bincode::decode_from_slice(bytes, cfg().with_limit::<{ 2048 * 1024 * 1024 }>())
        }};
    }
    with_limit!(
        65536, 131072, 262144, 524288, 1048576, 2097152, 4194304, 8388608, 16777216, 33554432,
        67108864, 134217728, 268435456, 536870912, 1073741824
    )
}

/// The bytes after the version byte, if the version is one this zolog reads.
fn body(bytes: &[u8]) -> Result<&[u8], CodecError> {
    let (&version, rest) = bytes
        .split_first()
        .ok_or_else(|| CodecError("empty payload".into()))?;
    if version != EVENT_ENCODING_VERSION {
        return Err(CodecError(format!(
            "event encoding version {version} is not supported (this zolog reads version {EVENT_ENCODING_VERSION})"
        )));
    }
    Ok(rest)
}

/// Decode a record payload into the event with sequence number `seq`. Refuses unknown versions,
/// invalid ids and trailing bytes, so whatever it accepts re-encodes to the same bytes.
pub fn decode(seq: u64, bytes: &[u8]) -> Result<Event, CodecError> {
    let rest = body(bytes)?;
    let ((time, appended, source, payload), used) =
        decode_limited(rest).map_err(|e| CodecError(e.to_string()))?;
    if used != rest.len() {
        return Err(CodecError(format!(
            "{} trailing byte(s) after the event",
            rest.len() - used
        )));
    }
    let event = Event {
        seq,
        time,
        appended,
        source,
        payload,
    };
    // bincode's varint decoder also accepts non-minimal integers (e.g. `251 0 0` for 0). zolog
    // only writes the canonical form, so anything else is damage, and refusing it keeps the
    // decoder one-to-one: whatever it accepts re-encodes to the same bytes.
    if encode_event(&event) != bytes {
        return Err(CodecError("non-canonical encoding".into()));
    }
    Ok(event)
}

/// Position of `EpochEnded` among the variants of [`Payload`] (its bincode discriminant).
const EPOCH_ENDED_INDEX: u32 = 7;

/// An `EpochEnded` borrowed from its record: what a fold over millions of samples reads without
/// allocating. Same fields as [`super::EpochEnded`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EpochView<'a> {
    pub experiment_id: &'a str,
    pub epoch: u64,
    pub step: Option<u64>,
    pub metrics: Vec<(&'a str, f64)>,
    pub learning_rate: Option<f64>,
    pub wall_time_seconds: Option<f64>,
    pub gpu_memory_mb: Option<f64>,
}

/// If the record is an `EpochEnded` that [`decode`] accepts, fill `view` with it (reusing its
/// metrics vector: no allocation once it has grown) and return the event's time. `None` for any
/// other record, valid or not: decode those with [`decode`], which also says what is wrong with
/// a bad one. It accepts exactly the `EpochEnded` records that [`decode`] accepts, minimal
/// varints included (a test holds the two together on every truncation and byte change).
pub fn decode_epoch_into<'a>(bytes: &'a [u8], view: &mut EpochView<'a>) -> Option<Timestamp> {
    let (&EVENT_ENCODING_VERSION, rest) = bytes.split_first()? else {
        return None;
    };
    let mut w = Walk { b: rest };
    let time = w.epoch_into(view)?;
    w.b.is_empty().then_some(time)
}

/// [`decode_epoch_into`] into a new view.
pub fn decode_epoch_view(bytes: &[u8]) -> Option<(Timestamp, EpochView<'_>)> {
    let mut view = EpochView::default();
    decode_epoch_into(bytes, &mut view).map(|t| (t, view))
}

/// Check that a record payload decodes as an event, as [`decode`] would, without building it:
/// what `zolog verify` runs on every record. Equivalent to `decode(seq, bytes).map(|_| ())`: a
/// payload the allocation-free [`check_fast`] walk does not accept is handed to [`decode`], so
/// the verdict and the message are always decode's own.
pub fn check(bytes: &[u8]) -> Result<(), CodecError> {
    if check_fast(bytes) {
        return Ok(());
    }
    decode(0, bytes).map(|_| ())
}

/// Walk the wire form of an event (docs/format.md; bincode 2.0.1 standard configuration) and say
/// whether it is one, allocating nothing. It accepts only what [`decode`] accepts (tests hold it
/// to that); it may refuse more (anything it does not know, such as a variant added later), which
/// [`check`] then hands to [`decode`].
pub fn check_fast(bytes: &[u8]) -> bool {
    let Some((&EVENT_ENCODING_VERSION, rest)) = bytes.split_first() else {
        return false;
    };
    let mut w = Walk { b: rest };
    w.body().is_some() && w.b.is_empty()
}

/// A cursor over bincode bytes. Each method consumes one value or returns None.
struct Walk<'a> {
    b: &'a [u8],
}

// Variant counts of the unit enums, in declaration order (src/event/mod.rs).
const SOURCE_KINDS: u32 = 4;
const STATUSES: u32 = 4;
const ORACLE_TIERS: u32 = 4;
const NOTE_SECTIONS: u32 = 3;
const CHECKPOINT_REASONS: u32 = 6;
const SEVERITIES: u32 = 3;

impl<'a> Walk<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.b.len() {
            return None;
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    /// A varint of at most `max_marker` width: 251 = u16, 252 = u32, 253 = u64 follow. Only the
    /// minimal form is accepted, as [`decode`] requires.
    fn varint(&mut self, max_marker: u8) -> Option<u64> {
        let m = self.u8()?;
        let v = match m {
            0..=250 => return Some(u64::from(m)),
            251 if max_marker >= 251 => {
                u64::from(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
            }
            252 if max_marker >= 252 => {
                u64::from(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
            }
            253 if max_marker >= 253 => u64::from_le_bytes(self.take(8)?.try_into().ok()?),
            _ => return None,
        };
        let minimal = match m {
            251 => v > 250,
            252 => v > u64::from(u16::MAX),
            _ => v > u64::from(u32::MAX),
        };
        minimal.then_some(v)
    }
    fn u64(&mut self) -> Option<()> {
        self.u64_value().map(drop)
    }
    fn u32(&mut self) -> Option<u32> {
        self.varint(252).map(|v| v as u32)
    }
    fn f64(&mut self) -> Option<()> {
        self.f64_value().map(drop)
    }
    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.varint(253)?).ok()
    }
    /// A string's bytes, checked to be UTF-8.
    fn str(&mut self) -> Option<&'a [u8]> {
        let n = self.len()?;
        let b = self.take(n)?;
        // Most strings (ids, metric names) are short and ASCII: a cheaper test than from_utf8.
        (b.is_ascii() || std::str::from_utf8(b).is_ok()).then_some(b)
    }
    fn f64_value(&mut self) -> Option<f64> {
        Some(f64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u64_value(&mut self) -> Option<u64> {
        self.varint(253)
    }
    /// An option whose value is read by `some` (0: none, 1: some, anything else refused).
    fn opt_value<T>(&mut self, some: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            1 => some(self).map(Some),
            _ => None,
        }
    }
    fn string(&mut self) -> Option<()> {
        self.str().map(|_| ())
    }
    fn option(&mut self, some: impl FnOnce(&mut Self) -> Option<()>) -> Option<()> {
        self.opt_value(some).map(drop)
    }
    fn vec(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        let n = self.len()?;
        for _ in 0..n {
            item(self)?;
        }
        Some(())
    }
    fn unit_enum(&mut self, variants: u32) -> Option<()> {
        (self.u32()? < variants).then_some(())
    }
    fn exp_id(&mut self) -> Option<()> {
        valid_exp_id(self.str()?).then_some(())
    }
    fn metrics(&mut self) -> Option<()> {
        self.vec(|w| {
            w.string()?;
            w.f64()
        })
    }
    fn strings(&mut self) -> Option<()> {
        self.vec(Self::string)
    }
    fn json(&mut self) -> Option<()> {
        // Rare (configurations): check it exactly as decoding does.
        let s = std::str::from_utf8(self.str()?).ok()?;
        let v: serde_json::Value = serde_json::from_str(s).ok()?;
        (serde_json::to_string(&v).ok()? == s).then_some(())
    }
    fn opt_u64(&mut self) -> Option<()> {
        self.option(Self::u64)
    }
    fn opt_u32(&mut self) -> Option<()> {
        self.option(|w| w.u32().map(|_| ()))
    }
    fn opt_f64(&mut self) -> Option<()> {
        self.option(Self::f64)
    }
    fn opt_string(&mut self) -> Option<()> {
        self.option(Self::string)
    }

    /// (time, appended, source, payload)
    fn body(&mut self) -> Option<()> {
        self.u64()?; // time: i64, zigzag varint
        self.opt_u64()?; // appended
        self.unit_enum(SOURCE_KINDS)?;
        self.opt_u32()?; // pid
        self.opt_string()?; // host
        self.payload()
    }

    /// `(time, appended, source, payload)` of an `EpochEnded` into `view`, returning its time;
    /// `None` for any other payload. Walks what [`Self::body`] walks, keeping the values.
    fn epoch_into(&mut self, view: &mut EpochView<'a>) -> Option<Timestamp> {
        let t = self.u64_value()?; // i64, zigzag
        let time = Timestamp((t >> 1) as i64 ^ -((t & 1) as i64));
        self.opt_u64()?; // appended
        self.unit_enum(SOURCE_KINDS)?;
        self.opt_u32()?; // pid
        self.opt_string()?; // host
        if self.u32()? != EPOCH_ENDED_INDEX {
            return None;
        }
        // Runs of records share an experiment id and metric names: a string equal, byte for
        // byte, to the one the view already holds from the previous record is that string (it
        // was checked then), which saves a UTF-8 check per string.
        let len = self.len()?;
        let id = self.take(len)?;
        // (A valid id is never empty, so the default view's empty id matches nothing valid.)
        if id.is_empty() || id != view.experiment_id.as_bytes() {
            if !valid_exp_id(id) {
                return None;
            }
            view.experiment_id = std::str::from_utf8(id).ok()?;
        }
        view.epoch = self.u64_value()?;
        view.step = self.opt_value(Self::u64_value)?;
        let n = self.len()?;
        for k in 0..n {
            let len = self.len()?;
            let name = self.take(len)?;
            let value = self.f64_value()?;
            match view.metrics.get_mut(k) {
                Some(m) if m.0.as_bytes() == name => m.1 = value,
                Some(m) => *m = (std::str::from_utf8(name).ok()?, value),
                None => view.metrics.push((std::str::from_utf8(name).ok()?, value)),
            }
        }
        view.metrics.truncate(n);
        view.learning_rate = self.opt_value(Self::f64_value)?;
        view.wall_time_seconds = self.opt_value(Self::f64_value)?;
        view.gpu_memory_mb = self.opt_value(Self::f64_value)?;
        Some(time)
    }

    /// Fields in declaration order, per variant (src/event/mod.rs).
    fn payload(&mut self) -> Option<()> {
        let variant = self.u32()?;
        if variant == 0 {
            return self.string(); // ProjectInitialized { project }
        }
        self.exp_id()?; // every other variant starts with experiment_id
        match variant {
            // ExperimentMinted
            1 => {
                self.option(Self::exp_id)?;
                self.string()?;
                self.string()?;
                self.string()
            }
            // ExperimentStatusChanged
            2 => {
                self.unit_enum(STATUSES)?;
                self.string()
            }
            // ResultRecorded
            3 => {
                self.unit_enum(ORACLE_TIERS)?;
                self.string()?;
                self.f64()?;
                self.opt_f64()?;
                self.metrics()?;
                self.strings()?;
                self.u64() // evaluated_at
            }
            // NextIdeasRecorded
            4 => self.vec(|w| {
                w.opt_string()?;
                w.string()?;
                w.strings()
            }),
            // NoteAdded
            5 => {
                self.unit_enum(NOTE_SECTIONS)?;
                self.string()
            }
            // TrainingStarted
            6 => {
                self.opt_string()?;
                self.opt_u32()?;
                self.opt_string()?;
                self.opt_u64()?;
                self.json()
            }
            // EpochEnded
            7 => {
                self.u64()?;
                self.opt_u64()?;
                self.metrics()?;
                self.opt_f64()?;
                self.opt_f64()?;
                self.opt_f64()
            }
            // CheckpointSaved
            8 => {
                self.opt_u64()?;
                self.string()?;
                self.unit_enum(CHECKPOINT_REASONS)?;
                self.metrics()?;
                self.opt_u64()?;
                self.opt_string()?;
                self.strings()?;
                self.opt_u32()?;
                self.opt_u64()
            }
            // TrainingEnded
            9 => {
                self.opt_u64()?;
                self.metrics()?;
                self.opt_f64()?;
                self.opt_u32()?; // exit_code: i32, zigzag varint
                self.opt_u32() // signal
            }
            // CheckerConfigured
            10 => self.json(),
            // AlertRaised
            11 => {
                self.string()?;
                self.unit_enum(SEVERITIES)?;
                self.opt_u64()?;
                self.metrics()?;
                self.metrics()?;
                self.vec(Self::u64)?;
                self.opt_u64()?;
                self.string()?;
                self.string()?;
                self.string()
            }
            // RunKilled
            12 => {
                self.opt_u32()?;
                self.vec(Self::u64)?;
                self.string()?;
                self.string()?;
                self.string()
            }
            // IngestAdvanced
            13 => {
                self.string()?;
                self.string()?;
                self.u64()?;
                self.u64()?;
                self.u64()
            }
            _ => None,
        }
    }
}

/// [`ExpId::parse`]'s rule, without allocating (a test holds the two together).
fn valid_exp_id(s: &[u8]) -> bool {
    ExpId::digits(s).is_some()
}

// Hand-written encodings for the types whose in-memory form is not their wire form.

impl Encode for Timestamp {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        self.0.encode(e)
    }
}
impl<C> Decode<C> for Timestamp {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        i64::decode(d).map(Timestamp)
    }
}
bincode::impl_borrow_decode!(Timestamp);

impl Encode for ExpId {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        self.as_str().encode(e)
    }
}
impl<C> Decode<C> for ExpId {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        let s = String::decode(d)?;
        ExpId::parse(&s).map_err(|e| DecodeError::OtherString(e.to_string()))
    }
}
bincode::impl_borrow_decode!(ExpId);

/// JSON values are stored as their compact text.
impl Encode for Json {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        serde_json::to_string(&self.0)
            .map_err(|err| EncodeError::OtherString(err.to_string()))?
            .encode(e)
    }
}
impl<C> Decode<C> for Json {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        let s = String::decode(d)?;
        let v: serde_json::Value = serde_json::from_str(&s)
            .map_err(|err| DecodeError::OtherString(format!("stored JSON: {err}")))?;
        // Only the canonical text is accepted, so decode → encode gives the same bytes.
        if serde_json::to_string(&v).ok().as_deref() != Some(s.as_str()) {
            return Err(DecodeError::OtherString(
                "stored JSON is not in canonical form".into(),
            ));
        }
        Ok(Json(v))
    }
}
bincode::impl_borrow_decode!(Json);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EpochEnded, Metrics, SourceKind};

    fn sample() -> NewEvent {
        NewEvent {
            time: Timestamp(1_700_000_000_000_000_001),
            appended: Some(Timestamp(1_700_000_000_500_000_000)),
            source: Source::this_process(SourceKind::Trainer),
            payload: Payload::EpochEnded(EpochEnded {
                experiment_id: ExpId::parse("exp-001").unwrap(),
                epoch: 3,
                step: Some(300),
                metrics: Metrics(vec![
                    ("loss".into(), f64::NAN),
                    ("val_loss".into(), f64::INFINITY),
                    ("acc".into(), f64::NEG_INFINITY),
                    ("lr_scale".into(), -0.0),
                ]),
                learning_rate: Some(1e-3),
                wall_time_seconds: None,
                gpu_memory_mb: Some(1024.5),
            }),
        }
    }

    #[test]
    fn round_trip_keeps_nan_bits_and_reencodes_identically() {
        let bytes = encode(&sample());
        let ev = decode(9, &bytes).unwrap();
        assert_eq!(ev.seq, 9);
        let Payload::EpochEnded(e) = &ev.payload else {
            panic!("wrong variant")
        };
        let Payload::EpochEnded(orig) = &sample().payload else {
            unreachable!()
        };
        assert!(e.metrics.same_bits(&orig.metrics));
        assert_eq!(encode_event(&ev), bytes);
    }

    #[test]
    fn trailing_bytes_unknown_version_and_bad_ids_are_refused() {
        let mut bytes = encode(&sample());
        bytes.push(0);
        assert!(decode(1, &bytes).unwrap_err().0.contains("trailing"));
        let mut bytes = encode(&sample());
        bytes[0] = 2;
        assert!(decode(1, &bytes).unwrap_err().0.contains("version 2"));
        // Rewrite the id to a path-traversing one of the same length.
        let bytes = encode(&sample());
        let at = bytes.windows(7).position(|w| w == b"exp-001").unwrap();
        let mut evil = bytes.clone();
        evil[at..at + 7].copy_from_slice(b"../../x");
        assert!(
            decode(1, &evil)
                .unwrap_err()
                .0
                .contains("invalid experiment id")
        );
    }

    #[test]
    fn non_canonical_varints_are_refused() {
        // Regression: cargo fuzz (segment_decode) found `251 0 0` (a u16 zero) accepted where the
        // canonical encoding is the single byte 0, so the payload re-encoded differently.
        let mut ev = sample();
        ev.time = Timestamp(0);
        let bytes = encode(&ev);
        assert_eq!(bytes[1], 0, "time 0 is the one-byte varint 0");
        assert!(decode(1, &bytes).is_ok());
        let mut long = vec![bytes[0], 251, 0, 0];
        long.extend_from_slice(&bytes[2..]);
        let err = decode(1, &long).unwrap_err();
        assert!(err.0.contains("non-canonical"), "{err}");
        // The allocation-free check `zolog verify` runs agrees.
        assert!(!check_fast(&long));
        assert!(check(&long).is_err());
    }

    /// The view of an `EpochEnded` when `decode` accepts the bytes as one, `None` otherwise.
    fn epoch_by_full_decode(bytes: &[u8]) -> Option<(Timestamp, crate::event::EpochEnded)> {
        match decode(1, bytes) {
            Ok(Event {
                time,
                payload: Payload::EpochEnded(e),
                ..
            }) => Some((time, e)),
            _ => None,
        }
    }

    fn assert_same_epoch(
        view: &(Timestamp, EpochView<'_>),
        full: &(Timestamp, crate::event::EpochEnded),
    ) {
        let ((time, view), (full_time, full)) = (view, full);
        assert_eq!(time, full_time);
        assert_eq!(view.experiment_id, full.experiment_id.as_str());
        assert_eq!((view.epoch, view.step), (full.epoch, full.step));
        assert_eq!(view.metrics.len(), full.metrics.len());
        for ((n, v), (fn_, fv)) in view.metrics.iter().zip(full.metrics.iter()) {
            assert_eq!((*n, v.to_bits()), (fn_, fv.to_bits()));
        }
        let bits = |x: Option<f64>| x.map(f64::to_bits);
        assert_eq!(bits(view.learning_rate), bits(full.learning_rate));
        assert_eq!(bits(view.wall_time_seconds), bits(full.wall_time_seconds));
        assert_eq!(bits(view.gpu_memory_mb), bits(full.gpu_memory_mb));
    }

    /// The fold's allocation-free view reads exactly the `EpochEnded` records `decode` accepts,
    /// with the same values: the sample, every truncation and every single-byte change of it
    /// (a negative time and a step included), and other events are not views.
    #[test]
    fn epoch_view_accepts_what_the_full_decode_accepts_with_the_same_fields() {
        let mut ev = sample();
        ev.time = Timestamp(-1_234_567_890_123);
        let Payload::EpochEnded(e) = &mut ev.payload else {
            unreachable!("the sample is an EpochEnded")
        };
        e.step = Some(70_000);
        e.wall_time_seconds = Some(12.5);
        for bytes in [encode(&sample()), encode(&ev)] {
            let view = decode_epoch_view(&bytes).expect("an EpochEnded");
            assert_same_epoch(&view, &epoch_by_full_decode(&bytes).unwrap());
            let mut changed = Vec::new();
            for n in 0..bytes.len() {
                changed.push(bytes[..n].to_vec());
            }
            let mut long = bytes.clone();
            long.push(0);
            changed.push(long);
            for at in 0..bytes.len() {
                for v in [0u8, 1, 2, 7, 0x7f, 0x80, 250, 251, 252, 253, 254, 255] {
                    let mut b = bytes.clone();
                    b[at] = v;
                    changed.push(b);
                }
            }
            for b in &changed {
                match (decode_epoch_view(b), epoch_by_full_decode(b)) {
                    (Some(view), Some(full)) => assert_same_epoch(&view, &full),
                    (None, None) => {}
                    (view, full) => panic!(
                        "{b:?}: view {:?}, full decode {:?}",
                        view.is_some(),
                        full.is_some()
                    ),
                }
            }
        }
        // A view reused across records keeps none of the previous record's metrics.
        let first = encode(&ev);
        let mut fewer = ev.clone();
        let Payload::EpochEnded(e) = &mut fewer.payload else {
            unreachable!()
        };
        e.metrics = Metrics(vec![("only".into(), 1.0)]);
        let second = encode(&fewer);
        let mut view = EpochView::default();
        assert!(decode_epoch_into(&first, &mut view).is_some());
        assert_eq!(view.metrics.len(), 4);
        assert!(decode_epoch_into(&second, &mut view).is_some());
        assert_eq!(view.metrics, vec![("only", 1.0)]);
        // Other events are not EpochEnded.
        let other = NewEvent {
            payload: Payload::ProjectInitialized(crate::event::ProjectInitialized {
                project: "p".into(),
            }),
            ..sample()
        };
        assert_eq!(decode_epoch_view(&encode(&other)), None);
        let at = first.windows(7).position(|w| w == b"exp-001").unwrap();
        let mut evil = first.clone();
        evil[at..at + 7].copy_from_slice(b"../../x");
        assert_eq!(decode_epoch_view(&evil), None);
        assert!(decode(1, &evil).is_err());
    }

    /// The id rule, stated once (`ExpId::digits`), as the codec's check and the parser apply it.
    #[test]
    fn exp_id_rule_matches_parse() {
        for (s, valid) in [
            ("exp-1", true),
            ("exp-001", true),
            ("exp-123456789", true),
            ("exp-1234567890", false),
            ("exp-", false),
            ("exp-1a", false),
            ("../x", false),
            ("", false),
            ("exp-٣", false),
            ("EXP-1", false),
            ("exp-+1", false),
            ("exp- 1", false),
        ] {
            assert_eq!(valid_exp_id(s.as_bytes()), valid, "{s:?}");
            assert_eq!(ExpId::parse(s).is_ok(), valid, "{s:?}");
        }
    }

    /// The fast walk accepts what decode accepts, and nothing decode refuses: every truncation
    /// and every single-byte change of a sample event.
    #[test]
    fn fast_check_agrees_with_decode() {
        let bytes = encode(&sample());
        assert!(check_fast(&bytes));
        for n in 0..bytes.len() {
            assert!(!check_fast(&bytes[..n]));
            assert_eq!(check(&bytes[..n]).is_ok(), decode(1, &bytes[..n]).is_ok());
        }
        for at in 0..bytes.len() {
            for v in [0u8, 1, 2, 0x7f, 0x80, 250, 251, 252, 253, 254, 255] {
                let mut b = bytes.clone();
                b[at] = v;
                let ok = decode(1, &b).is_ok();
                assert!(
                    !check_fast(&b) || ok,
                    "byte {at} = {v}: fast check accepts what decode refuses"
                );
                assert_eq!(check(&b).is_ok(), ok);
            }
        }
    }

    #[test]
    fn huge_claimed_lengths_fail_without_allocating_them() {
        // Version byte, then a time, then an `appended` tag of Some and a string length of 2^40.
        let mut bytes = vec![EVENT_ENCODING_VERSION, 0, 0, 0, 253];
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode(1, &bytes).is_err());
    }
}

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

/// Append the encoding of an event body to `out`.
pub fn encode_into(event: &NewEvent, out: &mut Vec<u8>) {
    out.push(EVENT_ENCODING_VERSION);
    let body = (&event.time, &event.appended, &event.source, &event.payload);
    bincode::encode_into_std_write(body, out, cfg()).expect("writing to a Vec cannot fail");
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
    bincode::encode_into_std_write(body, &mut out, cfg()).expect("writing to a Vec cannot fail");
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
    Ok(Event {
        seq,
        time,
        appended,
        source,
        payload,
    })
}

/// Position of `EpochEnded` among the variants of [`Payload`] (its bincode discriminant).
const EPOCH_ENDED_INDEX: u32 = 7;

/// Who appended an event, borrowed from the record.
#[derive(Debug, Clone, PartialEq, bincode::BorrowDecode)]
pub struct SourceView<'a> {
    pub kind: super::SourceKind,
    pub pid: Option<u32>,
    pub host: Option<&'a str>,
}

#[derive(bincode::BorrowDecode)]
struct HeadView<'a> {
    time: Timestamp,
    _appended: Option<Timestamp>,
    _source: SourceView<'a>,
    variant: u32,
}

/// An `EpochEnded` borrowed from its record: what a fold over millions of samples reads without
/// allocating a string per field. Same bytes as [`super::EpochEnded`], field for field.
#[derive(Debug, Clone, PartialEq, bincode::BorrowDecode)]
pub struct EpochView<'a> {
    pub experiment_id: &'a str,
    pub epoch: u64,
    pub step: Option<u64>,
    pub metrics: Vec<(&'a str, f64)>,
    pub learning_rate: Option<f64>,
    pub wall_time_seconds: Option<f64>,
    pub gpu_memory_mb: Option<f64>,
}

/// If the record is an `EpochEnded`, its time and a borrowed view of it; `Ok(None)` for any
/// other event, and for anything the view cannot read within its small allocation limit (1 MiB):
/// decode those with [`decode`], which also says what is wrong with a bad record. Checks what
/// [`decode`] checks: version, a valid experiment id, no trailing bytes.
pub fn decode_epoch_view(bytes: &[u8]) -> Result<Option<(Timestamp, EpochView<'_>)>, CodecError> {
    let rest = body(bytes)?;
    let limited = || cfg().with_limit::<{ 1024 * 1024 }>();
    let Ok((head, used)) = bincode::borrow_decode_from_slice::<HeadView<'_>, _>(rest, limited())
    else {
        return Ok(None);
    };
    if head.variant != EPOCH_ENDED_INDEX {
        return Ok(None);
    }
    let Ok((view, used2)) =
        bincode::borrow_decode_from_slice::<EpochView<'_>, _>(&rest[used..], limited())
    else {
        return Ok(None);
    };
    if used + used2 != rest.len() {
        return Err(CodecError(format!(
            "{} trailing byte(s) after the event",
            rest.len() - used - used2
        )));
    }
    ExpId::parse(view.experiment_id).map_err(|e| CodecError(e.to_string()))?;
    Ok(Some((head.time, view)))
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
    fn epoch_view_reads_the_same_fields_as_the_full_decode() {
        let bytes = encode(&sample());
        let ev = decode(1, &bytes).unwrap();
        let Payload::EpochEnded(full) = &ev.payload else {
            unreachable!()
        };
        let (time, view) = decode_epoch_view(&bytes).unwrap().expect("an EpochEnded");
        assert_eq!(time, ev.time);
        assert_eq!(view.experiment_id, full.experiment_id.as_str());
        assert_eq!((view.epoch, view.step), (full.epoch, full.step));
        assert_eq!(view.metrics.len(), full.metrics.len());
        for ((n, v), (fn_, fv)) in view.metrics.iter().zip(full.metrics.iter()) {
            assert_eq!((*n, v.to_bits()), (fn_, fv.to_bits()));
        }
        assert_eq!(view.learning_rate, full.learning_rate);
        assert_eq!(view.gpu_memory_mb, full.gpu_memory_mb);
        // Other events are not EpochEnded; damage is an error, as in the full decode.
        let other = NewEvent {
            payload: Payload::ProjectInitialized(crate::event::ProjectInitialized {
                project: "p".into(),
            }),
            ..sample()
        };
        assert_eq!(decode_epoch_view(&encode(&other)).unwrap(), None);
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode_epoch_view(&long).is_err());
        // What the view cannot read goes to the full decode, which says why.
        assert_eq!(decode_epoch_view(&bytes[..bytes.len() - 3]).unwrap(), None);
        assert!(decode(1, &bytes[..bytes.len() - 3]).is_err());
        let at = bytes.windows(7).position(|w| w == b"exp-001").unwrap();
        let mut evil = bytes.clone();
        evil[at..at + 7].copy_from_slice(b"../../x");
        assert!(decode_epoch_view(&evil).is_err());
    }

    #[test]
    fn huge_claimed_lengths_fail_without_allocating_them() {
        // Version byte, then a time, then an `appended` tag of Some and a string length of 2^40.
        let mut bytes = vec![EVENT_ENCODING_VERSION, 0, 0, 0, 253];
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode(1, &bytes).is_err());
    }
}

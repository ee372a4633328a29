//! The JSON edge: non-finite floats, metric maps, and parsing input lines.
//!
//! Python's `json` writes NaN and infinities as the bare tokens `NaN`, `Infinity`, `-Infinity`,
//! which are not JSON. zolog accepts them (and the strings `"NaN"`, `"Infinity"`, `"-Infinity"`)
//! wherever a float is due, and writes non-finite floats as those strings, so its output is strict
//! JSON that round-trips exactly.

use std::borrow::Cow;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Event, NewEvent, Payload, Source, SourceKind, Timestamp};

/// Schema-only stand-in for a float that may be non-finite.
pub struct Float;

impl JsonSchema for Float {
    fn schema_name() -> Cow<'static, str> {
        "Float".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A number; NaN and infinities as the strings \"NaN\", \"Infinity\", \"-Infinity\".",
            "anyOf": [
                {"type": "number"},
                {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}
            ]
        })
    }
}

fn token(v: f64) -> &'static str {
    if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

fn serialize_f64<S: Serializer>(v: f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(v)
    } else {
        s.serialize_str(token(v))
    }
}

fn parse_token(t: &str) -> Option<f64> {
    match t {
        "NaN" | "nan" | "-NaN" => Some(f64::NAN),
        "Infinity" | "inf" | "+Infinity" => Some(f64::INFINITY),
        "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

struct F64Visitor;

impl Visitor<'_> for F64Visitor {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number (or NaN, Infinity, -Infinity)")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        parse_token(v).ok_or_else(|| E::invalid_type(de::Unexpected::Str(v), &self))
    }
}

/// `#[serde(with = "json::float")]` for `f64` fields.
pub mod float {
    use super::*;
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        serialize_f64(*v, s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        d.deserialize_any(F64Visitor)
    }
}

/// `#[serde(with = "json::opt_float")]` for `Option<f64>` fields (null is None).
pub mod opt_float {
    use super::*;
    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => serialize_f64(*v, s),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        struct OptVisitor;
        impl<'de> Visitor<'de> for OptVisitor {
            type Value = Option<f64>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, NaN, Infinity, -Infinity or null")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(F64Visitor).map(Some)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Some(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Some(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Some(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                F64Visitor.visit_str(v).map(Some)
            }
        }
        d.deserialize_option(OptVisitor)
    }
}

/// Metric name → value, in the order the trainer gave them. Values may be NaN or infinite.
#[derive(Debug, Clone, Default, PartialEq, bincode::Encode, bincode::Decode)]
pub struct Metrics(pub Vec<(String, f64)>);

impl Metrics {
    pub fn new() -> Metrics {
        Metrics(Vec::new())
    }
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|&(_, v)| v)
    }
    /// Set `name` (replacing an earlier value of the same name).
    pub fn insert(&mut self, name: impl Into<String>, value: f64) {
        let name = name.into();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(n, v)| (n.as_str(), *v))
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Bitwise equality: NaN equals NaN. For round-trip checks.
    pub fn same_bits(&self, other: &Metrics) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| a.0 == b.0 && a.1.to_bits() == b.1.to_bits())
    }
}

impl FromIterator<(String, f64)> for Metrics {
    fn from_iter<T: IntoIterator<Item = (String, f64)>>(iter: T) -> Self {
        let mut m = Metrics::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

impl Serialize for Metrics {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct V(f64);
        impl Serialize for V {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serialize_f64(self.0, s)
            }
        }
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, &V(*v))?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Metrics {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = Metrics;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of metric name to number")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Metrics, E> {
                Ok(Metrics::new())
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Metrics, A::Error> {
                struct V(f64);
                impl<'de> Deserialize<'de> for V {
                    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                        d.deserialize_any(F64Visitor).map(V)
                    }
                }
                let mut m = Metrics(Vec::with_capacity(a.size_hint().unwrap_or(4).min(64)));
                while let Some((k, V(v))) = a.next_entry::<String, V>()? {
                    m.insert(k, v);
                }
                Ok(m)
            }
        }
        d.deserialize_any(MapVisitor)
    }
}

impl JsonSchema for Metrics {
    fn schema_name() -> Cow<'static, str> {
        "Metrics".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let float = g.subschema_for::<Float>();
        schemars::json_schema!({
            "type": "object",
            "description": "Metric name to value, in the order given.",
            "additionalProperties": float
        })
    }
}

/// Rewrite Python's bare `NaN`, `Infinity` and `-Infinity` tokens (outside strings) into the
/// strings zolog's float fields accept. Borrows when there is nothing to rewrite.
pub fn normalize_nonfinite(line: &str) -> Cow<'_, str> {
    // The tokens start with "N" or "I" (cheap to look for first; most lines have neither).
    if memchr::memchr2(b'N', b'I', line.as_bytes()).is_none()
        || (!line.contains("NaN") && !line.contains("Infinity"))
    {
        return Cow::Borrowed(line);
    }
    let b = line.as_bytes();
    let mut out = String::with_capacity(line.len() + 8);
    let mut i = 0;
    let mut in_str = false;
    let mut last = 0;
    while i < b.len() {
        let c = b[i];
        if in_str {
            match c {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_str = true;
            i += 1;
            continue;
        }
        let rest = &b[i..];
        let tok = if rest.starts_with(b"NaN") {
            Some("NaN")
        } else if rest.starts_with(b"Infinity") {
            Some("Infinity")
        } else if rest.starts_with(b"-Infinity") {
            Some("-Infinity")
        } else {
            None
        };
        match tok {
            Some(t) => {
                out.push_str(&line[last..i]);
                out.push('"');
                out.push_str(t);
                out.push('"');
                i += t.len();
                last = i;
            }
            None => i += 1,
        }
    }
    if last == 0 {
        return Cow::Borrowed(line);
    }
    out.push_str(&line[last..]);
    Cow::Owned(out)
}

/// An input line that could not be turned into an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LineError {
    /// Column (1-based) where the JSON parser stopped, when it knows.
    pub column: Option<usize>,
    pub message: String,
}

/// An event as given on input: an envelope (what `zolog log` prints: `seq` and `appended` are
/// ignored, since the log assigns them) or a bare payload (`{"type": "EpochEnded", ...}`).
#[derive(Debug, Clone, PartialEq)]
pub struct InputEvent {
    pub time: Option<Timestamp>,
    pub source: Option<Source>,
    pub payload: Payload,
}

impl InputEvent {
    /// Encode it as [`InputEvent::into_new`] would make it, appended at `now`, onto `out`.
    pub fn encode_into(&self, default_source: &Source, now: Timestamp, out: &mut Vec<u8>) {
        let source = self.source.as_ref().unwrap_or(default_source);
        let (time, appended) = match self.time {
            Some(t) => (t, (now != t).then_some(now)),
            None => (now, None),
        };
        super::codec::encode_parts_into(time, appended, source, &self.payload, out);
    }

    /// Give it its times and source: `time` defaults to now; `appended` is set when the input
    /// named a time of its own.
    pub fn into_new(self, default_source: &Source) -> NewEvent {
        let source = self.source.unwrap_or_else(|| default_source.clone());
        match self.time {
            Some(t) => NewEvent::at(t, source, self.payload),
            None => NewEvent::now(source, self.payload),
        }
    }
}

/// An input envelope; `P` is how its payload is read ([`Payload`], or [`FastPayload`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeIn<P> {
    #[serde(default)]
    #[allow(dead_code)]
    seq: Option<u64>,
    #[serde(default)]
    time: Option<Timestamp>,
    #[serde(default)]
    #[allow(dead_code)]
    appended: Option<de::IgnoredAny>,
    #[serde(default)]
    source: Option<Source>,
    payload: P,
}

fn describe<E: fmt::Display>(err: serde_path_to_error::Error<E>) -> String {
    let path = err.path().to_string();
    if path == "." || path.is_empty() {
        err.into_inner().to_string()
    } else {
        format!("at {path}: {}", err.into_inner())
    }
}

/// A payload object whose first key is `type`, deserialized straight into its variant's struct.
///
/// serde's internally tagged enums (`#[serde(tag = "type")]`) buffer the whole object into an
/// intermediate tree before they look at the tag, which made parsing most of the cost of
/// `zolog append`. Trainers and `zolog log` write `type` first; for them this reads the tag, then
/// hands the rest of the same map to the variant's own `Deserialize`. Anything else (another key
/// first) is an error here, and the caller falls back to the derived, order-independent parse,
/// so this path accepts nothing that path would not, and yields the same value.
struct TypeFirst;

impl<'de> Visitor<'de> for TypeFirst {
    type Value = Payload;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object whose first key is \"type\"")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Payload, A::Error> {
        use super::*;
        use serde::de::value::MapAccessDeserializer;
        let first: Option<Cow<'de, str>> = map.next_key_seed(CowStr)?;
        if first.as_deref() != Some("type") {
            return Err(de::Error::custom("`type` is not the first key"));
        }
        let kind: Cow<'de, str> = map.next_value_seed(CowStr)?;
        let rest = MapAccessDeserializer::new(map);
        Ok(match &*kind {
            "ProjectInitialized" => Payload::ProjectInitialized(Deserialize::deserialize(rest)?),
            "ExperimentMinted" => Payload::ExperimentMinted(Deserialize::deserialize(rest)?),
            "ExperimentStatusChanged" => {
                Payload::ExperimentStatusChanged(Deserialize::deserialize(rest)?)
            }
            "ResultRecorded" => Payload::ResultRecorded(Deserialize::deserialize(rest)?),
            "NextIdeasRecorded" => Payload::NextIdeasRecorded(Deserialize::deserialize(rest)?),
            "NoteAdded" => Payload::NoteAdded(Deserialize::deserialize(rest)?),
            "TrainingStarted" => Payload::TrainingStarted(Deserialize::deserialize(rest)?),
            "EpochEnded" => Payload::EpochEnded(Deserialize::deserialize(rest)?),
            "CheckpointSaved" => Payload::CheckpointSaved(Deserialize::deserialize(rest)?),
            "TrainingEnded" => Payload::TrainingEnded(Deserialize::deserialize(rest)?),
            "CheckerConfigured" => Payload::CheckerConfigured(Deserialize::deserialize(rest)?),
            "AlertRaised" => Payload::AlertRaised(Deserialize::deserialize(rest)?),
            "RunKilled" => Payload::RunKilled(Deserialize::deserialize(rest)?),
            "IngestAdvanced" => Payload::IngestAdvanced(Deserialize::deserialize(rest)?),
            other => return Err(de::Error::unknown_variant(other, &Payload::KINDS)),
        })
    }
}

/// A string, borrowed from the input when it has no escapes.
struct CowStr;

impl<'de> de::DeserializeSeed<'de> for CowStr {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(V)
    }
}

/// A payload with `type` first, through [`TypeFirst`].
struct FastPayload(Payload);

impl<'de> Deserialize<'de> for FastPayload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TypeFirst).map(FastPayload)
    }
}

/// [`EnvelopeIn`] with its payload read through [`TypeFirst`].
type FastEnvelopeIn = EnvelopeIn<FastPayload>;

fn from_str_fast<'a, T: Deserialize<'a>>(text: &'a str) -> Option<T> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = T::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(v)
}

/// Parse one input line into an event.
pub fn parse_input_line(line: &str) -> Result<InputEvent, LineError> {
    let text = normalize_nonfinite(line.trim_end_matches(['\r', '\n']));
    let text: &str = &text;
    if text.trim().is_empty() {
        return Err(LineError {
            column: None,
            message: "empty line".into(),
        });
    }
    // Fast paths, without buffering: a bare payload with `type` first, as trainers write it,
    // and an envelope, as `zolog log` prints it.
    if let Some(FastPayload(p)) = from_str_fast(text) {
        return Ok(InputEvent {
            time: None,
            source: None,
            payload: p,
        });
    }
    // `"payload"` may also be the text of some field of a bare payload: an envelope is only tried
    // first, never assumed.
    let maybe_envelope = text.contains("\"payload\"");
    if maybe_envelope && let Some(e) = from_str_fast::<FastEnvelopeIn>(text) {
        return Ok(InputEvent {
            time: e.time,
            source: e.source,
            payload: e.payload.0,
        });
    }
    // Any key order: the derived parse.
    if maybe_envelope && let Ok(e) = serde_json::from_str::<EnvelopeIn<Payload>>(text) {
        return Ok(InputEvent {
            time: e.time,
            source: e.source,
            payload: e.payload,
        });
    }
    if let Ok(p) = serde_json::from_str::<Payload>(text) {
        return Ok(InputEvent {
            time: None,
            source: None,
            payload: p,
        });
    }
    Err(explain(text, maybe_envelope))
}

/// Say precisely why `text` is not an event: the JSON syntax error with its column, or the field
/// (with its path, e.g. `payload.metrics.loss`) that is missing, unknown or of the wrong type.
fn explain(text: &str, is_envelope: bool) -> LineError {
    let mut value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return LineError {
                column: Some(e.column()).filter(|&c| c > 0),
                message: format!("malformed JSON: {e}"),
            };
        }
    };
    let (payload, prefix) = if is_envelope && value.get("payload").is_some() {
        // Check the envelope's own fields first.
        let mut shell = value.clone();
        shell["payload"] = serde_json::json!({"type": "ProjectInitialized", "project": ""});
        if let Err(e) = serde_path_to_error::deserialize::<_, EnvelopeIn<Payload>>(shell) {
            return LineError {
                column: None,
                message: describe(e),
            };
        }
        (value["payload"].take(), "payload.")
    } else {
        (value, "")
    };
    let message = match explain_payload(payload) {
        Some(m) => format!("{prefix}{m}").replace("payload.at ", "at payload."),
        None => "not a valid event".to_owned(),
    };
    LineError {
        column: None,
        message,
    }
}

fn explain_payload(mut v: serde_json::Value) -> Option<String> {
    let Some(obj) = v.as_object_mut() else {
        return Some(format!("expected a JSON object, found {v}"));
    };
    let kind = match obj.remove("type") {
        None => return Some("missing field `type` (the event kind, e.g. \"EpochEnded\")".into()),
        Some(serde_json::Value::String(k)) => k,
        Some(other) => return Some(format!("`type` must be a string, found {other}")),
    };
    fn check<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Option<String> {
        serde_path_to_error::deserialize::<_, T>(v)
            .err()
            .map(describe)
    }
    macro_rules! by_kind {
        ($($k:ident),* $(,)?) => {
            match kind.as_str() {
                $(stringify!($k) => check::<super::$k>(v),)*
                other => Some(format!(
                    "unknown event type {other:?}; types are: {}",
                    Payload::KINDS.join(", ")
                )),
            }
        };
    }
    crate::with_payload_kinds!(by_kind)
}

/// One event as a JSON line (no trailing newline).
pub fn to_line(event: &Event) -> String {
    serde_json::to_string(event).expect("events always serialize")
}

/// The default source for events given on the command line.
pub fn cli_source() -> Source {
    Source::this_process(SourceKind::Cli)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_tokens_outside_strings_become_strings() {
        let cases = [
            (r#"{"a":NaN}"#, r#"{"a":"NaN"}"#),
            (
                r#"{"a":-Infinity,"b":Infinity}"#,
                r#"{"a":"-Infinity","b":"Infinity"}"#,
            ),
            (
                r#"{"s":"NaN Infinity","a":1}"#,
                r#"{"s":"NaN Infinity","a":1}"#,
            ),
            (
                r#"{"s":"esc \" NaN","a":NaN}"#,
                r#"{"s":"esc \" NaN","a":"NaN"}"#,
            ),
            (r#"{"a":1.5}"#, r#"{"a":1.5}"#),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_nonfinite(input), want, "{input}");
        }
    }

    #[test]
    fn string_where_a_number_is_due_names_the_field() {
        let err = parse_input_line(
            r#"{"type":"EpochEnded","experiment_id":"exp-001","epoch":1,"metrics":{"loss":"abc"}}"#,
        )
        .unwrap_err();
        assert!(err.message.contains("loss"), "{}", err.message);
        assert!(err.message.contains("number"), "{}", err.message);
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        let e = parse_input_line(
            r#"{"type":"EpochEnded","experiment_id":"exp-001","epoch":1,"lr":0.1}"#,
        )
        .unwrap_err();
        assert!(e.message.contains("lr"), "{}", e.message);
        let e = parse_input_line(r#"{"type":"EpochFinished"}"#).unwrap_err();
        assert!(e.message.contains("EpochFinished"), "{}", e.message);
    }

    #[test]
    fn path_traversing_id_is_refused() {
        for id in ["../x", "/abs", "", "exp-1\u{0}", "exp-", "exp-1/../../x"] {
            let line =
                serde_json::json!({"type":"ExperimentMinted","experiment_id": id}).to_string();
            let e = parse_input_line(&line).unwrap_err();
            assert!(
                e.message.contains("invalid experiment id"),
                "{id:?}: {}",
                e.message
            );
        }
    }
}

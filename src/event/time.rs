//! UTC timestamps with nanosecond precision.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Nanoseconds since the Unix epoch, UTC. JSON form: RFC 3339 (`2026-11-24T09:53:33.639907123Z`);
/// accepted on input with any offset (`+00:00`), or without one (taken as UTC, as Python's naive
/// `isoformat()` writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Timestamp {
        let ns = jiff::Timestamp::now().as_nanosecond();
        Timestamp(i64::try_from(ns).unwrap_or(i64::MAX))
    }

    pub fn from_nanos(ns: i64) -> Timestamp {
        Timestamp(ns)
    }

    pub fn nanos(&self) -> i64 {
        self.0
    }

    pub fn seconds_f64(&self) -> f64 {
        self.0 as f64 / 1e9
    }

    fn jiff(&self) -> jiff::Timestamp {
        jiff::Timestamp::from_nanosecond(i128::from(self.0)).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }

    pub fn parse(s: &str) -> Result<Timestamp, String> {
        let t = match s.parse::<jiff::Timestamp>() {
            Ok(t) => t,
            Err(first) => match s.parse::<jiff::civil::DateTime>() {
                Ok(dt) => jiff::tz::TimeZone::UTC
                    .to_timestamp(dt)
                    .map_err(|e| e.to_string())?,
                Err(_) => return Err(format!("invalid timestamp {s:?}: {first}")),
            },
        };
        i64::try_from(t.as_nanosecond())
            .map(Timestamp)
            .map_err(|_| format!("timestamp {s:?} is out of range"))
    }

    /// The reference's registry form: microseconds and `Z` (`2026-11-24T09:53:33.639907Z`).
    pub fn to_micros_z(&self) -> String {
        self.jiff().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // RFC 3339, UTC, with as many fractional digits as needed (up to 9).
        fmt::Display::fmt(&self.jiff(), f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 time, UTC on output (nanosecond precision)."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reference_forms() {
        let a = Timestamp::parse("2026-11-24T09:50:05.866809+00:00").unwrap();
        let b = Timestamp::parse("2026-11-24T09:50:05.866809Z").unwrap();
        let c = Timestamp::parse("2026-11-24T09:50:05.866809").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.to_micros_z(), "2026-11-24T09:50:05.866809Z");
        assert_eq!(a.to_string(), "2026-11-24T09:50:05.866809Z");
        assert!(Timestamp::parse("yesterday").is_err());
    }

    #[test]
    fn nanoseconds_round_trip_through_text() {
        let t = Timestamp(1_795_000_000_123_456_789);
        assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
    }
}

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
        self.micros_z().as_str().to_owned()
    }

    /// [`Timestamp::to_micros_z`]'s text without allocating: listing 10,000 experiments formats
    /// 20,000 of them. The same bytes as jiff's `%Y-%m-%dT%H:%M:%S%.6fZ` (checked against it):
    /// the calendar date of the floor of the seconds, and the microseconds truncated.
    pub fn micros_z(&self) -> MicrosZ {
        const NS: i64 = 1_000_000_000;
        let (secs, ns) = (self.0.div_euclid(NS), self.0.rem_euclid(NS));
        let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        let mut b = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |at: usize, width: usize, mut v: u64| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        // i64 nanoseconds span the years 1677 to 2262: always four digits.
        put(0, 4, y as u64);
        put(5, 2, u64::from(m));
        put(8, 2, u64::from(d));
        put(11, 2, (sod / 3600) as u64);
        put(14, 2, (sod / 60 % 60) as u64);
        put(17, 2, (sod % 60) as u64);
        put(20, 6, (ns / 1000) as u64);
        MicrosZ(b)
    }
}

/// `2026-11-24T09:53:33.639907Z`, on the stack ([`Timestamp::micros_z`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MicrosZ([u8; 27]);

impl MicrosZ {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII digits and separators")
    }
}

impl fmt::Display for MicrosZ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
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
    fn micros_z_is_what_jiff_writes() {
        let jiff = |t: Timestamp| t.jiff().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let mut cases = vec![
            0,
            -1,
            1,
            999,
            1_000,
            i64::MIN,
            i64::MAX,
            -1_000_000_000,
            -86_400_000_000_000,
            951_782_400_000_000_000,   // 2000-02-29
            4_107_542_399_999_999_999, // 2100-02-28T23:59:59.999999999
            1_795_514_013_639_907_000,
        ];
        // Seeded: the whole range, and days near the epoch.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let x = crate::testing::xorshift(&mut state);
            cases.push(x as i64);
            let secs = (x % (400 * 366 * 86_400)) as i64 - 200 * 366 * 86_400;
            cases.push(secs * 1_000_000_000 + (x >> 34) as i64 % 1_000_000_000);
        }
        for t in cases {
            let t = Timestamp(t);
            assert_eq!(t.micros_z().as_str(), jiff(t), "{}", t.0);
        }
    }

    #[test]
    fn nanoseconds_round_trip_through_text() {
        let t = Timestamp(1_795_000_000_123_456_789);
        assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
    }
}

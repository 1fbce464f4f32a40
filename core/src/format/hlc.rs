//! CockroachDB hybrid-logical-clock timestamps.
//!
//! Changefeeds order everything by HLC `(wall nanoseconds, logical)`: the `updated` and
//! `mvcc_timestamp` fields, RESOLVED watermarks and the 33-digit timestamp that starts every
//! object name. One type with a total order keeps every comparison in the connector honest.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Timelike, Utc};

/// Decimal scale of an HLC written as a decimal (`<wall>.<10-digit logical>`).
pub const HLC_DECIMAL_SCALE: i8 = 10;
/// Arrow/Delta precision used to store an HLC as a decimal: 19 wall digits + 10 logical digits,
/// rounded up to the widest 128-bit decimal so Databricks sees a plain `DECIMAL(38,10)`.
pub const HLC_DECIMAL_PRECISION: u8 = 38;

/// A CockroachDB HLC timestamp. Ordered by wall time, then logical counter.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc {
    /// Nanoseconds since the Unix epoch (UTC).
    pub wall: i64,
    /// Logical counter breaking ties between events with the same wall time.
    pub logical: u32,
}

/// Why an HLC string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HlcError {
    #[error("`{0}` is not an HLC timestamp (expected `<wall nanos>.<10-digit logical>`)")]
    Decimal(String),
    #[error("`{0}` is not a 33-digit changefeed timestamp (YYYYMMDDHHMMSS + 9 nanos + 10 logical)")]
    Ts33(String),
}

impl Hlc {
    pub const fn new(wall: i64, logical: u32) -> Self {
        Self { wall, logical }
    }

    /// The HLC successor (`logical + 1`), as CockroachDB's `Timestamp.Next()`.
    pub fn next(self) -> Self {
        match self.logical.checked_add(1) {
            Some(logical) => Self::new(self.wall, logical),
            None => Self::new(self.wall + 1, 0),
        }
    }

    /// Parses `%d.%010d`, the form of `updated`, `mvcc_timestamp` and RESOLVED contents.
    /// Also accepts a bare wall time and CockroachDB's `?` suffix on synthetic timestamps.
    pub fn parse_decimal(s: &str) -> Result<Self, HlcError> {
        let err = || HlcError::Decimal(s.to_owned());
        let body = s.strip_suffix('?').unwrap_or(s);
        let (wall, logical) = match body.split_once('.') {
            Some((w, l)) => (w, l),
            None => (body, ""),
        };
        if wall.is_empty() || !wall.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        if logical.len() > 10 || !logical.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let wall: i64 = wall.parse().map_err(|_| err())?;
        // The logical part is a fixed 10-digit field: "1" after the dot would mean 1000000000.
        let logical = if logical.is_empty() {
            0
        } else {
            let digits: u64 = logical.parse().map_err(|_| err())?;
            let scaled = digits * 10u64.pow(10 - logical.len() as u32);
            u32::try_from(scaled).map_err(|_| err())?
        };
        Ok(Self::new(wall, logical))
    }

    /// Parses the 33-digit form used in object names: `YYYYMMDDHHMMSS` + 9 digits of
    /// nanoseconds + 10 digits of logical (`cloudStorageFormatTime`, `%s%09d%010d`).
    pub fn parse_ts33(s: &str) -> Result<Self, HlcError> {
        let err = || HlcError::Ts33(s.to_owned());
        if s.len() != 33 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().map_err(|_| err());
        let date =
            chrono::NaiveDate::from_ymd_opt(n(0..4)? as i32, n(4..6)?, n(6..8)?).ok_or_else(err)?;
        let time =
            chrono::NaiveTime::from_hms_opt(n(8..10)?, n(10..12)?, n(12..14)?).ok_or_else(err)?;
        let secs = date.and_time(time).and_utc().timestamp();
        let nanos = i64::from(n(14..23)?);
        let logical = s[23..33].parse::<u64>().map_err(|_| err())?;
        let logical = u32::try_from(logical).map_err(|_| err())?;
        let wall = secs
            .checked_mul(1_000_000_000)
            .and_then(|w| w.checked_add(nanos))
            .ok_or_else(err)?;
        Ok(Self::new(wall, logical))
    }

    /// Renders the 33-digit object-name form.
    pub fn ts33(self) -> String {
        let t = self.to_datetime();
        format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}{:09}{:010}",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond(),
            self.logical
        )
    }

    /// Wall time as a UTC date-time (partition folders and commit timestamps derive from it).
    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.wall)
    }

    /// Wall time in microseconds, the resolution of Delta timestamps.
    pub fn wall_micros(self) -> i64 {
        self.wall.div_euclid(1000)
    }

    /// The HLC as an unscaled `DECIMAL(38,10)` value: `wall * 10^10 + logical`, which orders
    /// exactly like the HLC and equals CockroachDB's `cluster_logical_timestamp()`.
    pub fn to_decimal_i128(self) -> i128 {
        i128::from(self.wall) * 10_000_000_000 + i128::from(self.logical)
    }

    /// The [`Display`](fmt::Display) text (`%d.%010d`) written into `buf`, without the
    /// formatting machinery or an allocation: every row a step writes carries one.
    pub fn decimal_text(self, buf: &mut [u8; 32]) -> &str {
        // The logical part, zero-padded to its 10 digits, after the dot.
        buf[21..].fill(b'0');
        crate::format::values::digits_before(buf, 32, u64::from(self.logical));
        buf[21] = b'.';
        let mut n = crate::format::values::digits_before(buf, 21, self.wall.unsigned_abs());
        if self.wall < 0 {
            n -= 1;
            buf[n] = b'-';
        }
        std::str::from_utf8(&buf[n..]).expect("digits, a dot and a sign are ASCII")
    }

    /// Inverse of [`Hlc::to_decimal_i128`].
    pub fn from_decimal_i128(v: i128) -> Option<Self> {
        let wall = i64::try_from(v.div_euclid(10_000_000_000)).ok()?;
        let logical = u32::try_from(v.rem_euclid(10_000_000_000)).ok()?;
        Some(Self::new(wall, logical))
    }
}

/// `%d.%010d`, exactly as CockroachDB prints `updated` and RESOLVED values.
impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:010}", self.wall, self.logical)
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({self})")
    }
}

impl FromStr for Hlc {
    type Err = HlcError;
    /// Accepts both the decimal form and the 33-digit form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 33 && !s.contains('.') {
            Self::parse_ts33(s)
        } else {
            Self::parse_decimal(s)
        }
    }
}

impl serde::Serialize for Hlc {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Hlc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decimal_text_prints_what_display_prints() {
        let mut buf = [0; 32];
        for (wall, logical) in [
            (0, 0),
            (1, 1),
            (1_714_751_616_027_474_000, 0),
            (1_714_751_616_027_474_000, 2_147_483_647),
            (-5, 3),
            (i64::MAX, u32::MAX),
            (i64::MIN, u32::MAX),
        ] {
            let h = Hlc::new(wall, logical);
            assert_eq!(h.decimal_text(&mut buf), h.to_string());
        }
    }

    #[test]
    fn fixture_values() {
        let h = Hlc::parse_decimal("1714751616027474000.0000000000").unwrap();
        assert_eq!(h, Hlc::new(1_714_751_616_027_474_000, 0));
        assert_eq!(h.ts33(), "202405031553360274740000000000000");
        assert_eq!(
            Hlc::parse_ts33("202405031553360274740000000000000").unwrap(),
            h
        );
        assert_eq!(h.to_string(), "1714751616027474000.0000000000");
        // The golden test of the sink: wall = 5ns.
        assert_eq!(Hlc::new(5, 0).ts33(), "197001010000000000000050000000000");
        assert_eq!("5.0000000000".parse::<Hlc>().unwrap(), Hlc::new(5, 0));
    }

    #[test]
    fn logical_is_a_fixed_width_field() {
        assert_eq!(Hlc::parse_decimal("7.0000000001").unwrap(), Hlc::new(7, 1));
        assert_eq!(
            Hlc::parse_decimal("7.1").unwrap(),
            Hlc::new(7, 1_000_000_000)
        );
        assert_eq!(Hlc::parse_decimal("7").unwrap(), Hlc::new(7, 0));
        assert_eq!(Hlc::parse_decimal("7.0000000002?").unwrap(), Hlc::new(7, 2));
        for bad in [
            "",
            ".1",
            "a.1",
            "1.x",
            "1.00000000001",
            "-1.0",
            "1.9999999999",
        ] {
            assert!(Hlc::parse_decimal(bad).is_err(), "{bad}");
        }
        for bad in [
            "2024",
            "20240503155336027474000000000000x",
            "202413031553360274740000000000000",
        ] {
            assert!(Hlc::parse_ts33(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn next_is_the_hlc_successor() {
        assert_eq!(Hlc::new(1, 0).next(), Hlc::new(1, 1));
        assert_eq!(Hlc::new(1, u32::MAX).next(), Hlc::new(2, 0));
    }

    fn any_hlc() -> impl Strategy<Value = Hlc> {
        // Years 1970..2200: every such wall time has a 14-digit date-time prefix.
        (0i64..7_258_118_400_000_000_000, 0u32..=4_294_967_295).prop_map(|(w, l)| Hlc::new(w, l))
    }

    proptest! {
        #[test]
        fn decimal_round_trip(h in any_hlc()) {
            prop_assert_eq!(Hlc::parse_decimal(&h.to_string()).unwrap(), h);
            prop_assert_eq!(Hlc::from_decimal_i128(h.to_decimal_i128()).unwrap(), h);
        }

        #[test]
        fn ts33_round_trip_and_order(a in any_hlc(), b in any_hlc()) {
            prop_assert_eq!(Hlc::parse_ts33(&a.ts33()).unwrap(), a);
            prop_assert_eq!(a.ts33().cmp(&b.ts33()), a.cmp(&b));
            prop_assert_eq!(a.to_decimal_i128().cmp(&b.to_decimal_i128()), a.cmp(&b));
        }
    }
}

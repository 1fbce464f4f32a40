//! Byte sizes as people write them: `268435456`, `256MiB`, `1 GiB`, `64MB`, `1.5GiB` — for the
//! command line's `--max-window-bytes` and friends and the configuration's byte fields (a
//! number there stays a number).

use serde::{Deserialize, Deserializer};

/// A byte size that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a byte size: write a number of bytes, optionally with a unit (KiB, MiB, GiB, TiB, or KB, MB, GB, TB), e.g. 256MiB"
)]
pub struct ByteSizeError(pub String);

/// Parses a byte size: binary units (`KiB` = 1024) or decimal ones (`KB` = 1000), `B` or none
/// for bytes; case-insensitive; a fraction is allowed with a unit.
pub fn parse(text: &str) -> Result<u64, ByteSizeError> {
    let bad = || ByteSizeError(text.to_owned());
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number = number.replace('_', "");
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(factor).ok_or_else(bad);
    }
    match number.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 0.0 && factor > 1 => {
            let v = f * factor as f64;
            (v < u64::MAX as f64)
                .then_some(v.round() as u64)
                .ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

/// For `Option<u64>` configuration fields: a number, or a string with a unit.
pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::Number(n)) => Ok(Some(n)),
        Some(Size::Text(t)) => parse(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// [`deserialize_opt`] for `Option<usize>` fields.
pub fn deserialize_opt_usize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    deserialize_opt(d)?
        .map(|n| usize::try_from(n).map_err(serde::de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_and_without_units() {
        assert_eq!(parse("268435456"), Ok(268_435_456));
        assert_eq!(parse("256MiB"), Ok(256 << 20));
        assert_eq!(parse("256 mib"), Ok(256 << 20));
        assert_eq!(parse("1GiB"), Ok(1 << 30));
        assert_eq!(parse("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse("64MB"), Ok(64_000_000));
        assert_eq!(parse("128k"), Ok(128 << 10));
        assert_eq!(parse("1_000B"), Ok(1000));
        for bad in [
            "",
            "MiB",
            "12 parsecs",
            "-1",
            "1.5",
            "1e3",
            "99999999999TiB",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(
            parse("7 apples")
                .unwrap_err()
                .to_string()
                .contains("256MiB")
        );
    }

    #[test]
    fn configuration_takes_numbers_and_strings() {
        #[derive(Deserialize)]
        struct C {
            #[serde(default, deserialize_with = "deserialize_opt")]
            n: Option<u64>,
        }
        let c: C = serde_json::from_str(r#"{"n": "64MiB"}"#).unwrap();
        assert_eq!(c.n, Some(64 << 20));
        let c: C = serde_json::from_str(r#"{"n": 5}"#).unwrap();
        assert_eq!(c.n, Some(5));
        let c: C = serde_json::from_str("{}").unwrap();
        assert_eq!(c.n, None);
        assert!(serde_json::from_str::<C>(r#"{"n": "lots"}"#).is_err());
    }
}

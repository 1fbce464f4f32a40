//! Text forms of CockroachDB values: parsing what the changefeed writes, and writing what it would.
//!
//! Both formats carry many types as text (Parquet: DECIMAL, DATE, TIMESTAMP[TZ]; JSON: nearly
//! everything), so one set of parsers serves both decoders, and the simulator writes with the
//! matching formatters.

use std::fmt::Write as _;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use serde_json::value::RawValue;

/// A value that does not read as its column's type; the decoder adds file, line/row and column
/// ([`crate::format::decode::DecodeError::Value`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// `what` names the type as a phrase: "a BOOL", "a date (YYYY-MM-DD)", …
    #[error("`{text}` is not {what}")]
    NotA { text: String, what: &'static str },
    #[error(
        "`{text}` cannot be stored in decimal({precision},{scale}); declare the column as STRING in the configuration"
    )]
    DecimalSpecial {
        text: String,
        precision: u8,
        scale: i8,
    },
    #[error("`{text}` does not fit in decimal({precision},{scale})")]
    DecimalRange {
        text: String,
        precision: u8,
        scale: i8,
    },
    #[error("`{text}` has more than {scale} fractional digits")]
    DecimalScale { text: String, scale: i8 },
    #[error("`{text}` has an odd number of hex digits")]
    OddHex { text: String },
    #[error("invalid JSON string {raw}: {why}")]
    JsonString { raw: String, why: &'static str },
    /// serde_json's message (its error is neither `Clone` nor `Eq`).
    #[error("invalid JSON {what}: {message}")]
    Json { what: &'static str, message: String },
    #[error(
        "JSON value nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects (crdb-delta's limit, against stack overflow)"
    )]
    TooDeep,
    /// A Parquet column whose physical type cannot become the column's type.
    #[error("cannot read a {from} column as {to}")]
    Cast { from: String, to: String },
}

pub(crate) fn not_a(text: &str, what: &'static str) -> ValueError {
    ValueError::NotA {
        text: text.to_owned(),
        what,
    }
}

const EPOCH: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => unreachable!(),
};

/// Parses decimal text (`3.140000000`, `-1E+2`, `4E+2`) into an unscaled `i128` at `scale`,
/// refusing values that would lose digits or exceed `precision`. NaN and ±Infinity have no
/// decimal representation in Delta and are refused with a message saying so.
pub fn parse_decimal(text: &str, precision: u8, scale: i8) -> Result<i128, ValueError> {
    let bad = || not_a(text, "a decimal");
    if matches!(text, "NaN" | "Infinity" | "-Infinity" | "+Infinity") {
        return Err(ValueError::DecimalSpecial {
            text: text.to_owned(),
            precision,
            scale,
        });
    }
    let (mantissa, exp) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], text[i + 1..].parse::<i32>().map_err(|_| bad())?),
        None => (text, 0),
    };
    let (neg, digits) = match mantissa.as_bytes().first() {
        Some(b'-') => (true, &mantissa[1..]),
        Some(b'+') => (false, &mantissa[1..]),
        _ => (false, mantissa),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part
            .bytes()
            .chain(frac_part.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    // value = all_digits * 10^(exp - frac_len); we want value * 10^scale.
    let shift = exp - frac_part.len() as i32 + i32::from(scale);
    let all = format!("{int_part}{frac_part}");
    let all = all.trim_start_matches('0');
    let mut unscaled: i128 = 0;
    let too_big = || ValueError::DecimalRange {
        text: text.to_owned(),
        precision,
        scale,
    };
    let kept_len = (all.len() as i32 + shift.min(0)).max(0) as usize;
    if all[kept_len..].bytes().any(|b| b != b'0') {
        return Err(ValueError::DecimalScale {
            text: text.to_owned(),
            scale,
        });
    }
    for b in all[..kept_len].bytes() {
        unscaled = unscaled
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(b - b'0')))
            .ok_or_else(too_big)?;
    }
    for _ in 0..shift.max(0) {
        unscaled = unscaled.checked_mul(10).ok_or_else(too_big)?;
    }
    if unscaled >= 10i128.pow(u32::from(precision)) {
        return Err(too_big());
    }
    Ok(if neg { -unscaled } else { unscaled })
}

/// Renders an unscaled decimal with its scale (`314, 2` → `3.14`), as Arrow and Delta print it.
pub fn format_decimal(unscaled: i128, scale: i8) -> String {
    let neg = unscaled < 0;
    let digits = unscaled.unsigned_abs().to_string();
    let scale = scale.max(0) as usize;
    let mut out = String::with_capacity(digits.len() + 3);
    if neg {
        out.push('-');
    }
    if scale == 0 {
        out.push_str(&digits);
    } else if digits.len() > scale {
        let (i, f) = digits.split_at(digits.len() - scale);
        let _ = write!(out, "{i}.{f}");
    } else {
        let _ = write!(out, "0.{}{digits}", "0".repeat(scale - digits.len()));
    }
    out
}

/// `YYYY-MM-DD` → days since 1970-01-01.
pub fn parse_date(text: &str) -> Result<i32, ValueError> {
    let d = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| not_a(text, "a date (YYYY-MM-DD)"))?;
    Ok((d - EPOCH).num_days() as i32)
}

pub fn format_date(days: i32) -> String {
    (EPOCH + chrono::Duration::days(i64::from(days)))
        .format("%Y-%m-%d")
        .to_string()
}

/// Parses CockroachDB's timestamp texts into microseconds since the epoch (UTC for zoned values):
/// JSON `2019-01-02T03:04:05.5` / `…Z`, Parquet `2019-01-02 03:04:05.5` / `…+00` / `…-07:30`.
/// `zoned` says whether an offset is required (TIMESTAMPTZ) or forbidden (TIMESTAMP).
pub fn parse_timestamp(text: &str, zoned: bool) -> Result<i64, ValueError> {
    let bad = || {
        not_a(
            text,
            if zoned {
                "a TIMESTAMPTZ value"
            } else {
                "a TIMESTAMP value"
            },
        )
    };
    if text.len() < 19 || !matches!(text.as_bytes()[10], b'T' | b' ') {
        return Err(bad());
    }
    let (date, rest) = text.split_at(10);
    let rest = &rest[1..];
    let zone_at = rest[8..].find(['Z', '+', '-']).map(|i| i + 8);
    let (clock, zone) = match zone_at {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    if zoned != zone.is_some() {
        return Err(bad());
    }
    let naive = NaiveDateTime::parse_from_str(&format!("{date}T{clock}"), "%Y-%m-%dT%H:%M:%S%.f")
        .map_err(|_| bad())?;
    let offset_secs = match zone {
        None | Some("Z") => 0,
        Some(z) => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let mut secs = 0i64;
            for (i, part) in z[1..].split(':').enumerate() {
                let n: i64 = part.parse().map_err(|_| bad())?;
                if part.len() != 2 || i > 2 {
                    return Err(bad());
                }
                secs += n * [3600, 60, 1][i];
            }
            sign * secs
        }
    };
    let utc = naive.and_utc().timestamp_micros() - offset_secs * 1_000_000;
    Ok(utc)
}

/// `HH:MM:SS[.ffffff]` (trailing zeros trimmed, as CockroachDB's JSON writes TIME).
pub fn format_time_micros(micros: i64) -> String {
    let (secs, frac) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    push_fraction(&mut s, frac as u32 * 1000);
    s
}

fn push_fraction(s: &mut String, nanos: u32) {
    if nanos != 0 {
        let f = format!("{nanos:09}");
        let _ = write!(s, ".{}", f.trim_end_matches('0'));
    }
}

/// Microseconds since the epoch, rendered as CockroachDB writes TIMESTAMP in JSON
/// (`2019-01-02T03:04:05.5`) or, for Parquet, with a space (`2019-01-02 03:04:05.5`);
/// zoned values get `Z` (JSON) or `+00` (Parquet).
pub fn format_timestamp(micros: i64, zoned: bool, parquet: bool) -> String {
    let t = chrono::DateTime::from_timestamp_micros(micros)
        .expect("timestamp in range")
        .naive_utc();
    let sep = if parquet { ' ' } else { 'T' };
    let mut s = format!("{}{sep}{}", t.format("%Y-%m-%d"), t.format("%H:%M:%S"));
    push_fraction(&mut s, t.nanosecond());
    if zoned {
        s.push_str(if parquet { "+00" } else { "Z" });
    }
    s
}

/// Writes `v`'s decimal digits to end just before `buf[end]`; returns where they start. No
/// formatting machinery: every row a step keys or writes prints some (key texts, HLC texts).
pub fn digits_before(buf: &mut [u8], end: usize, mut v: u64) -> usize {
    let mut n = end;
    loop {
        n -= 1;
        buf[n] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return n;
        }
    }
}

/// Canonical lowercase UUID text (8-4-4-4-12) from its 16 bytes.
pub fn format_uuid(b: &[u8]) -> String {
    uuid_text(b, &mut [0; 36]).to_owned()
}

/// [`format_uuid`] into `buf`, without allocating: every value of a UUID column (the key of
/// tables keyed by `gen_random_uuid()`) is printed on the way in.
pub fn uuid_text<'a>(b: &[u8], buf: &'a mut [u8; 36]) -> &'a str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut o = 0;
    for (i, x) in b.iter().take(16).enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            buf[o] = b'-';
            o += 1;
        }
        buf[o] = HEX[usize::from(x >> 4)];
        buf[o + 1] = HEX[usize::from(x & 15)];
        o += 2;
    }
    std::str::from_utf8(&buf[..o]).expect("hex digits and dashes are ASCII")
}

/// Each byte's value as a lowercase hex digit; 0xFF for any other byte.
static HEX: [u8; 256] = {
    let mut t = [0xFF; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// The 16 bytes of a UUID text as [`uuid_text`] prints it (lowercase, hyphenated); `None` for
/// any other text (upper case, no hyphens, …). The key index parses every key of a file here,
/// so it is a table lookup per digit.
pub fn parse_uuid(b: &[u8]) -> Option<[u8; 16]> {
    let b: &[u8; 36] = b.try_into().ok()?;
    if b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    // The four groups' digits, each pair of hex digits one byte.
    let mut out = [0u8; 16];
    let mut bad = 0u8;
    let mut o = 0;
    for group in [&b[0..8], &b[9..13], &b[14..18], &b[19..23], &b[24..36]] {
        for pair in group.chunks_exact(2) {
            let (h, l) = (HEX[usize::from(pair[0])], HEX[usize::from(pair[1])]);
            bad |= h | l;
            out[o] = (h << 4) | (l & 15);
            o += 1;
        }
    }
    (bad & 0xF0 == 0).then_some(out)
}

/// CockroachDB writes BYTES in JSON as `\x` + lowercase hex.
pub fn parse_bytes_hex(text: &str) -> Result<Vec<u8>, ValueError> {
    let hex = text
        .strip_prefix("\\x")
        .ok_or_else(|| not_a(text, "a \\x-hex BYTES value"))?;
    if hex.len() % 2 != 0 {
        return Err(ValueError::OddHex {
            text: text.to_owned(),
        });
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| not_a(text, "hex")))
        .collect()
}

pub fn format_bytes_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("\\x");
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// Writes a JSON string exactly as CockroachDB's `json.go` does (format spec §3.2): only `"` and
/// `\` escaped, `\n` `\r` `\t` by name, other control bytes as `\u00xx`, everything else raw.
pub fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The deepest nesting of arrays and objects accepted in one JSON column value.
///
/// Our own walks over a value (type inference, [`crdb_json_text`]) recurse once per level, and
/// serde_json's `RawValue` parsing does not count depth, so without a bound a value nested
/// 10,000 levels overflows the stack and aborts the process. 128 is serde_json's own default
/// recursion limit (what a serde_json reader of the Delta table would accept anyway), far beyond
/// real documents, and keeps our recursion to 128 frames, well inside the 2 MiB stack of
/// tokio's blocking threads and of test threads.
pub const MAX_JSON_DEPTH: usize = 128;

/// The text of a JSON string (`raw` as the parser delivered it, e.g. a `RawValue`): a slice of
/// `raw` when it holds no escapes (no copy), decoded otherwise.
pub fn json_string(raw: &str) -> Result<std::borrow::Cow<'_, str>, ValueError> {
    let raw = raw.trim_ascii();
    if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"'))
        && plain_run(inner.as_bytes()) == inner.len()
    {
        return Ok(std::borrow::Cow::Borrowed(inner));
    }
    let mut out = String::with_capacity(raw.len());
    write_json_string_text(raw, &mut out)?;
    Ok(std::borrow::Cow::Owned(out))
}

/// Writes the text of the JSON string `raw` (quotes included) to `out`, escapes decoded, as
/// `serde_json` decodes them (a lone surrogate is an error). Writing straight into a column
/// builder saves the copy and the allocation a `String` per value costs.
pub fn write_json_string_text(raw: &str, out: &mut impl std::fmt::Write) -> Result<(), ValueError> {
    let raw = raw.trim_ascii();
    let bad = |why: &'static str| ValueError::JsonString {
        raw: raw.to_owned(),
        why,
    };
    let inner = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .ok_or_else(|| bad("not a quoted string"))?;
    let b = inner.as_bytes();
    let hex4 = |at: usize| -> Result<u32, ValueError> {
        inner
            .get(at..at + 4)
            .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| bad("invalid \\u escape"))
    };
    let (mut start, mut i) = (0, 0);
    loop {
        i += plain_run(&b[i..]);
        if i >= b.len() {
            break;
        }
        match b[i] {
            b'\\' => {
                let _ = out.write_str(&inner[start..i]);
                let esc = *b.get(i + 1).ok_or_else(|| bad("unfinished escape"))?;
                i += 2;
                let c = match esc {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    b'u' => {
                        let hi = hex4(i)?;
                        i += 4;
                        let code = match hi {
                            0xD800..=0xDBFF => {
                                if inner.get(i..i + 2) != Some("\\u") {
                                    return Err(bad("lone leading surrogate"));
                                }
                                let lo = hex4(i + 2)?;
                                if !(0xDC00..=0xDFFF).contains(&lo) {
                                    return Err(bad("lone leading surrogate"));
                                }
                                i += 6;
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            }
                            0xDC00..=0xDFFF => return Err(bad("lone trailing surrogate")),
                            c => c,
                        };
                        char::from_u32(code).ok_or_else(|| bad("invalid \\u escape"))?
                    }
                    _ => return Err(bad("invalid escape")),
                };
                let _ = out.write_char(c);
                start = i;
            }
            _ => return Err(bad("unescaped quote or control character")),
        }
    }
    let _ = out.write_str(&inner[start..]);
    Ok(())
}

/// The length of the prefix of `b` that a JSON string holds as is: no `"`, `\\` or control
/// character. Eight bytes at a time (string values are mostly such runs); for each word the
/// lowest flagged byte is exact, as a borrow only flags bytes above a true match.
pub(crate) fn plain_run(b: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let special = (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
            | zero_byte(w ^ (ONES * u64::from(b'"')))
            | zero_byte(w ^ (ONES * u64::from(b'\\')));
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + b[i..]
        .iter()
        .position(|c| matches!(c, b'"' | b'\\' | 0..=0x1f))
        .unwrap_or(b.len() - i)
}

/// Checks that raw JSON nests arrays and objects at most [`MAX_JSON_DEPTH`] levels (`1` is 0,
/// `[]` is 1, `[{}]` is 2). A linear scan without recursion, stopping at the first level too
/// deep, so it is safe on any input; brackets inside strings do not count. Malformed text is
/// left to the parser.
pub fn check_json_depth(raw: &str) -> Result<(), ValueError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in raw.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(ValueError::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Re-renders raw JSON in CockroachDB's JSONB text form: keys sorted byte-wise, `", "` and
/// `": "` separators, numbers kept digit for digit. JSONB columns read from JSON files thereby
/// equal the text Parquet files carry for the same value. Values nested deeper than
/// [`MAX_JSON_DEPTH`] are refused (the rendering recurses per level).
pub fn crdb_json_text(raw: &str) -> Result<String, ValueError> {
    check_json_depth(raw)?;
    let mut out = String::with_capacity(raw.len() + 8);
    write_crdb_json(&mut out, raw.trim())?;
    Ok(out)
}

fn write_crdb_json(out: &mut String, raw: &str) -> Result<(), ValueError> {
    let err = |e: serde_json::Error| ValueError::Json {
        what: "value",
        message: e.to_string(),
    };
    match raw.as_bytes().first() {
        Some(b'{') => {
            let map: std::collections::BTreeMap<String, &RawValue> =
                serde_json::from_str(raw).map_err(err)?;
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json_string(out, k);
                out.push_str(": ");
                write_crdb_json(out, v.get().trim())?;
            }
            out.push('}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(raw).map_err(err)?;
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_crdb_json(out, v.get().trim())?;
            }
            out.push(']');
        }
        Some(b'"') => {
            let s: String = serde_json::from_str(raw).map_err(err)?;
            write_json_string(out, &s);
        }
        _ => out.push_str(raw),
    }
    Ok(())
}

/// Formats a float the way CockroachDB's JSON encoder does (format spec §3.6): shortest
/// round-trip digits in General Decimal Arithmetic notation (`1.5`, `1E+2`, `1E-7`), and
/// the strings `"NaN"`, `"Infinity"`, `"-Infinity"`.
pub fn crdb_json_float(f: f64) -> String {
    if f.is_nan() {
        return "\"NaN\"".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "\"Infinity\""
        } else {
            "\"-Infinity\""
        }
        .into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: `d[.ddd]e[-]x`.
    let e = format!("{f:e}");
    let (mant, exp) = e.split_once('e').expect("exponent");
    let exp: i32 = exp.parse().expect("exponent digits");
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    // GDA: coefficient = digits, exponent = exp - (len - 1).
    let n = digits.len() as i32;
    let exponent = exp - (n - 1);
    let adjusted = exp;
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    if exponent <= 0 && adjusted >= -6 {
        if exponent == 0 {
            s.push_str(&digits);
        } else if -exponent < n {
            let (i, fr) = digits.split_at((n + exponent) as usize);
            let _ = write!(s, "{i}.{fr}");
        } else {
            let _ = write!(s, "0.{}{}", "0".repeat((-exponent - n) as usize), digits);
        }
    } else {
        let (first, rest) = digits.split_at(1);
        s.push_str(first);
        if !rest.is_empty() {
            let _ = write!(s, ".{rest}");
        }
        let _ = write!(
            s,
            "E{}{}",
            if adjusted >= 0 { "+" } else { "-" },
            adjusted.abs()
        );
    }
    s
}

/// Parses a float from JSON number text or CockroachDB's special strings.
pub fn parse_float(text: &str) -> Result<f64, ValueError> {
    match text {
        "NaN" => Ok(f64::NAN),
        "Infinity" | "+Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => text.parse::<f64>().map_err(|_| not_a(text, "a number")),
    }
}

/// A TIME value of the day as microseconds (`12:34:56.5`).
pub fn parse_time_micros(text: &str) -> Result<i64, ValueError> {
    if text == "24:00:00" {
        return Ok(86_400_000_000);
    }
    let t =
        NaiveTime::parse_from_str(text, "%H:%M:%S%.f").map_err(|_| not_a(text, "a TIME value"))?;
    Ok(i64::from(t.num_seconds_from_midnight()) * 1_000_000 + i64::from(t.nanosecond() / 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_run_stops_at_the_first_quote_backslash_or_control_byte() {
        let by_byte = |b: &[u8]| {
            b.iter()
                .position(|c| matches!(c, b'"' | b'\\' | 0..=0x1f))
                .unwrap_or(b.len())
        };
        // Every byte value at every position of a word and its neighbours, among fills that
        // sit next to the flagged values (0x20, 0x21, 0x23, 0x5b, 0x5d) or carry the high bit.
        for fill in [b'a', 0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xc3, 0xff] {
            for len in 0..20 {
                for at in 0..len {
                    for v in 0..=255u8 {
                        let mut b = vec![fill; len];
                        b[at] = v;
                        assert_eq!(plain_run(&b), by_byte(&b), "{b:?}");
                        if at + 1 < len {
                            b[at + 1] = 0;
                            assert_eq!(plain_run(&b), by_byte(&b), "{b:?}");
                        }
                    }
                }
            }
        }
    }

    /// `parse_uuid` reads back exactly what `uuid_text` prints, and nothing else.
    #[test]
    fn uuid_texts_parse_back_to_their_bytes() {
        for seed in 0..200u128 {
            let bytes = seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
                .to_be_bytes();
            let text = uuid_text(&bytes, &mut [0; 36]).to_owned();
            assert_eq!(parse_uuid(text.as_bytes()), Some(bytes), "{text}");
            let upper = text.to_uppercase();
            if upper != text {
                assert_eq!(parse_uuid(upper.as_bytes()), None, "{text}");
            }
            assert_eq!(parse_uuid(text.replace('-', "").as_bytes()), None);
            assert_eq!(parse_uuid(format!("{text} ").as_bytes()), None);
        }
        assert_eq!(parse_uuid(b"0123456-789a-bcde-f012-3456789abcdef"), None);
        assert_eq!(parse_uuid(b"g0000000-0000-0000-0000-000000000000"), None);
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal("3.140000000", 18, 9), Ok(3_140_000_000));
        assert_eq!(parse_decimal("-25.00", 10, 2), Ok(-2500));
        assert_eq!(parse_decimal("4E+2", 10, 0), Ok(400));
        assert_eq!(parse_decimal("1.5E-1", 10, 2), Ok(15));
        assert_eq!(parse_decimal("0.000000000", 18, 9), Ok(0));
        assert_eq!(parse_decimal("12345", 20, 10), Ok(123_450_000_000_000));
        assert!(
            parse_decimal("1.234", 10, 2)
                .unwrap_err()
                .to_string()
                .contains("fractional")
        );
        assert!(
            parse_decimal("123456", 5, 0)
                .unwrap_err()
                .to_string()
                .contains("does not fit")
        );
        assert!(
            parse_decimal("NaN", 10, 2)
                .unwrap_err()
                .to_string()
                .contains("STRING")
        );
        assert!(parse_decimal("1.2.3", 10, 2).is_err());
        assert_eq!(format_decimal(3_140_000_000, 9), "3.140000000");
        assert_eq!(format_decimal(-5, 3), "-0.005");
        assert_eq!(format_decimal(400, 0), "400");
    }

    #[test]
    fn timestamps_and_dates() {
        let us = parse_timestamp("2019-01-02T03:04:05.5", false).unwrap();
        assert_eq!(format_timestamp(us, false, false), "2019-01-02T03:04:05.5");
        assert_eq!(format_timestamp(us, false, true), "2019-01-02 03:04:05.5");
        assert_eq!(parse_timestamp("2019-01-02 03:04:05.5", false).unwrap(), us);
        let z = parse_timestamp("2023-01-02T03:04:05.123456Z", true).unwrap();
        assert_eq!(
            parse_timestamp("2023-01-02 03:04:05.123456+00", true).unwrap(),
            z
        );
        assert_eq!(
            parse_timestamp("2023-01-02 05:34:05.123456+02:30", true).unwrap(),
            z
        );
        assert_eq!(
            parse_timestamp("2023-01-01 22:04:05.123456-05", true).unwrap(),
            z
        );
        assert_eq!(
            format_timestamp(z, true, true),
            "2023-01-02 03:04:05.123456+00"
        );
        assert!(parse_timestamp("2023-01-02T03:04:05Z", false).is_err());
        assert!(parse_timestamp("2023-01-02T03:04:05", true).is_err());
        assert_eq!(format_date(parse_date("2023-01-02").unwrap()), "2023-01-02");
        assert_eq!(parse_date("1969-12-31"), Ok(-1));
        assert_eq!(
            format_time_micros(parse_time_micros("12:34:56.5").unwrap()),
            "12:34:56.5"
        );
        assert_eq!(format_time_micros(86_400_000_000), "24:00:00");
    }

    #[test]
    fn json_depth_is_bounded_without_recursion() {
        let deep = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
        assert!(check_json_depth(&deep(MAX_JSON_DEPTH)).is_ok());
        assert!(check_json_depth(&deep(MAX_JSON_DEPTH + 1)).is_err());
        assert!(check_json_depth(&deep(1_000_000)).is_err());
        // Brackets inside strings (also after escaped quotes and backslashes) do not count.
        let s = format!(
            r#"["{}\"{}\\", {{"k[": 1}}]"#,
            "[".repeat(500),
            "{".repeat(500)
        );
        assert!(check_json_depth(&s).is_ok(), "{s}");
        assert!(crdb_json_text(&deep(MAX_JSON_DEPTH + 1)).is_err());
    }

    #[test]
    fn json_text_forms() {
        assert_eq!(
            crdb_json_text(r#"{"b":[1,2.50,null],"a":{"y":"\u00e9\n","x":true}}"#).unwrap(),
            "{\"a\": {\"x\": true, \"y\": \"é\\n\"}, \"b\": [1, 2.50, null]}"
        );
        let mut s = String::new();
        write_json_string(&mut s, "a\u{1}<\"\\");
        assert_eq!(s, r#""a\u0001<\"\\""#);
        for (f, text) in [
            (1.5, "1.5"),
            (0.1, "0.1"),
            (123456.0, "123456"),
            (100.0, "1E+2"),
            (120.0, "1.2E+2"),
            (1e-7, "1E-7"),
            (0.000001, "0.000001"),
            (-2.25, "-2.25"),
            (f64::NAN, "\"NaN\""),
        ] {
            assert_eq!(crdb_json_float(f), text, "{f}");
        }
        assert_eq!(parse_bytes_hex("\\x68656c6c6f").unwrap(), b"hello");
        assert_eq!(format_bytes_hex(b"hello"), "\\x68656c6c6f");
        assert_eq!(
            format_uuid(&[
                0x37, 0x01, 0x17, 0xcf, 0xd7, 0x7d, 0x47, 0x78, 0xb0, 0xb9, 0x01, 0xac, 0x17, 0xc1,
                0x5a, 0x06
            ]),
            "370117cf-d77d-4778-b0b9-01ac17c15a06"
        );
    }

    #[test]
    fn json_strings_decode_as_serde_json_does() {
        let cases = [
            r#""plain""#,
            r#""""#,
            r#""a\"b\\c\/d\b\f\n\r\t""#,
            r#""\u00e9\u20AC \ud83d\ude00 end""#,
            r#""ends with \\""#,
        ];
        for raw in cases {
            let want: String = serde_json::from_str(raw).unwrap();
            assert_eq!(json_string(raw).unwrap(), want, "{raw}");
        }
        for raw in [
            r#""\ud83d""#,
            r#""\ude00""#,
            r#""\x""#,
            r#""\u12""#,
            "\"a\u{1}\"",
        ] {
            assert!(serde_json::from_str::<String>(raw).is_err(), "{raw}");
            let err = json_string(raw).unwrap_err();
            assert!(matches!(err, ValueError::JsonString { .. }), "{raw}: {err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_round_trips(text in "\\PC*|[\"\\\\\u{0}-\u{1f}\u{e9}\u{1F600}a]{0,12}") {
            let raw = serde_json::to_string(&text).unwrap();
            proptest::prop_assert_eq!(json_string(&raw).unwrap(), text.as_str());
            // Escaped in every way JSON allows, not only as serde_json writes it.
            let mut all = String::from("\"");
            for c in text.chars() {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    all.push_str(&format!("\\u{u:04x}"));
                }
            }
            all.push('"');
            proptest::prop_assert_eq!(json_string(&all).unwrap(), text.as_str());
        }
    }
}

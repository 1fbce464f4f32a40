//! One NDJSON changefeed message read in a single pass: member names and value texts borrowed
//! from the line, every value checked to be well-formed JSON (RFC 8259), no parse tree.
//!
//! serde_json's borrowed `RawValue`s gave the same result through its visitor machinery per
//! member. Values are skipped without recursion, so any nesting is safe here; each value's
//! depth is counted on the way ([`Raw::depth`]) and refused later, by column.

use std::borrow::Cow;
use std::fmt;

use std::ops::Range;

#[cfg(test)]
use super::json_fields::Envelope;
use super::json_fields::{After, Fields, Member, Raw, sort_tail};
use crate::format::values;

/// Why a text is not the JSON expected, and where (0-based byte offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanError {
    pub(crate) offset: usize,
    /// The text ended inside a value (a truncated line rather than a malformed one).
    pub(crate) eof: bool,
    pub(crate) message: Cow<'static, str>,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at column {}", self.message, self.offset + 1)
    }
}

/// A changefeed message's top level, `after` read into its members (owned: tests).
#[cfg(test)]
pub(crate) fn envelope(text: &str) -> Result<Envelope<'_>, ScanError> {
    let (mut members, mut row) = (Vec::new(), Vec::new());
    let after = envelope_into(text, &mut members, &mut row)?;
    Ok(Envelope {
        members: Fields::sorted(members),
        after: after.map(|a| match a {
            After::Null => After::Null,
            // Of a repeated `after` the last: its members are the buffer's last.
            After::Row(at) => After::Row(Fields::sorted(row.split_off(at.start))),
            After::Other => After::Other,
        }),
    })
}

/// [`envelope`] into buffers the caller reuses: the top level's members replace `top`'s
/// (sorted), `after`'s are appended to `rows` (sorted), and where they stand is returned.
pub(crate) fn envelope_into<'a>(
    text: &'a str,
    top: &mut Vec<Member<'a>>,
    rows: &mut Vec<Member<'a>>,
) -> Result<Option<After<Range<usize>>>, ScanError> {
    let mut s = Scanner::new(text);
    top.clear();
    let mut after = None;
    s.object(|s, name| {
        if name == "after" {
            // Of a repeated name the last wins, as with the other members.
            after = Some(s.after(rows)?);
        } else {
            top.push((name, s.value()?));
        }
        Ok(())
    })?;
    s.end()?;
    sort_tail(top, 0);
    Ok(after)
}

/// The members of a JSON object (the whole text).
pub(crate) fn object(text: &str) -> Result<Fields<'_>, ScanError> {
    let mut members = Vec::with_capacity(8);
    object_into(text, &mut members)?;
    Ok(Fields::sorted(members))
}

/// [`object`] appended to `members` (sorted); where they stand.
pub(crate) fn object_into<'a>(
    text: &'a str,
    members: &mut Vec<Member<'a>>,
) -> Result<Range<usize>, ScanError> {
    let mut s = Scanner::new(text);
    let at = s.fields_into(members)?;
    s.end()?;
    Ok(at)
}

/// The items of a JSON array (the whole text; owned: tests).
#[cfg(test)]
pub(crate) fn array(text: &str) -> Result<Vec<Raw<'_>>, ScanError> {
    let mut items = Vec::new();
    array_into(text, &mut items)?;
    Ok(items)
}

/// [`array`] appended to `items`; where they stand.
pub(crate) fn array_into<'a>(
    text: &'a str,
    items: &mut Vec<Raw<'a>>,
) -> Result<Range<usize>, ScanError> {
    let start = items.len();
    let mut s = Scanner::new(text);
    s.ws();
    s.expect(b'[', "expected an array")?;
    s.ws();
    if s.peek() == Some(b']') {
        s.pos += 1;
    } else {
        loop {
            items.push(s.value()?);
            s.ws();
            match s.bump() {
                Some(b',') => continue,
                Some(b']') => break,
                other => return Err(s.unexpected(other, "expected `,` or `]`")),
            }
        }
    }
    s.end()?;
    Ok(start..items.len())
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    pos: usize,
    /// Open arrays (`false`) and objects (`true`) while a value is skipped.
    open: Vec<bool>,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            b: text.as_bytes(),
            pos: 0,
            open: Vec::new(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn error(&self, message: impl Into<Cow<'static, str>>) -> ScanError {
        ScanError {
            offset: self.pos,
            eof: self.pos >= self.b.len(),
            message: message.into(),
        }
    }

    /// An error for the byte just read (`None`: the text ended).
    fn unexpected(&mut self, got: Option<u8>, expected: &'static str) -> ScanError {
        match got {
            None => self.error("the text ends early"),
            Some(_) => {
                self.pos -= 1;
                self.error(expected)
            }
        }
    }

    fn expect(&mut self, c: u8, expected: &'static str) -> Result<(), ScanError> {
        match self.bump() {
            Some(got) if got == c => Ok(()),
            other => Err(self.unexpected(other, expected)),
        }
    }

    /// Only whitespace may follow the value.
    fn end(&mut self) -> Result<(), ScanError> {
        self.ws();
        if self.pos < self.b.len() {
            return Err(self.error("trailing characters"));
        }
        Ok(())
    }

    /// An object's members, each value handed to `member` with the scanner at its start.
    fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, Cow<'a, str>) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        self.ws();
        self.expect(b'{', "expected an object")?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.ws();
            let name = self.name()?;
            self.ws();
            self.expect(b':', "expected `:`")?;
            member(self, name)?;
            self.ws();
            match self.bump() {
                Some(b',') => continue,
                Some(b'}') => return Ok(()),
                other => return Err(self.unexpected(other, "expected `,` or `}`")),
            }
        }
    }

    /// An object's members appended to `members`, sorted; where they stand.
    fn fields_into(&mut self, members: &mut Vec<Member<'a>>) -> Result<Range<usize>, ScanError> {
        let start = members.len();
        self.object(|s, name| {
            members.push((name, s.value()?));
            Ok(())
        })?;
        sort_tail(members, start);
        Ok(start..members.len())
    }

    /// The value of `after`: `null`, an object's members (appended to `rows`), or anything
    /// else (checked, unread).
    fn after(&mut self, rows: &mut Vec<Member<'a>>) -> Result<After<Range<usize>>, ScanError> {
        self.ws();
        match self.peek() {
            Some(b'{') => self.fields_into(rows).map(After::Row),
            Some(b'n') => {
                self.literal(b"null")?;
                Ok(After::Null)
            }
            _ => self.value().map(|_| After::Other),
        }
    }

    /// A member name, decoded only if it holds escapes.
    fn name(&mut self) -> Result<Cow<'a, str>, ScanError> {
        self.at_string("expected a member name")?;
        let start = self.pos;
        let escaped = self.string()?;
        let raw = &self.text[start..self.pos];
        if !escaped {
            return Ok(Cow::Borrowed(&raw[1..raw.len() - 1]));
        }
        values::json_string(raw).map_err(|e| ScanError {
            offset: start,
            eof: false,
            message: e.to_string().into(),
        })
    }

    /// The text of the next value (whitespace before it skipped).
    fn value(&mut self) -> Result<Raw<'a>, ScanError> {
        self.ws();
        let start = self.pos;
        // Most values are strings: told apart here, whether one holds escapes is known.
        if self.peek() == Some(b'"') {
            let escaped = self.string()?;
            let text = &self.text[start..self.pos];
            return Ok(if escaped {
                Raw::new(text, 0)
            } else {
                Raw::plain_string(text)
            });
        }
        let depth = self.skip_value()?;
        Ok(Raw::new(&self.text[start..self.pos], depth))
    }

    /// Past one value, nested arrays and objects kept on `open` rather than the call stack;
    /// returns how deeply the value nests.
    fn skip_value(&mut self) -> Result<usize, ScanError> {
        // An earlier value may have stopped at an error with items still open.
        self.open.clear();
        let mut depth = 0;
        'value: loop {
            self.ws();
            match self.peek() {
                Some(c @ (b'{' | b'[')) => {
                    let in_object = c == b'{';
                    depth = depth.max(self.open.len() + 1);
                    self.pos += 1;
                    self.ws();
                    if self.peek() == Some(if in_object { b'}' } else { b']' }) {
                        self.pos += 1;
                    } else {
                        self.open.push(in_object);
                        if in_object {
                            self.member_name()?;
                        }
                        continue 'value;
                    }
                }
                Some(b'"') => {
                    self.string()?;
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                None => return Err(self.error("the text ends early")),
                Some(_) => return Err(self.error("expected a value")),
            }
            // After a value: close what ends here, or go on to the next item.
            loop {
                let Some(&in_object) = self.open.last() else {
                    return Ok(depth);
                };
                self.ws();
                match self.bump() {
                    Some(b',') => {
                        if in_object {
                            self.ws();
                            self.member_name()?;
                        }
                        continue 'value;
                    }
                    Some(b'}') if in_object => {
                        self.open.pop();
                    }
                    Some(b']') if !in_object => {
                        self.open.pop();
                    }
                    other => {
                        let expected = if in_object {
                            "expected `,` or `}`"
                        } else {
                            "expected `,` or `]`"
                        };
                        return Err(self.unexpected(other, expected));
                    }
                }
            }
        }
    }

    /// A nested member's name and its `:`.
    fn member_name(&mut self) -> Result<(), ScanError> {
        self.at_string("expected a member name")?;
        self.string()?;
        self.ws();
        self.expect(b':', "expected `:`")
    }

    /// Refuses anything but a string's opening quote here.
    fn at_string(&self, expected: &'static str) -> Result<(), ScanError> {
        match self.peek() {
            Some(b'"') => Ok(()),
            None => Err(self.error("the text ends early")),
            Some(_) => Err(self.error(expected)),
        }
    }

    /// Past a string (at its opening quote); whether it holds escapes.
    fn string(&mut self) -> Result<bool, ScanError> {
        self.pos += 1;
        let mut escaped = false;
        loop {
            self.pos += values::plain_run(&self.b[self.pos..]);
            match self.bump() {
                Some(b'"') => return Ok(escaped),
                Some(b'\\') => {
                    escaped = true;
                    match self.bump() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                        Some(b'u') => {
                            for _ in 0..4 {
                                match self.bump() {
                                    Some(c) if c.is_ascii_hexdigit() => {}
                                    other => {
                                        return Err(self.unexpected(other, "invalid \\u escape"));
                                    }
                                }
                            }
                        }
                        other => return Err(self.unexpected(other, "invalid escape")),
                    }
                }
                None => return Err(self.error("the text ends inside a string")),
                Some(_) => {
                    self.pos -= 1;
                    return Err(self.error("control character in a string"));
                }
            }
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), ScanError> {
        let rest = &self.b[self.pos..];
        if rest.starts_with(word) {
            self.pos += word.len();
            return Ok(());
        }
        if word.starts_with(rest) {
            self.pos = self.b.len();
            return Err(self.error("the text ends early"));
        }
        Err(self.error("expected a value"))
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<(), ScanError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.bump() {
            Some(b'0') => {}
            Some(b'1'..=b'9') => self.digits(),
            other => return Err(self.unexpected(other, "invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.digit()?;
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.digit()?;
            self.digits();
        }
        Ok(())
    }

    fn digit(&mut self) -> Result<(), ScanError> {
        match self.bump() {
            Some(b'0'..=b'9') => Ok(()),
            other => Err(self.unexpected(other, "invalid number")),
        }
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::json_fields::Members;
    use super::*;
    use serde_json::value::RawValue;

    /// Texts serde_json accepts or refuses, each wrapped as a member value and an array item.
    const VALUES: &[&str] = &[
        "0",
        "-0",
        "12",
        "-12.5e+3",
        "1E5",
        "0.0",
        "01",
        "-",
        "1.",
        ".5",
        "1e",
        "1e+",
        "+1",
        "true",
        "false",
        "null",
        "tru",
        "nul",
        "nulls",
        "True",
        r#""""#,
        r#""a\"b\\c\/d\b\f\n\r\t""#,
        r#""\u00e9\uD83D\uDE00""#,
        r#""\u00g9""#,
        r#""\x""#,
        "\"tab\tin\"",
        r#""unterminated"#,
        "[]",
        "[1, [2, {\"a\": [3]}], {}]",
        "[1,]",
        "[,1]",
        "[1 2]",
        "{}",
        r#"{"a": 1, "b": {"c": [true, null]}}"#,
        r#"{"a" 1}"#,
        r#"{"a": 1,}"#,
        r#"{1: 2}"#,
        r#"{"a": 1]"#,
        "[1}",
        "[[[[[[[[[[]]]]]]]]]]",
        "[[[",
        "",
        "x",
        " 7 ",
    ];

    #[test]
    fn accepts_exactly_what_serde_json_accepts() {
        for v in VALUES {
            for text in [
                format!("{{\"m\": {v}}}"),
                format!("[{v}]"),
                format!("[0, {v}]"),
            ] {
                let serde = serde_json::from_str::<serde_json::Value>(&text);
                let ours = if text.starts_with('{') {
                    object(&text).map(|f| f.field("m").map(|r| r.get().to_owned()))
                } else {
                    array(&text).map(|a| a.last().map(|r| r.get().to_owned()))
                };
                assert_eq!(ours.is_ok(), serde.is_ok(), "{text}: {ours:?} vs {serde:?}");
                if let (Ok(Some(raw)), Ok(_)) = (&ours, &serde) {
                    let want: &RawValue = if text.starts_with('{') {
                        serde_json::from_str::<std::collections::BTreeMap<&str, &RawValue>>(&text)
                            .unwrap()["m"]
                    } else {
                        serde_json::from_str::<Vec<&RawValue>>(&text)
                            .unwrap()
                            .last()
                            .unwrap()
                    };
                    assert_eq!(raw, want.get(), "{text}");
                }
            }
        }
    }

    /// Lines mutated at random (bytes dropped, doubled or replaced by JSON punctuation) are
    /// refused exactly when serde_json refuses them.
    #[test]
    fn mutated_lines_are_judged_as_serde_json_judges_them() {
        let line = r#"{"after": {"a": "x\"y", "b": [1.5e3, {"c": null}], "d": true, "e": -0.25}, "key": [10], "updated": "1.0"}"#;
        const BYTES: &[u8] = b"{}[]\",:\\ 0123456789.eE+-tfnlrsa";
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let mut b = line.as_bytes().to_vec();
            for _ in 0..1 + next(3) {
                let at = next(b.len());
                match next(3) {
                    0 => {
                        b.remove(at);
                    }
                    1 => b.insert(at, b[at]),
                    _ => b[at] = BYTES[next(BYTES.len())],
                }
            }
            let Ok(text) = String::from_utf8(b) else {
                continue;
            };
            if !text.trim_start().starts_with('{') {
                continue;
            }
            let serde = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
            assert_eq!(envelope(&text).is_ok(), serde, "{text}");
            if serde {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        assert!(accepted > 1000 && refused > 1000, "{accepted} {refused}");
    }

    #[test]
    fn every_truncation_is_an_eof_error() {
        let line = r#"{"after": {"a": "x\"y", "b": [1.5e3, {"c": null}], "d": true}, "key": [1], "updated": "1.0"}"#;
        envelope(line).unwrap();
        for cut in 0..line.len() {
            let e = envelope(&line[..cut]).unwrap_err();
            assert!(e.eof, "{cut}: {e}");
        }
        let e = envelope(r#"{"after": {"a": 1} "key": [1]}"#).unwrap_err();
        assert!(!e.eof);
        assert_eq!(e.to_string(), "expected `,` or `}` at column 20");
    }

    #[test]
    fn depth_is_counted_as_check_json_depth_counts_it() {
        for (value, depth) in [
            ("1", 0),
            (r#""[{""#, 0),
            ("[]", 1),
            ("{}", 1),
            ("[{}]", 2),
            (r#"[1, [2, {"a": [3]}], {}]"#, 4),
            (r#"{"a": [[]], "b": {"c": "]]"}}"#, 3),
        ] {
            let member = format!(r#"{{"m": {value}}}"#);
            let f = object(&member).unwrap();
            assert_eq!(f.field("m").unwrap().depth(), depth, "{value}");
            let limit = crate::format::values::MAX_JSON_DEPTH;
            let nested = format!(
                "{}{value}{}",
                "[".repeat(limit - depth),
                "]".repeat(limit - depth)
            );
            assert!(crate::format::values::check_json_depth(&nested).is_ok());
            assert_eq!(array(&format!("[{nested}]")).unwrap()[0].depth(), limit);
            let deeper = format!("[{nested}]");
            assert!(crate::format::values::check_json_depth(&deeper).is_err());
        }
    }

    #[test]
    fn deep_nesting_needs_no_stack() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let text = format!(r#"{{"after": {{"doc": {deep}}}, "key": [1]}}"#);
        let e = envelope(&text).unwrap();
        let Some(After::Row(row)) = e.after else {
            panic!()
        };
        assert_eq!(row.field("doc").unwrap().get().len(), 200_000);
        assert!(envelope(&text[..text.len() - 3]).unwrap_err().eof);
    }

    #[test]
    fn escaped_names_are_decoded_and_bad_ones_refused() {
        let f = object(r#"{"a\u0041": 1, "b": 2}"#).unwrap();
        assert_eq!(f.keys().collect::<Vec<_>>(), ["aA", "b"]);
        assert!(object(r#"{"\ud800": 1}"#).is_err(), "a lone surrogate");
        assert!(object(r#"{"a": 1} x"#).is_err());
        assert!(array("[1] [2]").is_err());
    }
}

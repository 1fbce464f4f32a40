//! A JSON object's members, borrowed from its line: the NDJSON decoder's per-message map.
//!
//! One `Vec` per object instead of a `BTreeMap` (one allocation, not one per member), names
//! borrowed unless they hold escapes, sorted by name for binary-search lookups. CockroachDB
//! writes members sorted (format spec §3.4); any other order is sorted here, and of a repeated
//! name the last wins, as with a map.

use std::borrow::Cow;
use std::fmt;

/// A JSON value's text as it stands in its line ([`super::json_scan`] checked it), with how
/// deeply it nests arrays and objects (`1` is 0, `[]` is 1, `[{}]` is 2), counted while
/// scanning so that no second pass walks it to refuse a value too deep.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Raw<'a> {
    text: &'a str,
    depth: usize,
    /// A string without escapes: what stands between its quotes is its value, so a column
    /// copies it without scanning it again.
    plain_string: bool,
}

impl<'a> Raw<'a> {
    pub(crate) fn new(text: &'a str, depth: usize) -> Self {
        Self {
            text,
            depth,
            plain_string: false,
        }
    }

    /// A string value the scanner found free of escapes (`text` with its quotes).
    pub(crate) fn plain_string(text: &'a str) -> Self {
        Self {
            text,
            depth: 0,
            plain_string: true,
        }
    }

    pub(crate) fn get(self) -> &'a str {
        self.text
    }

    pub(crate) fn depth(self) -> usize {
        self.depth
    }

    /// A string value the scanner found free of escapes.
    pub(crate) fn is_plain_string(self) -> bool {
        self.plain_string
    }
}

impl fmt::Debug for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text)
    }
}

/// Members of one JSON object, sorted by name, names unique.
#[derive(Debug, Default)]
pub(crate) struct Fields<'a>(Vec<(Cow<'a, str>, Raw<'a>)>);

impl<'a> Fields<'a> {
    /// All members but `name` (names are borrowed: copying them is cheap).
    pub(crate) fn without(&self, name: &str) -> Self {
        Self(self.0.iter().filter(|(n, _)| n != name).cloned().collect())
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.0.binary_search_by(|(n, _)| n.as_ref().cmp(name)).ok()
    }

    pub(crate) fn get(&self, name: &str) -> Option<Raw<'a>> {
        self.position(name).map(|i| self.0[i].1)
    }

    /// [`get`](Self::get), trying position `hint` first (where the name was in the previous
    /// object: rows of one file share their members), and updating it.
    pub(crate) fn get_hinted(&self, name: &str, hint: &mut usize) -> Option<Raw<'a>> {
        if let Some((n, v)) = self.0.get(*hint)
            && n.as_ref() == name
        {
            return Some(*v);
        }
        let i = self.position(name)?;
        *hint = i;
        Some(self.0[i].1)
    }

    pub(crate) fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> + Clone {
        self.0.iter().map(|(n, _)| n.as_ref())
    }

    /// Members as (name, raw JSON text) in name order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, Raw<'a>)> + Clone {
        self.0.iter().map(|(n, v)| (n.as_ref(), *v))
    }
}

impl<'a> Fields<'a> {
    /// Members in the order read: sorted by name, of a repeated name the last kept.
    pub(crate) fn sorted(mut members: Vec<(Cow<'a, str>, Raw<'a>)>) -> Self {
        if !members.is_sorted_by(|a, b| a.0 < b.0) {
            // Stable: of equal names the last stays last, and is the one kept.
            members.sort_by(|a, b| a.0.cmp(&b.0));
            let mut unique: Vec<(Cow<'a, str>, Raw<'a>)> = Vec::with_capacity(members.len());
            for m in members {
                match unique.last_mut() {
                    Some(last) if last.0 == m.0 => *last = m,
                    _ => unique.push(m),
                }
            }
            members = unique;
        }
        Fields(members)
    }
}

/// A changefeed message's top level, with `after` (the wrapped envelope's row, most of the
/// line) read into its members in the same pass: capturing its text and reading that again
/// would scan the row twice.
#[derive(Debug, Default)]
pub(crate) struct Envelope<'a> {
    /// Every member but `after`.
    pub(crate) members: Fields<'a>,
    pub(crate) after: Option<After<'a>>,
}

/// The value of `after`.
#[derive(Debug)]
pub(crate) enum After<'a> {
    Null,
    Row(Fields<'a>),
    /// Neither an object nor `null`.
    Other,
}

#[cfg(test)]
mod tests {
    use super::super::json_scan::{envelope, object};
    use super::*;

    #[test]
    fn names_borrowed_sorted_and_last_wins() {
        let text = r#"{"b": 1, "a\u0041": "x", "a": [1, 2], "b": 2}"#;
        let f = object(text).unwrap();
        let names: Vec<&str> = f.keys().collect();
        assert_eq!(names, ["a", "aA", "b"]);
        assert_eq!(f.get("b").unwrap().get(), "2");
        assert_eq!(f.get("a").unwrap().get(), "[1, 2]");
        assert!(f.get("c").is_none());
        assert!(
            matches!(f.0[0].0, Cow::Borrowed(_)),
            "plain names are not copied"
        );
        assert!(
            matches!(f.0[1].0, Cow::Owned(_)),
            "escaped names are decoded"
        );
    }

    #[test]
    fn an_envelope_parses_after_into_its_members() {
        let text = r#"{"key": [1], "after": {"b": "x", "a": 1}, "updated": "1.0"}"#;
        let e = envelope(text).unwrap();
        let names: Vec<&str> = e.members.keys().collect();
        assert_eq!(names, ["key", "updated"]);
        let Some(After::Row(row)) = e.after else {
            panic!("{:?}", e.after)
        };
        assert_eq!(row.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(row.get("b").unwrap().get(), r#""x""#);
        let null = envelope(r#"{"after": null, "key": [1]}"#).unwrap();
        assert!(matches!(null.after, Some(After::Null)));
        for other in [r#""x""#, "[1, [2]]", "3", "true", "-1.5"] {
            let text = format!(r#"{{"after": {other}, "key": [1]}}"#);
            let e = envelope(&text).unwrap();
            assert!(matches!(e.after, Some(After::Other)), "{other}");
            assert_eq!(e.members.get("key").unwrap().get(), "[1]", "{other}");
        }
        let bare = envelope(r#"{"a": 1, "__crdb__": {}}"#).unwrap();
        assert!(bare.after.is_none());
        assert!(envelope(r#"{"after": {"a": }}"#).is_err());
    }

    #[test]
    fn strings_without_escapes_are_told() {
        let f = object(r#"{"a": "x y", "b": "x\"y", "c": 1, "d": ["x"], "e": ""}"#).unwrap();
        let plain = |n: &str| f.get(n).unwrap().is_plain_string();
        assert!(plain("a") && plain("e"));
        assert!(!plain("b") && !plain("c") && !plain("d"));
    }

    #[test]
    fn not_an_object_is_an_error() {
        assert!(object("[1]").is_err());
        assert!(object(r#"{"a": }"#).is_err());
    }
}

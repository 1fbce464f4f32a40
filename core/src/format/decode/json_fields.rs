//! A JSON object's members, borrowed from its line: the NDJSON decoder's per-message map.
//!
//! A run of members in a `Vec` instead of a `BTreeMap` (the decoder keeps a whole batch's runs
//! in one `Vec`: no allocation per message or member), names borrowed unless they hold
//! escapes, sorted by name for binary-search lookups. CockroachDB
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

/// One member of a JSON object: its name (borrowed unless it holds escapes) and value.
pub(crate) type Member<'a> = (Cow<'a, str>, Raw<'a>);

/// Lookups in members sorted by name, names unique: an owned [`Fields`] or an object's run of
/// a batch's shared member buffer (the NDJSON decoder keeps every message's members in one
/// `Vec` per batch, not one per message: three allocations a line were a twentieth of a run's
/// CPU, and their frees contended for the allocator's locks with the other threads').
pub(crate) trait Members<'a> {
    fn field(&self, name: &str) -> Option<Raw<'a>>;
    /// [`field`](Self::field), trying position `hint` first (where the name was in the previous
    /// object: rows of one file share their members), and updating it.
    fn field_hinted(&self, name: &str, hint: &mut usize) -> Option<Raw<'a>>;
    fn contains_key(&self, name: &str) -> bool {
        self.field(name).is_some()
    }
    fn keys(&self) -> impl Iterator<Item = &str> + Clone;
    /// Members as (name, raw JSON text) in name order.
    fn iter_raw(&self) -> impl Iterator<Item = (&str, Raw<'a>)> + Clone;
}

fn position(members: &[Member<'_>], name: &str) -> Option<usize> {
    members.binary_search_by(|(n, _)| n.as_ref().cmp(name)).ok()
}

impl<'a> Members<'a> for [Member<'a>] {
    fn field(&self, name: &str) -> Option<Raw<'a>> {
        position(self, name).map(|i| self[i].1)
    }

    fn field_hinted(&self, name: &str, hint: &mut usize) -> Option<Raw<'a>> {
        if let Some((n, v)) = self.get(*hint)
            && n.as_ref() == name
        {
            return Some(*v);
        }
        let i = position(self, name)?;
        *hint = i;
        Some(self[i].1)
    }

    fn keys(&self) -> impl Iterator<Item = &str> + Clone {
        self.iter().map(|(n, _)| n.as_ref())
    }

    fn iter_raw(&self) -> impl Iterator<Item = (&str, Raw<'a>)> + Clone {
        self.iter().map(|(n, v)| (n.as_ref(), *v))
    }
}

/// Members of one JSON object, sorted by name, names unique.
#[derive(Debug, Default)]
pub(crate) struct Fields<'a>(Vec<Member<'a>>);

impl<'a> std::ops::Deref for Fields<'a> {
    type Target = [Member<'a>];
    fn deref(&self) -> &[Member<'a>] {
        &self.0
    }
}

impl<'a> Fields<'a> {
    /// Members in the order read: sorted by name, of a repeated name the last kept.
    pub(crate) fn sorted(mut members: Vec<Member<'a>>) -> Self {
        sort_tail(&mut members, 0);
        Fields(members)
    }
}

/// Sorts the members from `start` on (one object's, read in order) by name, keeping the last
/// of a repeated name. CockroachDB writes them sorted (format spec §3.4): then nothing moves.
pub(crate) fn sort_tail(members: &mut Vec<Member<'_>>, start: usize) {
    let tail = &mut members[start..];
    if tail.is_sorted_by(|a, b| a.0 < b.0) {
        return;
    }
    // Stable: of equal names the last stays last, and is the one kept.
    tail.sort_by(|a, b| a.0.cmp(&b.0));
    let mut kept = start;
    for i in start..members.len() {
        if kept > start && members[kept - 1].0 == members[i].0 {
            members.swap(kept - 1, i);
        } else {
            members.swap(kept, i);
            kept += 1;
        }
    }
    members.truncate(kept);
}

/// A changefeed message's top level, with `after` (the wrapped envelope's row, most of the
/// line) read into its members in the same pass: capturing its text and reading that again
/// would scan the row twice. Owned, for tests; the decoder reads into shared buffers.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Envelope<'a> {
    /// Every member but `after`.
    pub(crate) members: Fields<'a>,
    pub(crate) after: Option<After<Fields<'a>>>,
}

/// The value of `after`: its members as `R` (owned, or where they stand in a shared buffer).
#[derive(Debug)]
pub(crate) enum After<R> {
    Null,
    Row(R),
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
        assert_eq!(f.field("b").unwrap().get(), "2");
        assert_eq!(f.field("a").unwrap().get(), "[1, 2]");
        assert!(f.field("c").is_none());
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
    fn a_run_is_sorted_in_its_shared_buffer_and_the_runs_before_it_stay() {
        let mut shared = Vec::new();
        let first = super::super::json_scan::object_into(r#"{"z": 1, "a": 2}"#, &mut shared);
        let second =
            super::super::json_scan::object_into(r#"{"c": 1, "b": 2, "c": 3}"#, &mut shared);
        let (first, second) = (first.unwrap(), second.unwrap());
        assert_eq!(shared[first.clone()].keys().collect::<Vec<_>>(), ["a", "z"]);
        assert_eq!(
            shared[second.clone()].keys().collect::<Vec<_>>(),
            ["b", "c"]
        );
        assert_eq!(shared[second.clone()].field("c").unwrap().get(), "3");
        assert_eq!(
            shared.len(),
            4,
            "the repeated name's first value is dropped"
        );
        let mut hint = 0;
        assert_eq!(
            shared[second].field_hinted("c", &mut hint).unwrap().get(),
            "3"
        );
        assert_eq!(hint, 1);
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
        assert_eq!(row.field("b").unwrap().get(), r#""x""#);
        let null = envelope(r#"{"after": null, "key": [1]}"#).unwrap();
        assert!(matches!(null.after, Some(After::Null)));
        for other in [r#""x""#, "[1, [2]]", "3", "true", "-1.5"] {
            let text = format!(r#"{{"after": {other}, "key": [1]}}"#);
            let e = envelope(&text).unwrap();
            assert!(matches!(e.after, Some(After::Other)), "{other}");
            assert_eq!(e.members.field("key").unwrap().get(), "[1]", "{other}");
        }
        let bare = envelope(r#"{"a": 1, "__crdb__": {}}"#).unwrap();
        assert!(bare.after.is_none());
        assert!(envelope(r#"{"after": {"a": }}"#).is_err());
    }

    #[test]
    fn strings_without_escapes_are_told() {
        let f = object(r#"{"a": "x y", "b": "x\"y", "c": 1, "d": ["x"], "e": ""}"#).unwrap();
        let plain = |n: &str| f.field(n).unwrap().is_plain_string();
        assert!(plain("a") && plain("e"));
        assert!(!plain("b") && !plain("c") && !plain("d"));
    }

    #[test]
    fn not_an_object_is_an_error() {
        assert!(object("[1]").is_err());
        assert!(object(r#"{"a": }"#).is_err());
    }
}

//! A JSON object's members, borrowed from its line: the NDJSON decoder's per-message map.
//!
//! One `Vec` per object instead of a `BTreeMap` (one allocation, not one per member), names
//! borrowed unless they hold escapes (serde's own `Cow<str>` always copies), sorted by name for
//! binary-search lookups. CockroachDB writes members sorted (format spec §3.4); any other order
//! is sorted here, and of a repeated name the last wins, as with a map.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Members of one JSON object, sorted by name, names unique.
#[derive(Debug, Default)]
pub(crate) struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Fields<'a> {
    /// All members but `name` (names are borrowed: copying them is cheap).
    pub(crate) fn without(&self, name: &str) -> Self {
        Self(self.0.iter().filter(|(n, _)| n != name).cloned().collect())
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.0.binary_search_by(|(n, _)| n.as_ref().cmp(name)).ok()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.position(name).map(|i| self.0[i].1)
    }

    /// [`get`](Self::get), trying position `hint` first (where the name was in the previous
    /// object: rows of one file share their members), and updating it.
    pub(crate) fn get_hinted(&self, name: &str, hint: &mut usize) -> Option<&'a RawValue> {
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
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &'a RawValue)> + Clone {
        self.0.iter().map(|(n, v)| (n.as_ref(), *v))
    }
}

/// A member name: borrowed from the line unless it holds escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'a> Fields<'a> {
    /// Members in the order read: sorted by name, of a repeated name the last kept.
    fn sorted(mut members: Vec<(Cow<'a, str>, &'a RawValue)>) -> Self {
        if !members.is_sorted_by(|a, b| a.0 < b.0) {
            // Stable: of equal names the last stays last, and is the one kept.
            members.sort_by(|a, b| a.0.cmp(&b.0));
            let mut unique: Vec<(Cow<'a, str>, &'a RawValue)> = Vec::with_capacity(members.len());
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

/// The members of the object `map` reads.
fn members<'de, M: MapAccess<'de>>(mut map: M) -> Result<Fields<'de>, M::Error> {
    let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
    while let Some((Name(name), value)) = map.next_entry::<Name, &RawValue>()? {
        members.push((name, value));
    }
    Ok(Fields::sorted(members))
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
                members(map)
            }
        }
        d.deserialize_map(V)
    }
}

/// A changefeed message's top level, with `after` (the wrapped envelope's row, most of the
/// line) parsed into its members in the same pass: capturing its text and parsing that again
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

impl<'de> Deserialize<'de> for After<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = After<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(After::Null)
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
                members(map).map(After::Row)
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut seq: S,
            ) -> Result<Self::Value, S::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(After::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(After::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(After::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(After::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(After::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(After::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Envelope<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::with_capacity(8);
                let mut after = None;
                while let Some(Name(name)) = map.next_key::<Name>()? {
                    if name == "after" {
                        // Of a repeated name the last wins, as with the other members.
                        after = Some(map.next_value::<After>()?);
                    } else {
                        members.push((name, map.next_value::<&RawValue>()?));
                    }
                }
                Ok(Envelope {
                    members: Fields::sorted(members),
                    after,
                })
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_borrowed_sorted_and_last_wins() {
        let text = r#"{"b": 1, "a\u0041": "x", "a": [1, 2], "b": 2}"#;
        let f: Fields = serde_json::from_str(text).unwrap();
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
        let e: Envelope = serde_json::from_str(text).unwrap();
        let names: Vec<&str> = e.members.keys().collect();
        assert_eq!(names, ["key", "updated"]);
        let Some(After::Row(row)) = e.after else {
            panic!("{:?}", e.after)
        };
        assert_eq!(row.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(row.get("b").unwrap().get(), r#""x""#);
        let null: Envelope = serde_json::from_str(r#"{"after": null, "key": [1]}"#).unwrap();
        assert!(matches!(null.after, Some(After::Null)));
        for other in [r#""x""#, "[1, [2]]", "3", "true", "-1.5"] {
            let text = format!(r#"{{"after": {other}, "key": [1]}}"#);
            let e: Envelope = serde_json::from_str(&text).unwrap();
            assert!(matches!(e.after, Some(After::Other)), "{other}");
            assert_eq!(e.members.get("key").unwrap().get(), "[1]", "{other}");
        }
        let bare: Envelope = serde_json::from_str(r#"{"a": 1, "__crdb__": {}}"#).unwrap();
        assert!(bare.after.is_none());
        assert!(serde_json::from_str::<Envelope>(r#"{"after": {"a": }}"#).is_err());
    }

    #[test]
    fn not_an_object_is_an_error() {
        assert!(serde_json::from_str::<Fields>("[1]").is_err());
        assert!(serde_json::from_str::<Fields>(r#"{"a": }"#).is_err());
    }
}

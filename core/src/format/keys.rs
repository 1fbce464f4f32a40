//! Primary keys where CockroachDB writes no metadata (format spec §4.5).
//!
//! Production Parquet files carry no key metadata and JSON `key` arrays carry values without
//! names, so the key is derived from evidence gathered while decoding, in this order:
//! configuration; JSON rows whose `after` values match the `key` array position by position;
//! Parquet delete rows (only key columns are non-null); the columns every family file shares.

use std::collections::BTreeSet;

/// The primary key is not known yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "table `{table}`: cannot determine the primary key yet ({reason}); \
     set `tables.{table}.primary_key` in the configuration"
)]
pub struct KeyError {
    pub table: String,
    pub reason: String,
}

/// What one decoded stream (one family's files) says about the key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyEvidence {
    /// JSON: for each key position, the columns whose value equalled it on every row seen.
    json_positions: Option<Vec<BTreeSet<String>>>,
    /// Parquet: the columns non-null in every delete row seen, in file order.
    delete_columns: Option<Vec<String>>,
    /// The data columns of the files seen, in file order.
    columns: Vec<String>,
}

impl KeyEvidence {
    /// A JSON row: `after` columns (name, raw JSON) and the raw `key` array elements.
    pub fn observe_json<'v>(
        &mut self,
        after: impl Iterator<Item = (&'v str, &'v str)> + Clone,
        key: impl Iterator<Item = &'v str> + Clone,
    ) {
        let equal = |v: &str, k: &str| v.trim_ascii() == k.trim_ascii();
        // A row of a family without the key columns says nothing: skip it rather than erase.
        if !key.clone().all(|k| after.clone().any(|(_, v)| equal(v, k))) {
            return;
        }
        match &mut self.json_positions {
            // The common case, once per row: narrow the known sets in place, allocating nothing.
            Some(prev) if prev.len() == key.clone().count() => {
                for (set, k) in prev.iter_mut().zip(key) {
                    set.retain(|name| after.clone().any(|(n, v)| n == name && equal(v, k)));
                }
            }
            Some(_) => {}
            None => {
                self.json_positions = Some(
                    key.map(|k| {
                        after
                            .clone()
                            .filter(|(_, v)| equal(v, k))
                            .map(|(n, _)| n.to_owned())
                            .collect()
                    })
                    .collect(),
                )
            }
        }
    }

    /// A Parquet delete row: the data columns that were not null.
    pub fn observe_delete(&mut self, non_null: Vec<String>) {
        self.delete_columns = Some(match self.delete_columns.take() {
            None => non_null,
            Some(prev) => prev.into_iter().filter(|c| non_null.contains(c)).collect(),
        });
    }

    /// The data columns of a file.
    pub fn observe_columns(&mut self, columns: &[String]) {
        for c in columns {
            if !self.columns.contains(c) {
                self.columns.push(c.clone());
            }
        }
    }

    /// Adds another stream's evidence about the same family.
    pub fn merge(&mut self, other: &KeyEvidence) {
        if let Some(pos) = &other.json_positions {
            match &mut self.json_positions {
                None => self.json_positions = Some(pos.clone()),
                Some(mine) if mine.len() == pos.len() => {
                    for (a, b) in mine.iter_mut().zip(pos) {
                        *a = a.intersection(b).cloned().collect();
                    }
                }
                Some(_) => {}
            }
        }
        if let Some(d) = &other.delete_columns {
            self.observe_delete(d.clone());
        }
        self.observe_columns(&other.columns);
    }

    /// The key this stream alone proves, if any.
    fn json_key(&self) -> Option<Vec<String>> {
        let pos = self.json_positions.as_ref()?;
        let key: Vec<String> = pos
            .iter()
            .filter(|s| s.len() == 1)
            .filter_map(|s| s.first().cloned())
            .collect();
        let distinct: BTreeSet<&String> = key.iter().collect();
        (key.len() == pos.len() && distinct.len() == key.len() && !key.is_empty()).then_some(key)
    }
}

/// Resolves a table's key from configuration or from the evidence of its families' streams.
pub fn primary_key(
    table: &str,
    configured: Option<&[String]>,
    families: &[&KeyEvidence],
) -> Result<Vec<String>, KeyError> {
    if let Some(k) = configured {
        return Ok(k.to_vec());
    }
    if let Some(k) = families.iter().find_map(|e| e.json_key()) {
        return Ok(k);
    }
    let deletes: Vec<&Vec<String>> = families
        .iter()
        .filter_map(|e| e.delete_columns.as_ref())
        .collect();
    if let Some(first) = deletes.first() {
        let key: Vec<String> = first
            .iter()
            .filter(|c| deletes.iter().all(|d| d.contains(c)))
            .cloned()
            .collect();
        if !key.is_empty() {
            return Ok(key);
        }
    }
    let with_columns: Vec<&Vec<String>> = families
        .iter()
        .map(|e| &e.columns)
        .filter(|c| !c.is_empty())
        .collect();
    if with_columns.len() >= 2 {
        let key: Vec<String> = with_columns[0]
            .iter()
            .filter(|c| with_columns.iter().all(|cols| cols.contains(c)))
            .cloned()
            .collect();
        if !key.is_empty() {
            return Ok(key);
        }
    }
    let reason = match families.iter().find_map(|e| e.json_positions.as_ref()) {
        // A CDC-query changefeed (`CREATE CHANGEFEED … AS SELECT`) writes no `key` values.
        Some(pos) if pos.is_empty() => {
            "the files' `key` arrays are empty (a CDC-query changefeed writes none)".into()
        }
        Some(pos) => format!(
            "the `key` values match more than one column: {}",
            pos.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "no JSON key arrays, no delete rows and fewer than two column families seen".into(),
    };
    Err(KeyError {
        table: table.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_key_needs_unambiguous_rows() {
        let mut e = KeyEvidence::default();
        e.observe_json([("p", "1"), ("v", "1")].into_iter(), ["1"].into_iter());
        let err = primary_key("t", None, &[&e]).unwrap_err();
        assert!(err.to_string().contains("more than one column"), "{err}");
        e.observe_json([("p", "5"), ("v", "1")].into_iter(), ["5"].into_iter());
        assert_eq!(primary_key("t", None, &[&e]).unwrap(), ["p"]);
        // A family row without the key columns does not erase what is known.
        e.observe_json([("owner", "\"x\"")].into_iter(), ["7"].into_iter());
        assert_eq!(primary_key("t", None, &[&e]).unwrap(), ["p"]);
    }

    #[test]
    fn composite_json_key_keeps_index_order() {
        let mut e = KeyEvidence::default();
        e.observe_json(
            [("a", "1"), ("b", "\"x\""), ("c", "2")].into_iter(),
            ["\"x\"", "1"].into_iter(),
        );
        assert_eq!(primary_key("t", None, &[&e]).unwrap(), ["b", "a"]);
    }

    #[test]
    fn parquet_deletes_and_families() {
        let mut e = KeyEvidence::default();
        e.observe_delete(vec!["id".into(), "region".into()]);
        e.observe_delete(vec!["id".into(), "region".into()]);
        assert_eq!(primary_key("t", None, &[&e]).unwrap(), ["id", "region"]);

        let mut f1 = KeyEvidence::default();
        f1.observe_columns(&["id".into(), "a".into()]);
        let mut f2 = KeyEvidence::default();
        f2.observe_columns(&["id".into(), "b".into(), "c".into()]);
        assert_eq!(primary_key("t", None, &[&f1, &f2]).unwrap(), ["id"]);
        let err = primary_key("t", None, &[&f1]).unwrap_err();
        assert!(err.to_string().contains("primary_key"), "{err}");
        assert_eq!(
            primary_key("t", Some(&["a".into()]), &[&f1]).unwrap(),
            ["a"]
        );
    }
}

//! Object names written by CockroachDB's cloud storage sink (format spec §1).
//!
//! ```text
//! <partition><ts33>-<session>-<node>-<sink id>-<file id %08x>-<topic>-<schema id %x><ext>
//! <partition><ts33>.RESOLVED
//! ```
//! The total order of a changefeed is the lexicographic order of these names (§2.3), so the
//! types here order exactly like their rendered file names.

use std::cmp::Ordering;
use std::fmt;

use crate::format::hlc::Hlc;

/// Errors naming the offending path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{path}: not a changefeed file name: {reason}")]
    Invalid { path: String, reason: String },
    #[error(
        "{path}: CSV changefeeds are not supported (CSV carries no operation, key or timestamp); \
         create the changefeed with format=json or format=parquet"
    )]
    Csv { path: String },
    #[error(
        "{path}: partition folder `{folder}` does not match the file timestamp (expected `{expected}`)"
    )]
    Partition {
        path: String,
        folder: String,
        expected: String,
    },
}

/// The data encoding, taken from the file extension.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Parquet,
}

/// Whole-file compression of NDJSON files (Parquet compresses inside the file).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The folder layout chosen by the sink URI's `partition_format`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PartitionFormat {
    #[default]
    Daily,
    Hourly,
    Flat,
}

impl PartitionFormat {
    /// The folder prefix (with trailing `/`, empty for flat) for an object with timestamp `ts`.
    pub fn folder(self, ts: Hlc) -> String {
        let t = ts.to_datetime();
        match self {
            Self::Daily => t.format("%Y-%m-%d/").to_string(),
            Self::Hourly => t.format("%Y-%m-%d/%H/").to_string(),
            Self::Flat => String::new(),
        }
    }

    /// Recognises the layout from the folder part of a path relative to the changefeed root.
    fn detect(folder: &str) -> Option<Self> {
        let is_date = |s: &str| {
            s.len() == 10
                && s.bytes().enumerate().all(|(i, b)| {
                    if i == 4 || i == 7 {
                        b == b'-'
                    } else {
                        b.is_ascii_digit()
                    }
                })
        };
        let parts: Vec<&str> = folder.split('/').filter(|s| !s.is_empty()).collect();
        match parts.as_slice() {
            [] => Some(Self::Flat),
            [d] if is_date(d) => Some(Self::Daily),
            [d, h] if is_date(d) && h.len() == 2 && h.bytes().all(|b| b.is_ascii_digit()) => {
                Some(Self::Hourly)
            }
            _ => None,
        }
    }
}

/// A `partition_format` other than daily, hourly and flat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid partition_format of {0} (daily, hourly or flat)")]
pub struct UnknownPartitionFormat(pub String);

impl std::str::FromStr for PartitionFormat {
    type Err = UnknownPartitionFormat;
    fn from_str(s: &str) -> Result<Self, UnknownPartitionFormat> {
        match s {
            "daily" => Ok(Self::Daily),
            "hourly" => Ok(Self::Hourly),
            "flat" => Ok(Self::Flat),
            _ => Err(UnknownPartitionFormat(s.to_owned())),
        }
    }
}

/// A changefeed topic: a table, or `table+family` with `split_column_families`.
///
/// With `full_table_name` the table part is `database.schema.table`, SQL-quoted where needed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(pub String);

impl Topic {
    /// The table part: everything before the last `+` outside double quotes.
    ///
    /// A plain table whose (quoted) name contains `+` is indistinguishable from a family topic;
    /// CockroachDB gives no escape, so this is the documented reading.
    pub fn table(&self) -> &str {
        self.split().0
    }

    /// The column family, when the topic names one.
    pub fn family(&self) -> Option<&str> {
        self.split().1
    }

    fn split(&self) -> (&str, Option<&str>) {
        let mut in_quotes = false;
        let mut split_at = None;
        for (i, c) in self.0.char_indices() {
            match c {
                '"' => in_quotes = !in_quotes,
                '+' if !in_quotes => split_at = Some(i),
                _ => {}
            }
        }
        match split_at {
            Some(i) => (&self.0[..i], Some(&self.0[i + 1..])),
            None => (&self.0, None),
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed data file name. Orders like the rendered name (the changefeed's total order).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataFileName {
    /// Inclusive lower bound of the `updated` timestamps of the rows inside (§1.5).
    pub ts: Hlc,
    /// 16 lowercase hex digits, new for every sink instance (aggregator start).
    pub session: String,
    /// SQL instance / node id of the aggregator.
    pub node: u32,
    /// Process-wide sink counter on that node.
    pub sink: u64,
    /// Per-sink file counter.
    pub file_id: u64,
    pub topic: Topic,
    /// Table descriptor version: a new value means a new schema.
    pub schema_id: u64,
    pub format: Format,
    pub compression: Compression,
}

impl DataFileName {
    /// The file extension for this format and compression.
    pub fn extension(&self) -> &'static str {
        match (self.format, self.compression) {
            (Format::Parquet, _) => ".parquet",
            (Format::Json, Compression::None) => ".ndjson",
            (Format::Json, Compression::Gzip) => ".ndjson.gz",
            (Format::Json, Compression::Zstd) => ".ndjson.zst",
        }
    }

    /// `<session>-<node>-<sink>-<file id>`: what the docs call the uniquer.
    pub fn uniquer(&self) -> String {
        format!(
            "{}-{}-{}-{:08x}",
            self.session, self.node, self.sink, self.file_id
        )
    }
}

impl fmt::Display for DataFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}-{}-{}-{:08x}-{}-{:x}{}",
            self.ts.ts33(),
            self.session,
            self.node,
            self.sink,
            self.file_id,
            self.topic,
            self.schema_id,
            self.extension()
        )
    }
}

impl Ord for DataFileName {
    fn cmp(&self, other: &Self) -> Ordering {
        self.to_string().cmp(&other.to_string())
    }
}

impl PartialOrd for DataFileName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Any object the sink writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectName {
    Data(DataFileName),
    /// `<ts>.RESOLVED`: nothing with `updated` ≤ ts that was not seen before will follow.
    Resolved(Hlc),
}

impl ObjectName {
    /// The object's own timestamp (partition folders derive from it).
    pub fn ts(&self) -> Hlc {
        match self {
            Self::Data(d) => d.ts,
            Self::Resolved(ts) => *ts,
        }
    }

    /// The bare file name (no folder).
    pub fn file_name(&self) -> String {
        match self {
            Self::Data(d) => d.to_string(),
            Self::Resolved(ts) => format!("{}.RESOLVED", ts.ts33()),
        }
    }

    /// The path relative to the changefeed root for a partition layout.
    pub fn render(&self, partition: PartitionFormat) -> String {
        format!("{}{}", partition.folder(self.ts()), self.file_name())
    }

    /// Parses a path relative to the changefeed root (`[partition/]name`).
    /// The partition folder, if any, must be the one the sink would have chosen.
    pub fn parse_relative(path: &str) -> Result<(Self, PartitionFormat), NameError> {
        let (folder, file) = match path.rfind('/') {
            Some(i) => (&path[..=i], &path[i + 1..]),
            None => ("", path),
        };
        let name = Self::parse_file_name(file).map_err(|e| with_path(e, path))?;
        let partition = PartitionFormat::detect(folder).ok_or_else(|| NameError::Invalid {
            path: path.to_owned(),
            reason: format!("folder `{folder}` is not a daily (YYYY-MM-DD/) or hourly (YYYY-MM-DD/HH/) partition"),
        })?;
        let expected = partition.folder(name.ts());
        if folder.trim_start_matches('/') != expected {
            return Err(NameError::Partition {
                path: path.to_owned(),
                folder: folder.to_owned(),
                expected,
            });
        }
        Ok((name, partition))
    }

    /// Parses a bare file name.
    pub fn parse_file_name(file: &str) -> Result<Self, NameError> {
        let invalid = |reason: &str| NameError::Invalid {
            path: file.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(ts) = file.strip_suffix(".RESOLVED") {
            let ts = Hlc::parse_ts33(ts).map_err(|e| invalid(&e.to_string()))?;
            return Ok(Self::Resolved(ts));
        }
        const EXTENSIONS: [(&str, Option<(Format, Compression)>); 7] = [
            (".ndjson.gz", Some((Format::Json, Compression::Gzip))),
            (".ndjson.zst", Some((Format::Json, Compression::Zstd))),
            (".ndjson", Some((Format::Json, Compression::None))),
            (".parquet", Some((Format::Parquet, Compression::None))),
            (".csv.gz", None),
            (".csv.zst", None),
            (".csv", None),
        ];
        let (stem, kind) = EXTENSIONS
            .iter()
            .find_map(|(ext, kind)| file.strip_suffix(ext).map(|stem| (stem, *kind)))
            .ok_or_else(|| {
                invalid("unknown extension (expected .ndjson[.gz|.zst], .parquet or .RESOLVED)")
            })?;
        let (format, compression) = kind.ok_or_else(|| NameError::Csv {
            path: file.to_owned(),
        })?;

        // Five leading `-`-terminated groups, then a greedy topic, then `-<schema id>`.
        let mut parts = stem.splitn(6, '-');
        let mut next = |what: &str| {
            parts
                .next()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| invalid(&format!("missing {what}")))
        };
        let ts = next("timestamp")?;
        let session = next("session id")?;
        let node = next("node id")?;
        let sink = next("sink id")?;
        let file_id = next("file id")?;
        let rest = next("topic")?;
        let (topic, schema) = rest
            .rsplit_once('-')
            .ok_or_else(|| invalid("missing schema id"))?;
        if topic.is_empty() {
            return Err(invalid("empty topic"));
        }
        let ts = Hlc::parse_ts33(ts).map_err(|e| invalid(&e.to_string()))?;
        // `generateChangefeedSessionID`: 8 random bytes as lowercase hex (format spec §1.2).
        if session.len() != 16
            || !session
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(invalid(&format!(
                "session id `{session}` is not 16 lowercase hex digits"
            )));
        }
        let decimal = |s: &str, what: &str| {
            if s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse::<u64>().ok()
            } else {
                None
            }
            .ok_or_else(|| invalid(&format!("{what} `{s}` is not a decimal number")))
        };
        let node = u32::try_from(decimal(node, "node id")?)
            .map_err(|_| invalid("node id out of range"))?;
        let sink = decimal(sink, "sink id")?;
        let hex = |s: &str, what: &str| {
            if s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                u64::from_str_radix(s, 16).ok()
            } else {
                None
            }
            .ok_or_else(|| invalid(&format!("{what} `{s}` is not lowercase hex")))
        };
        if file_id.len() < 8 {
            return Err(invalid(&format!(
                "file id `{file_id}` is not zero-padded to 8 hex digits"
            )));
        }
        let file_id = hex(file_id, "file id")?;
        let schema_id = hex(schema, "schema id")?;
        let name = DataFileName {
            ts,
            session: session.to_owned(),
            node,
            sink,
            file_id,
            topic: Topic(topic.to_owned()),
            schema_id,
            format,
            compression,
        };
        // Reject spellings we would not render back identically (leading zeros and such):
        // two spellings of one file would break the total order.
        if name.to_string() != file {
            return Err(invalid(
                "not in canonical form (leading zeros or upper-case hex)",
            ));
        }
        Ok(Self::Data(name))
    }
}

fn with_path(e: NameError, path: &str) -> NameError {
    match e {
        NameError::Invalid { reason, .. } => NameError::Invalid {
            path: path.to_owned(),
            reason,
        },
        NameError::Csv { .. } => NameError::Csv {
            path: path.to_owned(),
        },
        other => other,
    }
}

impl Ord for ObjectName {
    fn cmp(&self, other: &Self) -> Ordering {
        self.file_name().cmp(&other.file_name())
    }
}

impl PartialOrd for ObjectName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FIXTURE: &str =
        "202405031553360274740000000000000-08779498965a12e2-1-2-00000000-mytable-2.ndjson";

    fn data(name: &ObjectName) -> &DataFileName {
        match name {
            ObjectName::Data(d) => d,
            ObjectName::Resolved(_) => panic!("expected a data file"),
        }
    }

    #[test]
    fn parses_real_names() {
        let n = ObjectName::parse_file_name(FIXTURE).unwrap();
        let d = data(&n);
        assert_eq!(d.ts, Hlc::new(1_714_751_616_027_474_000, 0));
        assert_eq!(
            (d.session.as_str(), d.node, d.sink, d.file_id),
            ("08779498965a12e2", 1, 2, 0)
        );
        assert_eq!(
            (d.topic.table(), d.topic.family(), d.schema_id),
            ("mytable", None, 2)
        );
        assert_eq!((d.format, d.compression), (Format::Json, Compression::None));
        assert_eq!(n.file_name(), FIXTURE);

        let (n, p) = ObjectName::parse_relative(
            "2020-04-02/202004022058072107140000000000000-56087568dba1e6b8-1-72-00000000-test_table-1.ndjson",
        )
        .unwrap();
        assert_eq!(p, PartitionFormat::Daily);
        assert_eq!(data(&n).sink, 72);

        let (n, p) =
            ObjectName::parse_relative("2020-04-04/202004042351304139680000000000000.RESOLVED")
                .unwrap();
        assert_eq!(p, PartitionFormat::Daily);
        assert_eq!(
            n,
            ObjectName::Resolved(Hlc::parse_ts33("202004042351304139680000000000000").unwrap())
        );
    }

    #[test]
    fn topics_with_dashes_dots_families_and_quotes() {
        let name = "202405031553360274740000000000001-e74c329c6545f502-3-17-0000001a-my-db.public.\"Office+Dogs\"+fam_1_a_b-1f.ndjson.zst";
        let n = ObjectName::parse_file_name(name).unwrap();
        let d = data(&n);
        assert_eq!(d.topic.table(), "my-db.public.\"Office+Dogs\"");
        assert_eq!(d.topic.family(), Some("fam_1_a_b"));
        assert_eq!(
            (d.file_id, d.schema_id, d.compression),
            (26, 31, Compression::Zstd)
        );
        assert_eq!(n.file_name(), name);
    }

    #[test]
    fn hourly_and_flat_partitions() {
        let n = ObjectName::parse_file_name(FIXTURE).unwrap();
        assert_eq!(
            n.render(PartitionFormat::Hourly),
            format!("2024-05-03/15/{FIXTURE}")
        );
        assert_eq!(n.render(PartitionFormat::Flat), FIXTURE);
        for p in [
            PartitionFormat::Daily,
            PartitionFormat::Hourly,
            PartitionFormat::Flat,
        ] {
            assert_eq!(
                ObjectName::parse_relative(&n.render(p)).unwrap(),
                (n.clone(), p)
            );
        }
        let err = ObjectName::parse_relative(&format!("2024-05-04/{FIXTURE}")).unwrap_err();
        assert!(matches!(err, NameError::Partition { .. }), "{err}");
        let err = ObjectName::parse_relative(&format!("somewhere/{FIXTURE}")).unwrap_err();
        assert!(err.to_string().starts_with("somewhere/"), "{err}");
    }

    #[test]
    fn refuses_csv_and_strangers_naming_the_path() {
        let csv = FIXTURE.replace(".ndjson", ".csv");
        let err = ObjectName::parse_file_name(&csv).unwrap_err();
        assert!(matches!(err, NameError::Csv { .. }));
        assert!(err.to_string().contains(&csv) && err.to_string().contains("format=json"));
        for bad in [
            "_delta_log/00000000000000000000.json",
            "202405031553360274740000000000000.resolved",
            "202405031553360274740000000000000-08779498965a12e2-1-2-00000000-mytable.ndjson",
            "202405031553360274740000000000000-08779498965a12e2-1-2-0-mytable-2.ndjson",
            "202405031553360274740000000000000-08779498965a12e2-01-2-00000000-mytable-2.ndjson",
            "202405031553360274740000000000000-0877949896XYZ2e2-1-2-00000000-mytable-2.ndjson",
            // Upper-case or short session ids are not CockroachDB's.
            "202405031553360274740000000000000-08779498965A12E2-1-2-00000000-mytable-2.ndjson",
            "202405031553360274740000000000000-0877949896-1-2-00000000-mytable-2.ndjson",
            "202405031553360274740000000000000-08779498965a12e2-1-2-00000000-mytable-2G.ndjson",
            "20240503155336027474000000000000-08779498965a12e2-1-2-00000000-mytable-2.ndjson",
        ] {
            let err = ObjectName::parse_file_name(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    fn any_name() -> impl Strategy<Value = DataFileName> {
        (
            0i64..7_258_118_400_000_000_000,
            0u32..3,
            "[0-9a-f]{16}",
            1u32..300,
            1u64..400,
            0u64..0x1_0000_0000,
            "[a-z][a-z0-9_.-]{0,12}(\\+[a-z_0-9]{1,8})?",
            1u64..5000,
            prop_oneof![
                Just((Format::Json, Compression::None)),
                Just((Format::Json, Compression::Gzip)),
                Just((Format::Json, Compression::Zstd)),
                Just((Format::Parquet, Compression::None)),
            ],
        )
            .prop_map(
                |(
                    wall,
                    logical,
                    session,
                    node,
                    sink,
                    file_id,
                    topic,
                    schema_id,
                    (format, compression),
                )| {
                    DataFileName {
                        ts: Hlc::new(wall, logical),
                        session,
                        node,
                        sink,
                        file_id,
                        topic: Topic(topic),
                        schema_id,
                        format,
                        compression,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn render_then_parse_is_identity(d in any_name()) {
            let n = ObjectName::Data(d);
            prop_assert_eq!(ObjectName::parse_file_name(&n.file_name()).unwrap(), n.clone());
            prop_assert_eq!(ObjectName::parse_relative(&n.render(PartitionFormat::Hourly)).unwrap().0, n);
        }

        /// §2: names sort by timestamp first, then by the uniquer; a RESOLVED file sorts after
        /// every data file of its own timestamp and before every later one.
        #[test]
        fn name_order_is_timestamp_then_uniquer(a in any_name(), b in any_name()) {
            let by_parts = a.ts.cmp(&b.ts).then_with(|| a.uniquer().cmp(&b.uniquer()));
            if by_parts != Ordering::Equal {
                prop_assert_eq!(a.to_string().cmp(&b.to_string()), by_parts);
                prop_assert_eq!(a.cmp(&b), by_parts);
            }
            let resolved = ObjectName::Resolved(a.ts);
            prop_assert!(ObjectName::Data(a.clone()) < resolved);
            let later = DataFileName { ts: a.ts.next(), ..a.clone() };
            prop_assert!(resolved < ObjectName::Data(later));
            // Paths keep the order when both use one partition layout.
            let (pa, pb) = (ObjectName::Data(a.clone()), ObjectName::Data(b.clone()));
            for p in [PartitionFormat::Daily, PartitionFormat::Hourly] {
                if by_parts != Ordering::Equal {
                    prop_assert_eq!(pa.render(p).cmp(&pb.render(p)), by_parts);
                }
            }
        }
    }
}

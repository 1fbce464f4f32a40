//! `.RESOLVED` files (format spec §1.6): JSON `{"resolved":"<hlc>"}` (or bare
//! `{"__crdb__":{"resolved":…}}`), or, for Parquet changefeeds, a one-row Parquet file whose
//! `__crdb__resolved` column holds the HLC as DECIMAL text.

use bytes::Bytes;

use super::{DecodeError, ParquetDecoder};
use crate::format::hlc::Hlc;

const PARQUET_MAGIC: &[u8] = b"PAR1";

/// Reads the watermark from a `.RESOLVED` object's contents. `expected` is the timestamp in the
/// object's name: a file whose content disagrees with its name is refused.
pub fn decode_resolved(
    file: &str,
    bytes: Bytes,
    expected: Option<Hlc>,
) -> Result<Hlc, DecodeError> {
    let invalid = |message: String| DecodeError::Invalid {
        file: file.to_owned(),
        message,
    };
    let ts = if bytes.starts_with(PARQUET_MAGIC) {
        parquet_resolved(file, bytes)?
    } else {
        #[derive(serde::Deserialize)]
        struct Json {
            resolved: Option<String>,
            #[serde(rename = "__crdb__")]
            crdb: Option<Box<Json>>,
        }
        let j: Json = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("not a RESOLVED message: {e}")))?;
        let s = j
            .resolved
            .or_else(|| j.crdb.and_then(|c| c.resolved))
            .ok_or_else(|| invalid("no `resolved` field".into()))?;
        Hlc::parse_decimal(&s).map_err(|e| invalid(e.to_string()))?
    };
    if let Some(name_ts) = expected
        && name_ts != ts
    {
        return Err(invalid(format!(
            "contains {ts} but its name says {name_ts}"
        )));
    }
    Ok(ts)
}

fn parquet_resolved(file: &str, bytes: Bytes) -> Result<Hlc, DecodeError> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    let invalid = |message: String| DecodeError::Invalid {
        file: file.to_owned(),
        message,
    };
    // Same DECIMAL-as-text rewrite as data files; the column is not a data column, so read the
    // rewritten file directly.
    let (_, builder) = ParquetDecoder::open(file, bytes, 16)?;
    let mut reader = builder.build().map_err(|e| invalid(e.to_string()))?;
    let batch = reader
        .next()
        .ok_or_else(|| invalid("empty RESOLVED Parquet file".into()))?
        .map_err(|e| invalid(e.to_string()))?;
    let col = batch
        .column_by_name("__crdb__resolved")
        .ok_or_else(|| invalid("no `__crdb__resolved` column".into()))?;
    let col = col
        .as_string_opt::<i32>()
        .ok_or_else(|| invalid("`__crdb__resolved` is not DECIMAL text".into()))?;
    if batch.num_rows() != 1 || !col.is_valid(0) {
        return Err(invalid(
            "expected exactly one non-null `__crdb__resolved` value".into(),
        ));
    }
    Hlc::parse_decimal(col.value(0)).map_err(|e| invalid(e.to_string()))
}

//! CockroachDB's changefeed format: object names, HLCs, the NDJSON and Parquet decoders, value
//! and type encodings, key derivation; all of it into one canonical Arrow layout ([`batch`]).

pub mod batch;
pub mod canonical;
pub mod column;
pub mod decode;
pub mod hlc;
pub mod keys;
pub mod names;
pub mod types;
pub mod values;

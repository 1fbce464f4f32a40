//! crdb-delta-core: the pure part of crdb-delta. No network or file I/O, nothing of Azure.
//!
//! The data path, one folder per stage:
//!
//! | module | what |
//! |---|---|
//! | [`format`] | CockroachDB's changefeed format: names, HLCs, NDJSON/Parquet decoding, values, types, keys → canonical Arrow batches |
//! | [`plan`] | which RESOLVED, which files, which steps: decisions over a listing, as printable values |
//! | [`apply`] | a window of changes merged by key and HLC, and what each mode writes for it |
//! | [`key_index`] | a table file's key column, sorted with each row's position: the window's keys looked up without reading the file |
//! | [`deletion_vector`] | Delta's deletion-vector format (bitmaps, `.bin` files, descriptors): merge-on-read |
//! | [`sim`] | the simulator: writes the format itself (deterministic changefeeds and their truth) |

pub mod apply;
pub mod deletion_vector;
pub mod format;
pub mod key_index;
pub mod plan;
pub mod sim;

pub use format::hlc::Hlc;
pub use format::names::{DataFileName, ObjectName, PartitionFormat, Topic};

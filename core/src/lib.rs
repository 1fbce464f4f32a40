//! crdb-delta-core: the pure part of crdb-delta.
//!
//! It knows CockroachDB's cloud-storage changefeed format (names, NDJSON, Parquet, RESOLVED),
//! turns it into one canonical Arrow layout, derives primary keys, and can write the format
//! itself (the simulator). It performs no network I/O and knows nothing of Azure Functions.

pub mod batch;
pub mod canonical;
pub mod changes;
pub mod column;
pub mod decode;
pub mod deletion_vector;
pub mod events;
pub mod hlc;
pub mod host;
pub mod keys;
pub mod names;
pub mod plan;
pub mod sim;
pub mod types;
pub mod values;

pub use hlc::Hlc;
pub use names::{DataFileName, ObjectName, PartitionFormat, Topic};

//! crdb-delta: CockroachDB changefeeds (cloud storage sink) into Delta Lake tables.
//!
//! The format, planning and merge logic lives in `crdb-delta-core`; this crate holds the I/O at
//! the edges: storage, the command line and (later) the Azure Functions custom handler.

pub mod config;
pub mod crdb;
pub mod delta;
pub mod dev;
pub mod engine;
pub mod functions;
pub mod inspect;
pub mod maintain;
pub mod quarantine;
pub mod records;
pub mod serve;
pub mod status;
pub mod storage;
pub mod unity_catalog;

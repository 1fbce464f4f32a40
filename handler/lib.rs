//! crdb-delta: CockroachDB changefeeds (cloud storage sink) into Delta Lake tables.
//!
//! The format, planning and merge logic lives in `crdb-delta-core`; this crate holds the I/O at
//! the edges: storage, Delta tables (`delta`, `table_file`: a data file fetched by the byte
//! ranges a step needs), the engine's stages (`engine`), upkeep (`maintain`), the command line
//! and the Azure Functions custom handler (`functions`, `serve`). README "Layout" maps every
//! module.

pub mod byte_size;
pub mod checkpoint;
pub mod config;
pub mod crdb;
pub mod delta;
pub mod dev;
pub mod engine;
pub mod file_writer;
pub mod functions;
pub mod inspect;
pub mod maintain;
pub mod progress;
pub mod quarantine;
pub mod records;
pub mod serve;
pub mod status;
pub mod status_plot;
pub mod storage;
pub mod table_file;
pub mod unity_catalog;

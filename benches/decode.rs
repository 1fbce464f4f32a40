//! Decode throughput on a ≥100 MB simulated changefeed, per format.
//!
//!     cargo bench --bench decode            # or: cargo bench --bench decode -- --mb 200
//!
//! Runs only under `cargo bench` (the test runner lists this target but must not run it).

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use crdb_delta_core::format::decode::{self, DecodeOptions};
use crdb_delta_core::format::names::{Compression, Format, ObjectName};
use crdb_delta_core::sim::{self, Destination, SimOptions, TruthStates};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let mb: usize = args
        .windows(2)
        .find(|w| w[0] == "--mb")
        .map_or(100, |w| w[1].parse().expect("--mb N"));
    println!("| format | files | MB | rows | seconds | MB/s | rows/s |");
    println!("|---|---|---|---|---|---|---|");
    for (format, compression) in [
        (Format::Json, Compression::None),
        (Format::Json, Compression::Gzip),
        (Format::Parquet, Compression::None),
    ] {
        // usertable rows are ~1.1 kB of JSON (10 × 100-byte fields, as YCSB writes them).
        let rows = mb * 1000;
        let opts = SimOptions {
            format,
            compression,
            tables: vec!["usertable".into()],
            initial_rows: rows * 6 / 10,
            windows: 4,
            events_per_window: rows / 10,
            restart_at: None,
            schema_change_at: None,
            truth_states: TruthStates::None,
            ..SimOptions::default()
        };
        let mut files: BTreeMap<String, Bytes> = BTreeMap::new();
        sim::run(&opts, &mut |dest, path, bytes| {
            if dest == Destination::Changefeed {
                files.insert(path.to_owned(), Bytes::from(bytes));
            }
            Ok(())
        })
        .expect("simulation");
        let decode_opts = DecodeOptions::default();
        let (mut n_files, mut bytes, mut decoded_rows) = (0, 0usize, 0usize);
        let start = Instant::now();
        for (path, data) in &files {
            let Ok((ObjectName::Data(name), _)) = ObjectName::parse_relative(path) else {
                continue;
            };
            n_files += 1;
            bytes += data.len();
            for b in decode::decode_bytes(&name, path, data.clone(), &decode_opts).expect("open") {
                decoded_rows += b.expect("decode").num_rows();
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let label = match (format, compression) {
            (Format::Json, Compression::Gzip) => "NDJSON gzip".to_owned(),
            (Format::Json, _) => "NDJSON".to_owned(),
            (Format::Parquet, _) => "Parquet".to_owned(),
        };
        println!(
            "| {label} | {n_files} | {:.1} | {decoded_rows} | {secs:.2} | {:.1} | {:.0} |",
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / secs,
            decoded_rows as f64 / secs
        );
    }
}

//! What a run did: per table and in total, as `sync --json` prints it and Status keeps it.

use std::collections::BTreeMap;

use crdb_delta_core::Hlc;
use crdb_delta_core::apply::Mode;
use serde::Serialize;

use crate::quarantine::Action;

/// What a sync did to one table.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TableReport {
    pub target: String,
    pub mode: Option<Mode>,
    /// The RESOLVED the table is at after the run.
    pub resolved: Option<Hlc>,
    /// The first file that still held newer rows (`Progress::pending_from`).
    pub pending_from: Option<String>,
    pub version: Option<u64>,
    pub commits: u64,
    /// Of the commits, those that applied one key slice of a RESOLVED interval too large for
    /// a window, short of the interval's last ([`crdb_delta_core::plan::Slices`]).
    pub slice_commits: u64,
    /// Distinct changes applied (column families merged, duplicates dropped).
    pub events: u64,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub duplicates: u64,
    /// Commits of this table that went stale (another writer) and were planned again.
    pub replans: u64,
    /// Changefeed files read (fetched, or from the slice cache).
    pub files_read: u64,
    /// Files not read again: their rows past the previous step's RESOLVED were kept in memory
    /// ([`super::carry`]).
    pub files_reused: u64,
    /// Steps whose window was read while the step before wrote and committed
    /// ([`super::ahead`]; one step per RESOLVED only).
    pub steps_read_ahead: u64,
    /// Stored bytes fetched from the changefeed's storage.
    pub bytes_read: u64,
    /// Of the files read, those a sliced interval's later slice read from local disk instead
    /// of fetching them again ([`super::slice_cache`], `slice_cache_bytes`), and their stored
    /// bytes (not in `bytes_read`).
    pub files_from_slice_cache: u64,
    pub bytes_from_slice_cache: u64,
    /// Files whose rows a sliced interval's later slice read from the slice spill (its rows cut
    /// by slice on local disk, [`super::slice_spill`]) instead of reading the file (not in
    /// `files_read`), and the bytes one pass wrote there.
    pub files_from_slice_spill: u64,
    pub bytes_spilled: u64,
    /// Input after decompression (what `max_window_bytes` counts).
    pub decoded_bytes: u64,
    /// Delta data files of the table read (their key columns, and whole when touched), and
    /// their stored bytes: what applying cost beyond the changefeed itself.
    pub table_files_read: u64,
    pub table_bytes_read: u64,
    /// Of the table files read, those whose key column was looked up in memory instead
    /// ([`super::key_cache`]): only their deletion vector was fetched (and their rows, when a
    /// mode needs the superseded rows whole).
    pub table_files_indexed: u64,
    /// Of the table files read, those tagged with the key slice they hold (written by one slice
    /// of a sliced interval, [`crdb_delta_core::apply::SliceTag`]): looked for only the window's
    /// keys of that slice. A tagged file the window has no key of is not read at all.
    pub table_files_sliced: u64,
    /// Deletion vectors of table files fetched from storage; those a warm process holds from
    /// its earlier steps (by their unique id, [`super::key_cache`]) are not.
    pub deletion_vectors_read: u64,
    /// scd2: versions ended from their change's `before` (a `diff` changefeed), so only the
    /// key, end and start columns of their rows were read.
    pub versions_ended_from_before: u64,
    /// Table files rewritten whole (copy-on-write) or given a new deletion vector.
    pub files_rewritten: u64,
    pub files_with_deletion_vectors: u64,
    /// Bytes of new data files and deletion-vector files written.
    pub bytes_written: u64,
    pub rows_read: u64,
    /// Of the rows read, those of other key slices a decoder skipped without decoding them
    /// (slices past an interval's first: [`crdb_delta_core::format::decode::SliceFilter`]).
    pub rows_skipped: u64,
    /// Files a slice read by the key slices an earlier slice of the interval found in them
    /// ([`super::read::SliceMemo`]): Parquet without decoding their key columns again, NDJSON
    /// parsing only the slice's lines.
    pub files_slices_known: u64,
    pub seconds: f64,
    /// Files of this run were in the `bare` envelope: a delete cannot be told from an update
    /// to all-NULL there (format spec §3.3), so deletes were applied as such rows.
    pub bare_envelope: bool,
}

impl TableReport {
    /// Adds the read figures of `other` (a read made ahead, [`super::ahead`]).
    pub(super) fn add_read(&mut self, other: &TableReport) {
        self.files_read += other.files_read;
        self.files_reused += other.files_reused;
        self.bytes_read += other.bytes_read;
        self.files_from_slice_cache += other.files_from_slice_cache;
        self.files_from_slice_spill += other.files_from_slice_spill;
        self.bytes_spilled += other.bytes_spilled;
        self.bytes_from_slice_cache += other.bytes_from_slice_cache;
        self.decoded_bytes += other.decoded_bytes;
        self.rows_read += other.rows_read;
        self.rows_skipped += other.rows_skipped;
        self.files_slices_known += other.files_slices_known;
        self.bare_envelope |= other.bare_envelope;
    }
}

#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    pub source: String,
    pub target: String,
    pub resolved: Option<Hlc>,
    pub steps: u64,
    /// Table commits planned again because another writer's commit made them stale, plus
    /// steps planned again smaller because they decoded past the window.
    pub replans: u64,
    /// False when the run stopped at its deadline with RESOLVEDs left to apply.
    pub complete: bool,
    pub tables: BTreeMap<String, TableReport>,
    pub ignored: Vec<String>,
    /// RESOLVED objects refused (e.g. far ahead of the clock), with the reason: never applied.
    pub refused: Vec<String>,
    /// Data files written after a RESOLVED that covers them ([`plan::late_files`]): a second
    /// changefeed writing into this root, or a file copied or rewritten later.
    pub late: Vec<String>,
    /// Quarantined files (`crdb-delta quarantine list`): `hold` ones stop their table.
    pub quarantined: Vec<crate::quarantine::Record>,
    /// Tables whose schema this run read again from CockroachDB (their files showed a new
    /// schema id), with that id ([`super::schema_refresh`]).
    pub schema_read: BTreeMap<String, u64>,
    /// Configured tables this run saw no file of, and configured columns its tables lack
    /// ([`crate::config::Config::unused`]): likely typos, said rather than ignored.
    pub config_unused: Vec<String>,
    pub events: u64,
    pub bytes_read: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    pub mb_per_s: f64,
    /// Peak resident memory of the process so far (Linux `VmHWM`), MiB.
    pub peak_rss_mib: Option<f64>,
}

/// Peak resident set size of this process (Linux), MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// What `sync` prints: a line per table, then what was refused, late or quarantined.
impl std::fmt::Display for SyncReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "sync {} -> {}: {} step(s), at RESOLVED {}",
            self.source,
            self.target,
            self.steps,
            self.resolved.map_or("none".into(), |h| format!(
                "{} ({})",
                h.to_datetime()
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                h
            ))
        )?;
        for (name, t) in &self.tables {
            writeln!(
                f,
                "  {name} -> {} ({}): version {}, {} events: +{} ~{} -{} ({} duplicates), {} files, {:.1} MB",
                t.target,
                t.mode.map_or("-".into(), |m| m.to_string()),
                t.version.map_or("-".into(), |v| v.to_string()),
                t.events,
                t.inserted,
                t.updated,
                t.deleted,
                t.duplicates,
                t.files_read,
                t.bytes_read as f64 / 1e6
            )?;
        }
        if self.resolved.is_none() && self.quarantined.is_empty() && self.refused.is_empty() {
            writeln!(
                f,
                "  nothing applied: no RESOLVED file in the source yet (the changefeed writes them \
                 with `WITH resolved`); data files wait for the first one"
            )?;
        }
        for (name, _) in self.tables.iter().filter(|(_, t)| t.bare_envelope) {
            writeln!(
                f,
                "  {name}: WARNING: the changefeed uses envelope=bare, where a delete cannot be told \
                 from an update to all-NULL: deleted rows stay, with NULL columns (use the default \
                 envelope=wrapped)"
            )?;
        }
        for (t, id) in &self.schema_read {
            writeln!(
                f,
                "  {t}: keys and types read from CockroachDB (files at schema id {id:x})"
            )?;
        }
        for u in &self.config_unused {
            writeln!(f, "  config: {u}")?;
        }
        for i in &self.ignored {
            writeln!(f, "  ignored: {i}")?;
        }
        for r in &self.refused {
            writeln!(f, "  REFUSED: {r}")?;
        }
        for l in &self.late {
            writeln!(f, "  LATE: {l}")?;
        }
        for q in &self.quarantined {
            let what = match q.action {
                Action::Hold => "STOPPED, file quarantined",
                Action::Skip => "file skipped by an operator",
            };
            writeln!(f, "  {} {what}: {}: {}", q.table, q.file, q.reason)?;
        }
        writeln!(
            f,
            "{:.2} s: {:.0} events/s, {:.1} MB/s, peak RSS {}",
            self.seconds,
            self.events_per_s,
            self.mb_per_s,
            self.peak_rss_mib
                .map_or("-".into(), |m| format!("{m:.0} MiB"))
        )?;
        Ok(())
    }
}

//! A table's key indexes learned before its next step needs them.
//!
//! A process's first step at a table of random keys reads every table file's key columns
//! (at 20M UUID rows, 370 MB) while its RESOLVED waits; later steps look keys up in the
//! indexes that read left ([`super::key_cache`]). A new handler instance hears of a table's
//! data files some seconds before the RESOLVED that applies them: a warm-up started then reads
//! the key columns (and deletion vectors) in that gap, and the RESOLVED finds them indexed.
//!
//! The table itself is kept open for the step too, when the process keeps tables
//! ([`super::table_cache`]). It reads, never writes: no lease, nothing committed. A file's
//! index is kept whole or not at all, so a warm-up dropped part-way (an apply starting,
//! [`crate::serve`]) leaves the files it finished indexed and the step reads the rest itself.
//! It stops at the key index budget. Not for a table whose interval is being applied in key slices (an initial load in
//! progress: its files are probed by slice, and indexes would crowd its memory), a mode that
//! reads no table files (append_only), or a table this process already stepped (its steps keep
//! the indexes).

use std::sync::Arc;
use std::time::Instant;

use crdb_delta_core::apply::Mode;
use crdb_delta_core::format::types::ColumnType;
use futures::StreamExt;

use super::apply::deletion_vector;
use super::probe_decode::{self, Learn};
use super::{SyncError, SyncOptions, delta_err};
use crate::delta::{self, DeltaError, Target};
use crate::storage::Location;

/// Files fetched and decoded at once: each holds its key column chunks and decoded rows.
const FILES_AT_ONCE: usize = 2;

/// What a warm-up did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WarmReport {
    /// Why nothing was read, when nothing was.
    pub skipped: Option<&'static str>,
    /// The table's files.
    pub files: u64,
    /// Files already indexed.
    pub files_indexed: u64,
    /// Files whose key columns were read and whose index was kept.
    pub files_learned: u64,
    /// Bytes of key columns fetched.
    pub bytes_read: u64,
    /// Stopped at the key index budget.
    pub full: bool,
    pub seconds: f64,
}

impl WarmReport {
    fn skipped(why: &'static str) -> Self {
        Self {
            skipped: Some(why),
            ..Self::default()
        }
    }
}

/// Learns the key indexes of table `name`'s files below `target` into `opts.key_cache`.
pub async fn warm(
    target: &Location,
    name: &str,
    opts: &SyncOptions,
) -> Result<WarmReport, SyncError> {
    let started = Instant::now();
    let cache = &opts.key_cache;
    if !cache.enabled() {
        return Ok(WarmReport::skipped(
            "no key index budget (key_index_bytes 0)",
        ));
    }
    if super::table::configured_mode(name, opts) == Mode::AppendOnly {
        return Ok(WarmReport::skipped("append_only reads no table files"));
    }
    let path = opts.config.target_path(name)?;
    let t = Target::new(target, &path)?;
    let (table, derived) = super::table_cache::open(opts.table_cache.as_ref(), &t).await?;
    let Some(table) = table else {
        return Ok(WarmReport::skipped("no table yet"));
    };
    let (layout, recorded) = delta::layout_of(&table, &path)?;
    if recorded == Some(Mode::AppendOnly) {
        return Ok(WarmReport::skipped("append_only reads no table files"));
    }
    let url = Arc::new(table.table_url().to_string());
    if cache.stepped(&url) {
        return Ok(WarmReport::skipped("stepped in this process"));
    }
    // Kept with the table when no commit came since; else read from the log.
    let progress = match derived.progress {
        Some(p) => p,
        None => delta::progress(&table, &path).await?,
    };
    if progress.slices.is_some() {
        return Ok(WarmReport::skipped(
            "an interval is being applied in key slices",
        ));
    }
    // Kept open with its progress: the step brings it up to date instead of opening it.
    if let Some(kept) = &opts.table_cache {
        let derived = super::table_cache::Derived {
            progress: Some(progress),
            record: None,
        };
        kept.keep(&t, &table, derived).await;
    }
    let key: Arc<[String]> = layout.key.iter().cloned().collect();
    let key_types: (Arc<[String]>, Arc<[ColumnType]>) = (key.clone(), layout.key_types().into());
    let files = delta::files(&table, &key[0])
        .await
        .map_err(delta_err(name))?;
    cache.forget_gone(&url, &files.iter().map(|f| f.path.as_str()).collect());
    let mut report = WarmReport {
        files: files.len() as u64,
        ..WarmReport::default()
    };
    let unknown: Vec<_> = files
        .into_iter()
        .filter(|f| {
            let known = cache
                .get(&url, &f.path, f.size)
                .is_some_and(|k| k.is_of(&key_types.0, &key_types.1));
            report.files_indexed += u64::from(known);
            !known
        })
        .collect();
    super::faults::pause("warm-before-fetch").await;
    let table = Arc::new(table);
    let dvs_read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut learned = futures::stream::iter(unknown.into_iter().map(|f| {
        let (table, url, key, key_types, dvs_read) = (
            table.clone(),
            url.clone(),
            key.clone(),
            key_types.clone(),
            dvs_read.clone(),
        );
        let (cache, name, bs) = (cache.clone(), name.to_owned(), opts.batch_size);
        async move {
            // Kept beside the index: the step then reads no deletion vector either.
            let dv = deletion_vector(&table, &f, Some(&cache), &url, &dvs_read).await?;
            let size = u64::try_from(f.size).unwrap_or(0);
            let file = delta::TableFile::fetch_columns(&table, &f.path, size, &key).await?;
            let learn = Learn::new(cache.clone(), &url, &f.path, f.size, &key_types);
            let probed = probe_decode::decode(
                &name,
                &file,
                &f.path,
                &key,
                &dv,
                bs,
                probe_decode::AHEAD_ROWS,
                Some(learn),
            )?;
            let mut keeping = Vec::new();
            let mut batches = probed.batches(&mut keeping)?;
            while let Some(b) = batches.next().await {
                b?;
            }
            drop(batches);
            for k in keeping {
                k.await?;
            }
            let kept = cache.get(&url, &f.path, f.size).is_some();
            Ok::<_, SyncError>((file.stored_bytes(), kept))
        }
    }))
    .buffered(FILES_AT_ONCE);
    while let Some(done) = learned.next().await {
        let (bytes, kept) = match done {
            Ok(x) => x,
            // Compacted away since the listing: nothing to learn of it.
            Err(SyncError::Delta(DeltaError::FileGone { .. })) => continue,
            Err(e) => return Err(e),
        };
        report.bytes_read += bytes;
        if !kept {
            report.full = true;
            break;
        }
        report.files_learned += 1;
    }
    report.seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        table = name,
        files = report.files,
        files_indexed = report.files_indexed,
        files_learned = report.files_learned,
        bytes_read = report.bytes_read,
        full = report.full,
        seconds = report.seconds,
        "key index warmed"
    );
    Ok(report)
}

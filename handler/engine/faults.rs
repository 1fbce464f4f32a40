//! Fault and pause points for the crash and concurrency tests.
//!
//! - `CRDB_DELTA_FAULT=<point>[:<n>]` aborts the process the n-th time (default first) it reaches
//!   `<point>` — no unwinding, no cleanup, as a kill would.
//! - `CRDB_DELTA_PAUSE=<point>[:<n>]` with `CRDB_DELTA_PAUSE_DIR=<dir>` stops the n-th time it
//!   reaches `<point>`: it creates `<dir>/<point>.paused` and waits until `<dir>/<point>.resume`
//!   exists (at most [`PAUSE_LIMIT`]). A test runs another writer in between, so a race that
//!   is rare in production happens on every run.
//!
//! Points: `before-write`, `before-fetch` (target files listed, none fetched yet),
//! `after-write` (files uploaded, not committed), `before-commit`, `after-commit` (one table
//! committed), `before-record` (all tables committed, the `_crdb_delta_resolved` row not yet
//! written), `before-checkpoint` (`serve`: a due checkpoint about to be written behind the
//! invocation, [`crate::checkpoint`]), `warm-before-fetch` (a key-index warm-up's files listed,
//! none fetched yet, [`super::warm`]). Unset variables cost one environment lookup.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A paused run continues on its own after this long, so a broken test cannot hang CI.
pub const PAUSE_LIMIT: Duration = Duration::from_secs(120);

/// Hits per point name, shared by both kinds of points.
static HITS: Mutex<Vec<(&'static str, u32)>> = Mutex::new(Vec::new());

/// Parses `<point>[:<n>]`.
fn spec_of(var: &str) -> Option<(String, u32)> {
    let spec = std::env::var(var).ok()?;
    Some(match spec.split_once(':') {
        Some((p, n)) => (p.to_owned(), n.parse().unwrap_or(1)),
        None => (spec, 1),
    })
}

/// Whether this is the configured hit of `point` for `var`.
fn armed(var: &str, point: &'static str) -> bool {
    let Some((name, n)) = spec_of(var) else {
        return false;
    };
    if name != point {
        return false;
    }
    let mut hits = HITS.lock().unwrap_or_else(|e| e.into_inner());
    let count = match hits.iter_mut().find(|(p, _)| *p == point) {
        Some((_, c)) => {
            *c += 1;
            *c
        }
        None => {
            hits.push((point, 1));
            1
        }
    };
    count == n
}

/// Aborts here when `CRDB_DELTA_FAULT` names this point (see the module docs).
pub fn fault(point: &'static str) {
    if armed("CRDB_DELTA_FAULT", point) {
        eprintln!("crdb-delta: injected fault at {point}");
        std::process::abort();
    }
}

/// Waits here when `CRDB_DELTA_PAUSE` names this point (see the module docs).
pub async fn pause(point: &'static str) {
    if !armed("CRDB_DELTA_PAUSE", point) {
        return;
    }
    let Ok(dir) = std::env::var("CRDB_DELTA_PAUSE_DIR") else {
        tracing::warn!(
            point,
            "CRDB_DELTA_PAUSE set without CRDB_DELTA_PAUSE_DIR; not pausing"
        );
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let resume = dir.join(format!("{point}.resume"));
    if let Err(e) = std::fs::write(dir.join(format!("{point}.paused")), b"") {
        tracing::warn!(point, error = %e, "cannot write the pause marker; not pausing");
        return;
    }
    tracing::info!(point, "paused");
    let started = Instant::now();
    while !resume.exists() && started.elapsed() < PAUSE_LIMIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(point, "resumed");
}

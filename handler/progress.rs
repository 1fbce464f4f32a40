//! Progress on a terminal for long commands (`simulate`, `sync`): a bar or spinner on stderr,
//! shown only when stderr is a terminal and neither `--json` nor `-q` asks for plain output, so
//! logs, pipes and CI see nothing of it.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::{ProgressSink, SyncProgress};

/// Whether to draw: a terminal on stderr, and no `--json` or `-q`.
pub fn enabled(json: bool, quiet: bool) -> bool {
    !json && !quiet && std::io::stderr().is_terminal()
}

fn hidden_unless(enabled: bool, bar: ProgressBar) -> ProgressBar {
    if enabled {
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    }
}

/// `simulate`: RESOLVED files written out of those the options make, and bytes written.
pub fn simulate_bar(resolved_files: u64, enabled: bool) -> ProgressBar {
    let bar = ProgressBar::new(resolved_files).with_style(
        ProgressStyle::with_template(
            "simulate [{bar:30}] {pos}/{len} RESOLVED · {msg} · {elapsed}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    hidden_unless(enabled, bar)
}

/// `sync`: a spinner with the step, its RESOLVED as a wall time and the bytes read so far; the
/// sink feeds it from the engine.
pub fn sync_spinner(enabled: bool) -> (ProgressBar, Option<ProgressSink>) {
    let bar = hidden_unless(
        enabled,
        ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} sync {msg} · {elapsed}").expect("template"),
        ),
    );
    if !enabled {
        return (bar, None);
    }
    let shown = bar.clone();
    let state = std::sync::Mutex::new((0u64, String::new(), 0u64));
    let sink = ProgressSink(Arc::new(move |e: &SyncProgress| {
        let Ok(mut s) = state.lock() else {
            return;
        };
        match e {
            SyncProgress::Step { resolved, tables } => {
                s.0 += 1;
                s.1 = format!(
                    "step {} up to RESOLVED {} ({tables} table(s))",
                    s.0,
                    resolved
                        .to_datetime()
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
            }
            SyncProgress::Read { bytes } => s.2 += bytes,
        }
        shown.set_message(format!("{} · {:.1} MB read", s.1, s.2 as f64 / 1e6));
    }));
    (bar, Some(sink))
}

//! When a commit's due checkpoint is written: right after it, or behind the invocation.
//!
//! delta-rs writes a checkpoint inside the commit that makes one due (every
//! `delta.checkpointInterval` versions, 10 for our tables): it reads the table's state at that
//! version and writes it as Parquet before the commit returns. In the handler that made one
//! RESOLVED in ten (per table, and again for `_crdb_delta_resolved`) about 100 ms slower at 10k
//! changes, 1.3–1.5× its neighbours (docs/benchmarks.md). A checkpoint is not part of the
//! commit: readers replay the commits after the last one. So commits are made without it
//! ([`CommitProperties::with_create_checkpoint`] off) and it is written here: inline (`sync`,
//! `maintain`), or by a task of the `serve` process once no invocation is in flight. One that
//! is never written (the process stops first, or writing fails) leaves a longer replay until
//! the next one is due, or until upkeep (`maintain`, the CatchUp timer) writes one.
//!
//! [`CommitProperties::with_create_checkpoint`]: deltalake_core::kernel::transaction::CommitProperties::with_create_checkpoint

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deltalake_core::DeltaTable;
use deltalake_core::protocol::checkpoints;
use deltalake_core::table::config::TablePropertiesExt as _;
use tokio::sync::mpsc;

/// Where a due checkpoint is written.
#[derive(Clone, Debug, Default)]
pub enum Checkpoints {
    /// Right after the commit, before the step goes on (`sync`, `maintain`).
    #[default]
    Inline,
    /// Handed to a task of the process that writes them one at a time (`serve`).
    Behind(mpsc::UnboundedSender<(String, DeltaTable)>),
}

/// Invocations in flight: a checkpoint waits for none to be (at most [`QUIET_WAIT`]), so it
/// does not take a core from the invocation whose commit made it due, nor from the next.
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

/// Until it drops, an invocation is in flight.
pub struct Busy(Arc<InFlight>);

impl InFlight {
    /// An invocation starts: in flight until the guard drops (however it ends).
    pub fn enter(self: &Arc<Self>) -> Busy {
        self.0.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Once no invocation is in flight, or after `at_most` (a process never idle still writes
    /// its checkpoints).
    async fn quiet(&self, at_most: Duration) {
        let deadline = tokio::time::Instant::now() + at_most;
        while self.0.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Longest a checkpoint waits for a moment without invocations.
const QUIET_WAIT: Duration = Duration::from_secs(10);

impl Checkpoints {
    /// A task that writes checkpoints behind the invocations (those `in_flight` counts) for
    /// as long as the process runs. Must be called inside the Tokio runtime.
    pub fn behind(in_flight: Arc<InFlight>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, DeltaTable)>();
        tokio::spawn(async move {
            while let Some((name, table)) = rx.recv().await {
                in_flight.quiet(QUIET_WAIT).await;
                crate::engine::faults::pause("before-checkpoint").await;
                // The checkpoint's writer works synchronously in part: off the runtime's
                // workers, so the next invocation's apply is not held up.
                let handle = tokio::runtime::Handle::current();
                let written =
                    tokio::task::spawn_blocking(move || handle.block_on(write(&name, &table)))
                        .await;
                if let Err(e) = written {
                    tracing::warn!(error = %e, "the checkpoint writer stopped");
                }
            }
        });
        Self::Behind(tx)
    }

    /// After a commit to `table` (its state as of that commit): writes the checkpoint the
    /// commit made due, or hands it on.
    pub async fn after_commit(&self, name: &str, table: &DeltaTable) {
        if !due(table) {
            return;
        }
        match self {
            Self::Inline => write(name, table).await,
            Self::Behind(tx) => {
                if let Err(mpsc::error::SendError((name, table))) =
                    tx.send((name.to_owned(), table.clone()))
                {
                    write(&name, &table).await;
                }
            }
        }
    }
}

/// Whether the table's version is one delta-rs would checkpoint: the commit count (version +
/// 1) a multiple of `delta.checkpointInterval`, as readers and other writers expect.
fn due(table: &DeltaTable) -> bool {
    let (Some(version), Ok(snapshot)) = (table.version(), table.snapshot()) else {
        return false;
    };
    let interval = snapshot.table_config().checkpoint_interval().get();
    (version + 1).is_multiple_of(interval)
}

/// Writes the checkpoint of the table's version. A failure is logged, not returned: the
/// commit is in, and a missing checkpoint costs readers only a longer replay.
async fn write(name: &str, table: &DeltaTable) {
    let version = table.version();
    match checkpoints::create_checkpoint(table, None).await {
        Ok(()) => tracing::debug!(table = name, ?version, "checkpoint written"),
        Err(e) => {
            tracing::warn!(table = name, ?version, error = %e, "checkpoint not written; the next one (or maintain) will be")
        }
    }
}

//! `simulate`: writes a simulated changefeed (and its ground truth) to any [`Location`].

use crdb_delta_core::sim::{self, Destination, SimOptions, SimSummary};
use object_store::{ObjectStoreExt, PutPayload};
use tokio::sync::mpsc;

use crate::storage::{Location, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("simulation failed: {0}")]
    Sim(#[from] std::io::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("simulator task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Runs the simulator on a blocking thread and uploads its objects as they are produced, through
/// a small bounded channel: memory stays at a few files whatever the size of the feed.
pub async fn simulate(
    opts: SimOptions,
    out: &Location,
    truth: &Location,
) -> Result<SimSummary, SimulateError> {
    simulate_observed(opts, out, truth, &mut |_, _, _| {}).await
}

/// [`simulate`], telling `observe` of each object once it is written (destination, relative
/// path, bytes): what a progress display counts.
pub async fn simulate_observed(
    opts: SimOptions,
    out: &Location,
    truth: &Location,
    observe: &mut (dyn FnMut(Destination, &str, usize) + Send),
) -> Result<SimSummary, SimulateError> {
    let (tx, mut rx) = mpsc::channel::<(Destination, String, Vec<u8>)>(8);
    let task = tokio::task::spawn_blocking(move || {
        sim::run(&opts, &mut |dest, path, bytes| {
            tx.blocking_send((dest, path.to_owned(), bytes))
                .map_err(|_| std::io::Error::other("uploader stopped"))
        })
    });
    while let Some((dest, path, bytes)) = rx.recv().await {
        let loc = match dest {
            Destination::Changefeed => out,
            Destination::Truth => truth,
        };
        let p = loc.child(&path)?;
        let len = bytes.len();
        loc.store
            .put(&p, PutPayload::from(bytes))
            .await
            .map_err(StorageError::from)?;
        tracing::debug!(object = %p, "written");
        observe(dest, &path, len);
    }
    Ok(task.await??)
}

//! Key-index warm-ups ([`crate::engine::warm`]) of the tables this process hears of, kept out
//! of every apply's way.
//!
//! A warm-up starts at a table's first data-file event in this process, at most once (again
//! only if an apply stopped it), and never while an apply runs: its reads and its decoded rows
//! would compete with the apply's for the instance's cores and memory. An apply starting
//! stops the warm-ups in progress; the files they finished stay indexed, and a later event
//! starts them again for the rest (a table the apply stepped is then skipped: its steps keep
//! its indexes).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::task::AbortHandle;

enum Status {
    Running(AbortHandle),
    Done,
}

#[derive(Default)]
struct Inner {
    /// Applies in progress.
    applying: usize,
    tables: HashMap<String, Status>,
}

/// Shared by the handler's invocations.
pub(super) struct WarmUps {
    inner: Mutex<Inner>,
    /// One warm-up at a time: the events of many tables arrive together, and each warm-up
    /// holds files' key columns and decoded rows (as a step does).
    one_at_a_time: Arc<tokio::sync::Semaphore>,
}

impl Default for WarmUps {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            one_at_a_time: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }
}

/// An apply in progress: no warm-up starts until it is dropped.
pub(super) struct Applying(Arc<WarmUps>);

impl Drop for Applying {
    fn drop(&mut self) {
        self.0.lock().applying -= 1;
    }
}

impl WarmUps {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts `work` as `table`'s warm-up, unless one ran or runs or an apply runs. Whether
    /// it started.
    pub(super) fn start<F>(self: &Arc<Self>, table: &str, work: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut inner = self.lock();
        if inner.applying > 0 || inner.tables.contains_key(table) {
            return false;
        }
        let (this, name) = (self.clone(), table.to_owned());
        let turn = self.one_at_a_time.clone();
        let task = tokio::spawn(async move {
            let Ok(_turn) = turn.acquire_owned().await else {
                return;
            };
            work.await;
            this.lock().tables.insert(name, Status::Done);
        });
        inner
            .tables
            .insert(table.to_owned(), Status::Running(task.abort_handle()));
        true
    }

    /// An apply starts: the warm-ups in progress stop (a later event may start them again),
    /// and none starts until the returned guard is dropped.
    pub(super) fn applying(self: &Arc<Self>) -> Applying {
        let mut inner = self.lock();
        inner.applying += 1;
        inner.tables.retain(|_, s| match s {
            Status::Running(task) => {
                task.abort();
                false
            }
            Status::Done => true,
        });
        Applying(self.clone())
    }

    /// Tables whose warm-up is running.
    #[cfg(test)]
    fn running(&self) -> usize {
        let inner = self.lock();
        let running = inner.tables.values();
        running.filter(|s| matches!(s, Status::Running(_))).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// One at a time, once per table; none beside an apply, which stops those running or
    /// waiting for their turn; a stopped one may start again, a finished one not.
    #[tokio::test]
    async fn a_warm_up_runs_once_per_table_and_never_beside_an_apply() {
        let w = Arc::new(WarmUps::default());
        let forever = || std::future::pending::<()>();
        assert!(w.start("a", forever()));
        assert!(!w.start("a", forever()), "a runs");
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(w.start("b", async move { tx.send(()).unwrap() }));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(w.running(), 2, "b waits for a's turn");
        let apply = w.applying();
        assert_eq!(w.running(), 0, "both stopped by the apply");
        assert!(rx.await.is_err(), "b never ran");
        assert!(!w.start("a", forever()), "nothing beside an apply");
        assert!(!w.start("c", async {}));
        drop(apply);
        assert!(w.start("b", async {}), "b again after the apply");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(w.running(), 0, "b done");
        assert!(!w.start("b", async {}), "b ran");
        assert!(w.start("a", forever()), "a again after the apply");
    }
}

//! The handler's own objects in the target storage, below `<target>/_crdb_delta/`:
//!
//! - `buffer/<relative path>`: one small marker per changefeed file announced by an event. A
//!   put of the same name is idempotent, so duplicate, out-of-order and concurrent deliveries
//!   all leave one marker. Markers are the durable record of what events announced; the apply
//!   still reconciles with a listing of the source, so a lost event loses nothing.
//! - `lock`: the apply lease, a conditional create (`If-None-Match: *`) holding its expiry;
//!   a stale lease is taken over with a conditional update on its ETag (`If-Match`), so two
//!   invocations never both hold it. Delta's optimistic commits with `txn` are the second line.
//! - `state.json`: the tables seen, the last run and the last error, for `Status`.
//! - `fanout/<resolved>/`, `locks/<table>`: a RESOLVED applied table by table
//!   ([`super::fan_out`]).

use std::time::Duration;

use chrono::Utc;
use crdb_delta_core::format::names::ObjectName;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::ServeError;
use crate::storage::Location;

/// The folder below the target root that holds the handler's objects. `_`-prefixed, so no
/// table path can collide with it (`config::validate_path`).
pub const STATE_DIR: &str = "_crdb_delta";

/// What a buffer marker records about one announced file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Marker {
    /// Path relative to the changefeed root.
    pub path: String,
    pub size: Option<u64>,
    pub event_id: String,
    pub received_at: String,
}

/// A buffered file, parsed back from its marker's name.
#[derive(Debug, Clone)]
pub struct Buffered {
    pub relative: String,
    pub name: ObjectName,
    /// The marker's own store path (to delete it).
    pub marker: Path,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Source tables seen by the engine.
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub last_run: Option<RunRecord>,
    #[serde(default)]
    pub last_error: Option<ErrorRecord>,
}

/// The last run an invocation made, as Status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub invocation: String,
    /// RFC 3339, when the run ended.
    pub at: String,
    /// The RESOLVED every table is at after it (`wall.logical`).
    pub resolved: Option<String>,
    pub steps: u64,
    pub events: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    pub at: String,
    pub invocation: String,
    pub message: String,
}

/// The handler's objects of one target root.
#[derive(Clone)]
pub struct Store {
    target: Location,
}

impl Store {
    pub fn new(target: Location) -> Self {
        Self { target }
    }

    fn path(&self, rel: &str) -> Result<Path, ServeError> {
        Ok(self.target.child(&format!("{STATE_DIR}/{rel}"))?)
    }

    /// A path below `_crdb_delta/`.
    pub(super) fn state_path(&self, rel: &str) -> Result<Path, ServeError> {
        self.path(rel)
    }

    pub(super) fn location(&self) -> &Location {
        &self.target
    }

    /// Records a file announced by an event (the name was validated by the caller).
    pub async fn buffer(&self, marker: &Marker) -> Result<(), ServeError> {
        let path = self.path(&format!("buffer/{}", marker.path))?;
        let body = serde_json::to_vec(marker).map_err(|e| ServeError::Other(e.to_string()))?;
        self.target.store.put(&path, body.into()).await?;
        Ok(())
    }

    /// Every buffered file, in changefeed order; markers whose name no longer parses are
    /// skipped with a warning (they cannot come from the validated event path).
    pub async fn buffered(&self) -> Result<Vec<Buffered>, ServeError> {
        let dir = self.path("buffer")?;
        let metas: Vec<_> = self.target.store.list(Some(&dir)).try_collect().await?;
        let mut out = Vec::new();
        for m in metas {
            let Some(rel) = m.location.prefix_match(&dir).map(|parts| {
                parts
                    .map(|p| p.as_ref().to_owned())
                    .collect::<Vec<_>>()
                    .join("/")
            }) else {
                continue;
            };
            match ObjectName::parse_relative(&rel) {
                Ok((name, _)) => out.push(Buffered {
                    relative: rel,
                    name,
                    marker: m.location,
                }),
                Err(e) => {
                    tracing::warn!(marker = %m.location, error = %e, "unexpected buffer marker; ignored")
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes markers (already gone is fine: a concurrent cleanup).
    pub async fn unbuffer(&self, markers: &[&Path]) -> Result<usize, ServeError> {
        let mut n = 0;
        for p in markers {
            match self.target.store.delete(p).await {
                Ok(()) => n += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }

    pub async fn state(&self) -> Result<State, ServeError> {
        let path = self.path("state.json")?;
        match self.target.store.get(&path).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                Ok(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "unreadable state.json; starting afresh");
                    State::default()
                }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(State::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Read-modify-write of `state.json`. Only the lease holder writes the run; errors may be
    /// written by anyone — a lost update of this informational file costs nothing.
    pub async fn update_state(&self, f: impl FnOnce(&mut State)) -> Result<(), ServeError> {
        let mut s = self.state().await?;
        f(&mut s);
        let path = self.path("state.json")?;
        let body = serde_json::to_vec_pretty(&s).map_err(|e| ServeError::Other(e.to_string()))?;
        self.target.store.put(&path, body.into()).await?;
        Ok(())
    }

    /// Tries to take the apply lease (of every table) for `ttl`.
    pub async fn acquire(&self, holder: &str, ttl: Duration) -> Result<Acquire, ServeError> {
        self.acquire_at(self.path("lock")?, holder, ttl).await
    }

    /// Tries to take the lease at `path` for `ttl`.
    pub async fn acquire_at(
        &self,
        path: Path,
        holder: &str,
        ttl: Duration,
    ) -> Result<Acquire, ServeError> {
        let store = self.target.store.clone();
        for _ in 0..4 {
            let body = LockBody::new(holder, ttl);
            match put_mode(&*store, &path, &body, PutMode::Create).await {
                Ok(version) => return Ok(Acquire::Acquired(self.lease(path, version, holder))),
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let current = match store.get(&path).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => continue, // released meanwhile
                Err(e) => return Err(e.into()),
            };
            let version = UpdateVersion {
                e_tag: current.meta.e_tag.clone(),
                version: current.meta.version.clone(),
            };
            let held: Option<LockBody> = serde_json::from_slice(&current.bytes().await?).ok();
            if let Some(h) = &held
                && h.expires_at > Utc::now().timestamp_millis()
            {
                return Ok(Acquire::Held {
                    holder: h.holder.clone(),
                    expires_in_ms: h.expires_at - Utc::now().timestamp_millis(),
                });
            }
            tracing::warn!(previous = ?held.as_ref().map(|h| &h.holder), "breaking a stale apply lease");
            match put_mode(&*store, &path, &body, PutMode::Update(version)).await {
                Ok(version) => return Ok(Acquire::Acquired(self.lease(path, version, holder))),
                Err(object_store::Error::Precondition { .. }) => continue, // someone else won
                // Local folders have no conditional update: delete, then race on create.
                Err(object_store::Error::NotImplemented { .. }) => {
                    match store.delete(&path).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Acquire::Held {
            holder: "(contended)".into(),
            expires_in_ms: 0,
        })
    }

    fn lease(&self, path: Path, version: UpdateVersion, holder: &str) -> Lease {
        Lease {
            store: self.target.store.clone(),
            path,
            version,
            holder: holder.to_owned(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct LockBody {
    holder: String,
    /// Unix milliseconds.
    expires_at: i64,
    taken_at: String,
}

impl LockBody {
    fn new(holder: &str, ttl: Duration) -> Self {
        let now = Utc::now();
        Self {
            holder: holder.to_owned(),
            expires_at: now.timestamp_millis() + ttl.as_millis() as i64,
            taken_at: now.to_rfc3339(),
        }
    }
}

async fn put_mode(
    store: &dyn ObjectStore,
    path: &Path,
    body: &LockBody,
    mode: PutMode,
) -> Result<UpdateVersion, object_store::Error> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let opts = PutOptions {
        mode,
        ..PutOptions::default()
    };
    let r = store.put_opts(path, PutPayload::from(bytes), opts).await?;
    Ok(r.into())
}

pub enum Acquire {
    Acquired(Lease),
    Held { holder: String, expires_in_ms: i64 },
}

/// A held apply lease.
pub struct Lease {
    store: std::sync::Arc<dyn ObjectStore>,
    path: Path,
    version: UpdateVersion,
    holder: String,
}

impl Lease {
    /// Extends the lease by `ttl` if it is still ours (conditional on our ETag). Returns false
    /// when it was lost (taken over as stale): the caller goes on — its Delta commits are still
    /// exactly once — but logs it. Stores without conditional updates keep the old expiry.
    pub async fn renew(&mut self, ttl: Duration) -> bool {
        let body = LockBody::new(&self.holder, ttl);
        match put_mode(
            &*self.store,
            &self.path,
            &body,
            PutMode::Update(self.version.clone()),
        )
        .await
        {
            Ok(v) => {
                self.version = v;
                true
            }
            Err(object_store::Error::NotImplemented { .. }) => true,
            Err(e) => {
                tracing::warn!(error = %e, "apply lease lost");
                false
            }
        }
    }

    /// Runs `work` while renewing the lease every third of `ttl` (never more often than every
    /// 100 ms), so only a crashed holder's lease expires.
    pub async fn hold<T>(
        &mut self,
        ttl: Duration,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let mut tick = tokio::time::interval(renew_every(ttl));
        tick.tick().await;
        tokio::pin!(work);
        loop {
            tokio::select! {
                r = &mut work => return r,
                _ = tick.tick() => { self.renew(ttl).await; }
            }
        }
    }

    /// Deletes the lock if it is still ours (a stale-broken lease belongs to someone else).
    pub async fn release(self) {
        let ours = match self.store.get(&self.path).await {
            Ok(r) => r
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<LockBody>(&b).ok())
                .is_some_and(|b| b.holder == self.holder),
            Err(_) => false,
        };
        if ours && let Err(e) = self.store.delete(&self.path).await {
            tracing::warn!(error = %e, "releasing the apply lease failed; it expires by itself");
        }
    }
}

/// How long to wait between lease renewals: never zero.
pub fn renew_every(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}

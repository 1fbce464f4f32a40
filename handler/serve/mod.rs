//! `crdb-delta serve`: the Azure Functions custom handler.
//!
//! The Functions host starts the binary (`host.json` → `customHandler`) and forwards every
//! invocation as `POST /<FunctionName>` with `{"Data":…,"Metadata":…}` (docs/host-protocol.md §1).
//! Functions: `BlobCreated` (Event Grid), `BlobQueue` (Event Grid → Storage queue), `CatchUp`
//! (timer), `Status` (HTTP). Data files are recorded in a durable buffer in the target storage;
//! a RESOLVED file applies every table up to it with the engine under a lease (see [`store`]).

pub mod app;
pub mod fan_out;
pub mod http;
pub mod status;
pub mod store;
mod warm_up;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::functions::events::{Scope, ScopeError};
use crate::functions::host::{INVOCATION_ID_HEADER, InvocationResponse, PORT_ENV_VARS};
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use warp::Filter;
use warp::http::StatusCode;

use crate::config::{Config, ConfigError};
use crate::engine::SyncError;
use crate::storage::{Location, StorageError};

/// Largest request body read. Event Grid events are ~1–2 KB, queue messages at most 64 KB; the
/// host sends chunked bodies without Content-Length (host-protocol.md §1), so the limit is
/// enforced while reading the stream.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
/// Lease lifetime without renewal. The holder renews it every third of this while it applies,
/// so only a crashed holder blocks others, for at most this long.
pub const DEFAULT_LEASE_SECONDS: u64 = 120;
/// Default time budget of one apply: `functionTimeout` in host.json is 10 minutes; a step
/// started before 7 minutes has three to finish.
pub const DEFAULT_APPLY_BUDGET_SECONDS: u64 = 420;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("app setting {name}: {message}")]
    Setting { name: &'static str, message: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Store(#[from] object_store::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Retryable: the apply lease stayed held (and renewed) for a whole lease term while this
    /// invocation's RESOLVED waited; the trigger redelivers it.
    #[error("apply lease held by {holder} for {waited_s} s while this RESOLVED waited; retry")]
    LeaseBusy { holder: String, waited_s: u64 },
    /// Retryable: this instance already applies as many tables as it has slots for
    /// (`tables_at_once`) and none came free within a lease term; the queue delivers the
    /// message again, possibly to another instance.
    #[error(
        "this instance applies {slots} table(s) already; none came free in {waited_s} s; retry"
    )]
    Busy { slots: usize, waited_s: u64 },
    /// Retryable: the apply's time budget ran out with RESOLVEDs left to apply.
    #[error("time budget spent with RESOLVEDs left (applied up to {applied}); the retry continues")]
    Incomplete { applied: String },
    #[error("{0}")]
    Other(String),
}

/// Where the handler reads its configuration: the function app's settings (environment).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `CRDB_DELTA_SOURCE`: the changefeed root (azure URL or folder).
    pub source: String,
    /// `CRDB_DELTA_TARGET`: the Delta target root.
    pub target: String,
    /// `CRDB_DELTA_MODE`: update_delete (default), append_only or scd2.
    pub mode: Option<crdb_delta_core::apply::Mode>,
    /// `CRDB_DELTA_CONFIG`: path of a config JSON (same shape as `sync --config`).
    pub config: Config,
    /// `CRDB_DELTA_SOURCE_ACCOUNT`: the storage account events must come from.
    pub account: Option<String>,
    pub max_body_bytes: usize,
    pub lease: Duration,
    /// `CRDB_DELTA_APPLY_BUDGET_SECONDS`: no new RESOLVED step starts after this long, so an
    /// invocation ends (and releases the lease) before the host's `functionTimeout` kills it.
    pub apply_budget: Duration,
    /// `CRDB_DELTA_CRDB_URL`: CockroachDB, to read a changed table's schema again (in Azure a
    /// Key Vault reference, so the password is in no setting's plain value).
    pub crdb_url: Option<crate::crdb::CrdbUrl>,
    /// `CRDB_DELTA_FAN_OUT`: a RESOLVED is applied table by table, one queue message each
    /// (`ApplyTable`, on whichever instance takes it) instead of all tables in its invocation.
    pub fan_out: bool,
    /// `CRDB_DELTA_APPLY_QUEUE`: the queue of those messages (the functions' bindings name it;
    /// the handler only checks it is set when fanning out).
    pub apply_queue: Option<String>,
}

/// A relative `CRDB_DELTA_CONFIG` is looked up next to the executable when it is not found
/// from the working directory (where the Functions host runs the handler is not documented for
/// Flex Consumption; the package puts the config next to the binary).
fn resolve_config_path(path: &str) -> String {
    let p = std::path::Path::new(path);
    if p.is_absolute() || p.exists() {
        return path.to_owned();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(p)))
        .filter(|c| c.exists())
        .map_or_else(|| path.to_owned(), |c| c.display().to_string())
}

impl Settings {
    /// Reads the settings through `var` (the environment in production, a map in tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ServeError> {
        let get = |name: &'static str| {
            var(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or(ServeError::Setting {
                    name,
                    message: "not set".into(),
                })
        };
        let number = |name: &'static str, default: u64| -> Result<u64, ServeError> {
            match var(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| ServeError::Setting {
                    name,
                    message: format!("`{v}` is not a whole number"),
                }),
            }
        };
        let source = get("CRDB_DELTA_SOURCE")?;
        let config = match var("CRDB_DELTA_CONFIG").filter(|v| !v.trim().is_empty()) {
            Some(path) => Config::load(&resolve_config_path(path.trim()))?,
            None => Config::default(),
        };
        let mode = match var("CRDB_DELTA_MODE").filter(|v| !v.trim().is_empty()) {
            Some(m) => Some(
                m.trim()
                    .parse::<crdb_delta_core::apply::Mode>()
                    .map_err(|e| ServeError::Setting {
                        name: "CRDB_DELTA_MODE",
                        message: e.to_string(),
                    })?,
            ),
            None => None,
        };
        let account = var("CRDB_DELTA_SOURCE_ACCOUNT")
            .filter(|v| !v.trim().is_empty())
            .map(|a| a.trim().to_ascii_lowercase())
            .or_else(|| account_of(&source, &var));
        let apply_queue = var("CRDB_DELTA_APPLY_QUEUE")
            .map(|q| q.trim().to_owned())
            .filter(|q| !q.is_empty());
        Ok(Self {
            target: get("CRDB_DELTA_TARGET")?,
            source,
            mode,
            config,
            account,
            max_body_bytes: number("CRDB_DELTA_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES as u64)?
                as usize,
            lease: Duration::from_secs(number("CRDB_DELTA_LEASE_SECONDS", DEFAULT_LEASE_SECONDS)?),
            crdb_url: var("CRDB_DELTA_CRDB_URL")
                .filter(|v| !v.trim().is_empty())
                .map(|u| crate::crdb::CrdbUrl::new(u.trim())),
            apply_budget: Duration::from_secs(number(
                "CRDB_DELTA_APPLY_BUDGET_SECONDS",
                DEFAULT_APPLY_BUDGET_SECONDS,
            )?),
            fan_out: match var("CRDB_DELTA_FAN_OUT").map(|v| v.trim().to_ascii_lowercase()) {
                None => false,
                Some(v) if v.is_empty() || v == "false" || v == "0" => false,
                Some(v) if v == "true" || v == "1" => {
                    if apply_queue.is_none() {
                        return Err(ServeError::Setting {
                            name: "CRDB_DELTA_APPLY_QUEUE",
                            message: "not set: CRDB_DELTA_FAN_OUT sends each table of a RESOLVED \
                                      through that queue"
                                .into(),
                        });
                    }
                    true
                }
                Some(v) => {
                    return Err(ServeError::Setting {
                        name: "CRDB_DELTA_FAN_OUT",
                        message: format!("`{v}` is neither true nor false"),
                    });
                }
            },
            apply_queue,
        })
    }

    pub fn from_env() -> Result<Self, ServeError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// A `CRDB_DELTA_SOURCE` named as a Unity Catalog volume (`/Volumes/…`) becomes the
    /// volume's Azure location (`DATABRICKS_HOST`, `DATABRICKS_TOKEN`), and events are then
    /// expected from its storage account.
    pub async fn resolve_volume_source(&mut self) -> Result<(), ServeError> {
        let resolved = crate::unity_catalog::resolve_source(&self.source)
            .await
            .map_err(|e| ServeError::Setting {
                name: "CRDB_DELTA_SOURCE",
                message: e.to_string(),
            })?;
        if resolved != self.source {
            self.source = resolved;
            if self.account.is_none() {
                self.account = account_of(&self.source, &|_: &str| None);
            }
        }
        Ok(())
    }
}

/// The storage account of an Azure source: from the URL (`https://<account>.blob…`,
/// `abfss://c@<account>.dfs…`), else the account `object_store` uses
/// (`AZURE_STORAGE_ACCOUNT_NAME`), else Azurite's. `None` for folders: no account check.
fn account_of(source: &str, var: &impl Fn(&str) -> Option<String>) -> Option<String> {
    let url = url::Url::parse(source).ok()?;
    let from_host = || {
        url.host_str()
            .and_then(|h| h.split('.').next())
            .map(str::to_ascii_lowercase)
    };
    match url.scheme() {
        "https" | "abfs" | "abfss" if url.host_str().is_some_and(|h| h.contains('.')) => {
            from_host()
        }
        "azure" | "az" | "abfs" | "abfss" | "adl" | "https" => var("AZURE_STORAGE_ACCOUNT_NAME")
            .filter(|a| !a.is_empty())
            .map(|a| a.to_ascii_lowercase())
            .or_else(|| {
                var("AZURE_STORAGE_USE_EMULATOR")
                    .filter(|v| v.eq_ignore_ascii_case("true"))
                    .map(|_| "devstoreaccount1".to_owned())
            }),
        _ => None,
    }
}

/// The event scope of an opened source: `az://container/prefix` gives container and prefix.
/// `None` for a folder source (only CatchUp and Status can work then).
pub fn scope_of(source: &Location, account: Option<&str>) -> Result<Option<Scope>, ServeError> {
    if source.url.scheme() != "az" {
        return Ok(None);
    }
    let container = source.url.host_str().unwrap_or_default();
    Ok(Some(Scope::new(account, container, source.url.path())?))
}

/// `container/prefix` of an Azure location (what `events::is_own_write` compares), if Azure.
pub fn container_prefix(loc: &Location) -> Option<String> {
    (loc.url.scheme() == "az").then(|| {
        format!(
            "{}/{}",
            loc.url.host_str().unwrap_or_default(),
            loc.url.path().trim_matches('/')
        )
        .trim_end_matches('/')
        .to_owned()
    })
}

/// The port the host asks for (`FUNCTIONS_CUSTOMHANDLER_PORT`, then the older
/// `FUNCTIONS_HTTPWORKER_PORT`; host-protocol.md §1), else `fallback` (`serve --port`).
pub fn port_from_env(fallback: u16) -> Result<u16, ServeError> {
    for name in PORT_ENV_VARS {
        if let Ok(v) = std::env::var(name)
            && !v.trim().is_empty()
        {
            return v.trim().parse().map_err(|_| ServeError::Setting {
                name: if name == PORT_ENV_VARS[0] {
                    PORT_ENV_VARS[0]
                } else {
                    PORT_ENV_VARS[1]
                },
                message: format!("`{v}` is not a port"),
            });
        }
    }
    Ok(fallback)
}

/// A request body that was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the request body: {0}")]
    Read(String),
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// Reads a body stream to its end, refusing more than `limit` bytes whatever the headers say.
pub async fn read_bounded<S, B, E>(mut body: S, limit: usize) -> Result<Bytes, BodyError>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: Buf,
    E: std::fmt::Display,
{
    let mut out = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        if out.len() + chunk.remaining() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(out.freeze())
}

/// How long the start-up container check may take.
const STARTUP_CHECK: Duration = Duration::from_secs(10);

/// Binds `127.0.0.1:port` (the host talks to the handler on loopback) and serves until Ctrl-C /
/// SIGTERM. The host requires the handler to listen within 60 s (host-protocol.md §2).
pub async fn serve(settings: Settings, port: u16) -> Result<(), ServeError> {
    let started = Instant::now();
    let app = Arc::new(app::App::new(settings)?);
    // Missing containers are named at start-up, not at the first event; on the emulator (the
    // local loop) they are created. Storage that cannot be reached right now does not stop the
    // start: the first event finds it again (and fails for a redelivery if it is still down).
    // Bounded: the host wants the handler listening within 60 s, and the store's own retries
    // could take minutes.
    let emulator = crate::storage::emulator::in_use();
    for (loc, create) in [(&app.source, emulator), (&app.target, true)] {
        let shown = crate::storage::redact(&loc.display);
        match tokio::time::timeout(STARTUP_CHECK, loc.check_container(create)).await {
            Ok(Ok(())) => {}
            Ok(Err(StorageError::Store(e))) => {
                tracing::warn!(location = %shown, error = %e, "could not check the container at start-up; going on");
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                tracing::warn!(location = %shown, "no answer from storage within {} s at start-up; going on", STARTUP_CHECK.as_secs());
            }
        }
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    let limit = app.settings.max_body_bytes;
    // `GET /Status[?format=text]` (or `/api/Status`, the host's route): the Status document
    // straight from the handler, for the local loop where no host forwards HTTP triggers.
    let status_app = app.clone();
    let status = warp::get()
        .and(warp::path("api").or(warp::any()).unify())
        .and(warp::path("Status"))
        .and(warp::path::end())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .then(move |query: std::collections::HashMap<String, String>| {
            let app = status_app.clone();
            async move {
                let text = query
                    .get("format")
                    .is_some_and(|f| f.eq_ignore_ascii_case("text"));
                let http = app.status_response(text).await;
                let mut r = warp::reply::Response::new(http.body.into());
                *r.status_mut() =
                    StatusCode::from_u16(http.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                for (k, v) in http.headers {
                    if let (Ok(k), Ok(v)) = (
                        warp::http::HeaderName::from_bytes(k.as_bytes()),
                        warp::http::HeaderValue::from_str(&v),
                    ) {
                        r.headers_mut().insert(k, v);
                    }
                }
                r
            }
        });
    let invocations = warp::post()
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::header::optional::<String>(INVOCATION_ID_HEADER))
        .and(warp::body::stream())
        .then(move |function: String, invocation: Option<String>, body| {
            let app = app.clone();
            async move {
                let body = read_bounded(Box::pin(body), limit).await;
                let (status, resp) = app
                    .invoke(&function, invocation.as_deref().unwrap_or("-"), body)
                    .await;
                reply(status, &resp)
            }
        });
    let routes = status.or(invocations);
    tracing::info!(%addr, ready_ms = started.elapsed().as_millis() as u64, "crdb-delta serve: listening");
    warp::serve(routes)
        .incoming(listener)
        .graceful(shutdown())
        .run()
        .await;
    Ok(())
}

fn reply(status: StatusCode, resp: &InvocationResponse) -> warp::reply::Response {
    let mut r = warp::reply::Response::new(resp.to_json().into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("crdb-delta serve: shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[tokio::test]
    async fn bodies_are_bounded_without_length() {
        let chunks: Vec<Result<Bytes, String>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"def")),
        ];
        let s = futures::stream::iter(chunks.clone());
        assert_eq!(
            read_bounded(s, 6).await.unwrap(),
            Bytes::from_static(b"abcdef")
        );
        let s = futures::stream::iter(chunks);
        assert!(matches!(
            read_bounded(s, 5).await.unwrap_err(),
            BodyError::TooLarge { limit: 5 }
        ));
    }

    #[test]
    fn settings_and_accounts() {
        let vars: HashMap<&str, &str> = [
            (
                "CRDB_DELTA_SOURCE",
                "https://myacct.blob.core.windows.net/feed/cf",
            ),
            ("CRDB_DELTA_TARGET", "azure://delta/t"),
            ("CRDB_DELTA_MODE", "append_only"),
        ]
        .into();
        let s = Settings::from_vars(|k| vars.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(s.account.as_deref(), Some("myacct"));
        assert_eq!(s.lease, Duration::from_secs(DEFAULT_LEASE_SECONDS));
        let emu: HashMap<&str, &str> = [
            ("CRDB_DELTA_SOURCE", "azure://feed/cf"),
            ("CRDB_DELTA_TARGET", "/tmp/x"),
            ("AZURE_STORAGE_USE_EMULATOR", "true"),
        ]
        .into();
        let s = Settings::from_vars(|k| emu.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(s.account.as_deref(), Some("devstoreaccount1"));
        let bad: HashMap<&str, &str> =
            [("CRDB_DELTA_SOURCE", "x"), ("CRDB_DELTA_MODE", "nope")].into();
        assert!(Settings::from_vars(|k| bad.get(k).map(|v| v.to_string())).is_err());
        assert!(!s.fan_out);
    }

    #[test]
    fn fan_out_needs_its_queue_and_a_clear_switch() {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut vars: HashMap<&str, &str> = [
                ("CRDB_DELTA_SOURCE", "azure://feed/cf"),
                ("CRDB_DELTA_TARGET", "/tmp/x"),
            ]
            .into();
            vars.extend(extra.iter().copied());
            Settings::from_vars(|k| vars.get(k).map(|v| v.to_string()))
        };
        let on = with(&[
            ("CRDB_DELTA_FAN_OUT", "True"),
            ("CRDB_DELTA_APPLY_QUEUE", "q"),
        ])
        .unwrap();
        assert!(on.fan_out);
        assert_eq!(on.apply_queue.as_deref(), Some("q"));
        assert!(!with(&[("CRDB_DELTA_FAN_OUT", "false")]).unwrap().fan_out);
        let e = with(&[("CRDB_DELTA_FAN_OUT", "true")]).unwrap_err();
        assert!(e.to_string().contains("CRDB_DELTA_APPLY_QUEUE"), "{e}");
        let e = with(&[("CRDB_DELTA_FAN_OUT", "yes please")]).unwrap_err();
        assert!(e.to_string().contains("CRDB_DELTA_FAN_OUT"), "{e}");
    }

    #[test]
    fn the_crdb_url_setting_is_read_and_never_shown_with_its_password() {
        let vars: HashMap<&str, &str> = [
            ("CRDB_DELTA_SOURCE", "azure://feed/cf"),
            ("CRDB_DELTA_TARGET", "/tmp/x"),
            (
                "CRDB_DELTA_CRDB_URL",
                " postgresql://u:s3cretpw@db:26257/app?sslmode=verify-full ",
            ),
        ]
        .into();
        let s = Settings::from_vars(|k| vars.get(k).map(|v| v.to_string())).unwrap();
        let url = s.crdb_url.clone().expect("read");
        assert_eq!(
            url.expose(),
            "postgresql://u:s3cretpw@db:26257/app?sslmode=verify-full"
        );
        let shown = format!("{s:?} {url}");
        assert!(
            !shown.contains("s3cretpw") && shown.contains("db:26257"),
            "{shown}"
        );
        // An empty setting (what the template sets without a Key Vault secret) is none.
        let empty: HashMap<&str, &str> = [
            ("CRDB_DELTA_SOURCE", "azure://feed/cf"),
            ("CRDB_DELTA_TARGET", "/tmp/x"),
            ("CRDB_DELTA_CRDB_URL", ""),
        ]
        .into();
        let s = Settings::from_vars(|k| empty.get(k).map(|v| v.to_string())).unwrap();
        assert!(s.crdb_url.is_none());
    }
}

//! One storage client for everything: `object_store`, the crate delta-rs itself uses, for local
//! folders and Azure Blob / ADLS Gen2 (Azurite locally) alike.
//!
//! Azure credentials come from the environment as `object_store` reads it (`AZURE_*`): managed
//! identity / workload identity / Azure CLI in Azure, `AZURE_STORAGE_USE_EMULATOR=true` (+
//! `AZURITE_BLOB_STORAGE_URL`) for Azurite. No key is ever taken from a command line or logged.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{location}: {message}")]
    Location { location: String, message: String },
    #[error(transparent)]
    Store(#[from] object_store::Error),
}

/// A root inside a store: a local folder or a container prefix.
#[derive(Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// For messages: the location as given (URLs never carry keys here).
    pub display: String,
    /// The same store seen from its root, and the URL of this location in it: what delta-rs
    /// needs to open a table here through our client (`file:///abs/path` or
    /// `az://container/prefix`).
    pub root: Arc<dyn ObjectStore>,
    pub url: url::Url,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

const AZURE_SCHEMES: [&str; 6] = [
    "azure://", "az://", "abfs://", "abfss://", "adl://", "https://",
];

/// A location as it may be shown in logs and errors: a query string (SAS token, `sig=`) and
/// the password of a `user:password@` part are replaced by `<redacted>`.
pub fn redact(location: &str) -> String {
    let (base, query) = match location.split_once('?') {
        Some((b, _)) => (b, "?<redacted>"),
        None => (location, ""),
    };
    // `scheme://user:password@host/...`: keep the user (abfss puts the container there).
    let redacted = match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) if userinfo.contains(':') => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                    format!("{scheme}://{user}:<redacted>@{host}{path}")
                }
                _ => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    format!("{redacted}{query}")
}

impl Location {
    /// A location that must already exist (a changefeed root to read): a missing local folder
    /// is refused instead of created, so a typo fails rather than syncing nothing.
    pub fn open_existing(location: &str) -> Result<Self, StorageError> {
        if !location.contains("://") && !std::path::Path::new(location).is_dir() {
            return Err(StorageError::Location {
                location: redact(location),
                message: "no such folder".into(),
            });
        }
        Self::open(location)
    }

    /// Whether this location is a local folder below (or equal to) `other`'s folder.
    pub fn is_within(&self, other: &Location) -> bool {
        self.url.scheme() == "file"
            && other.url.scheme() == "file"
            && self.url.path().starts_with(other.url.path())
            || self.url.scheme() == "az"
                && other.url.scheme() == "az"
                && self.url.host_str() == other.url.host_str()
                && format!("{}/", self.url.path().trim_end_matches('/'))
                    .starts_with(&format!("{}/", other.url.path().trim_end_matches('/')))
    }

    /// Opens `azure://container/prefix`, `abfss://container@account.dfs.core.windows.net/prefix`,
    /// `https://account.blob.core.windows.net/container/prefix`, or a local folder (created).
    pub fn open(location: &str) -> Result<Self, StorageError> {
        let bad = |message: String| StorageError::Location {
            location: redact(location),
            message,
        };
        if location.contains('?') {
            return Err(bad("query strings (SAS tokens, keys) are not accepted in locations; use AZURE_* settings".into()));
        }
        if redact(location) != location {
            return Err(bad("credentials (`user:password@`) are not accepted in locations; use AZURE_* settings or a managed identity".into()));
        }
        if AZURE_SCHEMES.iter().any(|s| location.starts_with(s)) {
            let url = url::Url::parse(location).map_err(|e| bad(e.to_string()))?;
            let store = MicrosoftAzureBuilder::from_env()
                .with_url(location)
                .build()
                .map_err(|e| bad(e.to_string()))?;
            let mut segments: Vec<&str> = url
                .path_segments()
                .map(|s| s.filter(|p| !p.is_empty()).collect())
                .unwrap_or_default();
            if url.scheme() == "https" && !segments.is_empty() {
                segments.remove(0); // the container
            }
            let container = match url.scheme() {
                "https" => url
                    .path_segments()
                    .and_then(|mut s| s.next())
                    .unwrap_or_default()
                    .to_owned(),
                // abfss://container@account.dfs.core.windows.net/..., az://container/...
                _ if !url.username().is_empty() => url.username().to_owned(),
                _ => url.host_str().unwrap_or_default().to_owned(),
            };
            let prefix = Path::parse(segments.join("/")).map_err(|e| bad(e.to_string()))?;
            let delta_url = url::Url::parse(&format!("az://{container}/{prefix}"))
                .map_err(|e| bad(e.to_string()))?;
            let store: Arc<dyn ObjectStore> = Arc::new(store);
            return Ok(Self {
                store: store.clone(),
                prefix,
                display: location.to_owned(),
                root: store,
                url: delta_url,
            });
        }
        if location.contains("://") {
            return Err(bad(
                "unsupported scheme (use a local folder or an Azure URL)".into(),
            ));
        }
        std::fs::create_dir_all(location).map_err(|e| bad(e.to_string()))?;
        let abs = std::fs::canonicalize(location).map_err(|e| bad(e.to_string()))?;
        let fs = LocalFileSystem::new_with_prefix(&abs).map_err(|e| bad(e.to_string()))?;
        let url = url::Url::from_directory_path(&abs)
            .map_err(|()| bad("not an absolute folder".into()))?;
        Ok(Self {
            store: Arc::new(fs),
            prefix: Path::default(),
            display: location.to_owned(),
            root: Arc::new(LocalFileSystem::new()),
            url,
        })
    }

    /// The store path of a path relative to this location.
    pub fn child(&self, relative: &str) -> Result<Path, StorageError> {
        let rel = Path::parse(relative).map_err(|e| StorageError::Location {
            location: format!("{}/{relative}", self.display),
            message: e.to_string(),
        })?;
        Ok(self.prefix.parts().chain(rel.parts()).collect())
    }

    /// The whole object at a store path, as bytes.
    pub async fn get_bytes(&self, path: &Path) -> Result<bytes::Bytes, StorageError> {
        use object_store::ObjectStoreExt as _;
        Ok(self.store.get(path).await?.bytes().await?)
    }

    /// The path relative to this location, or None for objects outside it.
    pub fn relative(&self, path: &Path) -> Option<String> {
        path.prefix_match(&self.prefix).map(|parts| {
            parts
                .map(|p| p.as_ref().to_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
    }
}

impl Location {
    /// The Azure container of this location; `None` for a local folder.
    pub fn container(&self) -> Option<&str> {
        (self.url.scheme() == "az").then(|| self.url.host_str().unwrap_or_default())
    }

    /// Checks, with one listing request, that the location can be read: an Azure container
    /// that does not exist is an error naming it (instead of the service's XML at the first
    /// write), or, on the storage emulator (`AZURE_STORAGE_USE_EMULATOR=true`: the local loop),
    /// is created when `create` says so. A local folder always exists (`open` made it).
    pub async fn check_container(&self, create: bool) -> Result<(), StorageError> {
        let Some(container) = self.container() else {
            return Ok(());
        };
        let missing = match self.store.list_with_delimiter(Some(&self.prefix)).await {
            Ok(_) => return Ok(()),
            Err(e) if is_container_not_found(&e) => e,
            Err(e) => return Err(e.into()),
        };
        if create && emulator::in_use() {
            emulator::create_container(container)
                .await
                .map_err(|e| StorageError::Location {
                    location: redact(&self.display),
                    message: e.to_string(),
                })?;
            tracing::info!(container, "created the container on the storage emulator");
            return Ok(());
        }
        tracing::debug!(error = %missing, "container check");
        Err(StorageError::Location {
            location: redact(&self.display),
            message: format!(
                "container `{container}` does not exist in this storage account{}",
                if emulator::in_use() {
                    " (the emulator: `simulate --out` or `sync --target` on it create theirs)"
                } else {
                    ": create it (infra/ creates the changefeed and target containers) or check the URL"
                }
            ),
        })
    }

    /// The URL of a folder below this location (for delta-rs), e.g. a table's root.
    pub fn child_url(&self, relative: &str) -> Result<url::Url, StorageError> {
        let mut base = self.url.as_str().trim_end_matches('/').to_owned();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            base.push('/');
            base.push_str(part);
        }
        url::Url::parse(&base).map_err(|e| StorageError::Location {
            location: format!("{}/{relative}", self.display),
            message: e.to_string(),
        })
    }
}

/// Azure's answer for a missing container (object_store passes it on as a generic error with
/// the service's XML).
fn is_container_not_found(e: &object_store::Error) -> bool {
    let text = e.to_string();
    text.contains("ContainerNotFound") || text.contains("The specified container does not exist")
}

/// The storage emulator (Azurite) of the local loop.
pub mod emulator {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    /// The emulator's one account and its published development key — the same for every
    /// Azurite, documented by Microsoft, not a secret.
    const ACCOUNT: &str = "devstoreaccount1";
    const KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    /// `AZURE_STORAGE_USE_EMULATOR=true`, as object_store reads it.
    pub fn in_use() -> bool {
        std::env::var("AZURE_STORAGE_USE_EMULATOR")
            .is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
    }

    /// The blob endpoint object_store talks to on the emulator.
    fn endpoint() -> String {
        std::env::var("AZURITE_BLOB_STORAGE_URL")
            .unwrap_or_else(|_| "http://127.0.0.1:10000".into())
            .trim_end_matches('/')
            .to_owned()
    }

    /// Creating a container on the emulator failed.
    #[derive(Debug, thiserror::Error)]
    pub enum EmulatorError {
        #[error("creating container `{container}` on the emulator ({url}): {source}")]
        Request {
            container: String,
            url: String,
            source: reqwest::Error,
        },
        #[error("creating container `{container}` on the emulator ({url}): HTTP {status}")]
        Status {
            container: String,
            url: String,
            status: u16,
        },
    }

    /// Creates a container on the emulator object_store talks to.
    pub async fn create_container(container: &str) -> Result<(), EmulatorError> {
        create_container_at(&endpoint(), container).await
    }

    /// Creates a container with a Shared Key signed `Create Container` request (object_store
    /// has no call for it) on the emulator at `endpoint` (`http://127.0.0.1:10000`). One that
    /// already exists (409) is fine.
    pub async fn create_container_at(endpoint: &str, container: &str) -> Result<(), EmulatorError> {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container"
        );
        let key = STANDARD
            .decode(KEY)
            .expect("the emulator's published key is base64");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
        let signature = STANDARD.encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
        let url = format!(
            "{}/{ACCOUNT}/{container}?restype=container",
            endpoint.trim_end_matches('/')
        );
        let reply = reqwest::Client::new()
            .put(&url)
            .header("x-ms-date", date)
            .header("x-ms-version", version)
            .header("Authorization", format!("SharedKey {ACCOUNT}:{signature}"))
            .header("Content-Length", "0")
            .send()
            .await
            .map_err(|source| EmulatorError::Request {
                container: container.to_owned(),
                url: url.clone(),
                source,
            })?;
        match reply.status().as_u16() {
            201 | 409 => Ok(()),
            status => Err(EmulatorError::Status {
                container: container.to_owned(),
                url,
                status,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_messages() {
        for (given, secret) in [
            (
                "https://acct.blob.core.windows.net/c/feed?sv=2022&sig=SECRETSIG",
                "SECRETSIG",
            ),
            ("azure://c/feed?sig=SECRETSIG&se=2030", "SECRETSIG"),
            (
                "abfss://c:SECRETPW@acct.dfs.core.windows.net/feed",
                "SECRETPW",
            ),
            (
                "https://user:SECRETPW@acct.blob.core.windows.net/c",
                "SECRETPW",
            ),
        ] {
            let err = Location::open(given).expect_err("refused").to_string();
            assert!(!err.contains(secret), "{err}");
            assert!(err.contains("<redacted>"), "{err}");
            assert!(!redact(given).contains(secret));
        }
        // Nothing secret: unchanged (abfss keeps its container in the user part).
        for plain in [
            "abfss://c@acct.dfs.core.windows.net/feed",
            "azure://c/feed",
            "/tmp/x",
        ] {
            assert_eq!(redact(plain), plain);
        }
    }
}

//! Blob Storage events from Event Grid, in either delivery schema, and the decision whether one
//! is a changefeed file to read (no I/O).
//!
//! Sources (details and quotes in `docs/host-protocol.md`):
//! - Event shapes: Event Grid schema (`topic`, `eventType`, `eventTime`, `dataVersion`) and
//!   CloudEvents 1.0 (`source`, `type`, `time`, `specversion`), both with `id`, `subject`
//!   `/blobServices/default/containers/<c>/blobs/<name>` and `data {api, eTag, contentLength,
//!   url, sequencer, …}` — MicrosoftDocs/azure-docs `articles/event-grid/event-schema-blob-storage.md`
//!   (<https://learn.microsoft.com/azure/event-grid/event-schema-blob-storage>).
//! - Which `api` means "complete": `PutBlob`/`PutBlockList` fire when the block blob is fully
//!   committed; on hierarchical-namespace (ADLS Gen2) accounts `CreateFile` creates an empty file
//!   and only `FlushWithClose` means committed ("filter the event for the FlushWithClose REST API
//!   call"); SFTP sends `SftpCreate` (empty) then `SftpCommit`; `CopyBlob` on HNS accounts fires
//!   when the copy is *initiated* (same page). CockroachDB writes through the blob endpoint with
//!   `blockblob.Client.UploadStream` (staged blocks, then Put Block List) —
//!   cockroachdb/cockroach `pkg/cloud/azure/azure_storage.go`.
//! - Subscription validation (`Microsoft.EventGrid.SubscriptionValidationEvent`) is answered by the
//!   Functions Event Grid extension itself (`HttpRequestProcessor.cs` in Azure/azure-sdk-for-net);
//!   it is recognised here only so an HTTP route could echo the code.
//! - Event Grid batches hold at most 5,000 events (`articles/event-grid/delivery-and-retry.md`).
//! - Blob names: at most 1,024 characters and 254 path segments, no control characters;
//!   container names 3–63 of `[a-z0-9-]` (REST reference "Naming and Referencing Containers,
//!   Blobs, and Metadata").

use std::fmt;

use serde_json::{Map, Value};

use super::host::{decode_json_layers, preview};

pub const BLOB_CREATED: &str = "Microsoft.Storage.BlobCreated";
pub const SUBSCRIPTION_VALIDATION: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";

/// Event Grid's largest delivery batch.
pub const MAX_EVENTS: usize = 5000;
/// Azure's blob name limits.
pub const MAX_BLOB_NAME_CHARS: usize = 1024;
pub const MAX_PATH_SEGMENTS: usize = 254;

/// `data.api` values after which the blob is fully written.
const COMPLETING_APIS: [&str; 4] = ["PutBlob", "PutBlockList", "FlushWithClose", "SftpCommit"];
/// `data.api` values that announce an empty or partial file.
const INCOMPLETE_APIS: [&str; 2] = ["CreateFile", "SftpCreate"];

/// The delivery schema the event came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    EventGrid,
    CloudEvents,
}

/// A blob inside a storage account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub container: String,
    /// The blob name inside the container, unencoded (`2024-05-03/…-mytable-2.ndjson`).
    pub path: String,
}

impl BlobRef {
    /// `container/path`, the form [`is_own_write`] compares with target prefixes.
    pub fn key(&self) -> String {
        format!("{}/{}", self.container, self.path)
    }
}

/// One event, reduced to what the handler needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobEvent {
    pub id: String,
    pub event_type: String,
    pub schema: Schema,
    /// As sent (empty when a CloudEvent has none).
    pub subject: String,
    pub api: Option<String>,
    /// Storage account name, lower-case: from `topic`/`source`, else from `data.url`.
    pub account: Option<String>,
    /// Container and blob name: from `subject`, else from the percent-decoded `data.url`.
    pub blob: Option<BlobRef>,
    pub url: Option<String>,
    pub content_length: Option<u64>,
    /// `data.eTag` as sent (sometimes quoted, sometimes not).
    pub etag: Option<String>,
    /// Orders events of one blob name by plain string comparison.
    pub sequencer: Option<String>,
    /// Only for subscription validation events.
    pub validation_code: Option<String>,
}

/// Errors about one event; each names the event id and subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event {id:?} (subject {subject:?}): malformed: {reason}")]
    Malformed {
        id: String,
        subject: String,
        reason: String,
    },
    #[error("event {id:?} (subject {subject:?}): not about a blob")]
    NotABlob { id: String, subject: String },
    #[error(
        "event {id:?} (subject {subject:?}): account {found:?} is not the watched account {expected:?}"
    )]
    OtherAccount {
        id: String,
        subject: String,
        found: String,
        expected: String,
    },
    #[error(
        "event {id:?} (subject {subject:?}): names no storage account (no storageAccounts topic \
         or source, no usable url) but the watched account is {expected:?}"
    )]
    UnknownAccount {
        id: String,
        subject: String,
        expected: String,
    },
    #[error(
        "event {id:?} (subject {subject:?}): container {found:?} is not the watched container {expected:?}"
    )]
    OtherContainer {
        id: String,
        subject: String,
        found: String,
        expected: String,
    },
    #[error(
        "event {id:?} (subject {subject:?}): blob {path:?} is outside the watched prefix {prefix:?}"
    )]
    OutsidePrefix {
        id: String,
        subject: String,
        path: String,
        prefix: String,
    },
    #[error("event {id:?} (subject {subject:?}): refused blob name {path:?}: {reason}")]
    UnsafePath {
        id: String,
        subject: String,
        path: String,
        reason: String,
    },
}

/// Errors about the payload as a whole (before any event could be told apart).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("event payload: {0}")]
    NotJson(super::host::BindingError),
    #[error("event payload holds {count} events, more than Event Grid's {max}")]
    TooMany { count: usize, max: usize },
}

/// Why an event needs no work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Event Grid's handshake; the Functions extension answers it before we are invoked.
    SubscriptionValidation { validation_code: Option<String> },
    /// BlobDeleted, BlobRenamed, DirectoryCreated, BlobTierChanged, …
    NotBlobCreated { event_type: String },
    /// `CreateFile` / `SftpCreate`: an empty file; the completing event follows.
    IncompleteWrite { api: String },
    /// `CopyBlob`: complete on flat accounts but fired at *initiation* on HNS accounts, and the
    /// event does not say which; left to the catch-up listing.
    CopyNotConfirmed,
    /// A BlobCreated api not known to mean "committed"; left to the catch-up listing rather than
    /// risk reading a partial file.
    UnknownApi { api: Option<String> },
    /// A BlobCreated event without a blob (no blob subject, no url).
    NotABlob,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SubscriptionValidation { .. } => write!(f, "subscription validation event"),
            Self::NotBlobCreated { event_type } => {
                write!(f, "event type {event_type:?} is not BlobCreated")
            }
            Self::IncompleteWrite { api } => {
                write!(f, "api {api:?} announces an empty or partial file")
            }
            Self::CopyNotConfirmed => write!(f, "CopyBlob may still be in progress (HNS accounts)"),
            Self::UnknownApi { api: Some(api) } => {
                write!(f, "api {api:?} is not known to complete a blob")
            }
            Self::UnknownApi { api: None } => write!(f, "BlobCreated without data.api"),
            Self::NotABlob => write!(f, "no blob named"),
        }
    }
}

/// What to do with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// A fully written blob: check it against the scope and read it.
    Candidate,
    Skip(SkipReason),
}

impl BlobEvent {
    /// Candidate for a committed BlobCreated, otherwise the reason to skip.
    pub fn disposition(&self) -> Disposition {
        if self
            .event_type
            .eq_ignore_ascii_case(SUBSCRIPTION_VALIDATION)
        {
            return Disposition::Skip(SkipReason::SubscriptionValidation {
                validation_code: self.validation_code.clone(),
            });
        }
        if !self.event_type.eq_ignore_ascii_case(BLOB_CREATED) {
            return Disposition::Skip(SkipReason::NotBlobCreated {
                event_type: self.event_type.clone(),
            });
        }
        if self.blob.is_none() {
            return Disposition::Skip(SkipReason::NotABlob);
        }
        let is = |set: &[&str], api: &str| set.iter().any(|a| a.eq_ignore_ascii_case(api));
        match self.api.as_deref() {
            Some(api) if is(&COMPLETING_APIS, api) => Disposition::Candidate,
            Some(api) if is(&INCOMPLETE_APIS, api) => {
                Disposition::Skip(SkipReason::IncompleteWrite {
                    api: api.to_owned(),
                })
            }
            Some(api) if api.eq_ignore_ascii_case("CopyBlob") => {
                Disposition::Skip(SkipReason::CopyNotConfirmed)
            }
            api => Disposition::Skip(SkipReason::UnknownApi {
                api: api.map(str::to_owned),
            }),
        }
    }

    /// Whether the event is about one of our own writes (see [`is_own_write`]).
    pub fn is_own_write(&self, target_prefixes: &[&str]) -> bool {
        self.blob
            .as_ref()
            .is_some_and(|b| is_own_write(&b.key(), target_prefixes))
    }
}

/// Parses a payload given as text (a queue message, a test file): JSON, possibly wrapped in
/// strings or base64, holding one event or an array of events.
pub fn parse_events_text(text: &str) -> Result<Vec<Result<BlobEvent, EventError>>, PayloadError> {
    parse_events(&Value::String(text.to_owned()))
}

/// Parses one event (an object) or a batch (an array); strings are unwrapped first. Each event
/// gets its own result, so one bad event does not hide the others.
pub fn parse_events(payload: &Value) -> Result<Vec<Result<BlobEvent, EventError>>, PayloadError> {
    let payload = decode_json_layers(payload).map_err(PayloadError::NotJson)?;
    match payload {
        Value::Array(items) => {
            if items.len() > MAX_EVENTS {
                return Err(PayloadError::TooMany {
                    count: items.len(),
                    max: MAX_EVENTS,
                });
            }
            Ok(items
                .iter()
                .map(|item| match item {
                    Value::String(_) => match decode_json_layers(item) {
                        Ok(v) => parse_event(&v),
                        Err(reason) => Err(malformed("", "", reason.to_string())),
                    },
                    other => parse_event(other),
                })
                .collect())
        }
        other => Ok(vec![parse_event(&other)]),
    }
}

fn malformed(id: &str, subject: &str, reason: impl Into<String>) -> EventError {
    EventError::Malformed {
        id: id.to_owned(),
        subject: subject.to_owned(),
        reason: reason.into(),
    }
}

/// Parses one event object in either schema.
pub fn parse_event(value: &Value) -> Result<BlobEvent, EventError> {
    let Value::Object(event) = value else {
        return Err(malformed("", "", "an event must be a JSON object"));
    };
    let text = |key: &str| -> Option<&str> { event.get(key).and_then(Value::as_str) };
    let id = text("id").unwrap_or_default().to_owned();
    let subject = text("subject").unwrap_or_default().to_owned();
    let bad = |reason: String| malformed(&id, &subject, reason);
    if id.is_empty() {
        return Err(bad("no id".to_owned()));
    }
    if event.get("subject").is_some_and(|s| !s.is_string()) {
        return Err(bad("subject is not a string".to_owned()));
    }
    let (schema, event_type, origin) = if event.contains_key("specversion") {
        (Schema::CloudEvents, text("type"), text("source"))
    } else if event.contains_key("eventType") {
        (Schema::EventGrid, text("eventType"), text("topic"))
    } else if event.contains_key("type") && event.contains_key("source") {
        (Schema::CloudEvents, text("type"), text("source"))
    } else {
        return Err(bad(
            "neither an Event Grid event (eventType) nor a CloudEvent (specversion, type)"
                .to_owned(),
        ));
    };
    let event_type = match event_type {
        Some(t) if !t.is_empty() => t.to_owned(),
        _ => return Err(bad("no event type".to_owned())),
    };

    // `data` is an object; the CloudEvents validation event double-encodes it as a string.
    let data_value = event.get("data").cloned().unwrap_or(Value::Null);
    let data: Map<String, Value> = match data_value {
        Value::Null => Map::new(),
        Value::Object(map) => map,
        ref other => match decode_json_layers(other) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(bad("data is not an object".to_owned())),
            Err(reason) => return Err(bad(format!("data: {reason}"))),
        },
    };
    let data_text = |key: &str| -> Result<Option<String>, EventError> {
        match data.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(format!("data.{key} is not a string"))),
        }
    };
    let api = data_text("api")?;
    let url = data_text("url")?;
    let etag = data_text("eTag")?;
    let sequencer = data_text("sequencer")?;
    let validation_code = if event_type.eq_ignore_ascii_case(SUBSCRIPTION_VALIDATION) {
        data_text("validationCode")?
    } else {
        None
    };
    let content_length = match data.get("contentLength") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .ok_or_else(|| bad(format!("data.contentLength {n} is not a byte count")))?,
        ),
        Some(Value::String(s)) => Some(s.parse::<u64>().map_err(|_| {
            bad(format!(
                "data.contentLength {} is not a byte count",
                preview(s)
            ))
        })?),
        Some(_) => return Err(bad("data.contentLength is not a number".to_owned())),
    };

    let url_parts = match url.as_deref() {
        Some(u) => Some(UrlParts::parse(u).map_err(|reason| bad(format!("data.url: {reason}")))?),
        None => None,
    };
    let origin_account = origin.and_then(account_from_resource_id);
    let url_account = url_parts.as_ref().map(|u| u.account.clone());
    let account = match (origin_account, url_account) {
        (Some(a), Some(b)) if a != b => {
            return Err(bad(format!(
                "the topic/source names account {a:?} but data.url names {b:?}"
            )));
        }
        (Some(a), _) => Some(a),
        (None, b) => b.filter(|b| !b.is_empty()),
    };

    // The subject is the authoritative blob name (Event Grid filters on it); the url is the
    // fallback, and the remedy when the subject carries U+FFFD for characters it could not hold.
    // The url is decoded either way, so a corrupt one is reported rather than ignored.
    let url_blob = match &url_parts {
        Some(u) => u
            .blob()
            .map_err(|reason| bad(format!("data.url: {reason}")))?,
        None => None,
    };
    let blob = match blob_from_subject(&subject) {
        Some(b) if !b.path.contains('\u{fffd}') => Some(b),
        from_subject => url_blob.or(from_subject),
    };
    if blob.is_none() && event_type.starts_with("Microsoft.Storage.Blob") {
        return Err(bad(
            "a blob event whose subject is not /blobServices/default/containers/<c>/blobs/<name> \
             and which has no data.url"
                .to_owned(),
        ));
    }

    Ok(BlobEvent {
        id,
        event_type,
        schema,
        subject,
        api,
        account,
        blob,
        url,
        content_length,
        etag,
        sequencer,
        validation_code,
    })
}

/// `/subscriptions/…/providers/Microsoft.Storage/storageAccounts/<name>` → `<name>` (lower-case).
fn account_from_resource_id(id: &str) -> Option<String> {
    const MARKER: &str = "/providers/microsoft.storage/storageaccounts/";
    let lower = id.to_ascii_lowercase();
    let start = lower.find(MARKER)? + MARKER.len();
    let name = lower[start..].split('/').next()?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// `/blobServices/default/containers/<c>/blobs/<name>` (leading slash optional, as some
/// samples omit it) → container and name, as written (not percent-decoded).
fn blob_from_subject(subject: &str) -> Option<BlobRef> {
    let rest = subject.strip_prefix('/').unwrap_or(subject);
    let rest = rest.strip_prefix("blobServices/default/containers/")?;
    let (container, path) = rest.split_once("/blobs/")?;
    if container.is_empty() || container.contains('/') || path.is_empty() {
        return None;
    }
    Some(BlobRef {
        container: container.to_owned(),
        path: path.to_owned(),
    })
}

/// A blob URL of an event that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0} is not an absolute URL")]
    NotAbsolute(String),
    #[error("scheme {0:?} is not http(s)")]
    Scheme(String),
    #[error("{0} has no host")]
    NoHost(String),
    #[error("bad percent escape in {0}")]
    BadEscape(String),
    #[error("percent escapes in {0} are not UTF-8")]
    NotUtf8(String),
}

/// The parts of a blob URL we use: account, and the still-encoded path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UrlParts {
    account: String,
    /// `/<container>/<name…>` without the account segment, percent-encoded.
    path: String,
}

impl UrlParts {
    /// `https://<account>.blob.core.windows.net/<c>/<name>` (also `.dfs.`, other clouds,
    /// private endpoints) or the path-style `http://127.0.0.1:10000/<account>/<c>/<name>` of
    /// Azurite and IP hosts.
    fn parse(url: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| UrlError::NotAbsolute(preview(url)))?;
        if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
            return Err(UrlError::Scheme(scheme.to_owned()));
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        let after = &rest[end..];
        let path = &after[..after.find(['?', '#']).unwrap_or(after.len())];
        let host_port = authority.rsplit('@').next().unwrap_or(authority);
        let host = if let Some(v6) = host_port.strip_prefix('[') {
            v6.split(']').next().unwrap_or_default()
        } else {
            host_port.split(':').next().unwrap_or_default()
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(preview(url)));
        }
        let path_style = host.eq_ignore_ascii_case("localhost")
            || host.contains(':')
            || !host.contains('.')
            || host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if path_style {
            let trimmed = path.strip_prefix('/').unwrap_or(path);
            let (account, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
            let account = percent_decode(account)?;
            Ok(Self {
                account: account.to_ascii_lowercase(),
                path: format!("/{rest}"),
            })
        } else {
            let account = host.split('.').next().unwrap_or_default();
            Ok(Self {
                account: account.to_ascii_lowercase(),
                path: path.to_owned(),
            })
        }
    }

    /// Container and decoded blob name, if the path names a blob.
    fn blob(&self) -> Result<Option<BlobRef>, UrlError> {
        let trimmed = self.path.strip_prefix('/').unwrap_or(&self.path);
        let Some((container, name)) = trimmed.split_once('/') else {
            return Ok(None);
        };
        if container.is_empty() || name.is_empty() {
            return Ok(None);
        }
        Ok(Some(BlobRef {
            container: percent_decode(container)?,
            path: percent_decode(name)?,
        }))
    }
}

/// Decodes `%XX` escapes of a URL *path* once (`+` stays `+`: it means space only in queries).
/// Malformed escapes and non-UTF-8 results are errors, not guesses.
pub fn percent_decode(text: &str) -> Result<String, UrlError> {
    if !text.contains('%') {
        return Ok(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let digit = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
            match (digit(i + 1), digit(i + 2)) {
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return Err(UrlError::BadEscape(preview(text))),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::NotUtf8(preview(text)))
}

/// Why a blob name (or prefix) is refused, or `None` if it is a plain relative path.
///
/// Refused: empty, over 1,024 characters or 254 segments, empty segments (`//`, leading or
/// trailing `/`), `.`/`..` segments, backslashes, control characters, U+FFFD. If the name holds
/// `%`, its once-decoded form must pass the same checks, so a later decoding step (ours or a
/// library's) cannot turn `%2e%2e` or `%2F` into a traversal.
pub fn unsafe_path_reason(path: &str) -> Option<String> {
    if let Some(reason) = plain_path_reason(path) {
        return Some(reason);
    }
    if path.contains('%')
        && let Ok(decoded) = percent_decode(path)
        && let Some(reason) = plain_path_reason(&decoded)
    {
        return Some(format!("once percent-decoded: {reason}"));
    }
    None
}

fn plain_path_reason(path: &str) -> Option<String> {
    if path.is_empty() {
        return Some("empty name".to_owned());
    }
    let chars = path.chars().count();
    if chars > MAX_BLOB_NAME_CHARS {
        return Some(format!(
            "{chars} characters, more than {MAX_BLOB_NAME_CHARS}"
        ));
    }
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return Some(format!("control character {c:?}"));
    }
    if path.contains('\\') {
        return Some("backslash".to_owned());
    }
    if path.contains('\u{fffd}') {
        return Some("U+FFFD (the name was mangled on the way)".to_owned());
    }
    let mut segments = 0;
    for segment in path.split('/') {
        segments += 1;
        match segment {
            "" => return Some("empty path segment (leading, trailing or double slash)".to_owned()),
            "." | ".." => return Some(format!("{segment:?} segment")),
            _ => {}
        }
    }
    if segments > MAX_PATH_SEGMENTS {
        return Some(format!(
            "{segments} path segments, more than {MAX_PATH_SEGMENTS}"
        ));
    }
    None
}

/// Errors building a [`Scope`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("storage account name {0:?}: expected 3 to 24 lower-case letters and digits")]
    Account(String),
    #[error(
        "container name {0:?}: expected 3 to 63 lower-case letters, digits and single hyphens, \
         starting and ending with a letter or digit"
    )]
    Container(String),
    #[error("prefix {prefix:?}: {reason}")]
    Prefix { prefix: String, reason: String },
}

/// The changefeed location events are accepted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    account: Option<String>,
    container: String,
    prefix: String,
}

impl Scope {
    /// `account` `None` accepts any account (Azurite, or when the subscription already pins it).
    /// The prefix is the changefeed root inside the container; slashes around it are ignored and
    /// an empty prefix means the whole container.
    pub fn new(account: Option<&str>, container: &str, prefix: &str) -> Result<Self, ScopeError> {
        if let Some(a) = account
            && (!(3..=24).contains(&a.len())
                || !a
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        {
            return Err(ScopeError::Account(a.to_owned()));
        }
        if !valid_container(container) {
            return Err(ScopeError::Container(container.to_owned()));
        }
        let trimmed = prefix.trim_matches('/');
        if !trimmed.is_empty()
            && let Some(reason) = unsafe_path_reason(trimmed)
        {
            return Err(ScopeError::Prefix {
                prefix: prefix.to_owned(),
                reason,
            });
        }
        Ok(Self {
            account: account.map(str::to_owned),
            container: container.to_owned(),
            prefix: trimmed.to_owned(),
        })
    }

    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    pub fn container(&self) -> &str {
        &self.container
    }

    /// Without surrounding slashes; empty for the whole container.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The blob's path relative to the prefix — what `ObjectName::parse_relative` takes — or why
    /// the event is not ours to read: another account or container, a name outside the prefix,
    /// an unsafe name.
    pub fn relative(&self, event: &BlobEvent) -> Result<String, EventError> {
        let id = || event.id.clone();
        let subject = || event.subject.clone();
        let Some(blob) = &event.blob else {
            return Err(EventError::NotABlob {
                id: id(),
                subject: subject(),
            });
        };
        if let Some(expected) = &self.account {
            match &event.account {
                Some(found) if found.eq_ignore_ascii_case(expected) => {}
                Some(found) => {
                    return Err(EventError::OtherAccount {
                        id: id(),
                        subject: subject(),
                        found: found.clone(),
                        expected: expected.clone(),
                    });
                }
                None => {
                    return Err(EventError::UnknownAccount {
                        id: id(),
                        subject: subject(),
                        expected: expected.clone(),
                    });
                }
            }
        }
        if blob.container != self.container {
            return Err(EventError::OtherContainer {
                id: id(),
                subject: subject(),
                found: blob.container.clone(),
                expected: self.container.clone(),
            });
        }
        if let Some(reason) = unsafe_path_reason(&blob.path) {
            return Err(EventError::UnsafePath {
                id: id(),
                subject: subject(),
                path: blob.path.clone(),
                reason,
            });
        }
        if self.prefix.is_empty() {
            return Ok(blob.path.clone());
        }
        match strip_dir_prefix(&blob.path, &self.prefix) {
            Some(rest) => Ok(rest.to_owned()),
            None => Err(EventError::OutsidePrefix {
                id: id(),
                subject: subject(),
                path: blob.path.clone(),
                prefix: self.prefix.clone(),
            }),
        }
    }
}

fn valid_container(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(|b| *b != b'-')
        && bytes.last().is_some_and(|b| *b != b'-')
        && !name.contains("--")
}

/// `path` below directory `prefix` (segment-wise: `feed` holds `feed/x`, not `feed2/x` nor `feed`).
fn strip_dir_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)?
        .strip_prefix('/')
        .filter(|rest| !rest.is_empty())
}

/// Whether a `container/path` key is one of our own writes, so its event is dropped before any
/// other work: any `_delta_log` segment (a Delta commit, wherever the table is), or anything
/// below one of `target_prefixes` (`container/prefix`, e.g. the target location without its
/// `azure://`; segment-wise; blank entries are ignored rather than matching everything).
pub fn is_own_write(key: &str, target_prefixes: &[&str]) -> bool {
    if key.split('/').any(|segment| segment == "_delta_log") {
        return true;
    }
    target_prefixes.iter().any(|prefix| {
        let prefix = prefix.trim_matches('/');
        !prefix.is_empty() && strip_dir_prefix(key, prefix).is_some()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_strict_and_path_style() {
        assert_eq!(percent_decode("a%2Bb+c%20d").unwrap(), "a+b+c d");
        assert_eq!(percent_decode("%e2%82%ac").unwrap(), "€");
        assert!(percent_decode("a%2").is_err());
        assert!(percent_decode("a%zz").is_err());
        assert!(percent_decode("%+1").is_err());
        assert!(percent_decode("%ff").is_err(), "not UTF-8");
    }

    #[test]
    fn urls_give_account_and_path() {
        let u = UrlParts::parse("https://Acct.blob.core.windows.net/c/a%20b/x?sv=1#f").unwrap();
        assert_eq!(u.account, "acct");
        assert_eq!(
            u.blob().unwrap(),
            Some(BlobRef {
                container: "c".into(),
                path: "a b/x".into()
            })
        );
        let azurite = UrlParts::parse("http://127.0.0.1:10000/devstoreaccount1/c/p/f").unwrap();
        assert_eq!(azurite.account, "devstoreaccount1");
        assert_eq!(azurite.blob().unwrap().unwrap().path, "p/f");
        let container_only = UrlParts::parse("https://a.dfs.core.windows.net/fs").unwrap();
        assert_eq!(container_only.blob().unwrap(), None);
        assert!(UrlParts::parse("ftp://a.b/c/d").is_err());
        assert!(UrlParts::parse("no-scheme").is_err());
    }

    #[test]
    fn resource_ids_give_accounts() {
        assert_eq!(
            account_from_resource_id(
                "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Storage/StorageAccounts/MyAcct"
            )
            .as_deref(),
            Some("myacct")
        );
        assert_eq!(
            account_from_resource_id("/subscriptions/x/providers/Microsoft.EventGrid/topics/t"),
            None
        );
    }

    #[test]
    fn container_rules() {
        assert!(valid_container("abc"));
        assert!(valid_container("my-file-system"));
        for bad in ["ab", "Abc", "-abc", "abc-", "a--b", "a_b", &"a".repeat(64)] {
            assert!(!valid_container(bad), "{bad}");
        }
    }
}

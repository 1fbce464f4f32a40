//! The Azure Functions custom-handler protocol, as plain data (no I/O).
//!
//! The Functions host runs `crdb-delta serve` and, for every trigger, sends
//! `POST /<FunctionName>` with a JSON body `{"Data": {...}, "Metadata": {...}}`; the handler
//! answers with `{"Outputs": {...}, "Logs": [...], "ReturnValue": ...}`. Facts and their sources
//! are collected in `docs/host-protocol.md`; the ones this module depends on:
//!
//! - The host serialises `HttpScriptInvocationContext { Data, Metadata }` with Newtonsoft through
//!   an `ObjectContent` (no precomputed length, so the body is usually chunked) and posts it to
//!   the function name (Azure/azure-functions-host
//!   `src/WebJobs.Script/Workers/Http/DefaultHttpWorkerService.cs`,
//!   `HttpScriptInvocationContextExtensions.cs`, `HttpScriptInvocationContext.cs`).
//! - Each `Data` value goes through `GetHttpScriptInvocationContextValue`: objects stay objects,
//!   `byte[]` becomes base64, and anything `JObject.FromObject` refuses (a string, a number) is
//!   passed through `JsonConvert.SerializeObject` — so a trigger value that is a JSON *string*
//!   (the Event Grid extension converts events to indented JSON strings) arrives as a string
//!   holding a JSON string holding the event (Azure/azure-functions-host
//!   `src/WebJobs.Script/Workers/ScriptInvocationContextExtensions.cs`; Azure/azure-sdk-for-net
//!   `sdk/eventgrid/Microsoft.Azure.WebJobs.Extensions.EventGrid/src/Config/EventGridExtensionConfigProvider.cs`).
//!   Hence [`decode_json_layers`]: unwrap strings until an object or array appears, bounded.
//! - Any non-2xx answer fails the invocation (`EnsureSuccessStatusCode`), which Event Grid and
//!   the queue trigger retry (`DefaultHttpWorkerService.cs`).
//! - The answer is read as `HttpScriptInvocationResult { Outputs, Logs, ReturnValue }`
//!   (`HttpScriptInvocationResult.cs`); an `http` output named in `Outputs` is read as
//!   `{statusCode, status, body, headers}` and only honoured when `body` is present
//!   (`HttpScriptInvocationResultExtensions.cs`, `HttpOutputBindingResponse.cs`,
//!   `src/WebJobs.Script/Binding/Http/HttpBinding.cs` `ParseResponseObject`).
//! - An `httpTrigger` value is `{Url, Method, Query, Headers, Params, Identities, Body}`
//!   (`src/WebJobs.Script/Extensions/HttpRequestExtensions.cs` `GetRequestAsJObject`; `Query` is
//!   a JSON *string* in older hosts and in the documented sample, an object in newer ones — both
//!   are accepted).
//!
//! Documentation: <https://learn.microsoft.com/azure/azure-functions/functions-custom-handlers>
//! (MicrosoftDocs/azure-docs `articles/azure-functions/functions-custom-handlers.md`).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Environment variables that carry the port the host expects the handler on, in order of
/// preference: the documented name, then the older one the host source still defines
/// (`HttpWorkerConstants.PortEnvVarName`).
pub const PORT_ENV_VARS: [&str; 2] = ["FUNCTIONS_CUSTOMHANDLER_PORT", "FUNCTIONS_HTTPWORKER_PORT"];

/// Header the host adds to every invocation request (`HttpWorkerConstants.cs`).
pub const INVOCATION_ID_HEADER: &str = "X-Azure-Functions-InvocationId";

/// How many string layers [`decode_json_layers`] unwraps before giving up. Two are expected for
/// an Event Grid trigger (JToken → string → `SerializeObject`); one more for a base64 queue
/// message; the rest is margin, not an invitation.
pub const MAX_DECODE_DEPTH: usize = 4;

/// Errors reading an invocation request; each names the binding involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("invocation request is not a JSON object with Data and Metadata: {0}")]
    BadRequest(String),
    #[error("binding `{name}` is missing from Data (present: {present})")]
    MissingBinding { name: String, present: String },
    #[error("binding `{name}`: {reason}")]
    BadBinding { name: String, reason: BindingError },
}

/// What is wrong with a binding's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// `at`: where in the value (`http request Headers`, `timer`), if not the value itself.
    #[error("{}expected {expected}, found {found}", at_prefix(.at))]
    Kind {
        at: Option<String>,
        expected: &'static str,
        found: &'static str,
    },
    #[error("a string that is neither JSON nor base64 JSON ({json_error}): {preview}")]
    NotJson { json_error: String, preview: String },
    #[error(
        "still a string after {MAX_DECODE_DEPTH} decodings (JSON nested in strings too deeply)"
    )]
    TooDeep,
    #[error("{at}: no {field}")]
    Missing {
        at: &'static str,
        field: &'static str,
    },
    #[error("{at}: {field} is {found}")]
    Field {
        at: &'static str,
        field: &'static str,
        found: &'static str,
    },
    /// A part of the value (`http request Query`) that is itself wrong.
    #[error("{at}: {source}")]
    In {
        at: String,
        #[source]
        source: Box<BindingError>,
    },
}

fn at_prefix(at: &Option<String>) -> String {
    at.as_deref().map(|a| format!("{a}: ")).unwrap_or_default()
}

/// The body the host posts to `/<FunctionName>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InvocationRequest {
    /// Trigger and input binding values, keyed by the binding `name` in function.json.
    #[serde(
        rename = "Data",
        alias = "data",
        default,
        deserialize_with = "null_as_empty"
    )]
    pub data: Map<String, Value>,
    /// Trigger metadata (queue `DequeueCount`, `sys.MethodName`, …).
    #[serde(
        rename = "Metadata",
        alias = "metadata",
        default,
        deserialize_with = "null_as_empty"
    )]
    pub metadata: Map<String, Value>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    Ok(Option::<Map<String, Value>>::deserialize(d)?.unwrap_or_default())
}

impl InvocationRequest {
    /// Parses the request body (a UTF-8 byte-order mark is tolerated).
    pub fn from_slice(body: &[u8]) -> Result<Self, HostError> {
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        serde_json::from_slice(body).map_err(|e| HostError::BadRequest(e.to_string()))
    }

    /// The raw value of a binding (exact name, else ASCII case-insensitive).
    pub fn binding(&self, name: &str) -> Result<&Value, HostError> {
        get_ci(&self.data, name).ok_or_else(|| HostError::MissingBinding {
            name: name.to_owned(),
            present: if self.data.is_empty() {
                "none".to_owned()
            } else {
                self.data.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        })
    }

    /// The binding's value with string and base64 wrapping removed: an event object, an array
    /// of events, a timer object… See [`decode_json_layers`].
    pub fn decoded(&self, name: &str) -> Result<Value, HostError> {
        decode_json_layers(self.binding(name)?).map_err(|reason| HostError::BadBinding {
            name: name.to_owned(),
            reason,
        })
    }

    /// The request of an `httpTrigger` binding.
    pub fn http_request(&self, name: &str) -> Result<HttpRequestData, HostError> {
        let value = self.decoded(name)?;
        HttpRequestData::from_value(&value).map_err(|reason| HostError::BadBinding {
            name: name.to_owned(),
            reason,
        })
    }

    /// The value of a `timerTrigger` binding.
    pub fn timer(&self, name: &str) -> Result<TimerInfo, HostError> {
        let value = self.decoded(name)?;
        TimerInfo::from_value(&value).map_err(|reason| HostError::BadBinding {
            name: name.to_owned(),
            reason,
        })
    }

    /// A metadata value as text. Scalars may arrive JSON-quoted (the host passes strings and
    /// numbers through `SerializeObject`), so one quoting layer is removed.
    pub fn metadata_text(&self, key: &str) -> Option<String> {
        get_ci(&self.metadata, key).and_then(scalar_text)
    }

    /// How many times the queue message has been dequeued (queue trigger metadata), so the
    /// handler can tell a first attempt from the last one before the poison queue.
    pub fn dequeue_count(&self) -> Option<u64> {
        self.metadata_text("DequeueCount")?.parse().ok()
    }
}

/// Looks a key up exactly, then ignoring ASCII case (the host keeps .NET PascalCase, tests and
/// other hosts may not).
fn get_ci<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::String(inner)) => Some(inner),
            Ok(Value::Number(n)) => Some(n.to_string()),
            Ok(Value::Bool(b)) => Some(b.to_string()),
            _ => Some(s.clone()),
        },
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Unwraps a binding value until it is a JSON object or array.
///
/// Each string layer is parsed as JSON; a string that is not JSON but is standard base64 of
/// UTF-8 JSON is decoded instead (a queue message read with `messageEncoding: none`, or a
/// `dataType: binary` binding). At most [`MAX_DECODE_DEPTH`] layers are removed, so a hostile
/// or broken payload cannot make this loop. The error says what was found.
pub fn decode_json_layers(value: &Value) -> Result<Value, BindingError> {
    let not_json = |found| BindingError::Kind {
        at: None,
        expected: "a JSON object or array",
        found,
    };
    let mut current = value.clone();
    for _ in 0..=MAX_DECODE_DEPTH {
        let text = match current {
            Value::Object(_) | Value::Array(_) => return Ok(current),
            Value::String(ref s) => s.trim(),
            ref other => return Err(not_json(kind(other))),
        };
        if text.is_empty() {
            return Err(not_json("an empty string"));
        }
        current = match serde_json::from_str::<Value>(text) {
            Ok(next) => next,
            Err(json_err) => match base64_json(text) {
                Some(next) => next,
                None => {
                    return Err(BindingError::NotJson {
                        json_error: json_err.to_string(),
                        preview: preview(text),
                    });
                }
            },
        };
    }
    Err(BindingError::TooDeep)
}

/// `at`'s value is not an object.
fn not_an_object(at: &str, value: &Value) -> BindingError {
    BindingError::Kind {
        at: Some(at.to_owned()),
        expected: "an object",
        found: kind(value),
    }
}

/// Standard base64 (with padding) of UTF-8 JSON, or `None`.
fn base64_json(text: &str) -> Option<Value> {
    if !text.len().is_multiple_of(4)
        || !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    serde_json::from_str(text.trim_start_matches('\u{feff}')).ok()
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The first characters of untrusted text, escaped, for error messages.
pub(crate) fn preview(text: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = text.chars().take(MAX).collect();
    if text.chars().nth(MAX).is_some() {
        out.push('…');
    }
    format!("{out:?}")
}

/// An `httpTrigger` request as the host forwards it when `enableForwardingHttpRequest` is off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpRequestData {
    pub url: String,
    pub method: String,
    pub query: BTreeMap<String, String>,
    /// Header names lower-cased (HTTP names are case-insensitive), values in order.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Route parameters.
    pub params: BTreeMap<String, String>,
    /// The body as text; the host sends octet-stream and multipart bodies as base64.
    pub body: Option<String>,
}

impl HttpRequestData {
    /// Reads `{Url, Method, Query, Headers, Params, Body}` (keys in any ASCII case).
    pub fn from_value(value: &Value) -> Result<Self, BindingError> {
        let Value::Object(map) = value else {
            return Err(not_an_object("http request", value));
        };
        let text = |key: &str| get_ci(map, key).and_then(scalar_text).unwrap_or_default();
        let method = text("Method");
        if method.is_empty() {
            return Err(BindingError::Missing {
                at: "http request",
                field: "Method",
            });
        }
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let Some(h) = get_ci(map, "Headers") {
            for (name, values) in string_map(h, "Headers")? {
                headers
                    .entry(name.to_ascii_lowercase())
                    .or_default()
                    .extend(values);
            }
        }
        let single = |key: &str| -> Result<BTreeMap<String, String>, BindingError> {
            Ok(match get_ci(map, key) {
                None | Some(Value::Null) => BTreeMap::new(),
                Some(v) => string_map(v, key)?
                    .into_iter()
                    .map(|(k, v)| (k, v.join(",")))
                    .collect(),
            })
        };
        Ok(Self {
            url: text("Url"),
            method: method.to_ascii_uppercase(),
            query: single("Query")?,
            headers,
            params: single("Params")?,
            body: get_ci(map, "Body").and_then(|b| match b {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            }),
        })
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// A query parameter, by exact name.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

/// An object of strings or string arrays, possibly itself JSON-encoded in a string (the
/// documented sample has `"Query": "{}"`).
fn string_map(value: &Value, what: &str) -> Result<Vec<(String, Vec<String>)>, BindingError> {
    let at = format!("http request {what}");
    let decoded;
    let map = match value {
        Value::Object(map) => map,
        Value::String(_) => {
            decoded = decode_json_layers(value).map_err(|e| BindingError::In {
                at: at.clone(),
                source: Box::new(e),
            })?;
            match &decoded {
                Value::Object(map) => map,
                other => return Err(not_an_object(&at, other)),
            }
        }
        Value::Null => return Ok(Vec::new()),
        other => return Err(not_an_object(&at, other)),
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let values = match v {
            Value::Array(items) => items.iter().filter_map(scalar_text).collect(),
            Value::Null => Vec::new(),
            other => scalar_text(other).into_iter().collect(),
        };
        out.push((k.clone(), values));
    }
    Ok(out)
}

/// The value of a `timerTrigger` binding (`TimerInfo` of the timer extension, serialised with
/// .NET names: `{"Schedule":{}, "ScheduleStatus":{"Last","Next","LastUpdated"}, "IsPastDue"}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimerInfo {
    /// The invocation is late (the app was down or busy at the scheduled time).
    pub is_past_due: bool,
    /// Schedule monitor times, as sent (ISO 8601 text); absent without `useMonitor`.
    pub last: Option<String>,
    pub next: Option<String>,
    pub last_updated: Option<String>,
}

impl TimerInfo {
    pub fn from_value(value: &Value) -> Result<Self, BindingError> {
        let Value::Object(map) = value else {
            return Err(not_an_object("timer", value));
        };
        let is_past_due = match get_ci(map, "IsPastDue") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => match scalar_text(other).as_deref() {
                Some("true") | Some("True") => true,
                Some("false") | Some("False") => false,
                _ => {
                    return Err(BindingError::Field {
                        at: "timer",
                        field: "IsPastDue",
                        found: kind(other),
                    });
                }
            },
        };
        let status = match get_ci(map, "ScheduleStatus") {
            Some(Value::Object(s)) => Some(s),
            _ => None,
        };
        let time = |key: &str| status.and_then(|s| get_ci(s, key)).and_then(scalar_text);
        Ok(Self {
            is_past_due,
            last: time("Last"),
            next: time("Next"),
            last_updated: time("LastUpdated"),
        })
    }
}

/// The answer to one invocation. Serialised with the exact .NET property names the host reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InvocationResponse {
    /// Output binding values by binding name.
    #[serde(rename = "Outputs")]
    pub outputs: Map<String, Value>,
    /// Lines the host logs at Information level for the invocation (Application Insights).
    #[serde(rename = "Logs")]
    pub logs: Vec<String>,
    /// Value of a `$return` output; none of our functions declare one, so it stays null (the
    /// host only logs a warning). Note the host tries to base64-decode string return values.
    #[serde(rename = "ReturnValue")]
    pub return_value: Value,
}

impl InvocationResponse {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a log line.
    pub fn with_log(mut self, line: impl Into<String>) -> Self {
        self.logs.push(line.into());
        self
    }

    /// Sets an `http` output binding (e.g. `res` of the Status function).
    pub fn with_http(mut self, binding: &str, response: &HttpResponse) -> Self {
        self.outputs
            .insert(binding.to_owned(), response.to_output());
        self
    }

    /// The JSON body to send back with status 200.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "Outputs": self.outputs,
            "Logs": self.logs,
            "ReturnValue": self.return_value,
        })
        .to_string()
    }
}

/// An HTTP response for an `http` output binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl HttpResponse {
    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: BTreeMap::from([(
                "Content-Type".to_owned(),
                "text/plain; charset=utf-8".to_owned(),
            )]),
            body: body.into(),
        }
    }

    /// An `application/json` response.
    pub fn json(status: u16, body: &Value) -> Self {
        Self {
            status,
            headers: BTreeMap::from([(
                "Content-Type".to_owned(),
                "application/json; charset=utf-8".to_owned(),
            )]),
            body: body.to_string(),
        }
    }

    /// The output value the host expects: `{statusCode, status, body, headers}`.
    ///
    /// `statusCode` is a string because the host's `HttpOutputBindingResponse.StatusCode` is one
    /// (Microsoft's Go sample sends `"201"`); `status` repeats it and `body`/`headers` are never
    /// null because one host version marked all four `Required.Always`. `body` must be present
    /// or the host ignores status and headers (`HttpBinding.ParseResponseObject`).
    pub fn to_output(&self) -> Value {
        serde_json::json!({
            "statusCode": self.status.to_string(),
            "status": self.status.to_string(),
            "body": self.body,
            "headers": self.headers,
        })
    }
}

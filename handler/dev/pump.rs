//! `crdb-delta pump`: a stand-in for Event Grid + the Functions host on a developer machine
//! (Core Tools cannot run here, and Azurite has no Event Grid). It lists a container, and posts
//! every blob it has not posted yet to the handler as the host forwards a `BlobCreated`
//! invocation: an Event Grid event (schema: host-protocol.md §4) serialised the way the host
//! passes an `eventGridTrigger` string — JSON text inside a JSON string (§1) — plus
//! `Metadata.sys`. A blob whose post fails stays unposted and is tried again next pass, as
//! Event Grid retries.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::{Value, json};

use crate::serve::ServeError;
use crate::serve::http::{new_id, post_invocation};
use crate::storage::Location;

/// How to deliver.
#[derive(Debug, Clone)]
pub struct PumpOptions {
    /// `azure://container[/prefix]`: what is listed (the whole container is what a storage
    /// subscription sees, our own writes included).
    pub source: String,
    /// `http://127.0.0.1:<port>` of the running handler.
    pub handler: String,
    /// Where fan-out messages go, in turn (empty: `handler`).
    pub apply_handlers: Vec<String>,
    /// `BlobCreated` (Event Grid route) or `BlobQueue` (the queue route).
    pub function: String,
    pub once: bool,
    pub interval: Duration,
    /// Post every event twice (at-least-once delivery).
    pub duplicate: bool,
    /// Post each pass in reverse name order (out of order delivery).
    pub reverse: bool,
    /// Parallel posts.
    pub concurrency: usize,
    /// The account named in the events' topic and url.
    pub account: String,
    /// The blob endpoint named in the events' url.
    pub endpoint: String,
    pub timeout: Duration,
}

#[derive(Debug, Default, Serialize)]
pub struct PassReport {
    pub listed: usize,
    pub posted: usize,
    pub failed: usize,
    pub errors: Vec<String>,
    /// RESOLVED blob → milliseconds its invocation took (the apply runs inside it): the
    /// RESOLVED → commit latency.
    pub resolved_ms: Vec<(String, u64)>,
}

/// The Event Grid `BlobCreated` event for a blob, as a storage account sends it.
pub fn blob_created_event(
    account: &str,
    endpoint: &str,
    container: &str,
    name: &str,
    size: u64,
    etag: Option<&str>,
) -> Value {
    json!({
        "topic": format!("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/local/providers/Microsoft.Storage/storageAccounts/{account}"),
        "subject": format!("/blobServices/default/containers/{container}/blobs/{name}"),
        "eventType": "Microsoft.Storage.BlobCreated",
        "id": new_id(),
        "data": {
            "api": "PutBlockList",
            "clientRequestId": new_id(),
            "requestId": new_id(),
            "eTag": etag.unwrap_or("0x0"),
            "contentType": "application/octet-stream",
            "contentLength": size,
            "blobType": "BlockBlob",
            "url": format!("{}/{container}/{name}", endpoint.trim_end_matches('/')),
            "sequencer": format!("{:032x}", Utc::now().timestamp_nanos_opt().unwrap_or_default()),
            "storageDiagnostics": { "batchId": new_id() }
        },
        "dataVersion": "",
        "metadataVersion": "1",
        "eventTime": Utc::now().to_rfc3339(),
    })
}

/// The invocation body the host posts for one event.
///
/// Event Grid route: `Data.event` is the event's indented JSON text (the extension's
/// JToken → string conversion) passed through `JsonConvert.SerializeObject`, i.e. a JSON string
/// holding a JSON string (host-protocol.md §1). Queue route: `Data.message` is the message text
/// (the queue extension has already removed Event Grid's base64), quoted the same way; the
/// metadata carries `DequeueCount` etc.
pub fn invocation_body(function: &str, event: &Value) -> Value {
    let sys = json!({
        "MethodName": function,
        "UtcNow": Utc::now().to_rfc3339(),
        "RandGuid": new_id(),
    });
    let pretty = serde_json::to_string_pretty(event).unwrap_or_default();
    if function.eq_ignore_ascii_case("BlobQueue") {
        let text = serde_json::to_string(event).unwrap_or_default();
        json!({
            "Data": { "message": Value::String(serde_json::to_string(&text).unwrap_or_default()) },
            "Metadata": {
                "DequeueCount": "1",
                "Id": new_id(),
                "InsertionTime": Utc::now().to_rfc3339(),
                "PopReceipt": new_id(),
                "sys": sys,
            }
        })
    } else {
        json!({
            "Data": { "event": Value::String(serde_json::to_string(&pretty).unwrap_or_default()) },
            "Metadata": { "data": event["data"].clone(), "sys": sys }
        })
    }
}

/// The host's part in fan-out: each message of the reply's `tables` output goes to
/// `ApplyTable`, all at once, spread over `addrs` (as instances taking them from the queue
/// would). A failed one fails
/// the event's post, whose retry dispatches the RESOLVED again.
async fn deliver_tables(addrs: &[String], reply: &str, timeout: Duration) -> Result<(), String> {
    let reply: Value = serde_json::from_str(reply).unwrap_or_default();
    let Some(messages) = reply["Outputs"][crate::serve::fan_out::OUTPUT_BINDING].as_array() else {
        return Ok(());
    };
    let posts = messages.iter().enumerate().map(|(i, m)| async move {
        let addr = &addrs[i % addrs.len()];
        let body = apply_table_body(m);
        match post_invocation(addr, "ApplyTable", &new_id(), &body, timeout).await {
            Ok(r) if (200..300).contains(&r.status) => Ok(()),
            Ok(r) => Err(format!("ApplyTable {m}: HTTP {}: {}", r.status, r.body)),
            Err(e) => Err(format!("ApplyTable {m}: {e}")),
        }
    });
    futures::future::join_all(posts)
        .await
        .into_iter()
        .collect::<Result<Vec<()>, String>>()
        .map(|_| ())
}

/// One `tables` message as the host forwards it to `ApplyTable` (its text in `Data.message`).
pub fn apply_table_body(message: &Value) -> Vec<u8> {
    let body = json!({
        "Data": { "message": message.to_string() },
        "Metadata": {
            "DequeueCount": "1",
            "Id": new_id(),
            "InsertionTime": Utc::now().to_rfc3339(),
            "sys": { "MethodName": "ApplyTable", "UtcNow": Utc::now().to_rfc3339(), "RandGuid": new_id() },
        }
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Runs passes until killed (or one with `once`). Returns the last pass's report.
pub async fn pump(opts: &PumpOptions) -> Result<PassReport, ServeError> {
    let loc = Location::open(&opts.source)?;
    if loc.url.scheme() != "az" {
        return Err(ServeError::Other(format!(
            "{}: pump needs an Azure location (events name a container)",
            opts.source
        )));
    }
    let container = loc.url.host_str().unwrap_or_default().to_owned();
    let addr_of = |url: &str| {
        url::Url::parse(url)
            .ok()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
            .ok_or_else(|| ServeError::Other(format!("{url}: not an http URL")))
    };
    let addr = addr_of(&opts.handler)?;
    let apply_addrs = match opts.apply_handlers.is_empty() {
        true => vec![addr.clone()],
        false => opts
            .apply_handlers
            .iter()
            .map(|h| addr_of(h))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let apply_addrs = &apply_addrs;
    let mut posted: BTreeSet<String> = BTreeSet::new();
    loop {
        let mut report = PassReport::default();
        let metas: Vec<_> = loc.root.list(Some(&loc.prefix)).try_collect().await?;
        report.listed = metas.len();
        let mut todo: Vec<_> = metas
            .into_iter()
            .filter(|m| !posted.contains(m.location.as_ref()))
            .collect();
        todo.sort_by(|a, b| a.location.cmp(&b.location));
        if opts.reverse {
            todo.reverse();
        }
        let posts = todo.iter().map(|m| {
            let event = blob_created_event(
                &opts.account,
                &opts.endpoint,
                &container,
                m.location.as_ref(),
                m.size,
                m.e_tag.as_deref(),
            );
            let body =
                serde_json::to_vec(&invocation_body(&opts.function, &event)).unwrap_or_default();
            let addr = addr.clone();
            async move {
                let times = if opts.duplicate { 2 } else { 1 };
                let started = std::time::Instant::now();
                let mut last = Ok(());
                for _ in 0..times {
                    last = match post_invocation(
                        &addr,
                        &opts.function,
                        &new_id(),
                        &body,
                        opts.timeout,
                    )
                    .await
                    {
                        Ok(r) if (200..300).contains(&r.status) => {
                            deliver_tables(apply_addrs, &r.body, opts.timeout)
                                .await
                                .map_err(|e| format!("{}: {e}", m.location))
                        }
                        Ok(r) => Err(format!("{}: HTTP {}: {}", m.location, r.status, r.body)),
                        Err(e) => Err(format!("{}: {e}", m.location)),
                    };
                }
                (
                    m.location.to_string(),
                    last,
                    started.elapsed().as_millis() as u64,
                )
            }
        });
        let results: Vec<_> = futures::stream::iter(posts)
            .buffered(opts.concurrency.max(1))
            .collect()
            .await;
        for (name, r, ms) in results {
            if name.ends_with(".RESOLVED") {
                report.resolved_ms.push((name.clone(), ms));
            }
            match r {
                Ok(()) => {
                    report.posted += 1;
                    posted.insert(name);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "post failed; retried next pass");
                    report.failed += 1;
                    report.errors.push(e);
                }
            }
        }
        tracing::info!(
            listed = report.listed,
            posted = report.posted,
            failed = report.failed,
            "pump pass"
        );
        if opts.once {
            return Ok(report);
        }
        tokio::time::sleep(opts.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::events::parse_events;
    use crate::functions::host::InvocationRequest;

    #[test]
    fn bodies_decode_as_the_host_sends_them() {
        let ev = blob_created_event(
            "devstoreaccount1",
            "http://127.0.0.1:1/devstoreaccount1",
            "feed",
            "cf/2024-05-03/x.RESOLVED",
            10,
            None,
        );
        for f in ["BlobCreated", "BlobQueue"] {
            let body = serde_json::to_vec(&invocation_body(f, &ev)).unwrap();
            let req = InvocationRequest::from_slice(&body).unwrap();
            let binding = if f == "BlobCreated" {
                "event"
            } else {
                "message"
            };
            assert!(req.binding(binding).unwrap().is_string());
            let evs = parse_events(req.binding(binding).unwrap()).unwrap();
            let e = evs[0].as_ref().unwrap();
            assert_eq!(e.blob.as_ref().unwrap().path, "cf/2024-05-03/x.RESOLVED");
            assert_eq!(e.account.as_deref(), Some("devstoreaccount1"));
            assert_eq!(e.content_length, Some(10));
        }
    }
}

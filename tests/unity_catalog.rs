//! `unity_catalog::apply` against a local server that checks each request against the shape
//! Databricks documents (method, path, Bearer token, JSON content type, body fields) and answers
//! as Databricks does: created, already exists (409 / `*ALREADY_EXISTS`), statement states.

use std::sync::{Arc, Mutex};

use crdb_delta::unity_catalog::{Outcome, UcError, UcOptions, apply, parse_tables};
use serde_json::{Value, json};
use warp::Filter;
use warp::http::StatusCode;

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    auth: String,
    content_type: String,
    body: Value,
}

const TOKEN: &str = "dapi-test-token";
const CONNECTOR: &str =
    "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Databricks/accessConnectors/uc";

/// Checks one request against the documented shape; `Err` makes the server answer 400 with the
/// reason, which `apply` turns into an error naming it.
fn check(seen: &Seen) -> Result<(), String> {
    if seen.method != "POST" {
        return Err(format!("method {}", seen.method));
    }
    if seen.auth != format!("Bearer {TOKEN}") {
        return Err("missing or wrong Bearer token".into());
    }
    if !seen.content_type.starts_with("application/json") {
        return Err(format!("content-type {}", seen.content_type));
    }
    let b = &seen.body;
    let str_field = |k: &str| b[k].as_str().filter(|s| !s.is_empty()).is_some();
    match seen.path.as_str() {
        // StorageCredentialInfo: name + exactly one credential; azure_managed_identity.access_connector_id.
        "/api/2.1/unity-catalog/storage-credentials" => {
            let ok = str_field("name")
                && b["azure_managed_identity"]["access_connector_id"] == CONNECTOR
                && b.get("azure_service_principal").is_none()
                && b.get("aws_iam_role").is_none();
            ok.then_some(())
                .ok_or_else(|| format!("bad credential body {b}"))
        }
        // CreateExternalLocation: name, url, credential_name required.
        "/api/2.1/unity-catalog/external-locations" => {
            let ok = str_field("name")
                && b["url"].as_str().is_some_and(|u| u.starts_with("abfss://"))
                && str_field("credential_name");
            ok.then_some(())
                .ok_or_else(|| format!("bad location body {b}"))
        }
        // ExecuteStatementRequest: statement + warehouse_id required; wait_timeout 0s or 5s–50s.
        "/api/2.0/sql/statements" => {
            let wait = b["wait_timeout"].as_str().unwrap_or("10s");
            let secs: u32 = wait.trim_end_matches('s').parse().unwrap_or(999);
            let ok = str_field("statement")
                && str_field("warehouse_id")
                && (secs == 0 || (5..=50).contains(&secs))
                && ["CONTINUE", "CANCEL"]
                    .contains(&b["on_wait_timeout"].as_str().unwrap_or("CONTINUE"));
            ok.then_some(())
                .ok_or_else(|| format!("bad statement body {b}"))
        }
        other => Err(format!("unexpected path {other}")),
    }
}

/// A fake workspace. `respond` picks the answer for each (checked) request.
async fn server(
    respond: impl Fn(&Seen) -> (u16, Value) + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let respond = Arc::new(respond);
    let log2 = log.clone();
    let route = warp::method()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .map(
            move |method: warp::http::Method,
                  path: warp::path::FullPath,
                  headers: warp::http::HeaderMap,
                  body: bytes::Bytes| {
                let h = |k: &str| {
                    headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let seen = Seen {
                    method: method.to_string(),
                    path: path.as_str().to_owned(),
                    auth: h("authorization"),
                    content_type: h("content-type"),
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                };
                log2.lock().unwrap().push(seen.clone());
                let (status, body) = match check(&seen) {
                    Ok(()) => respond(&seen),
                    Err(why) => (
                        400,
                        json!({"error_code": "INVALID_PARAMETER_VALUE", "message": why}),
                    ),
                };
                warp::reply::with_status(
                    warp::reply::json(&body),
                    StatusCode::from_u16(status).unwrap(),
                )
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (format!("http://{addr}"), log)
}

fn opts(base: &str, tables: &str) -> UcOptions {
    UcOptions {
        workspace_url: base.into(),
        catalog: "main".into(),
        schema: "crdb".into(),
        target: "abfss://delta@acct.dfs.core.windows.net/tables".into(),
        access_connector_id: CONNECTOR.into(),
        tables: parse_tables(tables),
        warehouse_id: Some("abc123".into()),
        credential_name: "crdb_delta".into(),
        location_name: "crdb_delta_target".into(),
    }
}

fn succeeded() -> (u16, Value) {
    (
        200,
        json!({"statement_id": "01", "status": {"state": "SUCCEEDED"}}),
    )
}

#[tokio::test]
async fn creates_credential_location_and_tables_in_order() {
    let (base, log) = server(|s| match s.path.as_str() {
        "/api/2.0/sql/statements" => succeeded(),
        _ => (200, json!({"name": s.body["name"]})),
    })
    .await;
    let out = apply(&opts(&base, "orders,_crdb_delta_resolved"), TOKEN)
        .await
        .unwrap();
    let seen = log.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/2.1/unity-catalog/storage-credentials",
            "/api/2.1/unity-catalog/external-locations",
            "/api/2.0/sql/statements",
            "/api/2.0/sql/statements"
        ]
    );
    assert_eq!(seen[0].body["name"], "crdb_delta");
    assert_eq!(seen[1].body["credential_name"], "crdb_delta");
    assert_eq!(
        seen[1].body["url"],
        "abfss://delta@acct.dfs.core.windows.net/tables"
    );
    assert_eq!(
        seen[2].body["statement"],
        "CREATE TABLE IF NOT EXISTS `main`.`crdb`.`orders` USING DELTA LOCATION 'abfss://delta@acct.dfs.core.windows.net/tables/orders'"
    );
    assert_eq!(seen[3].body["warehouse_id"], "abc123");
    assert!(out.iter().all(|o| o.result == "created"), "{out:?}");
}

#[tokio::test]
async fn already_existing_objects_are_kept() {
    let (base, _log) = server(|s| match s.path.as_str() {
        "/api/2.1/unity-catalog/storage-credentials" => (
            409,
            json!({"error_code": "RESOURCE_ALREADY_EXISTS", "message": "exists"}),
        ),
        "/api/2.1/unity-catalog/external-locations" => (
            400,
            json!({"error_code": "EXTERNAL_LOCATION_ALREADY_EXISTS", "message": "exists"}),
        ),
        _ => succeeded(),
    })
    .await;
    let out = apply(&opts(&base, "orders"), TOKEN).await.unwrap();
    assert_eq!(
        out,
        [
            Outcome {
                object: "storage credential crdb_delta".into(),
                result: "exists".into()
            },
            Outcome {
                object: "external location crdb_delta_target".into(),
                result: "exists".into()
            },
            Outcome {
                object: "table main.crdb.orders".into(),
                result: "created".into()
            },
        ]
    );
}

#[tokio::test]
async fn failures_are_reported_and_the_token_never_appears() {
    // A failed statement stops the run with its message.
    let (base, _) = server(|s| match s.path.as_str() {
        "/api/2.0/sql/statements" => (
            200,
            json!({"statement_id": "02", "status": {"state": "FAILED", "error": {"message": "DELTA_MISSING_TRANSACTION_LOG"}}}),
        ),
        _ => (200, json!({})),
    })
    .await;
    let err = apply(&opts(&base, "orders"), TOKEN).await.unwrap_err();
    assert!(matches!(err, UcError::Statement { .. }), "{err}");
    assert!(err.to_string().contains("DELTA_MISSING_TRANSACTION_LOG"));
    assert!(!err.to_string().contains(TOKEN));

    // The server's shape check works: a wrong token is refused (400) and surfaces as an error.
    let (base, log) = server(|_| succeeded()).await;
    let err = apply(&opts(&base, ""), "other-token").await.unwrap_err();
    assert!(err.to_string().contains("Bearer"), "{err}");
    assert!(!err.to_string().contains("other-token"));
    assert_eq!(log.lock().unwrap().len(), 1, "stops at the first failure");

    // No tables: credential and location only; no warehouse needed.
    let (base, log) = server(|_| (200, json!({}))).await;
    let mut o = opts(&base, "");
    o.warehouse_id = None;
    assert_eq!(apply(&o, TOKEN).await.unwrap().len(), 2);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[test]
fn plan_quotes_names_and_refuses_bad_input() {
    let mut o = opts(
        "https://adb-1.2.azuredatabricks.net",
        "orders, sales=sales/orders2/, we`ird=it's",
    );
    o.target = "abfss://delta@acct.dfs.core.windows.net/tables/".into();
    let plan = o.plan().unwrap();
    assert_eq!(plan.len(), 5);
    assert_eq!(
        plan[1].body["url"],
        "abfss://delta@acct.dfs.core.windows.net/tables"
    );
    assert_eq!(
        plan[3].body["statement"],
        "CREATE TABLE IF NOT EXISTS `main`.`crdb`.`sales` USING DELTA LOCATION 'abfss://delta@acct.dfs.core.windows.net/tables/sales/orders2'"
    );
    assert_eq!(
        plan[4].body["statement"],
        "CREATE TABLE IF NOT EXISTS `main`.`crdb`.`we``ird` USING DELTA LOCATION 'abfss://delta@acct.dfs.core.windows.net/tables/it\\'s'"
    );
    let refused = |f: &dyn Fn(&mut UcOptions)| {
        let mut o = opts("http://x", "orders");
        f(&mut o);
        o.plan().is_err()
    };
    assert!(refused(&|o| o.target = "azure://delta/tables".into()));
    assert!(refused(
        &|o| o.target = "abfss://delta@acct.dfs.core.windows.net/t?sig=x".into()
    ));
    assert!(refused(&|o| o.warehouse_id = None));
    assert!(refused(&|o| o.access_connector_id = "uc".into()));
    assert!(!refused(&|_| {}));
}

/// The token goes only over TLS (loopback excepted, for this file's local server), and a
/// refused target never echoes its SAS token.
#[tokio::test]
async fn token_is_never_sent_in_clear_and_secrets_are_redacted() {
    for url in [
        "http://adb-1.2.azuredatabricks.net",
        "http://10.0.0.1:8080",
        "ftp://x",
    ] {
        let err = apply(&opts(url, "orders"), TOKEN).await.unwrap_err();
        assert!(matches!(err, UcError::Invalid(_)), "{url}: {err}");
        assert!(err.to_string().contains("https://"), "{url}: {err}");
    }
    let mut o = opts("https://adb-1.2.azuredatabricks.net", "orders");
    o.target = "azure://delta/tables?sig=SECRETSIG".into();
    let err = o.plan().unwrap_err().to_string();
    assert!(
        !err.contains("SECRETSIG") && err.contains("<redacted>"),
        "{err}"
    );
}

/// A fake volumes API: `GET /api/2.1/unity-catalog/volumes/{full_name}` with the Bearer token
/// answers as Databricks documents it (VolumeInfo with `storage_location`), 404
/// `RESOURCE_DOES_NOT_EXIST` otherwise.
async fn volumes_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let route = warp::get()
        .and(warp::path::full())
        .and(warp::header::optional::<String>("authorization"))
        .map(move |path: warp::path::FullPath, auth: Option<String>| {
            seen2.lock().unwrap().push(path.as_str().to_owned());
            let (status, body) = if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
                (401, json!({"error_code": "UNAUTHENTICATED", "message": "bad token"}))
            } else {
                match path.as_str() {
                    "/api/2.1/unity-catalog/volumes/main.raw.feeds" => (
                        200,
                        json!({"catalog_name": "main", "schema_name": "raw", "name": "feeds",
                               "full_name": "main.raw.feeds", "volume_type": "EXTERNAL",
                               "storage_location": "abfss://changefeed@acct.dfs.core.windows.net/volumes/feeds/"}),
                    ),
                    "/api/2.1/unity-catalog/volumes/main.raw.s3vol" => (
                        200,
                        json!({"full_name": "main.raw.s3vol", "storage_location": "s3://bucket/x"}),
                    ),
                    _ => (
                        404,
                        json!({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Volume 'main.raw.nope' does not exist."}),
                    ),
                }
            };
            warp::reply::with_status(warp::reply::json(&body), StatusCode::from_u16(status).unwrap())
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn volume_sources_resolve_to_their_storage_location() {
    use crdb_delta::unity_catalog::{VolumePath, resolve_volume, volume_location};
    let (base, seen) = volumes_server().await;
    let v = VolumePath::parse("/Volumes/main/raw/feeds/crdb/shop/")
        .unwrap()
        .unwrap();
    assert_eq!(v.path, "crdb/shop");
    let (open, shown) = resolve_volume(&base, TOKEN, &v).await.unwrap();
    assert_eq!(
        open,
        "abfss://changefeed@acct.dfs.core.windows.net/volumes/feeds/crdb/shop"
    );
    assert_eq!(
        shown,
        "azure://changefeed/volumes/feeds/crdb/shop (account acct)"
    );
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["/api/2.1/unity-catalog/volumes/main.raw.feeds"]
    );
    // The volume root itself.
    let root = VolumePath::parse("/Volumes/main/raw/feeds")
        .unwrap()
        .unwrap();
    assert_eq!(
        resolve_volume(&base, TOKEN, &root).await.unwrap().0,
        "abfss://changefeed@acct.dfs.core.windows.net/volumes/feeds"
    );

    // Unknown volume, wrong token, non-Azure storage: errors naming the volume, never the token.
    let nope = VolumePath::parse("/Volumes/main/raw/nope/x")
        .unwrap()
        .unwrap();
    let e = resolve_volume(&base, TOKEN, &nope)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("404") && e.contains("main.raw.nope"), "{e}");
    let e = resolve_volume(&base, "other-token", &v)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("401") && !e.contains("other-token"), "{e}");
    let s3 = VolumePath::parse("/Volumes/main/raw/s3vol")
        .unwrap()
        .unwrap();
    let e = resolve_volume(&base, TOKEN, &s3)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("only Azure"), "{e}");
    // The token only over TLS (loopback excepted).
    let e = resolve_volume("http://adb-1.2.azuredatabricks.net", TOKEN, &v)
        .await
        .unwrap_err();
    assert!(matches!(e, UcError::Invalid(_)), "{e}");

    // Parsing.
    assert!(VolumePath::parse("azure://c/x").is_none());
    assert!(VolumePath::parse("/tmp/x").is_none());
    assert!(VolumePath::parse("/Volumes/main/raw").unwrap().is_err());
    assert!(volume_location("abfss://c@acct.dfs.core.windows.net/d?sig=S3CRET", "").is_err());
}

/// `sync --source /Volumes/…` resolves through DATABRICKS_HOST/DATABRICKS_TOKEN before it reads;
/// without them it says what to set, and the token never shows.
// Multi-threaded: the binary runs (blocking this thread) while the fake API answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_inspect_take_volume_sources() {
    let (base, seen) = volumes_server().await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("t");
    let run = |envs: &[(&str, &str)], args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_crdb-delta"));
        cmd.args(args)
            .env("CRDB_DELTA_LOG", "warn")
            .env_remove("DATABRICKS_HOST")
            .env_remove("DATABRICKS_TOKEN");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let t = target.to_str().unwrap();
    let o = run(
        &[],
        &[
            "sync",
            "--source",
            "/Volumes/main/raw/feeds/x",
            "--target",
            t,
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success());
    assert!(err.contains("DATABRICKS_HOST"), "{err}");
    let o = run(
        &[("DATABRICKS_HOST", &base), ("DATABRICKS_TOKEN", TOKEN)],
        &["inspect", "--source", "/Volumes/main/raw/nope/x"],
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success());
    assert!(
        err.contains("main.raw.nope") && !err.contains(TOKEN),
        "{err}"
    );
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["/api/2.1/unity-catalog/volumes/main.raw.nope"]
    );
}

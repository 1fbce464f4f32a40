//! The custom-handler payloads and Event Grid events, from published samples (see
//! `fixtures_host/README.md`) and from the tricks a hostile or broken payload could play.

use crdb_delta::functions::events::{
    self, BlobEvent, BlobRef, Disposition, EventError, PayloadError, Schema, Scope, ScopeError,
    SkipReason, is_own_write, parse_event, parse_events, parse_events_text, unsafe_path_reason,
};
use crdb_delta::functions::host::{
    self, HostError, HttpRequestData, HttpResponse, InvocationRequest, InvocationResponse,
    MAX_DECODE_DEPTH, decode_json_layers,
};
use crdb_delta_core::format::names::ObjectName;
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures_host");

fn text(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).expect("fixture")
}

fn json_fixture(name: &str) -> Value {
    serde_json::from_str(&text(name)).expect("fixture is JSON")
}

fn request(name: &str) -> InvocationRequest {
    InvocationRequest::from_slice(text(name).as_bytes()).expect("request parses")
}

fn only_event(payload: &Value) -> BlobEvent {
    let mut events = parse_events(payload).expect("payload parses");
    assert_eq!(events.len(), 1, "{events:?}");
    events.remove(0).expect("event parses")
}

fn feed_scope() -> Scope {
    Scope::new(Some("crdbfeeds"), "changefeed", "/crdb/").unwrap()
}

const FEED_FILE: &str =
    "2024-05-03/202405031553360274740000000000000-08779498965a12e2-1-2-00000000-mytable-2.ndjson";

// ---------------------------------------------------------------- host request payloads

#[test]
fn event_grid_trigger_value_as_object_string_or_base64_gives_the_same_event() {
    let object = request("host_request_eventgrid_object.json");
    let string = request("host_request_eventgrid_string.json");
    assert!(object.binding("event").unwrap().is_object());
    assert!(
        string.binding("event").unwrap().is_string(),
        "fixture must be string-wrapped"
    );

    let expected = only_event(&object.decoded("event").unwrap());
    assert_eq!(only_event(&string.decoded("event").unwrap()), expected);
    for queue in [
        "host_request_queue_plain.json",
        "host_request_queue_base64.json",
    ] {
        let req = request(queue);
        assert_eq!(
            only_event(&req.decoded("message").unwrap()),
            expected,
            "{queue}"
        );
    }

    assert_eq!(expected.schema, Schema::EventGrid);
    assert_eq!(expected.disposition(), Disposition::Candidate);
    let relative = feed_scope().relative(&expected).unwrap();
    assert_eq!(relative, FEED_FILE);
    let (name, _) = ObjectName::parse_relative(&relative).expect("a changefeed file name");
    assert!(matches!(name, ObjectName::Data(_)));
}

#[test]
fn documented_queue_request_metadata_and_a_non_json_item() {
    let req = request("host_request_queue_doc.json");
    assert_eq!(req.dequeue_count(), Some(1));
    assert_eq!(
        req.metadata_text("Id").as_deref(),
        Some("800ae4b3-bdd2-4c08-badd-f08e5a34b865")
    );
    assert_eq!(req.metadata["sys"]["MethodName"], "QueueTrigger");
    // The documented item `{ message: "Message sent" }` is not JSON: refused, naming the binding.
    let err = req.decoded("myQueueItem").unwrap_err();
    assert!(
        matches!(&err, HostError::BadBinding { name, reason } if name == "myQueueItem" && reason.to_string().contains("neither JSON nor base64")),
        "{err}"
    );
    let missing = req.binding("event").unwrap_err();
    assert_eq!(
        missing.to_string(),
        "binding `event` is missing from Data (present: myQueueItem)"
    );
}

#[test]
fn quoted_metadata_scalars_are_unwrapped() {
    let req = request("host_request_queue_base64.json");
    assert_eq!(req.dequeue_count(), Some(2));
    assert_eq!(
        req.metadata_text("id").as_deref(),
        Some("6f0b2a8e-1c2d-4e3f-9a0b-7c6d5e4f3a21")
    );
}

#[test]
fn request_envelope_variants() {
    let bom = b"\xEF\xBB\xBF{\"Data\":{\"x\":{}},\"Metadata\":null}";
    let req = InvocationRequest::from_slice(bom).unwrap();
    assert!(req.metadata.is_empty());
    assert!(req.binding("X").is_ok(), "case-insensitive fallback");

    let lower = InvocationRequest::from_slice(br#"{"data":{"e":[]},"metadata":{}}"#).unwrap();
    assert!(lower.decoded("e").unwrap().is_array());

    for bad in [&b"not json"[..], b"[1,2]", b"{\"Data\": 3}", b""] {
        assert!(
            matches!(
                InvocationRequest::from_slice(bad),
                Err(HostError::BadRequest(_))
            ),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn string_decoding_is_bounded_and_says_what_it_found() {
    let mut value = json!({"id": "x"});
    for _ in 0..MAX_DECODE_DEPTH {
        value = Value::String(value.to_string());
    }
    assert_eq!(decode_json_layers(&value).unwrap(), json!({"id": "x"}));
    let too_deep = Value::String(value.to_string());
    let err = decode_json_layers(&too_deep).unwrap_err();
    assert_eq!(
        err,
        crdb_delta::functions::host::BindingError::TooDeep,
        "{err}"
    );

    assert!(
        decode_json_layers(&json!(null))
            .unwrap_err()
            .to_string()
            .contains("null")
    );
    assert!(
        decode_json_layers(&json!(42))
            .unwrap_err()
            .to_string()
            .contains("a number")
    );
    assert!(
        decode_json_layers(&json!("  "))
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
    assert!(
        decode_json_layers(&json!("\"just text\""))
            .unwrap_err()
            .to_string()
            .contains("neither")
    );
    // Valid base64 that is not JSON is not accepted either.
    assert!(decode_json_layers(&json!("aGVsbG8=")).is_err());
}

#[test]
fn http_trigger_request_from_the_docs_and_newer_hosts() {
    let req = request("host_request_http_doc.json")
        .http_request("req")
        .unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.url, "http://localhost:7071/api/order");
    assert!(
        req.query.is_empty(),
        "Query \"{{}}\" is an empty JSON object in a string"
    );
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("CONTENT-TYPE"), Some("application/json"));
    let body: Value = serde_json::from_str(req.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["id"], 1005);

    let newer = HttpRequestData::from_value(&json!({
        "Url": "https://app.azurewebsites.net/api/status?verbose=1",
        "Method": "get",
        "Query": {"verbose": "1"},
        "Headers": {"X-Request-Id": "abc", "Accept": ["text/plain", "application/json"]},
        "Params": {"id": 7},
        "Identities": []
    }))
    .unwrap();
    assert_eq!(newer.method, "GET");
    assert_eq!(newer.query_param("verbose"), Some("1"));
    assert_eq!(newer.header("x-request-id"), Some("abc"));
    assert_eq!(newer.headers["accept"].len(), 2);
    assert_eq!(newer.params["id"], "7");
    assert_eq!(newer.body, None);

    assert!(
        HttpRequestData::from_value(&json!({"Url": "x"})).is_err(),
        "no method"
    );
    assert!(HttpRequestData::from_value(&json!({"Method": "GET", "Query": 5})).is_err());
}

#[test]
fn timer_payload() {
    let timer = request("host_request_timer.json").timer("timer").unwrap();
    assert!(!timer.is_past_due);
    assert_eq!(timer.next.as_deref(), Some("2016-10-04T10:20:00+00:00"));
    assert_eq!(timer.last.as_deref(), Some("2016-10-04T10:15:00+00:00"));
    let late =
        host::TimerInfo::from_value(&json!({"isPastDue": true, "ScheduleStatus": null})).unwrap();
    assert!(late.is_past_due);
    assert_eq!(late.next, None);
    assert!(host::TimerInfo::from_value(&json!({"IsPastDue": 3})).is_err());
}

#[test]
fn responses_use_the_names_the_host_reads() {
    let response = InvocationResponse::new()
        .with_log("2 files")
        .with_http("res", &HttpResponse::json(503, &json!({"ok": false})));
    let sent: Value = serde_json::from_str(&response.to_json()).unwrap();
    let keys: Vec<&str> = sent
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["Logs", "Outputs", "ReturnValue"]);
    assert_eq!(sent["Logs"], json!(["2 files"]));
    assert_eq!(sent["ReturnValue"], Value::Null);
    let res = &sent["Outputs"]["res"];
    assert_eq!(
        res["statusCode"], "503",
        "a string, like HttpOutputBindingResponse.StatusCode"
    );
    assert_eq!(res["status"], "503");
    assert_eq!(
        res["headers"]["Content-Type"],
        "application/json; charset=utf-8"
    );
    let body: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"ok": false}));

    let empty: Value = serde_json::from_str(&InvocationResponse::new().to_json()).unwrap();
    assert_eq!(
        empty,
        json!({"Outputs": {}, "Logs": [], "ReturnValue": null})
    );
    let text = HttpResponse::text(200, "fine").to_output();
    assert_eq!(text["body"], "fine");
    assert_eq!(text["headers"]["Content-Type"], "text/plain; charset=utf-8");
}

// ---------------------------------------------------------------- event schemas

#[test]
fn documented_blob_created_in_both_schemas() {
    let eg = only_event(&json_fixture("eventgrid_blob_created.json"));
    let ce = only_event(&json_fixture("cloudevents_blob_created.json"));
    assert_eq!(eg.schema, Schema::EventGrid);
    assert_eq!(ce.schema, Schema::CloudEvents);
    for e in [&eg, &ce] {
        assert_eq!(e.id, "831e1650-001e-001b-66ab-eeb76e069631");
        assert_eq!(e.event_type, events::BLOB_CREATED);
        assert_eq!(e.api.as_deref(), Some("PutBlockList"));
        assert_eq!(e.account.as_deref(), Some("my-storage-account"));
        // The subject wins over the url (the published sample disagrees on the container).
        assert_eq!(
            e.blob,
            Some(BlobRef {
                container: "test-container".into(),
                path: "new-file.txt".into()
            })
        );
        assert_eq!(e.content_length, Some(524288));
        assert_eq!(e.etag.as_deref(), Some("\"0x8D4BCC2E4835CD0\""));
        assert_eq!(
            e.sequencer.as_deref(),
            Some("00000000000004420000000000028963")
        );
        assert_eq!(e.disposition(), Disposition::Candidate);
    }
    let ce_as_eg = BlobEvent {
        schema: Schema::EventGrid,
        ..ce.clone()
    };
    assert_eq!(ce_as_eg, eg);
}

#[test]
fn documented_single_object_put_blob() {
    let e = only_event(&json_fixture("eventgrid_put_blob_single.json"));
    assert_eq!(e.api.as_deref(), Some("PutBlob"));
    assert_eq!(e.account.as_deref(), Some("myegteststgfoo"));
    assert_eq!(e.blob.as_ref().unwrap().key(), "deadletter/myBlobFile.txt");
    assert_eq!(e.etag.as_deref(), Some("0x8D83FACDC0C3402"));
    assert_eq!(e.content_length, Some(0));
    assert_eq!(e.disposition(), Disposition::Candidate);
}

#[test]
fn skips_are_typed() {
    let validation = only_event(&json_fixture("eventgrid_subscription_validation.json"));
    assert_eq!(validation.blob, None);
    assert_eq!(
        validation.disposition(),
        Disposition::Skip(SkipReason::SubscriptionValidation {
            validation_code: Some("512d38b6-c7b8-40c8-89fe-f46f9e9622b6".into())
        })
    );
    let deleted = only_event(&json_fixture("eventgrid_blob_deleted.json"));
    assert_eq!(
        deleted.disposition(),
        Disposition::Skip(SkipReason::NotBlobCreated {
            event_type: "Microsoft.Storage.BlobDeleted".into()
        })
    );
    let create_file = only_event(&json_fixture("eventgrid_adls_create_file.json"));
    assert_eq!(create_file.account.as_deref(), Some("my-storage-account"));
    assert_eq!(
        create_file.disposition(),
        Disposition::Skip(SkipReason::IncompleteWrite {
            api: "CreateFile".into()
        })
    );

    let with_api = |api: Option<&str>| {
        let mut v = json_fixture("changefeed_event.json");
        match api {
            Some(api) => v["data"]["api"] = json!(api),
            None => {
                v["data"].as_object_mut().unwrap().remove("api");
            }
        }
        parse_event(&v).unwrap().disposition()
    };
    assert_eq!(with_api(Some("FlushWithClose")), Disposition::Candidate);
    assert_eq!(with_api(Some("SftpCommit")), Disposition::Candidate);
    assert_eq!(
        with_api(Some("SftpCreate")),
        Disposition::Skip(SkipReason::IncompleteWrite {
            api: "SftpCreate".into()
        })
    );
    assert_eq!(
        with_api(Some("CopyBlob")),
        Disposition::Skip(SkipReason::CopyNotConfirmed)
    );
    assert_eq!(
        with_api(Some("PutBlobFromUrl")),
        Disposition::Skip(SkipReason::UnknownApi {
            api: Some("PutBlobFromUrl".into())
        })
    );
    assert_eq!(
        with_api(None),
        Disposition::Skip(SkipReason::UnknownApi { api: None })
    );
    assert_eq!(
        SkipReason::CopyNotConfirmed.to_string(),
        "CopyBlob may still be in progress (HNS accounts)"
    );
}

#[test]
fn cloud_event_validation_with_double_encoded_data() {
    // The Event Grid extension notes that the CloudEvent validation event double-encodes data.
    let event = json!({
        "specversion": "1.0",
        "type": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "source": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/acct",
        "id": "v1",
        "data": "{\"validationCode\":\"code-1\"}"
    });
    let e = parse_event(&event).unwrap();
    assert_eq!(e.schema, Schema::CloudEvents);
    assert_eq!(e.validation_code.as_deref(), Some("code-1"));
    assert!(matches!(
        e.disposition(),
        Disposition::Skip(SkipReason::SubscriptionValidation { .. })
    ));
}

// ---------------------------------------------------------------- the batch through the scope

#[test]
fn changefeed_batch_through_scope_and_own_write_filter() {
    let scope = feed_scope();
    let targets = ["changefeed/delta"];
    let events = parse_events(&json_fixture("eventgrid_changefeed_batch.json")).unwrap();
    let mut outcome = Vec::new();
    for event in events {
        let event = event.unwrap();
        let verdict = if event.is_own_write(&targets) {
            "own write".to_owned()
        } else if let Disposition::Skip(reason) = event.disposition() {
            format!("skip: {reason}")
        } else {
            match scope.relative(&event) {
                Ok(rel) => {
                    ObjectName::parse_relative(&rel).expect("accepted names are changefeed names");
                    format!("read {rel}")
                }
                Err(e) => {
                    let text = e.to_string();
                    assert!(text.contains(&format!("{:?}", event.id)), "{text}");
                    assert!(text.contains(&format!("{:?}", event.subject)), "{text}");
                    match e {
                        EventError::OtherAccount { .. } => "other account".to_owned(),
                        EventError::OtherContainer { .. } => "other container".to_owned(),
                        EventError::OutsidePrefix { .. } => "outside prefix".to_owned(),
                        EventError::UnsafePath { .. } => "unsafe".to_owned(),
                        other => panic!("{other}"),
                    }
                }
            }
        };
        outcome.push((event.id, verdict));
    }
    let outcome: Vec<(&str, &str)> = outcome
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        outcome,
        [
            ("data-file", format!("read {FEED_FILE}").as_str()),
            (
                "resolved",
                "read 2024-05-03/202405031553371089960000000000000.RESOLVED"
            ),
            (
                "family-topic",
                "read 2019-12-18/201912182130162087013000000000000-e74c329c6545f502-1-2-00000000-office_dogs+primary-1.ndjson"
            ),
            ("delta-log", "own write"),
            ("target-data", "own write"),
            ("outside-prefix", "outside prefix"),
            ("other-account", "other account"),
            ("other-container", "other container"),
            ("traversal", "unsafe"),
            (
                "deleted",
                "skip: event type \"Microsoft.Storage.BlobDeleted\" is not BlobCreated"
            ),
            (
                "adls-create",
                "skip: api \"CreateFile\" announces an empty or partial file"
            ),
            (
                "adls-flush",
                "read 2024-05-03/202405031553360274740000000000000.RESOLVED"
            ),
        ]
    );
}

fn event_at(subject: &str, url: Option<&str>) -> BlobEvent {
    let mut v = json_fixture("changefeed_event.json");
    v["subject"] = json!(subject);
    match url {
        Some(u) => v["data"]["url"] = json!(u),
        None => {
            v["data"].as_object_mut().unwrap().remove("url");
        }
    }
    parse_event(&v).unwrap()
}

const SUBJECT: &str = "/blobServices/default/containers/changefeed/blobs/";

#[test]
fn traversal_and_odd_names_are_refused() {
    let scope = feed_scope();
    for (path, why) in [
        ("crdb/../secret", "\"..\" segment"),
        ("crdb/./x", "\".\" segment"),
        ("crdb//x", "empty path segment"),
        ("crdb/x/", "empty path segment"),
        ("crdb\\..\\x", "backslash"),
        ("crdb/a\u{1}b", "control character"),
        ("crdb/a\u{85}b", "control character"),
        ("crdb/%2e%2e/x", "once percent-decoded: \"..\" segment"),
        ("crdb/a%2F%2Fb", "once percent-decoded: empty path segment"),
        ("crdb/a%00b", "once percent-decoded: control character"),
    ] {
        let event = event_at(&format!("{SUBJECT}{path}"), None);
        match scope.relative(&event) {
            Err(EventError::UnsafePath {
                reason, path: p, ..
            }) => {
                assert_eq!(p, path);
                assert!(reason.starts_with(why), "{path}: {reason}");
            }
            other => panic!("{path}: {other:?}"),
        }
    }
    let long = format!("crdb/{}", "a".repeat(1020));
    let err = scope
        .relative(&event_at(&format!("{SUBJECT}{long}"), None))
        .unwrap_err();
    assert!(err.to_string().contains("1025 characters"), "{err}");
    let deep = format!("crdb/{}", vec!["d"; 254].join("/"));
    let err = scope
        .relative(&event_at(&format!("{SUBJECT}{deep}"), None))
        .unwrap_err();
    assert!(err.to_string().contains("255 path segments"), "{err}");
    // A literal % that is not an escape is an ordinary (if unusual) name.
    assert_eq!(unsafe_path_reason("crdb/100%real"), None);
    // Debug formatting keeps control characters out of logs.
    let err = scope
        .relative(&event_at(&format!("{SUBJECT}crdb/a\nb"), None))
        .unwrap_err()
        .to_string();
    assert!(!err.contains('\n') && err.contains("a\\nb"), "{err}");
}

#[test]
fn prefixes_match_whole_segments() {
    let scope = feed_scope();
    for path in ["crdb2/x.RESOLVED", "crdb", "crd/x", "x/crdb/y"] {
        let err = scope
            .relative(&event_at(&format!("{SUBJECT}{path}"), None))
            .unwrap_err();
        assert!(
            matches!(err, EventError::OutsidePrefix { .. }),
            "{path}: {err}"
        );
    }
    let whole = Scope::new(None, "changefeed", "").unwrap();
    assert_eq!(
        whole
            .relative(&event_at(&format!("{SUBJECT}a/b"), None))
            .unwrap(),
        "a/b"
    );
    let nested = Scope::new(None, "changefeed", "a/b/").unwrap();
    assert_eq!(nested.prefix(), "a/b");
    assert_eq!(
        nested
            .relative(&event_at(&format!("{SUBJECT}a/b/c"), None))
            .unwrap(),
        "c"
    );
}

#[test]
fn url_fallback_decodes_paths_once() {
    // A CloudEvent may have no subject; then the url names the blob, percent-decoded once,
    // `%2B` and a literal `+` both being `+` (path, not query).
    let event = json!({
        "specversion": "1.0",
        "type": "Microsoft.Storage.BlobCreated",
        "source": "/subscriptions/s/resourceGroups/r/providers/Microsoft.Storage/storageAccounts/crdbfeeds",
        "id": "no-subject",
        "data": {
            "api": "PutBlockList",
            "url": "https://crdbfeeds.blob.core.windows.net/changefeed/crdb/2019-12-18/201912182130162087013000000000000-e74c329c6545f502-1-2-00000000-office_dogs%2Bprimary-1.ndjson"
        }
    });
    let e = parse_event(&event).unwrap();
    let rel = feed_scope().relative(&e).unwrap();
    assert!(rel.ends_with("office_dogs+primary-1.ndjson"), "{rel}");
    ObjectName::parse_relative(&rel).unwrap();

    let plus = event_at(
        "",
        Some("https://crdbfeeds.blob.core.windows.net/changefeed/crdb/a+b%20c"),
    );
    assert_eq!(plus.blob.unwrap().path, "crdb/a+b c");

    // Double encoding decodes once: the name is the literal `%2e%2e`, which is then refused.
    let double = event_at(
        "",
        Some("https://crdbfeeds.blob.core.windows.net/changefeed/crdb/%252e%252e/x"),
    );
    assert_eq!(double.blob.as_ref().unwrap().path, "crdb/%2e%2e/x");
    assert!(matches!(
        feed_scope().relative(&double),
        Err(EventError::UnsafePath { .. })
    ));

    // A subject mangled to U+FFFD (non-BMP names) defers to the url.
    let mangled = event_at(
        &format!("{SUBJECT}crdb/tasklog_14\u{fffd}\u{fffd}.log"),
        Some("https://crdbfeeds.blob.core.windows.net/changefeed/crdb/tasklog_14%F0%9F%92%8E.log"),
    );
    assert_eq!(mangled.blob.unwrap().path, "crdb/tasklog_14💎.log");

    // Azurite's path-style urls carry the account in the path.
    let azurite = json!({
        "id": "local", "eventType": "Microsoft.Storage.BlobCreated", "subject": "",
        "data": {"api": "PutBlob", "url": "http://127.0.0.1:10000/devstoreaccount1/changefeed/crdb/x.RESOLVED"}
    });
    let e = parse_event(&azurite).unwrap();
    assert_eq!(e.account.as_deref(), Some("devstoreaccount1"));
    assert_eq!(e.blob.unwrap().key(), "changefeed/crdb/x.RESOLVED");
}

#[test]
fn accounts_are_checked() {
    let scope = feed_scope();
    let mut v = json_fixture("changefeed_event.json");
    v.as_object_mut().unwrap().remove("topic");
    v["data"].as_object_mut().unwrap().remove("url");
    let anonymous = parse_event(&v).unwrap();
    assert_eq!(anonymous.account, None);
    assert!(matches!(
        scope.relative(&anonymous),
        Err(EventError::UnknownAccount { .. })
    ));
    let any_account = Scope::new(None, "changefeed", "crdb").unwrap();
    assert_eq!(any_account.relative(&anonymous).unwrap(), FEED_FILE);

    // Topic and url naming different accounts is not a valid storage event.
    let mut v = json_fixture("changefeed_event.json");
    v["data"]["url"] = json!(format!(
        "https://elsewhere.blob.core.windows.net/changefeed/crdb/{FEED_FILE}"
    ));
    let err = parse_event(&v).unwrap_err();
    assert!(err.to_string().contains("\"elsewhere\""), "{err}");

    // Upper case in the resource id is normalised.
    let mut v = json_fixture("changefeed_event.json");
    v["topic"] = json!(
        "/subscriptions/s/resourceGroups/r/providers/Microsoft.Storage/StorageAccounts/CRDBFEEDS"
    );
    assert!(scope.relative(&parse_event(&v).unwrap()).is_ok());
}

#[test]
fn own_writes() {
    assert!(is_own_write(
        "tables/orders/_delta_log/00000000000000000007.json",
        &[]
    ));
    assert!(is_own_write("_delta_log/x.json", &[]));
    assert!(!is_own_write("tables/orders/_delta_logs/x.json", &[]));
    assert!(is_own_write("delta/orders/part-0.parquet", &["delta"]));
    assert!(is_own_write(
        "delta/orders/part-0.parquet",
        &["/delta/orders/"]
    ));
    assert!(!is_own_write("delta2/orders/part-0.parquet", &["delta"]));
    assert!(!is_own_write("delta", &["delta"]));
    assert!(
        !is_own_write("feed/x.ndjson", &["", "/"]),
        "blank prefixes match nothing"
    );
}

#[test]
fn scope_construction_is_validated() {
    assert!(matches!(
        Scope::new(Some("Bad_Account"), "changefeed", ""),
        Err(ScopeError::Account(_))
    ));
    assert!(matches!(
        Scope::new(None, "Feed", ""),
        Err(ScopeError::Container(_))
    ));
    assert!(matches!(
        Scope::new(None, "feed", "a/../b"),
        Err(ScopeError::Prefix { .. })
    ));
    assert!(
        Scope::new(Some("devstoreaccount1"), "feed", "/")
            .unwrap()
            .prefix()
            .is_empty()
    );
}

// ---------------------------------------------------------------- malformed input

#[test]
fn malformed_payloads_and_events() {
    assert!(matches!(
        parse_events_text("{not json"),
        Err(PayloadError::NotJson(_))
    ));
    assert!(matches!(
        parse_events(&json!(7)),
        Err(PayloadError::NotJson(_))
    ));
    assert_eq!(parse_events(&json!([])).unwrap(), Vec::new());

    let too_many = Value::Array(vec![json!({}); events::MAX_EVENTS + 1]);
    assert_eq!(
        parse_events(&too_many).unwrap_err(),
        PayloadError::TooMany {
            count: 5001,
            max: 5000
        }
    );

    // One bad event in a batch does not hide the good one.
    let good = json_fixture("changefeed_event.json");
    let batch = json!([good, {"eventType": "Microsoft.Storage.BlobCreated"}, 3, good.to_string()]);
    let results = parse_events(&batch).unwrap();
    assert!(results[0].is_ok());
    assert!(matches!(&results[1], Err(EventError::Malformed { reason, .. }) if reason == "no id"));
    assert!(results[2].is_err());
    assert_eq!(results[3].as_ref().unwrap(), results[0].as_ref().unwrap());

    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut v = json_fixture("changefeed_event.json");
        edit(&mut v);
        let err = parse_event(&v).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("a0c3e1f2-001e-0042-7d11-9d5c3b06f1e0"),
            "the error names the event: {text}"
        );
        text
    };
    assert!(broken(&|v| v["data"]["contentLength"] = json!(-1)).contains("not a byte count"));
    assert!(broken(&|v| v["data"]["contentLength"] = json!("12x")).contains("not a byte count"));
    assert!(broken(&|v| v["data"]["api"] = json!(5)).contains("data.api"));
    assert!(broken(&|v| v["data"]["url"] = json!("ftp://x/y/z")).contains("data.url"));
    assert!(
        broken(&|v| v["data"]["url"] = json!("https://crdbfeeds.blob.core.windows.net/c/a%zz"))
            .contains("percent")
    );
    assert!(
        broken(&|v| {
            v["subject"] = json!("/something/else");
            v["data"].as_object_mut().unwrap().remove("url");
        })
        .contains("subject")
    );
    assert!(
        broken(&|v| {
            v.as_object_mut().unwrap().remove("eventType");
        })
        .contains("neither")
    );
    assert!(broken(&|v| v["data"] = json!([1])).contains("data"));

    // A string-encoded numeric contentLength is accepted.
    let mut v = json_fixture("changefeed_event.json");
    v["data"]["contentLength"] = json!("1288");
    assert_eq!(parse_event(&v).unwrap().content_length, Some(1288));
}

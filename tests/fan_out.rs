//! Fan-out (`CRDB_DELTA_FAN_OUT`) on Azurite with several `serve` processes. A RESOLVED
//! invocation answers the host with one queue message per table (`Outputs.tables`); the test
//! plays the queue the host would fill: at least once, so every message is delivered twice at
//! once to different instances, batches arrive out of order, and two messages' instances die
//! (holding the table's lease) — one mid-apply, one after the table's commit — and those
//! messages are delivered again. The tables must
//! equal what a plain `crdb-delta sync` makes, and every `_crdb_delta_resolved` record must name,
//! for each table, a version at which that table is exactly at the recorded RESOLVED.

use std::collections::BTreeMap;

use arrow_array::{Array, Int64Array, StringArray};
use crdb_delta::delta::{self, Target};
use crdb_delta::dev::pump::apply_table_body;
use crdb_delta::storage::Location;
use futures::TryStreamExt;
use serde_json::{Value, json};

mod support;

use support::handler::{Handler, feed, fingerprint, post, post_blob, post_timer, run};

const FAN_OUT: &[(&str, &str)] = &[
    ("CRDB_DELTA_FAN_OUT", "true"),
    ("CRDB_DELTA_APPLY_QUEUE", "crdb-delta-tables"),
];
const TABLES: [&str; 3] = ["kitchen_sink", "orders", "usertable"];

/// Delivers one queue message to `ApplyTable` as the host does (the text in `Data.message`).
async fn deliver(addr: &str, msg: &Value) -> Result<(u16, Value), String> {
    post(addr, "ApplyTable", &apply_table_body(msg)).await
}

/// [`deliver`] as the queue does: a 500 (e.g. the table's lease held longer than a lease term
/// while this one waited, on a loaded machine) makes the message visible again.
async fn deliver_queued(addr: &str, msg: &Value) -> Result<(u16, Value), String> {
    for _ in 1..5 {
        match deliver(addr, msg).await? {
            (500, reply) => eprintln!("delivered again after a 500: {reply}"),
            done => return Ok(done),
        }
    }
    deliver(addr, msg).await
}

/// Every record row: RESOLVED → table → version.
async fn records(root: &Location) -> BTreeMap<String, BTreeMap<String, i64>> {
    let t = Target::new(root, "_crdb_delta_resolved").unwrap();
    let tb = t.open().await.unwrap().expect("the record table exists");
    let mut out: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for f in delta::files(&tb, "resolved").await.unwrap() {
        for b in delta::read_live_file(&tb, &f, 8192).await.unwrap() {
            let col = |n: &str| b.column_by_name(n).unwrap().clone();
            let r = col("resolved");
            let r = r.as_any().downcast_ref::<StringArray>().unwrap();
            let t = col("table_name");
            let t = t.as_any().downcast_ref::<StringArray>().unwrap();
            let v = col("delta_version");
            let v = v.as_any().downcast_ref::<Int64Array>().unwrap();
            for i in 0..b.num_rows() {
                let prev = out
                    .entry(r.value(i).to_owned())
                    .or_default()
                    .insert(t.value(i).to_owned(), v.value(i));
                assert_eq!(prev, None, "recorded twice: {} {}", r.value(i), t.value(i));
            }
        }
    }
    out
}

/// The records so far (none before the record table exists).
async fn root_records(f: &support::handler::Feed) -> BTreeMap<String, BTreeMap<String, i64>> {
    let root = Location::open(&format!("azure://{}/delta", f.container)).unwrap();
    match Target::new(&root, "_crdb_delta_resolved")
        .unwrap()
        .open()
        .await
        .unwrap()
    {
        Some(_) => records(&root).await,
        None => BTreeMap::new(),
    }
}

/// Objects left below `_crdb_delta/<dir>` of the target.
async fn left(root: &Location, dir: &str) -> Vec<String> {
    let p = root.child(&format!("_crdb_delta/{dir}")).unwrap();
    let metas: Vec<_> = root.store.list(Some(&p)).try_collect().await.unwrap();
    metas.into_iter().map(|m| m.location.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanned_out_tables_apply_exactly_once_on_any_instance_and_record_consistently() {
    let Some(f) = feed("fan").await else {
        return;
    };
    let dir = f.dir.path();
    let (a, _) = Handler::start_with(&f.base, dir, &f.container, None, FAN_OUT);
    let (b, _) = Handler::start_with(&f.base, dir, &f.container, None, FAN_OUT);
    let (dying, _) = Handler::start_with(&f.base, dir, &f.container, Some("after-write"), FAN_OUT);
    let addrs = [a.addr(), b.addr()];

    // 1. Every event, alternating instances; each RESOLVED's answer is its batch of messages,
    // the same when the event is delivered again to the other instance.
    let mut batches: Vec<Vec<Value>> = Vec::new();
    for (i, (name, size, is_resolved)) in f.blobs.iter().enumerate() {
        let (status, reply) = post_blob(&addrs[i % 2], &f.container, name, *size)
            .await
            .unwrap();
        assert_eq!(status, 200, "{name}: {reply}");
        if !is_resolved {
            assert!(reply["Outputs"].get("tables").is_none(), "{reply}");
            continue;
        }
        let (status, again) = post_blob(&addrs[(i + 1) % 2], &f.container, name, *size)
            .await
            .unwrap();
        assert_eq!(status, 200, "{again}");
        assert_eq!(
            again["Outputs"], reply["Outputs"],
            "{name}: same plan twice"
        );
        let msgs = reply["Outputs"]["tables"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for m in &msgs {
            assert_eq!(m["upkeep"], json!(false), "{m}");
            assert!(m["resolved"].is_string(), "{m}");
        }
        batches.push(msgs);
    }
    assert!(batches.len() >= 4, "{batches:?}");
    assert!(
        batches.iter().any(|b| b.len() == TABLES.len()),
        "{batches:?}"
    );

    // 2. One message's instance dies after uploading the table's files, holding its lease.
    let victim = batches.iter().find(|b| !b.is_empty()).unwrap()[0].clone();
    let killed = deliver(&dying.addr(), &victim).await;
    assert!(
        killed.is_err(),
        "the fault should have killed it: {killed:?}"
    );
    drop(dying);
    eprintln!("killed while applying {victim}");

    // 3. The batches, the second and third swapped (out of order); in each, every message
    // twice at once on both instances. The victim's batch waits out the dead lease (3 s).
    // In the last batch, one instance dies after a table's commit, before anything notes it;
    // the other tables are applied; then another instance takes the first one's message over,
    // notes the last table and dies before writing the record.
    batches.swap(1, 2);
    for (i, batch) in batches.iter().enumerate() {
        if i + 1 == batches.len() {
            assert_eq!(batch.len(), TABLES.len());
            let (dying, _) =
                Handler::start_with(&f.base, dir, &f.container, Some("before-record"), FAN_OUT);
            let killed = deliver(&dying.addr(), &batch[0]).await;
            assert!(
                killed.is_err(),
                "the fault should have killed it: {killed:?}"
            );
            drop(dying);
            for m in &batch[1..] {
                let (status, reply) = deliver_queued(&addrs[0], m).await.unwrap();
                assert_eq!(status, 200, "{reply}");
                assert!(!reply["Logs"].to_string().contains("recorded"), "{reply}");
            }
            let (dying, _) = Handler::start_with(
                &f.base,
                dir,
                &f.container,
                Some("before-fan-out-record"),
                FAN_OUT,
            );
            let killed = deliver(&dying.addr(), &batch[0]).await;
            assert!(
                killed.is_err(),
                "the fault should have killed it: {killed:?}"
            );
            let so_far = root_records(&f).await;
            assert!(!so_far.contains_key(&f.last_resolved()), "{so_far:?}");
            eprintln!(
                "killed after committing {}, then before recording it",
                batch[0]
            );
        }
        let deliveries = batch
            .iter()
            .flat_map(|m| [deliver_queued(&addrs[0], m), deliver_queued(&addrs[1], m)]);
        for r in futures::future::join_all(deliveries).await {
            let (status, reply) = r.unwrap();
            assert_eq!(status, 200, "{reply}");
        }
    }

    // 4. The tables equal plain `sync`'s.
    let local = dir.join("sync");
    let out = run(
        &f.base,
        &[
            "sync",
            "--source",
            &format!("azure://{}/feed", f.container),
            "--target",
            local.to_str().unwrap(),
            "--config",
            dir.join("config.json").to_str().unwrap(),
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = Location::open(&format!("azure://{}/delta", f.container)).unwrap();
    let sync_root = Location::open(local.to_str().unwrap()).unwrap();
    let last = f.last_resolved();
    for t in TABLES {
        let (ha, hrows) = fingerprint(&root, t).await;
        let (sa, srows) = fingerprint(&sync_root, t).await;
        assert_eq!(ha.as_deref(), Some(last.as_str()), "{t}");
        assert_eq!(ha, sa, "{t}: applied RESOLVED");
        assert!(!hrows.is_empty(), "{t}: empty");
        assert_eq!(hrows, srows, "{t}: rows (by __crdb_hlc)");
    }

    // 5. Records: the last RESOLVED with every table, each recorded version exactly at its
    // RESOLVED (time travel), and nothing left of the fan-outs or the buffer.
    let recs = records(&root).await;
    assert_eq!(
        recs.get(&last)
            .map(|r| r.keys().cloned().collect::<Vec<_>>()),
        Some(TABLES.map(String::from).to_vec()),
        "{recs:?}"
    );
    assert!(recs.len() >= 3, "{recs:?}");
    eprintln!("{} RESOLVEDs recorded of {}", recs.len(), batches.len());
    for (resolved, tables) in &recs {
        for (t, v) in tables {
            let mut tb = Target::new(&root, t)
                .unwrap()
                .open()
                .await
                .unwrap()
                .unwrap();
            tb.load_version(*v as u64).await.unwrap();
            let p = delta::progress(&tb, t).await.unwrap();
            assert_eq!(
                p.applied.map(|h| h.to_string()).as_deref(),
                Some(resolved.as_str()),
                "{t} at version {v}"
            );
        }
    }
    assert_eq!(left(&root, "fanout").await, Vec::<String>::new());
    assert_eq!(left(&root, "buffer").await, Vec::<String>::new());

    // 6. The timer fans every table out again, with upkeep; nothing new is recorded.
    let (status, reply) = post_timer(&addrs[0], false).await.unwrap();
    assert_eq!(status, 200, "{reply}");
    let msgs = reply["Outputs"]["tables"].as_array().cloned().unwrap();
    assert_eq!(msgs.len(), TABLES.len(), "{reply}");
    assert!(msgs.iter().all(|m| m["upkeep"] == json!(true)), "{reply}");
    for m in &msgs {
        let (status, reply) = deliver_queued(&addrs[1], m).await.unwrap();
        assert_eq!(status, 200, "{reply}");
    }
    assert_eq!(records(&root).await, recs);
    for t in TABLES {
        let (_, rows) = fingerprint(&root, t).await;
        let (_, want) = fingerprint(&sync_root, t).await;
        assert_eq!(rows, want, "{t} after upkeep");
    }

    // 7. A message naming a table its RESOLVED does not cover, or no RESOLVED, is refused
    // with 200 (a retry cannot change it).
    let plan_gone = json!({"table": "usertable", "resolved": "1.0000000000"});
    let (status, reply) = deliver(&addrs[0], &plan_gone).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        reply["Logs"].to_string().contains("nothing to do"),
        "{reply}"
    );
    let (status, reply) = deliver(&addrs[0], &json!({"table": "x"})).await.unwrap();
    assert_eq!(status, 200);
    assert!(reply["Logs"].to_string().contains("refused"), "{reply}");

    // 8. A RESOLVED far ahead of the clock is refused at dispatch, as a run refuses it: no
    // message goes out.
    let (name, size, _) = f.resolved().last().copied().unwrap().clone();
    let future = name.replace("/2024", "/2099").replace("/2024", "/2099");
    assert_ne!(future, name);
    let (status, reply) = post_blob(&addrs[0], &f.container, &future, size)
        .await
        .unwrap();
    assert_eq!(status, 200, "{reply}");
    assert!(reply["Logs"].to_string().contains("REFUSED"), "{reply}");
    assert!(reply["Outputs"].get("tables").is_none(), "{reply}");
}

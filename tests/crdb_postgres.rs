//! `crdb-delta schema` and `crdb-delta changefeed` against a real server speaking the wire
//! protocol: the PostgreSQL cluster `scripts/test` starts (CockroachDB-only outputs are covered
//! by `crdb_fixtures.rs`). The binary runs as a user runs it; every failure must be a clear
//! error that writes nothing and never shows a password or key.

use std::path::Path;
use std::process::{Command, Output};

mod support;

use support::{pg_password, pg_url_for, postgres};

/// Creates a fresh database for one test and runs `setup` in it; returns its URL.
async fn fresh_db(base: &str, name: &str, setup: &str) -> String {
    let db = format!("{name}_{}", std::process::id());
    let (admin, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(conn);
    for stmt in [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("CREATE DATABASE {db}"),
    ] {
        admin.batch_execute(&stmt).await.unwrap();
    }
    let url = pg_url_for(base, &db, None);
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute(setup).await.unwrap();
    url
}

const SETUP: &str = "
    CREATE TABLE orders (
        id int8 NOT NULL,
        note text,
        amount numeric(12,2),
        placed_at timestamptz,
        ref uuid,
        region text NOT NULL,
        PRIMARY KEY (region, id)
    );
    CREATE TABLE events (seq int4 PRIMARY KEY, payload jsonb, at timestamp, tags text[]);
    CREATE TABLE nokey (a int4, b text);
";

fn bin(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crdb-delta"));
    cmd.args(args)
        .env("CRDB_DELTA_LOG", "warn")
        .env_remove("PGPASSWORD")
        .env_remove("CRDB_DELTA_CRDB_URL")
        .env_remove("AZURE_ACCOUNT_KEY")
        .env_remove("AZURE_STORAGE_ACCOUNT_KEY")
        .env_remove("AZURE_CLIENT_SECRET");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// `crdb-delta sync` of a local feed into a local target.
fn sync(feed: &Path, target: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "sync",
        "--source",
        feed.to_str().unwrap(),
        "--target",
        target.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    bin(&args, &[])
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Field name → Delta type of a table's first metaData action.
fn delta_types(table: &Path) -> serde_json::Map<String, serde_json::Value> {
    let log = std::fs::read_to_string(table.join("_delta_log/00000000000000000000.json")).unwrap();
    let meta = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|a| a.get("metaData").is_some())
        .expect("a metaData action");
    let schema: serde_json::Value =
        serde_json::from_str(meta["metaData"]["schemaString"].as_str().unwrap()).unwrap();
    schema["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap().to_owned(), f["type"].clone()))
        .collect()
}

/// One changefeed window for `orders` (JSON, flat partition) and its RESOLVED.
fn write_feed(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("202405031553360274740000000000000-08779498965a12e2-1-2-00000000-orders-2.ndjson"),
        concat!(
            r#"{"after": {"amount": 12.5, "id": 1, "note": "first", "placed_at": "2024-05-03T15:53:36.027474Z", "ref": "8f6f1f58-5b0e-4b49-9d3a-2a7f2e0f2a10", "region": "eu"}, "key": ["eu", 1], "updated": "1714751616027474000.0000000000"}"#,
            "\n",
            r#"{"after": {"amount": 7, "id": 2, "note": null, "placed_at": "2024-05-03T15:53:36.027474Z", "ref": "0b6f1f58-5b0e-4b49-9d3a-2a7f2e0f2a10", "region": "us"}, "key": ["us", 2], "updated": "1714751616027474000.0000000000"}"#,
            "\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("202405031553371089960000000000000.RESOLVED"),
        r#"{"resolved":"1714751617108996000.0000000000"}"#,
    )
    .unwrap();
}

#[tokio::test]
async fn schema_reads_keys_and_types_and_sync_applies_them() {
    let Some(base) = postgres() else { return };
    let url = fresh_db(&base, "cd_schema", SETUP).await;
    let dir = tempfile::tempdir().unwrap();

    // To a file: key in index order (not column order), exact types.
    let out = dir.path().join("schema.json");
    let o = bin(
        &[
            "schema",
            "--crdb-url",
            &url,
            "--tables",
            "orders,public.events",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("orders: key (region, id)"), "{stdout}");
    assert!(!stdout.contains(&pg_password(&base)), "{stdout}");
    let doc = read_json(&out);
    assert_eq!(
        doc,
        serde_json::json!({"tables": {
            "orders": {
                "primary_key": ["region", "id"],
                "columns": {"amount": "DECIMAL(12,2)", "id": "INT8", "note": "STRING",
                            "placed_at": "TIMESTAMPTZ", "ref": "UUID", "region": "STRING"}
            },
            "events": {
                "primary_key": ["seq"],
                "columns": {"at": "TIMESTAMP", "payload": "JSONB", "seq": "INT4", "tags": "STRING[]"}
            }
        }})
    );

    // Into the target root, with the password from PGPASSWORD instead of the URL; a second run
    // for another table keeps the first.
    let target = dir.path().join("delta");
    let no_pw = {
        let mut u = url::Url::parse(&url).unwrap();
        u.set_password(None).unwrap();
        u.to_string()
    };
    let pw = pg_password(&base);
    for t in ["events", "orders"] {
        let o = bin(
            &[
                "schema",
                "--crdb-url",
                &no_pw,
                "--tables",
                t,
                "--target",
                target.to_str().unwrap(),
            ],
            &[("PGPASSWORD", &pw)],
        );
        assert!(o.status.success(), "{}", text(&o).1);
    }
    let written = read_json(&target.join("_crdb_delta/schema.json"));
    assert_eq!(written, doc);

    // sync finds it below the target without any --config: amount becomes decimal(12,2) and
    // placed_at a timestamp; without it, the same files give inferred types.
    let feed = dir.path().join("feed");
    write_feed(&feed);
    let o = sync(&feed, &target, &["--json"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let types = delta_types(&target.join("orders"));
    assert_eq!(types["amount"], "decimal(12,2)", "{types:?}");
    assert_eq!(types["placed_at"], "timestamp", "{types:?}");
    let bare = dir.path().join("bare");
    let o = sync(&feed, &bare, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    let inferred = delta_types(&bare.join("orders"));
    assert_ne!(inferred["amount"], "decimal(12,2)", "{inferred:?}");

    // The explicit config wins over schema.json, per field.
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        r#"{"tables": {"orders": {"columns": {"amount": "DECIMAL(14,4)"}}}}"#,
    )
    .unwrap();
    let t2 = dir.path().join("delta2");
    std::fs::create_dir_all(t2.join("_crdb_delta")).unwrap();
    std::fs::copy(
        target.join("_crdb_delta/schema.json"),
        t2.join("_crdb_delta/schema.json"),
    )
    .unwrap();
    let o = sync(&feed, &t2, &["--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o).1);
    let types = delta_types(&t2.join("orders"));
    assert_eq!(types["amount"], "decimal(14,4)", "{types:?}");
    assert_eq!(types["placed_at"], "timestamp", "{types:?}");

    // A schema.json that does not load stops sync with its name, before anything is written.
    let t3 = dir.path().join("delta3");
    std::fs::create_dir_all(t3.join("_crdb_delta")).unwrap();
    std::fs::write(
        t3.join("_crdb_delta/schema.json"),
        r#"{"tables": {"orders": {"columns": {"amount": "MONEY(3"}}}}"#,
    )
    .unwrap();
    let o = sync(&feed, &t3, &[]);
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(
        stderr.contains("_crdb_delta/schema.json") && stderr.contains("amount"),
        "{stderr}"
    );
    assert!(!t3.join("orders").exists());
}

/// Field name → Delta type in the table's newest metaData action (the schema after changes).
fn latest_delta_types(table: &Path) -> serde_json::Map<String, serde_json::Value> {
    let mut logs: Vec<_> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    logs.sort();
    let meta = logs
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .rfind(|a| a.get("metaData").is_some())
        .expect("a metaData action");
    let schema: serde_json::Value =
        serde_json::from_str(meta["metaData"]["schemaString"].as_str().unwrap()).unwrap();
    schema["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap().to_owned(), f["type"].clone()))
        .collect()
}

/// A JSON data file of `table` at schema id `schema_id` (hex in the name) and a RESOLVED after
/// it, `second` seconds into the feed.
fn write_window(dir: &Path, table: &str, schema_id: u32, second: u64, rows: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let wall = 1_714_751_616_000_000_000u64 + second * 1_000_000_000;
    let stamp = chrono::DateTime::from_timestamp_nanos(wall as i64)
        .format("%Y%m%d%H%M%S%9f")
        .to_string();
    let mut body = String::new();
    for r in rows {
        body.push_str(&r.replace("{updated}", &format!("{wall}.0000000000")));
        body.push('\n');
    }
    std::fs::write(
        dir.join(format!(
            "{stamp}0000000000-08779498965a12e2-1-2-{second:08x}-{table}-{schema_id:x}.ndjson"
        )),
        body,
    )
    .unwrap();
    let resolved = wall + 500_000_000;
    let rstamp = chrono::DateTime::from_timestamp_nanos(resolved as i64)
        .format("%Y%m%d%H%M%S%9f")
        .to_string();
    std::fs::write(
        dir.join(format!("{rstamp}0000000000.RESOLVED")),
        format!(r#"{{"resolved":"{resolved}.0000000000"}}"#),
    )
    .unwrap();
}

fn log_versions(table: &Path) -> usize {
    std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count()
}

#[tokio::test]
async fn a_schema_change_in_the_file_names_reads_the_table_again() {
    let Some(base) = postgres() else { return };
    let url = fresh_db(
        &base,
        "cd_refresh",
        "CREATE TABLE items (id int8 PRIMARY KEY, note text);",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed");
    let target = dir.path().join("delta");
    let with_url = |u: &str| sync(&feed, &target, &["--json", "--crdb-url", u]);
    // Schema id 1; `ghost` is in the feed but not in the database (dropped since).
    write_window(
        &feed,
        "items",
        1,
        0,
        &[r#"{"after": {"id": 1, "note": "a"}, "key": [1], "updated": "{updated}"}"#],
    );
    write_window(
        &feed,
        "ghost",
        4,
        1,
        &[r#"{"after": {"k": 1}, "key": [1], "updated": "{updated}"}"#],
    );
    let o = with_url(&url);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["schema_read"],
        serde_json::json!({"items": 1, "ghost": 4}),
        "{report}"
    );
    let doc = read_json(&target.join("_crdb_delta/schema.json"));
    assert_eq!(
        doc,
        serde_json::json!({"tables": {
            "items": {"primary_key": ["id"], "columns": {"id": "INT8", "note": "STRING"}, "schema_id": 1},
            "ghost": {"schema_id": 4}
        }})
    );
    assert!(
        stderr.contains("ghost") && stderr.contains("not found"),
        "{stderr}"
    );
    assert_eq!(report["tables"]["ghost"]["events"], 1, "{report}");

    // No new schema id: nothing is read, so an unreachable server does not matter.
    let unreachable = "postgresql://crdb_delta:hunter2secret@127.0.0.1:1/postgres?sslmode=disable";
    let o = with_url(unreachable);
    assert!(o.status.success(), "{}", text(&o).1);
    let report: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(report["schema_read"], serde_json::json!({}), "{report}");

    // ADD COLUMN: CockroachDB bumps the descriptor version, new files carry the new id.
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute("ALTER TABLE items ADD COLUMN amount numeric(12,2)")
        .await
        .unwrap();
    write_window(
        &feed,
        "items",
        3,
        2,
        &[
            r#"{"after": {"amount": 12.50, "id": 2, "note": "b"}, "key": [2], "updated": "{updated}"}"#,
        ],
    );
    // The server cannot be reached: the run stops before applying, and says why without the
    // password; the next run tries again.
    let versions = log_versions(&target.join("items"));
    let o = with_url(unreachable);
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(
        stderr.contains("127.0.0.1:1") && stderr.contains("schema"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2secret"), "{stderr}");
    assert_eq!(log_versions(&target.join("items")), versions);
    let o = with_url(&url);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["schema_read"],
        serde_json::json!({"items": 3}),
        "{report}"
    );
    let types = latest_delta_types(&target.join("items"));
    assert_eq!(types["amount"], "decimal(12,2)", "{types:?}");
    let doc = read_json(&target.join("_crdb_delta/schema.json"));
    assert_eq!(doc["tables"]["items"]["schema_id"], 3, "{doc}");
    assert_eq!(
        doc["tables"]["items"]["columns"]["amount"], "DECIMAL(12,2)",
        "{doc}"
    );

    // Without a connection the same files give the column a type guessed from its values.
    let bare = dir.path().join("bare");
    let o = sync(&feed, &bare, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert_ne!(
        latest_delta_types(&bare.join("items"))["amount"],
        "decimal(12,2)"
    );
}

/// A Parquet changefeed carries no key (CockroachDB writes no key metadata and an initial scan
/// has no deletes): without configuration its first `sync` cannot start; with a connection the
/// keys and types are read before the first apply.
#[tokio::test]
async fn a_parquet_feed_starts_with_no_config_when_a_connection_is_given() {
    let Some(base) = postgres() else { return };
    let url = fresh_db(
        &base,
        "cd_first",
        "CREATE TABLE usertable (ycsb_key int8 PRIMARY KEY, field0 text, field1 text);",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed");
    let truth = dir.path().join("truth");
    let o = bin(
        &[
            "simulate",
            "--out",
            feed.to_str().unwrap(),
            "--truth",
            truth.to_str().unwrap(),
            "--format",
            "parquet",
            "--tables",
            "usertable",
            "--ycsb-fields",
            "2",
            // The initial scan only: no deletes, so nothing in the files shows the key.
            "--windows",
            "1",
            "--events-per-window",
            "0",
            "--schema-change-at",
            "0",
            "--restart-at",
            "0",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let bare = dir.path().join("bare");
    let o = sync(&feed, &bare, &[]);
    assert!(!o.status.success(), "no key known: {}", text(&o).0);
    assert!(text(&o).1.contains("primary_key"), "{}", text(&o).1);
    let target = dir.path().join("delta");
    let o = sync(&feed, &target, &["--crdb-url", &url, "--json"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["schema_read"]["usertable"], 1, "{report}");
    let manifest: crdb_delta_core::sim::Manifest =
        serde_json::from_slice(&std::fs::read(truth.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        report["resolved"].as_str(),
        manifest
            .summary
            .last_resolved
            .map(|h| h.to_string())
            .as_deref(),
        "{report}"
    );
    let doc = read_json(&target.join("_crdb_delta/schema.json"));
    assert_eq!(
        doc["tables"]["usertable"]["primary_key"],
        serde_json::json!(["ycsb_key"])
    );
    let types = latest_delta_types(&target.join("usertable"));
    assert_eq!(types["ycsb_key"], "long", "{types:?}");
}

#[tokio::test]
async fn schema_errors_are_clear_write_nothing_and_hide_the_password() {
    let Some(base) = postgres() else { return };
    let url = fresh_db(&base, "cd_errors", SETUP).await;
    let password = pg_password(&base);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("schema.json");
    let target = dir.path().join("target");
    let run = |url: &str, tables: &str| {
        let o = bin(
            &[
                "schema",
                "--crdb-url",
                url,
                "--tables",
                tables,
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
        );
        assert!(!o.status.success(), "{tables} succeeded");
        let (stdout, stderr) = text(&o);
        assert!(
            !stdout.contains(&password) && !stderr.contains(&password),
            "{stderr}"
        );
        assert!(!out.exists(), "{tables}: a file was written");
        stderr
    };

    // Unreachable: a port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut dead = url::Url::parse(&url).unwrap();
    dead.set_port(Some(port)).unwrap();
    let e = run(dead.as_str(), "orders");
    assert!(e.contains("connecting to") && e.contains("refused"), "{e}");
    assert!(e.contains("<redacted>"), "{e}");

    // Wrong password: the server's message, neither password.
    let wrong = pg_url_for(
        &url,
        url::Url::parse(&url)
            .unwrap()
            .path()
            .trim_start_matches('/'),
        Some("Wr0ngPassw0rd"),
    );
    let e = run(&wrong, "orders");
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("Wr0ngPassw0rd"), "{e}");

    // Unknown table.
    let e = run(&url, "orders,missing");
    assert!(e.contains("`missing` does not exist"), "{e}");

    // No primary key: what CockroachDB would do, and what to do.
    let e = run(&url, "nokey");
    assert!(e.contains("no primary key") && e.contains("rowid"), "{e}");
    assert!(e.contains("tables.nokey.primary_key"), "{e}");

    // Into a target: nothing written either.
    let o = bin(
        &[
            "schema",
            "--crdb-url",
            &url,
            "--tables",
            "nokey",
            "--target",
            target.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(!target.exists(), "the target was created");
}

#[tokio::test]
async fn changefeed_create_on_postgres_fails_clearly_and_records_nothing() {
    let Some(base) = postgres() else { return };
    let url = fresh_db(&base, "cd_feed", SETUP).await;
    let password = pg_password(&base);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    let key = "c2VjcmV0S2V5Rm9yVGVzdHM+/w==";
    let env = [("AZURE_ACCOUNT_NAME", "acct"), ("AZURE_ACCOUNT_KEY", key)];
    let args = |extra: &[&str]| -> Vec<String> {
        [
            "changefeed",
            "create",
            "--crdb-url",
            url.as_str(),
            "--tables",
            "orders,events",
            "--sink",
            "azure://feeds/crdb",
            "--target",
            target.to_str().unwrap(),
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    let clean = |s: &str| {
        !s.contains(&password)
            && !s.contains("c2VjcmV0S2V5")
            && !s.contains("c2VjcmV0S2V5Rm9yVGVzdHM%2B")
    };

    // --dry-run: the exact statement, key redacted.
    let a = args(&["--dry-run"]);
    let o = bin(&a.iter().map(String::as_str).collect::<Vec<_>>(), &env);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let db = url::Url::parse(&url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_owned();
    assert_eq!(
        stdout.trim(),
        format!(
            "CREATE CHANGEFEED FOR TABLE \"{db}\".\"public\".\"orders\", \"{db}\".\"public\".\"events\" \
             INTO 'azure://feeds/crdb?AZURE_ACCOUNT_NAME=acct&AZURE_ACCOUNT_KEY=<redacted>' \
             WITH format = 'json', updated, resolved = '10s', compression = 'gzip', initial_scan = 'yes';"
        )
    );
    assert!(clean(&stdout) && clean(&stderr));
    // --diff (for scd2 at scale): each change's previous row too.
    let a = args(&["--dry-run", "--diff", "--format", "parquet"]);
    let o = bin(&a.iter().map(String::as_str).collect::<Vec<_>>(), &env);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.trim().ends_with(
            "WITH format = 'parquet', updated, resolved = '10s', diff, initial_scan = 'yes';"
        ),
        "{stdout}"
    );

    // For real: PostgreSQL has no CREATE CHANGEFEED. Clear error, no key, nothing recorded.
    let a = args(&[]);
    let o = bin(&a.iter().map(String::as_str).collect::<Vec<_>>(), &env);
    let (stdout, stderr) = text(&o);
    assert!(!o.status.success(), "{stdout}");
    assert!(stderr.contains("CREATE CHANGEFEED"), "{stderr}");
    assert!(stderr.contains("not CockroachDB"), "{stderr}");
    assert!(stderr.contains("<redacted>"), "{stderr}");
    assert!(clean(&stdout) && clean(&stderr), "{stderr}");
    assert!(!target.join("_crdb_delta/changefeed.json").exists());

    // Without sink credentials: refused before connecting.
    let o = bin(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("AZURE_ACCOUNT_NAME", "acct")],
    );
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(stderr.contains("AZURE_ACCOUNT_KEY"), "{stderr}");

    // A table without a key is refused before any changefeed exists.
    let o = bin(
        &[
            "changefeed",
            "create",
            "--crdb-url",
            &url,
            "--tables",
            "nokey",
            "--sink",
            "azure://feeds/crdb",
            "--dry-run",
        ],
        &env,
    );
    assert!(!o.status.success());
    assert!(text(&o).1.contains("no primary key"));

    // show / pause on PostgreSQL: the statement named, the password not.
    for verb in ["show", "pause", "resume", "cancel"] {
        let o = bin(
            &["changefeed", verb, "--crdb-url", &url, "--job", "123"],
            &[],
        );
        let (stdout, stderr) = text(&o);
        assert!(!o.status.success(), "{verb}: {stdout}");
        assert!(stderr.contains("JOB 123"), "{verb}: {stderr}");
        assert!(clean(&stderr), "{stderr}");
    }
    // No job given and none recorded in the target.
    let o = bin(
        &[
            "changefeed",
            "show",
            "--crdb-url",
            &url,
            "--target",
            target.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).1.contains("--job"), "{}", text(&o).1);
}

//! Shared by the integration tests that run against the Azurite `scripts/test` starts.

#![allow(dead_code)]

pub mod handler;

pub const ACCOUNT: &str = "devstoreaccount1";
/// `http://127.0.0.1:<port>` of the Azurite that `scripts/test` started. Without it a test
/// fails, unless `CRDB_DELTA_SKIP_AZURITE=1` asks to skip (CI never sets it): a test that
/// needs a service must not pass by doing nothing.
pub fn azurite() -> Option<String> {
    match std::env::var("AZURITE_BLOB_ENDPOINT") {
        Ok(e) => Some(
            e.trim_end_matches('/')
                .trim_end_matches(ACCOUNT)
                .trim_end_matches('/')
                .to_owned(),
        ),
        Err(_) if std::env::var("CRDB_DELTA_SKIP_AZURITE").is_ok_and(|v| v == "1") => {
            eprintln!("skipped: CRDB_DELTA_SKIP_AZURITE=1");
            None
        }
        Err(_) => panic!(
            "AZURITE_BLOB_ENDPOINT is not set: run scripts/test (it starts Azurite), \
             or set CRDB_DELTA_SKIP_AZURITE=1 to skip the tests that need it"
        ),
    }
}

/// Creates a container (object_store cannot): the connector's own emulator call, on a thread
/// of its own so that async tests may call it too.
pub fn create_container(base: &str, container: &str) {
    let (base, container) = (base.to_owned(), container.to_owned());
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(crdb_delta::storage::emulator::create_container_at(
                &base, &container,
            ))
    })
    .join()
    .unwrap()
    .unwrap_or_else(|e| panic!("create container failed: {e}"));
}

/// `postgresql://…` of the PostgreSQL cluster `scripts/test` started (the wire protocol and the
/// standard catalog of `schema`/`changefeed`). Without it a test fails, unless
/// `CRDB_DELTA_SKIP_POSTGRES=1` asks to skip.
pub fn postgres() -> Option<String> {
    match std::env::var("CRDB_DELTA_PG_URL") {
        Ok(u) => Some(u),
        Err(_) if std::env::var("CRDB_DELTA_SKIP_POSTGRES").is_ok_and(|v| v == "1") => {
            eprintln!("skipped: CRDB_DELTA_SKIP_POSTGRES=1");
            None
        }
        Err(_) => panic!(
            "CRDB_DELTA_PG_URL is not set: run scripts/test (it starts PostgreSQL), \
             or set CRDB_DELTA_SKIP_POSTGRES=1 to skip the tests that need it"
        ),
    }
}

/// The same URL with another database (and, when given, another password).
pub fn pg_url_for(url: &str, database: &str, password: Option<&str>) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_path(&format!("/{database}"));
    if let Some(p) = password {
        u.set_password(Some(p)).unwrap();
    }
    u.to_string()
}

/// The password of the test server's URL (to check it never shows up).
pub fn pg_password(url: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .password()
        .unwrap_or_default()
        .to_owned()
}

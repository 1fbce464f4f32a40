//! Shared by the integration tests that run against the Azurite `scripts/test` starts.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

pub const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published well-known development key (not a secret).
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

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

/// Creates a container with a Shared Key signed request (object_store cannot create containers).
pub fn create_container(base: &str, container: &str) {
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let version = "2021-08-06";
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container"
    );
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &STANDARD.decode(AZURITE_KEY).unwrap(),
    );
    let sig = STANDARD.encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    let host = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).unwrap();
    write!(
        s,
        "PUT /{ACCOUNT}/{container}?restype=container HTTP/1.1\r\nHost: {host}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\nAuthorization: SharedKey {ACCOUNT}:{sig}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 201"),
        "create container failed: {resp}"
    );
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

//! A minimal HTTP/1.1 client for posting invocations to a local handler the way the Functions
//! host does: `POST /<FunctionName>`, `Transfer-Encoding: chunked`, no Content-Length
//! (host-protocol.md §1), the invocation id header. Loopback only; used by `pump` and tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::functions::host::INVOCATION_ID_HEADER;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why an invocation got no reply.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("sending: {0}")]
    Send(std::io::Error),
    #[error("reading the reply: {0}")]
    Read(std::io::Error),
    #[error("no reply within {0} s")]
    Timeout(u64),
    #[error("connection closed before a reply")]
    Closed,
    #[error("bad status line: {0}")]
    StatusLine(String),
}

/// A reply: status code and body text.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// A fresh id in UUID form (time and a counter; unique per process, not random).
pub fn new_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
    let n = N.fetch_add(1, Ordering::Relaxed) ^ (u64::from(std::process::id()) << 32);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        t >> 32,
        (t >> 16) & 0xffff,
        t & 0xfff,
        n & 0xfff,
        n >> 12 & 0xffff_ffff_ffff
    )
}

/// Posts `body` to `http://host:port/<function>` in two chunks and reads the whole reply.
pub async fn post_invocation(
    addr: &str,
    function: &str,
    invocation: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Reply, PostError> {
    let work = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|source| PostError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let head = format!(
            "POST /{function} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json; charset=utf-8\r\nTransfer-Encoding: chunked\r\n{INVOCATION_ID_HEADER}: {invocation}\r\nX-Azure-Functions-HostVersion: crdb-delta-pump\r\nUser-Agent: Azure-Functions-Host/crdb-delta-pump\r\nConnection: close\r\n\r\n"
        );
        let mut out = head.into_bytes();
        let (a, b) = body.split_at(body.len() / 2);
        for part in [a, b] {
            if !part.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                out.extend_from_slice(part);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"0\r\n\r\n");
        s.write_all(&out).await.map_err(PostError::Send)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.map_err(PostError::Read)?;
        parse_reply(&resp)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| PostError::Timeout(timeout.as_secs()))?
}

fn parse_reply(resp: &[u8]) -> Result<Reply, PostError> {
    let text = String::from_utf8_lossy(resp);
    let (head, body) = text.split_once("\r\n\r\n").ok_or(PostError::Closed)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| PostError::StatusLine(head.lines().next().unwrap_or("").to_owned()))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Reply { status, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_plain_and_chunked() {
        let r = parse_reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "{}"));
        let r = parse_reply(
            b"HTTP/1.1 500 Internal\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (500, "abcde"));
        assert!(parse_reply(b"").is_err());
        assert_ne!(new_id(), new_id());
    }
}

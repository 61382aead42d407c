//! Helpers of mock-llm's integration tests: run the real binary and talk to it (ports, processes
//! and the raw HTTP client come from the shared `test-support` crate).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_mock-llm");

pub use test_support::{free_port, Proc, Response as Resp};

/// One request on a fresh connection (`connection: close`). `chunked` sends the body chunked.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    chunked: bool,
) -> Resp {
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if body.is_some() {
        all.push(("content-type", "application/json"));
        if chunked {
            all.push(("transfer-encoding", "chunked"));
        }
    }
    let body = body.unwrap_or("").as_bytes();
    test_support::http(&addr.to_string(), method, path, &all, body).expect("HTTP exchange")
}

pub fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &Value) -> Resp {
    request(addr, "POST", path, headers, Some(&body.to_string()), false)
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], None, false)
}

pub fn wait_healthy(addr: SocketAddr) {
    let what = format!("{addr} to become healthy");
    test_support::wait_until(Duration::from_secs(10), &what, || {
        test_support::http(&addr.to_string(), "GET", "/health", &[], b"")
            .is_ok_and(|r| r.status == 200)
    });
}

/// The JSON payloads of an SSE body, and whether it ended with `[DONE]`.
pub fn sse_payloads(body: &str) -> (Vec<Value>, bool) {
    let events: Vec<&str> = body
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data: prefix"))
        .collect();
    let done = events.last() == Some(&"[DONE]");
    let payloads = events
        .iter()
        .filter(|e| **e != "[DONE]")
        .map(|e| serde_json::from_str(e).expect("chunk JSON"))
        .collect();
    (payloads, done)
}

/// `n` distinct random loopback addresses 127.a.b.c (never 127.0.0.1), so concurrent test
/// runs and other tests don't collide.
pub fn random_loopback_ips(n: usize) -> Vec<std::net::Ipv4Addr> {
    use std::hash::{BuildHasher, Hasher};
    let seed = std::collections::hash_map::RandomState::new();
    let mut out: Vec<std::net::Ipv4Addr> = Vec::new();
    let mut i = 0u64;
    while out.len() < n {
        let mut h = seed.build_hasher();
        h.write_u64(i);
        h.write_u32(std::process::id());
        i += 1;
        let [a, b, c, ..] = h.finish().to_le_bytes();
        let ip = std::net::Ipv4Addr::new(127, a, b, c.clamp(2, 254));
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// Start `mock-llm serve --listen addr <extra>`, wait for `/health`, and return the process
/// with its readiness line.
pub fn start_pod(addr: SocketAddr, extra: &[&str]) -> (Proc, String) {
    use std::io::{BufRead, BufReader};
    let child = std::process::Command::new(BIN)
        .args(["serve", "--listen", &addr.to_string()])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mock-llm");
    let mut proc = Proc(child);
    wait_healthy(addr);
    let mut line = String::new();
    if let Some(out) = proc.0.stdout.as_mut() {
        BufReader::new(out).read_line(&mut line).expect("read line");
    }
    (proc, line.trim_end().to_string())
}

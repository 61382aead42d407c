//! Helpers shared by the integration tests: run the real binary, talk HTTP/1.1 over plain TCP.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_mock-llm");

/// Kills the child process when the test ends, however it ends.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_line = String::from_utf8_lossy(&raw[..eol]);
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .expect("chunk size");
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&raw[start..start + size]);
        raw = &raw[start + size + 2..];
    }
}

/// One request on a fresh connection (`Connection: close`). `chunked` sends the body chunked.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    chunked: bool,
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    match (body, chunked) {
        (Some(b), false) => req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        (Some(b), true) => {
            req.push_str("Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
            let (a, c) = b.split_at(b.len() / 2);
            for part in [a, c] {
                req.push_str(&format!("{:x}\r\n{part}\r\n", part.len()));
            }
            req.push_str("0\r\n\r\n");
        }
        (None, _) => req.push_str("\r\n"),
    }
    s.write_all(req.as_bytes()).expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut resp = Resp {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    };
    if resp.header("transfer-encoding") == Some("chunked") {
        resp.body = dechunk(&resp.body);
    }
    resp
}

pub fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &Value) -> Resp {
    request(addr, "POST", path, headers, Some(&body.to_string()), false)
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], None, false)
}

pub fn wait_healthy(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = Vec::new();
            if s.read_to_end(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{addr} never became healthy");
        std::thread::sleep(Duration::from_millis(20));
    }
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

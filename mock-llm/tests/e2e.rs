//! End-to-end: run the real `mock-llm` binary and talk HTTP/1.1 to it over plain TCP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_mock-llm");

/// Kills the child process when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
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
fn request(
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

fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &Value) -> Resp {
    request(addr, "POST", path, headers, Some(&body.to_string()), false)
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], None, false)
}

fn wait_healthy(addr: SocketAddr) {
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

fn start_serve(port: u16, extra: &[&str]) -> (Proc, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let child = Command::new(BIN)
        .args(["serve", "--listen", &addr.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn mock-llm");
    let mut proc = Proc(child);
    wait_healthy(addr);
    let mut line = String::new();
    if let Some(out) = proc.0.stdout.as_mut() {
        BufReader::new(out).read_line(&mut line).expect("read line");
    }
    assert_eq!(
        line.trim_end(),
        format!("mock-llm listening on {addr} pod=ns/pod-1 model=llama")
    );
    (proc, addr)
}

/// The JSON payloads of an SSE body, and whether it ended with `[DONE]`.
fn sse_payloads(body: &str) -> (Vec<Value>, bool) {
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

#[test]
fn serve_speaks_the_vllm_protocol_and_records_requests() {
    let (_proc, addr) = start_serve(
        free_port(),
        &[
            "--model",
            "llama",
            "--alias",
            "llama-alias",
            "--lora",
            "lora-A,lora-B",
            "--pod",
            "ns/pod-1",
        ],
    );

    // Non-streaming completion for a LoRA adapter.
    let r = post(
        addr,
        "/v1/completions",
        &[("x-request-id", "req-1")],
        &json!({"model": "lora-A", "prompt": "hello world", "max_tokens": 100}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-mock-pod"), Some("ns/pod-1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let b = r.json();
    assert_eq!(b["object"], "text_completion");
    assert!(b["id"].as_str().is_some_and(|id| id.starts_with("cmpl-")));
    assert_eq!(b["model"], "lora-A");
    assert_eq!(
        b["choices"][0]["text"],
        "This is simulated message from lora-A!"
    );
    assert_eq!(
        b["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8})
    );

    // Streaming chat with include_usage, body sent chunked.
    let chat = json!({
        "model": "llama", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "say something"}],
    });
    let r = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("x-mock-chunk-delay-ms", "5")],
        Some(&chat.to_string()),
        true,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("x-mock-pod"), Some("ns/pod-1"));
    let (chunks, done) = sse_payloads(&r.text());
    assert!(done);
    assert_eq!(chunks.len(), 6 + 2);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "llama"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "This is simulated message from llama!");
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[7]["choices"], json!([]));
    assert_eq!(
        chunks[7]["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8})
    );

    // Unknown model.
    let r = post(
        addr,
        "/v1/completions",
        &[],
        &json!({"model": "gpt-4", "prompt": "x"}),
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-mock-pod"), Some("ns/pod-1"));
    assert_eq!(
        r.json(),
        json!({"object": "error", "message": "The model `gpt-4` does not exist.",
               "type": "NotFoundError", "param": null, "code": 404})
    );

    // Steered status.
    let r = post(
        addr,
        "/v1/chat/completions",
        &[("x-mock-status", "503")],
        &json!({"model": "llama-alias"}),
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["type"], "ServiceUnavailableError");

    // Model list.
    let r = get(addr, "/v1/models");
    assert_eq!(r.status, 200);
    let models = r.json();
    let ids: Vec<(&str, &Value)> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| (m["id"].as_str().unwrap_or(""), &m["parent"]))
        .collect();
    assert_eq!(
        ids,
        vec![
            ("llama", &Value::Null),
            ("llama-alias", &Value::Null),
            ("lora-A", &json!("llama")),
            ("lora-B", &json!("llama")),
        ]
    );

    // Metrics.
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .text()
        .contains("vllm:num_requests_running{model_name=\"llama\"} 0\n"));
    assert!(r
        .text()
        .contains("vllm:request_success_total{model_name=\"llama\"} 2\n"));

    // What the pod received.
    let r = get(addr, "/mock/requests");
    assert_eq!(r.status, 200);
    let log = r.json();
    let log = log.as_array().expect("array");
    assert_eq!(log.len(), 4);
    let summary: Vec<(u64, &str, &str, bool, u64)> = log
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap_or(0),
                e["path"].as_str().unwrap_or(""),
                e["model"].as_str().unwrap_or(""),
                e["stream"].as_bool().unwrap_or(false),
                e["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "/v1/completions", "lora-A", false, 200),
            (2, "/v1/chat/completions", "llama", true, 200),
            (3, "/v1/completions", "gpt-4", false, 404),
            (4, "/v1/chat/completions", "llama-alias", false, 503),
        ]
    );
    assert_eq!(log[0]["method"], "POST");
    assert_eq!(log[0]["request_id"], "req-1");
    assert_eq!(log[0]["headers"]["x-request-id"], "req-1");
    assert_eq!(log[0]["body"]["prompt"], "hello world");
    assert_eq!(log[1]["request_id"], Value::Null);
    assert_eq!(log[1]["body"], chat);
    assert_eq!(log[1]["headers"]["transfer-encoding"], "chunked");
    assert_eq!(
        log[1]["body_bytes"].as_u64(),
        Some(chat.to_string().len() as u64)
    );

    let r = request(addr, "DELETE", "/mock/requests", &[], None, false);
    assert_eq!(r.status, 204);
    assert_eq!(get(addr, "/mock/requests").json(), json!([]));

    // Anything else.
    let r = get(addr, "/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["object"], "error");
    assert_eq!(r.header("x-mock-pod"), Some("ns/pod-1"));
}

#[test]
fn pods_starts_one_server_per_pod_and_stops_them_on_sigterm() {
    let port = free_port();
    let yaml = r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: team, labels: {app: x}}
  spec:
    containers:
    - name: vllm
      env:
      - {name: MODEL_NAME, value: base-model}
      - {name: LORA_ADAPTERS, value: "lora-1"}
      ports: [{containerPort: 8000}]
  status: {phase: Running, podIP: 127.0.0.2}
- apiVersion: v1
  kind: Pod
  metadata: {name: b, namespace: team}
  spec:
    containers:
    - name: sglang
      env:
      - {name: MODEL_NAME, value: other-model}
      - {name: INFERENCE_ENGINE, value: sglang}
  status: {phase: Running, podIP: 127.0.0.3}
- apiVersion: v1
  kind: Pod
  metadata: {name: pending, namespace: team}
  spec: {containers: [{name: c}]}
  status: {phase: Pending}
"#;
    let file =
        std::env::temp_dir().join(format!("mock-llm-pods-{}-{port}.yaml", std::process::id()));
    std::fs::write(&file, yaml).expect("write pods file");

    let child = Command::new(BIN)
        .args(["pods", "--file"])
        .arg(&file)
        .args(["--port", &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn mock-llm pods");
    let mut proc = Proc(child);
    let stdout = proc.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("pods never became ready");
        if line.starts_with("mock-llm pods ready") {
            assert_eq!(line, "mock-llm pods ready: 2");
            break;
        }
    }
    let _ = std::fs::remove_file(&file);

    let a: SocketAddr = format!("127.0.0.2:{port}").parse().expect("addr");
    let b: SocketAddr = format!("127.0.0.3:{port}").parse().expect("addr");
    let r = post(a, "/v1/completions", &[], &json!({"model": "lora-1"}));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-mock-pod"), Some("team/a"));
    assert_eq!(r.json()["model"], "lora-1");
    let r = post(
        b,
        "/v1/chat/completions",
        &[],
        &json!({"model": "other-model"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-mock-pod"), Some("team/b"));
    assert!(get(b, "/metrics")
        .text()
        .contains("sglang:num_running_reqs"));

    let status = Command::new("kill")
        .args(["-TERM", &proc.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = proc.0.try_wait().expect("try_wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "pods did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit}");
    // Children are killed and reaped before exit, so nothing listens any more.
    assert!(TcpStream::connect(a).is_err());
    assert!(TcpStream::connect(b).is_err());
}

//! End-to-end: run the real `mock-llm` binary and talk HTTP/1.1 to it over plain TCP.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

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

//! A hostile or unlucky day, in a real Envoy: what clients send that they should not (spoofed
//! routing headers, malformed and oversized bodies, pipelined and HTTP/2 requests, silence
//! mid-request, odd paths and header names) and what slow engines do (a first byte later than
//! the ModelServer's timeout, a stream that outlasts it). Each test names the rule it pins;
//! every defect the hardening issue listed has one here (PD ones in tests/pd.rs, memory in
//! tests/memory.rs, half-written inputs in controller/tests/cli.rs).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// The seed's resources with every ModelServer's `trafficPolicy.timeout` at 1 s.
fn seed_with_one_second_timeout() -> Stack {
    let resources = read_seed_resources().replace("timeout: 10s", "timeout: 1s");
    Stack::start(&resources, seed_pods(), Options::default())
}

fn chat(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"tell me a story"}}]}}"#
    )
}

/// The OpenAI error object of a JSON error reply, after checking its shape.
fn openai_error(r: &Response) -> serde_json::Value {
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{} {:?}: {}",
        r.status,
        r.headers,
        r.text()
    );
    let e = r.json()["error"].clone();
    assert!(e["message"].is_string() && e["code"].is_string(), "{e}");
    assert!(e["type"].is_string() && e["param"].is_null(), "{e}");
    e
}

#[test]
fn a_stream_longer_than_the_timeout_runs_to_its_end() {
    let s = seed_with_one_second_timeout();
    let t = Instant::now();
    let r = s.post(
        "/v1/chat/completions",
        &chat("deepseek-simple", true),
        &[("x-mock-chunk-delay-ms", "400")],
    );
    assert!(t.elapsed() > Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().trim_end().ends_with("data: [DONE]"),
        "cut: {}",
        r.text()
    );
}

#[test]
fn a_first_byte_later_than_the_timeout_is_a_json_504() {
    let s = seed_with_one_second_timeout();
    let t = Instant::now();
    let r = s.post(
        "/v1/chat/completions",
        &chat("deepseek-simple", false),
        &[("x-mock-delay-ms", "4000")],
    );
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(openai_error(&r)["code"], "upstream_timeout");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3000),
        "{took:?}"
    );
}

#[test]
fn one_model_is_retrieved_as_the_sdk_asks() {
    let s = Stack::seed(seed_pods());
    let r = s.request("GET", "/v1/models/lora-A", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "lora-A");
    assert_eq!(r.json()["object"], "model");
    let r = s.request("GET", "/v1/models/no-such-model", &[], b"");
    assert_eq!(r.status, 404);
    assert_eq!(openai_error(&r)["code"], "model_not_found");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = Stack::seed(seed_pods());
    let mut all = Vec::new();
    for (i, model) in ["deepseek-simple", "lora-A", "nope"].iter().enumerate() {
        let body = format!(r#"{{"model":"{model}","prompt":"p{i}"}}"#);
        let close = if i == 2 { "connection: close\r\n" } else { "" };
        all.extend_from_slice(
            format!(
                "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{close}content-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    let out = raw_exchange(&s, &all, Duration::from_secs(20));
    let statuses: Vec<&str> = out
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &out[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "404"], "{out}");
    assert!(out.contains("This is simulated message from lora-A!"));
}

#[test]
fn h2c_clients_are_routed_like_http1_ones() {
    let s = Stack::seed(seed_pods());
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/json",
        ])
        .args(["-H", "x-gateway-destination-endpoint: 10.0.0.1:22"])
        .args(["-d", r#"{"model":"deepseek-simple","prompt":"over h2"}"#])
        .args(["-w", "\n%{http_version} %{http_code}"])
        .arg(format!("http://127.0.0.1:{}/v1/completions", s.port))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n2 200"), "{text}");
    assert!(
        text.contains("This is simulated message from deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B!"),
        "{text}"
    );
}

/// Raw bytes to the router on one connection; everything it answers until it closes.
fn raw_exchange(s: &Stack, request: &[u8], wait: Duration) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    conn.set_read_timeout(Some(wait)).unwrap();
    conn.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_client_that_goes_silent_mid_body_is_cut_with_a_json_408() {
    // The shipped request_timeout (600 s) shortened so the test can wait it out.
    let s = Stack::start(
        &read_seed_resources(),
        seed_pods(),
        Options {
            bootstrap_edits: vec![("request_timeout: 600s", "request_timeout: 2s")],
            ..Options::default()
        },
    );
    let t = Instant::now();
    let out = raw_exchange(
        &s,
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":",
        Duration::from_secs(20),
    );
    let took = t.elapsed();
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("\"code\":\"request_timeout\""), "{out}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "{took:?}"
    );
    // Headers that never finish are cut too (request_headers_timeout, 10 s as shipped).
    let t = Instant::now();
    let out = raw_exchange(
        &s,
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n",
        Duration::from_secs(20),
    );
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}

#[test]
fn paths_are_resolved_before_routing_and_encoded_slashes_refused() {
    let s = Stack::seed(seed_pods());
    let body = r#"{"model":"deepseek-simple","prompt":"p"}"#;
    // `..` cannot climb out of /v1/ to reach an engine's other endpoints.
    let r = s.post("/v1/../mock/metrics", body, &[]);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(openai_error(&r)["code"], "route_not_found");
    for (pod, _) in &s.pods {
        assert!(
            s.pod_requests(&pod.name)
                .iter()
                .all(|q| q["path"] != "/mock/metrics"),
            "{} saw /mock/metrics",
            pod.name
        );
    }
    let r = s.post("//v1//completions", body, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s.post("/v1/chat%2Fcompletions", body, &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(openai_error(&r)["code"], "invalid_path");
}

#[test]
fn headers_with_underscores_are_refused() {
    let s = Stack::seed(seed_pods());
    let r = s.post(
        "/v1/completions",
        r#"{"model":"deepseek-simple","prompt":"p"}"#,
        &[("x_modelroute_cluster", "modelserver|default|deepseek-r1-7b")],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    openai_error(&r);
}

#[test]
fn http_1_0_clients_are_served() {
    let s = Stack::seed(seed_pods());
    let body = r#"{"model":"deepseek-simple","prompt":"old client"}"#;
    let out = raw_exchange(
        &s,
        format!(
            "POST /v1/completions HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
        Duration::from_secs(20),
    );
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    assert!(out.contains("This is simulated message from"), "{out}");
}

#[test]
fn envoys_own_errors_are_openai_json_too() {
    let mut pods = seed_pods();
    // A ModelServer whose only pod is listed ready but runs nothing: connect failures.
    pods.push(Pod::new("gone-0", &[("app", "gone")], "gone-model").dead());
    let resources = read_seed_resources()
        + "\n---\napiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelServer\nmetadata:\n  name: gone\n  namespace: default\nspec:\n  workloadSelector:\n    matchLabels:\n      app: gone\n  workloadPort:\n    port: 8000\n  model: gone-model\n  inferenceEngine: vLLM\n---\napiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelRoute\nmetadata:\n  name: gone\n  namespace: default\nspec:\n  modelName: gone\n  rules:\n  - name: r\n    targetModels:\n    - modelServerName: gone\n";
    let s = Stack::start(&resources, pods, Options::default());
    let r = s.completion("gone", &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    let code = openai_error(&r)["code"].as_str().unwrap().to_string();
    assert!(
        ["upstream_connect_failure", "upstream_reset"].contains(&code.as_str()),
        "{code}"
    );
    // Request headers past Envoy's limit (60 KiB).
    let big = "a".repeat(100 * 1024);
    let r = s.post(
        "/v1/completions",
        r#"{"model":"deepseek-simple","prompt":"p"}"#,
        &[("x-big", &big)],
    );
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(openai_error(&r)["code"], "request_header_too_large");
    // The filter's own replies keep their own bodies and codes.
    let r = s.completion("no-such-model", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(openai_error(&r)["code"], "model_not_found");
}

#[test]
fn browsers_get_cors_answers_only_for_the_origins_the_operator_allowed() {
    let s = Stack::start(
        &read_seed_resources(),
        seed_pods(),
        Options {
            controller_args: ["--cors-allow-origin", "https://app.example"]
                .map(String::from)
                .to_vec(),
            ..Options::default()
        },
    );
    let origin = ("origin", "https://app.example");
    let r = s.request(
        "OPTIONS",
        "/v1/chat/completions",
        &[
            origin,
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(r
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("POST")));
    // Routed answers, the filter's own errors and unrouted paths all carry the header.
    let body = r#"{"model":"deepseek-simple","prompt":"from a browser"}"#;
    let ok = s.post("/v1/completions", body, &[origin]);
    assert_eq!(ok.status, 200, "{}", ok.text());
    let missing = s.post("/v1/completions", r#"{"model":"nope"}"#, &[origin]);
    assert_eq!(openai_error(&missing)["code"], "model_not_found");
    let unrouted = s.request("GET", "/nowhere", &[origin], b"");
    assert_eq!(unrouted.status, 404);
    assert_eq!(openai_error(&unrouted)["code"], "route_not_found");
    for r in [&ok, &missing, &unrouted] {
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example"),
            "{} {:?}",
            r.status,
            r.headers
        );
    }
    // Another origin gets nothing a browser would accept.
    let r = s.post(
        "/v1/completions",
        body,
        &[("origin", "https://evil.example")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[test]
fn without_a_cors_setting_no_origin_is_allowed() {
    let s = Stack::seed(seed_pods());
    let r = s.post(
        "/v1/completions",
        r#"{"model":"deepseek-simple","prompt":"p"}"#,
        &[("origin", "https://app.example")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[test]
fn a_client_request_id_reaches_the_engine_unchanged() {
    // Clients correlate their logs with the engine's by x-request-id; an edge Envoy would
    // otherwise replace it for requests from outside.
    let s = Stack::seed(seed_pods());
    let r = s.completion(
        "deepseek-simple",
        &[("x-request-id", "client-chosen-id-42")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen: Vec<serde_json::Value> = s
        .pods
        .iter()
        .flat_map(|(p, _)| s.pod_requests(&p.name))
        .collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["request_id"], "client-chosen-id-42", "{}", seen[0]);
}

//! Prefill/decode roles end to end: real `mock-llm` processes on distinct loopback IPs play a
//! prefill and a decode pod; the decode only succeeds if the prefill really happened there.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn addr(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// The `/mock/requests` records of a pod.
fn records(pod: SocketAddr) -> Vec<Value> {
    let r = get(pod, "/mock/requests");
    assert_eq!(r.status, 200);
    r.json().as_array().cloned().unwrap_or_default()
}

fn error_message(r: &Resp) -> String {
    r.json()["message"].as_str().unwrap_or("").to_string()
}

#[test]
fn vllm_nixl_decode_pulls_kv_blocks_the_prefill_issued() {
    let ips = random_loopback_ips(2);
    let port = free_port();
    let (p, d) = (addr(ips[0], port), addr(ips[1], port));
    let common = [
        "--model",
        "llama",
        "--engine",
        "vllm",
        "--kv-connector",
        "nixl",
    ];
    let (_prefill, line) = start_pod(
        p,
        &[&common[..], &["--pod", "ns/prefill-0", "--role", "prefill"]].concat(),
    );
    assert_eq!(
        line,
        format!(
            "mock-llm listening on {p} pod=ns/prefill-0 model=llama role=prefill kv_connector=nixl"
        )
    );
    let (_decode, _) = start_pod(
        d,
        &[&common[..], &["--pod", "ns/decode-0", "--role", "decode"]].concat(),
    );

    // Prefill leg as the router sends it.
    let prefill_body = json!({
        "model": "llama", "prompt": "hello there", "max_tokens": 1,
        "kv_transfer_params": {"do_remote_decode": true, "do_remote_prefill": false,
            "remote_engine_id": null, "remote_block_ids": null, "remote_host": null,
            "remote_port": null},
    });
    let r = post(
        p,
        "/v1/completions",
        &[("x-request-id", "r-1")],
        &prefill_body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.json();
    assert_eq!(first["choices"][0]["text"], "This");
    let kv = first["kv_transfer_params"].clone();
    assert_eq!(kv["do_remote_prefill"], true);
    assert_eq!(kv["do_remote_decode"], false);
    assert_eq!(kv["remote_host"], ips[0].to_string());
    assert_eq!(kv["remote_port"], port);
    assert_eq!(kv["tp_size"], 1);
    let engine_id = kv["remote_engine_id"].as_str().unwrap_or("").to_string();
    assert!(engine_id.starts_with("prefill-0-"), "{engine_id}");
    let ids: Vec<u64> = kv["remote_block_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    assert_eq!(ids.len(), 4);

    // A second prefill gets fresh blocks under the same engine id.
    let r = post(p, "/v1/completions", &[], &prefill_body);
    let second = r.json()["kv_transfer_params"].clone();
    assert_eq!(second["remote_engine_id"], engine_id.as_str());
    let ids2: Vec<u64> = second["remote_block_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    assert_eq!(ids2.len(), 4);
    assert!(ids2.iter().all(|i| !ids.contains(i)), "{ids:?} {ids2:?}");

    // Prefill without params answers normally and carries no params; malformed ones are 400.
    let r = post(
        p,
        "/v1/completions",
        &[],
        &json!({"model": "llama", "max_tokens": 1}),
    );
    assert_eq!(r.status, 200);
    assert!(r.json().get("kv_transfer_params").is_none());
    let r = post(
        p,
        "/v1/completions",
        &[],
        &json!({"model": "llama", "kv_transfer_params": {"do_remote_prefill": true}}),
    );
    assert_eq!(r.status, 400);
    assert!(error_message(&r).starts_with("malformed kv_transfer_params"));

    // Decode leg: the prefill's params copied verbatim; it streams.
    let decode_body = json!({
        "model": "llama", "prompt": "hello there", "stream": true, "kv_transfer_params": kv,
    });
    let r = post(
        d,
        "/v1/completions",
        &[("x-request-id", "r-1")],
        &decode_body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let (chunks, done) = sse_payloads(&r.text());
    assert!(done);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "This is simulated message from llama!");

    // Tampered block ids / engine id: the prefill doesn't hold them -> 500.
    let mut tampered = kv.clone();
    tampered["remote_block_ids"] = json!([ids[0], ids[1], ids[2], ids2[0]]);
    let r = post(
        d,
        "/v1/completions",
        &[],
        &json!({"model": "llama", "kv_transfer_params": tampered}),
    );
    assert_eq!(r.status, 500);
    assert!(
        error_message(&r).starts_with(&format!("KV transfer from {}:{port} failed: ", ips[0])),
        "{}",
        error_message(&r)
    );
    let mut other_engine = kv.clone();
    other_engine["remote_engine_id"] = json!("prefill-0-0000");
    let r = post(
        d,
        "/v1/completions",
        &[],
        &json!({"model": "llama", "kv_transfer_params": other_engine}),
    );
    assert_eq!(r.status, 500);
    // Pointing at the decode pod itself (or any pod that didn't prefill) fails too.
    let mut wrong_host = kv.clone();
    wrong_host["remote_host"] = json!(ips[1].to_string());
    let r = post(
        d,
        "/v1/completions",
        &[],
        &json!({"model": "llama", "kv_transfer_params": wrong_host}),
    );
    assert_eq!(r.status, 500);

    // Malformed params -> 400 (the prefill's request params copied instead of its answer's).
    let r = post(
        d,
        "/v1/completions",
        &[],
        &json!({"model": "llama", "kv_transfer_params": prefill_body["kv_transfer_params"]}),
    );
    assert_eq!(r.status, 400);
    assert!(error_message(&r).starts_with("malformed kv_transfer_params: "));

    // No params: the decode computes the prefill itself.
    let r = post(
        d,
        "/v1/chat/completions",
        &[],
        &json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 200);

    // /mock/kv answers only on the pod that issued the blocks.
    let path = format!(
        "/mock/kv?engine={engine_id}&ids={}",
        ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
    );
    assert_eq!(get(p, &path).status, 200);
    assert_eq!(get(d, &path).status, 404);

    // What each pod saw.
    let log = records(d);
    let summary: Vec<(u64, &Value, &Value, &Value)> = log
        .iter()
        .map(|e| {
            (
                e["status"].as_u64().unwrap_or(0),
                &e["role"],
                e.get("kv_pulled_from").unwrap_or(&Value::Null),
                e.get("local_prefill").unwrap_or(&Value::Null),
            )
        })
        .collect();
    let from = json!(format!("{}:{port}", ips[0]));
    let decode = json!("decode");
    assert_eq!(
        summary,
        vec![
            (200, &decode, &from, &Value::Null),
            (500, &decode, &Value::Null, &Value::Null),
            (500, &decode, &Value::Null, &Value::Null),
            (500, &decode, &Value::Null, &Value::Null),
            (400, &decode, &Value::Null, &Value::Null),
            (200, &decode, &Value::Null, &json!(true)),
        ]
    );
    assert_eq!(log[0]["body"]["kv_transfer_params"], kv);
    assert_eq!(log[0]["request_id"], "r-1");
    let log = records(p);
    assert_eq!(log.len(), 4);
    assert!(log.iter().all(|e| e["role"] == "prefill"));
    assert_eq!(log[0]["body"], prefill_body);
}

fn sglang_body(room: u64, host: &str, bootstrap_port: u16) -> Value {
    json!({
        "model": "llama", "messages": [{"role": "user", "content": "hi"}],
        "bootstrap_room": room, "bootstrap_host": host, "bootstrap_port": bootstrap_port,
    })
}

#[test]
fn sglang_decode_waits_for_its_prefill_room() {
    let ips = random_loopback_ips(3);
    let port = free_port();
    let bport = loop {
        let b = free_port();
        if b != port {
            break b;
        }
    };
    let (p, d, d_short) = (addr(ips[0], port), addr(ips[1], port), addr(ips[2], port));
    let base = ["--model", "llama", "--engine", "sglang"];
    let bport_s = bport.to_string();
    let (_prefill, line) = start_pod(
        p,
        &[
            &base[..],
            &[
                "--pod",
                "ns/p-0",
                "--role",
                "prefill",
                "--bootstrap-port",
                &bport_s,
            ],
        ]
        .concat(),
    );
    assert_eq!(
        line,
        format!(
            "mock-llm listening on {p} pod=ns/p-0 model=llama role=prefill bootstrap={}:{bport}",
            ips[0]
        )
    );
    let (_decode, _) = start_pod(
        d,
        &[
            &base[..],
            &[
                "--pod",
                "ns/d-0",
                "--role",
                "decode",
                "--bootstrap-timeout-ms",
                "5000",
            ],
        ]
        .concat(),
    );
    let (_decode_short, _) = start_pod(
        d_short,
        &[
            &base[..],
            &[
                "--pod",
                "ns/d-1",
                "--role",
                "decode",
                "--bootstrap-timeout-ms",
                "300",
            ],
        ]
        .concat(),
    );
    let host = ips[0].to_string();
    let bootstrap = addr(ips[0], bport);
    let room: u64 = 9_000_000_000_000_000_001;
    assert_eq!(
        get(bootstrap, &format!("/bootstrap/room/{room}")).status,
        404
    );

    // Decode first (as a concurrent router may), the prefill ~200 ms later.
    let decode_req = sglang_body(room, &host, bport);
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let r = post(d, "/v1/chat/completions", &[], &decode_req);
        (r, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    let r = post(
        p,
        "/v1/chat/completions",
        &[],
        &sglang_body(room, &host, bport),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (r, took) = waiter.join().expect("decode thread");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "This is simulated message from llama!"
    );
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert_eq!(
        get(bootstrap, &format!("/bootstrap/room/{room}")).status,
        200
    );

    // A streaming decode for a room that already arrived goes straight through.
    let mut streaming = sglang_body(room, &host, bport);
    streaming["stream"] = json!(true);
    let r = post(d, "/v1/chat/completions", &[], &streaming);
    assert_eq!(r.status, 200);
    assert!(sse_payloads(&r.text()).1);

    // A room that never arrives: 500 once the 300 ms timeout is over.
    let started = Instant::now();
    let r = post(
        d_short,
        "/v1/chat/completions",
        &[],
        &sglang_body(77, &host, bport),
    );
    let took = started.elapsed();
    assert_eq!(r.status, 500);
    assert_eq!(
        error_message(&r),
        format!(
            "KV transfer failed: prefill for bootstrap_room 77 never arrived at {host}:{bport}"
        )
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // Prefill with the wrong bootstrap_host, or without the fields: 400, room not registered.
    let r = post(
        p,
        "/v1/chat/completions",
        &[],
        &sglang_body(78, &ips[1].to_string(), bport),
    );
    assert_eq!(r.status, 400);
    assert!(error_message(&r).contains("bootstrap_host"), "{}", r.text());
    assert_eq!(get(bootstrap, "/bootstrap/room/78").status, 404);
    let r = post(p, "/v1/chat/completions", &[], &json!({"model": "llama"}));
    assert_eq!(r.status, 400);
    assert!(error_message(&r).starts_with("missing bootstrap_* fields"));
    let r = post(
        d,
        "/v1/chat/completions",
        &[],
        &json!({"bootstrap_room": 1}),
    );
    assert_eq!(r.status, 400);
    assert!(error_message(&r).starts_with("missing bootstrap_* fields"));

    // What each pod saw.
    let log = records(d);
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|e| e["role"] == "decode"));
    let waited = log[0]["bootstrap_waited_ms"].as_u64().unwrap_or(0);
    assert!(waited >= 150, "{}", log[0]);
    assert_eq!(log[0]["body"]["bootstrap_room"], room);
    assert!(log[1]["bootstrap_waited_ms"].as_u64().is_some());
    assert!(log[2].get("bootstrap_waited_ms").is_none());
    let log = records(p);
    assert_eq!(
        log.iter()
            .map(|e| e["status"].as_u64().unwrap_or(0))
            .collect::<Vec<_>>(),
        vec![200, 400, 400]
    );
    assert_eq!(log[0]["role"], "prefill");
}

#[test]
fn aggregated_pods_ignore_pd_fields() {
    let ip = random_loopback_ips(1)[0];
    let a = addr(ip, free_port());
    let (_pod, line) = start_pod(
        a,
        &["--model", "llama", "--engine", "sglang", "--pod", "ns/a"],
    );
    assert_eq!(
        line,
        format!("mock-llm listening on {a} pod=ns/a model=llama")
    );
    let r = post(
        a,
        "/v1/chat/completions",
        &[],
        &sglang_body(5, "10.9.9.9", 1),
    );
    assert_eq!(r.status, 200);
    let r = post(
        a,
        "/v1/completions",
        &[],
        &json!({"model": "llama", "kv_transfer_params": {"bogus": 1}}),
    );
    assert_eq!(r.status, 200);
    assert!(r.json().get("kv_transfer_params").is_none());
    let log = records(a);
    assert!(log.iter().all(|e| e["role"].is_null()));
}

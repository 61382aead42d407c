//! Usage accounting and observability in a real Envoy: Kthena's metrics scraped from
//! `/stats/prometheus` and Kthena's access log (JSON) agree with what the mock engines served;
//! clients streaming without `include_usage` get exactly the engine's stream minus the chunk
//! the router asked for; errors and clients that leave are counted; random model names do not
//! grow the series count. PD accounting is checked in `pd.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use support::*;

const M15: &str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B";

/// The SSE events of a stream with their per-answer `id` / `created` removed (they differ from
/// one answer to the next); `[DONE]` kept as text.
fn events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| match serde_json::from_str::<Value>(d) {
            Ok(mut v) => {
                if let Some(o) = v.as_object_mut() {
                    o.remove("id");
                    o.remove("created");
                }
                v
            }
            Err(_) => Value::String(d.to_string()),
        })
        .collect()
}

fn record<'a>(log: &'a [Value], request_id: &str) -> &'a Value {
    log.iter()
        .find(|r| r["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no access log record for {request_id}"))
}

fn usage_of(r: &Response) -> (u64, u64) {
    let text = r.text();
    let json: Value = if text.starts_with("data:") {
        events(&text)
            .into_iter()
            .rfind(|e| e.get("usage").is_some_and(Value::is_object))
            .expect("a usage event")
    } else {
        serde_json::from_str(&text).expect("JSON answer")
    };
    let u = &json["usage"];
    (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    )
}

#[test]
fn tokens_and_timings_agree_with_what_the_engines_served() {
    let s = Stack::seed(seed_pods());
    let chat = |model: &str, stream: bool, usage: bool, id: &str| {
        let options = if usage {
            r#","stream_options":{"include_usage":true}"#
        } else {
            ""
        };
        s.post(
            "/v1/chat/completions",
            &format!(
                r#"{{"model":"{model}","stream":{stream}{options},"messages":[{{"role":"user","content":"tell me about San Francisco"}}]}}"#
            ),
            &[("x-request-id", id)],
        )
    };
    // Plain, LoRA, weighted: non-streaming answers carry usage.
    let plain = s.completion("deepseek-simple", &[("x-request-id", "plain")]);
    let lora = s.completion("lora-A", &[("x-request-id", "lora")]);
    let weighted = s.completion("deepseek-subset", &[("x-request-id", "weighted")]);
    // Streams: the client that asked for usage gets it; the one that did not gets the same
    // events without it, although the router asked the engine for it.
    let asked = chat("deepseek-simple", true, true, "stream-asked");
    let silent = chat("deepseek-simple", true, false, "stream-silent");
    for r in [&plain, &lora, &weighted, &asked, &silent] {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let with_usage = events(&asked.text());
    let without: Vec<Value> = with_usage
        .iter()
        .filter(|e| !(e["choices"] == serde_json::json!([]) && e["usage"].is_object()))
        .cloned()
        .collect();
    assert_eq!(with_usage.len(), without.len() + 1, "{}", asked.text());
    assert_eq!(events(&silent.text()), without, "{}", silent.text());

    let log = s.access_log(5);
    for (id, r) in [
        ("plain", &plain),
        ("lora", &lora),
        ("weighted", &weighted),
        ("stream-asked", &asked),
    ] {
        let (input, output) = usage_of(r);
        let rec = record(&log, id);
        assert_eq!(rec["input_tokens"], input.to_string(), "{rec}");
        assert_eq!(rec["output_tokens"], output.to_string(), "{rec}");
        assert_eq!(rec["error_type"], "successful_request");
        assert_eq!(rec["status_code"], 200);
        assert!(rec["selected_pod"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", s.pod_port)));
    }
    // The silent stream was counted from the usage it never saw.
    let silent_rec = record(&log, "stream-silent");
    assert_eq!(
        silent_rec["output_tokens"],
        record(&log, "stream-asked")["output_tokens"]
    );
    assert!(silent_rec["ttft"].as_str().unwrap().parse::<f64>().unwrap() >= 0.0);
    let lora_rec = record(&log, "lora");
    assert_eq!(lora_rec["model_name"], "lora-A");
    assert_eq!(lora_rec["upstream_model"], "lora-A");
    assert_eq!(record(&log, "plain")["upstream_model"], M15);
    assert_eq!(
        record(&log, "plain")["model_route"],
        "default/deepseek-simple"
    );
    assert_eq!(
        record(&log, "plain")["model_server"],
        "default/deepseek-r1-1-5b"
    );

    // The metrics say the same, under Kthena's names and labels.
    let simple = [("model", "deepseek-simple"), ("status_code", "200")];
    assert_eq!(
        s.series_sum("kthena_router_requests_total", &simple, 3.0),
        3.0
    );
    let simple_out = [("model", "deepseek-simple"), ("token_type", "output")];
    assert_eq!(
        s.series_sum("kthena_router_tokens_total", &simple_out, 0.0),
        (usage_of(&plain).1 + 2 * usage_of(&asked).1) as f64
    );
    let labels = [
        ("model", "lora-A"),
        ("path", "/v1/completions"),
        ("error_type", "successful_request"),
        ("model_route", "default/deepseek-lora"),
        ("backend_type", "model_server"),
        ("backend_name", "default/deepseek-r1-1-5b"),
        ("upstream_model", "lora-A"),
    ];
    assert_eq!(
        s.series_sum("kthena_router_requests_total", &labels, 1.0),
        1.0
    );
    let count = "kthena_router_request_duration_seconds_count";
    assert!(s.series_sum(count, &[("model", "deepseek-subset")], 1.0) >= 1.0);
    let ttft = "kthena_router_time_to_first_token_seconds_count";
    assert_eq!(
        s.series_sum(ttft, &[("model", "deepseek-simple")], 2.0),
        2.0
    );
    // Each histogram is recorded only where its value was published (the non-streamed
    // answers have no TTFT), silently: no series carries the tag that gates it, and Envoy's
    // stats logger never met a missing value.
    let scrape = s.prometheus();
    assert!(!scrape.contains("published="), "{scrape}");
    let envoy_log = s.log("envoy");
    assert!(!envoy_log.contains("Stats access logger"), "{envoy_log}");
    // Nothing left in flight.
    let text = assert_nothing_active(&s);
    assert!(
        text.lines()
            .any(|l| l.starts_with("kthena_router_active_upstream_requests{")
                && l.contains("model_server=\"default/deepseek-r1-1-5b\"")
                && !l.contains("{model=")
                && !l.contains(",model=")),
        "{text}"
    );
}

#[test]
fn errors_are_counted_with_their_status_and_kthenas_error_type() {
    let pods = vec![
        Pod::new("up", &[("app", "pool")], "served"),
        Pod::new("down", &[("app", "idle")], "served").not_ready(),
    ];
    let mut resources = pool_resources("served", &[]);
    resources += "---\n";
    resources += &pool_resources("served", &[])
        .replace("name: pool", "name: idle")
        .replace("app: pool", "app: idle")
        .replace("modelName: \"pool\"", "modelName: \"idle\"")
        .replace("modelServerName: pool", "modelServerName: idle");
    let s = Stack::start(
        &resources,
        pods,
        Options {
            controller_args: vec!["--max-body-bytes".into(), "2048".into()],
            ..Default::default()
        },
    );
    let missing = s.completion("no-such-model", &[("x-request-id", "e404")]);
    assert_eq!(missing.status, 404);
    let big = format!(r#"{{"model":"pool","prompt":"{}"}}"#, "x".repeat(4000));
    assert_eq!(
        s.post("/v1/completions", &big, &[("x-request-id", "e413")])
            .status,
        413
    );
    let none = s.completion("idle", &[("x-request-id", "e503")]);
    assert_eq!(none.status, 503, "{}", none.text());

    let log = s.access_log(3);
    let e404 = record(&log, "e404");
    assert_eq!(
        (e404["status_code"].as_u64(), e404["error_type"].as_str()),
        (Some(404), Some("route_not_found"))
    );
    assert_eq!(e404["model_name"], "unknown");
    assert!(e404["error_message"]
        .as_str()
        .unwrap()
        .contains("no-such-model"));
    assert_eq!(record(&log, "e413")["error_type"], "request_too_large");
    assert_eq!(record(&log, "e503")["error_type"], "no_ready_endpoints");
    assert_eq!(record(&log, "e503")["model_name"], "idle");

    for (status, error_type) in [
        ("404", "route_not_found"),
        ("413", "request_too_large"),
        ("503", "no_ready_endpoints"),
    ] {
        let labels = [("status_code", status), ("error_type", error_type)];
        assert_eq!(
            s.series_sum("kthena_router_requests_total", &labels, 1.0),
            1.0
        );
    }
}

/// Both active-request gauges are back at 0 (the filter writes them on its tick, so this
/// waits for one); returns the scrape.
fn assert_nothing_active(s: &Stack) -> String {
    const GAUGES: [&str; 2] = [
        "kthena_router_active_downstream_requests",
        "kthena_router_active_upstream_requests",
    ];
    let idle = |text: &str| GAUGES.iter().all(|g| series_sum(text, g, &[]) == 0.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut text = s.prometheus();
    while !idle(&text) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        text = s.prometheus();
    }
    for gauge in GAUGES {
        assert_eq!(series_sum(&text, gauge, &[]), 0.0, "{gauge}");
    }
    text
}

/// The model `pool` served by one pod.
fn one_pod() -> Stack {
    Stack::start(
        &pool_resources("served", &[]),
        vec![Pod::new("a", &[("app", "pool")], "served")],
        Options::default(),
    )
}

#[test]
fn a_client_that_leaves_mid_stream_is_counted_for_what_it_got() {
    let s = one_pod();
    let body = r#"{"model":"pool","stream":true,"prompt":"a b c"}"#;
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-request-id: leaver\r\nx-mock-chunk-delay-ms: 300\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Read until two events have arrived, then hang up.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.windows(6).filter(|w| w == b"data: ").count() < 2 {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early");
        got.extend_from_slice(&buf[..n]);
    }
    drop(c);
    let log = s.access_log(1);
    let rec = record(&log, "leaver");
    let delivered: u64 = rec["output_tokens"].as_str().unwrap().parse().unwrap();
    assert!((2..=4).contains(&delivered), "{rec}");
    assert!(
        ["client_cancelled", "stream_interrupted"].contains(&rec["error_type"].as_str().unwrap()),
        "{rec}"
    );
    // The request no longer counts as active.
    assert_nothing_active(&s);
}

#[test]
fn random_model_names_and_paths_do_not_grow_the_series() {
    let s = one_pod();
    let series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("kthena_router_"))
            .count()
    };
    let flood = |n: usize, tag: &str| {
        for i in 0..n {
            let r = s.post(
                &format!("/v1/{tag}-{i}"),
                &format!(r#"{{"model":"{tag}-model-{i}","prompt":"x"}}"#),
                &[],
            );
            assert_eq!(r.status, 404);
        }
    };
    flood(1, "first");
    let count = "kthena_router_request_duration_seconds_count";
    s.series_sum(count, &[("model", "unknown")], 1.0);
    let before = series(&s.prometheus());
    flood(60, "random");
    s.series_sum(count, &[("model", "unknown")], 61.0);
    let text = s.prometheus();
    assert_eq!(series(&text), before, "{text}");
    assert!(!text.contains("random-model"), "{text}");
}

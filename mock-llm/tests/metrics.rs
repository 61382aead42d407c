//! End-to-end: the engine metrics a router's scheduler reads (`GET /metrics`), held by tests
//! through `/mock/metrics` or derived from the pod's real queue and answers.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn start(extra: &[&str]) -> (Proc, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut args = vec!["--model", "m"];
    args.extend_from_slice(extra);
    let (proc, _line) = start_pod(addr, &args);
    (proc, addr)
}

/// The value of the single series `name{model_name="m"}` on `/metrics`.
fn metric(text: &str, name: &str) -> f64 {
    let prefix = format!("{name}{{model_name=\"m\"}} ");
    let found: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse::<f64>().expect("number"))
        .collect();
    assert_eq!(found.len(), 1, "{name} in\n{text}");
    found[0]
}

/// (sum, count) of a histogram on `/metrics`, after checking its buckets.
fn histogram(text: &str, name: &str) -> (f64, f64) {
    let bucket = format!("{name}_bucket{{model_name=\"m\",le=\"");
    let counts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&bucket))
        .map(|rest| {
            let (_, n) = rest.split_once("\"} ").expect("bucket line");
            n.parse::<f64>().expect("count")
        })
        .collect();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "{name}: {counts:?}"
    );
    assert!(
        text.contains(&format!("{bucket}+Inf\"}}")),
        "{name}: no +Inf"
    );
    let count = metric(text, &format!("{name}_count"));
    assert_eq!(counts.last().copied(), Some(count), "{name}: +Inf != count");
    (metric(text, &format!("{name}_sum")), count)
}

fn scrape(addr: SocketAddr) -> String {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    r.text()
}

/// Scrape until `ok` holds (answers are recorded as their bodies leave, so give them a moment).
fn scrape_until(addr: SocketAddr, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(addr);
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "never reached:\n{text}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn held_gauges_show_on_metrics_until_released() {
    let (_proc, addr) = start(&[]);
    let text = scrape(addr);
    assert_eq!(metric(&text, "vllm:num_requests_waiting"), 0.0);
    assert_eq!(metric(&text, "vllm:kv_cache_usage_perc"), 0.0);

    let r = post(
        addr,
        "/mock/metrics",
        &[],
        &json!({"waiting": 20, "kv_cache_usage": 0.9}),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let text = scrape(addr);
    assert_eq!(metric(&text, "vllm:num_requests_waiting"), 20.0);
    assert_eq!(metric(&text, "vllm:kv_cache_usage_perc"), 0.9);
    assert_eq!(metric(&text, "vllm:gpu_cache_usage_perc"), 0.9);
    assert_eq!(metric(&text, "vllm:num_requests_running"), 0.0);
    let status = get(addr, "/mock/metrics");
    assert_eq!(status.status, 200);
    let v = status.json();
    assert_eq!(v["waiting"], 20);
    assert_eq!(v["kv_cache_usage"], 0.9);
    assert_eq!(v["running"], 0);
    assert_eq!(v["held"], json!(["waiting", "kv_cache_usage"]));
    assert_eq!(v["max_running"], json!(null));

    // Invalid bodies change nothing.
    for bad in [
        "{nope",
        "[1]",
        r#"{"waiting": -3}"#,
        r#"{"kv_cache_usage": 2}"#,
    ] {
        let r = request(addr, "POST", "/mock/metrics", &[], Some(bad), false);
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["object"], "error");
    }
    assert_eq!(metric(&scrape(addr), "vllm:num_requests_waiting"), 20.0);

    // A held TTFT: each scrape adds exactly one observation of it.
    let r = post(addr, "/mock/metrics", &[], &json!({"ttft_seconds": 1.5}));
    assert_eq!(r.status, 204);
    let (s1, c1) = histogram(&scrape(addr), "vllm:time_to_first_token_seconds");
    let (s2, c2) = histogram(&scrape(addr), "vllm:time_to_first_token_seconds");
    assert_eq!(c2 - c1, 1.0);
    assert!(((s2 - s1) - 1.5).abs() < 1e-9, "{s1} -> {s2}");

    // Release: derived again.
    let r = post(
        addr,
        "/mock/metrics",
        &[],
        &json!({"waiting": null, "kv_cache_usage": null, "ttft_seconds": null}),
    );
    assert_eq!(r.status, 204);
    let text = scrape(addr);
    assert_eq!(metric(&text, "vllm:num_requests_waiting"), 0.0);
    assert_eq!(metric(&text, "vllm:kv_cache_usage_perc"), 0.0);
    assert_eq!(get(addr, "/mock/metrics").json()["held"], json!([]));
    let (s3, c3) = histogram(&text, "vllm:time_to_first_token_seconds");
    let (s4, c4) = histogram(&scrape(addr), "vllm:time_to_first_token_seconds");
    assert_eq!((s3, c3), (s4, c4));

    // DELETE releases everything.
    post(addr, "/mock/metrics", &[], &json!({"running": 7}));
    assert_eq!(metric(&scrape(addr), "vllm:num_requests_running"), 7.0);
    let r = request(addr, "DELETE", "/mock/metrics", &[], None, false);
    assert_eq!(r.status, 204);
    assert_eq!(metric(&scrape(addr), "vllm:num_requests_running"), 0.0);
}

#[test]
fn max_running_really_queues_and_shows_waiting() {
    let (_proc, addr) = start(&["--max-running", "1"]);
    assert_eq!(get(addr, "/mock/metrics").json()["max_running"], 1);
    let started = Instant::now();
    let clients: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                post(
                    addr,
                    "/v1/completions",
                    &[("x-mock-delay-ms", "300")],
                    &json!({"model": "m", "prompt": "hi"}),
                )
                .status
            })
        })
        .collect();
    let (mut max_waiting, mut max_running) = (0.0f64, 0.0f64);
    while started.elapsed() < Duration::from_millis(700) {
        let text = scrape(addr);
        max_waiting = max_waiting.max(metric(&text, "vllm:num_requests_waiting"));
        max_running = max_running.max(metric(&text, "vllm:num_requests_running"));
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in clients {
        assert_eq!(c.join().expect("client"), 200);
    }
    let elapsed = started.elapsed();
    assert!(max_waiting >= 1.0, "waiting never seen: {max_waiting}");
    assert!(max_waiting <= 2.0, "{max_waiting}");
    assert_eq!(max_running, 1.0);
    // One at a time: three 300 ms answers take at least 900 ms.
    assert!(elapsed >= Duration::from_millis(850), "{elapsed:?}");
    scrape_until(addr, |t| {
        metric(t, "vllm:num_requests_waiting") == 0.0
            && metric(t, "vllm:num_requests_running") == 0.0
    });
}

#[test]
fn pod_delay_counts_in_ttft_and_sse_gaps_in_tpot() {
    let (_proc, addr) = start(&["--delay-ms", "200"]);
    let r = post(
        addr,
        "/v1/completions",
        &[],
        &json!({"model": "m", "prompt": "hi"}),
    );
    assert_eq!(r.status, 200);
    let text = scrape_until(addr, |t| {
        histogram(t, "vllm:time_to_first_token_seconds").1 == 1.0
            && histogram(t, "vllm:inter_token_latency_seconds").1 == 1.0
    });
    let (sum, count) = histogram(&text, "vllm:time_to_first_token_seconds");
    assert!(sum / count >= 0.2, "TTFT mean {}", sum / count);
    // Non-streaming: TPOT 0.
    assert_eq!(
        histogram(&text, "vllm:inter_token_latency_seconds"),
        (0.0, 1.0)
    );
    let ttft = get(addr, "/mock/metrics").json()["ttft_seconds"]
        .as_f64()
        .expect("ttft");
    assert!(ttft >= 0.2, "{ttft}");

    // Streaming, 30 ms between events: TPOT >= 0.03; both names carry the same data.
    let r = post(
        addr,
        "/v1/completions",
        &[("x-mock-chunk-delay-ms", "30"), ("x-mock-delay-ms", "0")],
        &json!({"model": "m", "prompt": "hi", "stream": true}),
    );
    assert_eq!(r.status, 200);
    let text = scrape_until(addr, |t| {
        histogram(t, "vllm:inter_token_latency_seconds").1 == 2.0
    });
    let (sum, count) = histogram(&text, "vllm:inter_token_latency_seconds");
    assert_eq!(count, 2.0);
    assert!(sum >= 0.03, "TPOT sum {sum}");
    assert_eq!(
        histogram(&text, "vllm:time_per_output_token_seconds"),
        (sum, count)
    );
    // Errors are not answers: no TTFT observed.
    let r = post(addr, "/v1/completions", &[], &json!({"model": "other"}));
    assert_eq!(r.status, 404);
    let text = scrape(addr);
    assert_eq!(histogram(&text, "vllm:time_to_first_token_seconds").1, 2.0);
}

#[test]
fn sglang_pod_holds_and_derives_under_its_own_names() {
    let (_proc, addr) = start(&["--engine", "sglang"]);
    let r = post(
        addr,
        "/mock/metrics",
        &[],
        &json!({"waiting": 12, "running": 3, "kv_cache_usage": 0.5}),
    );
    assert_eq!(r.status, 204);
    let text = scrape(addr);
    assert_eq!(metric(&text, "sglang:num_queue_reqs"), 12.0);
    assert_eq!(metric(&text, "sglang:num_running_reqs"), 3.0);
    assert_eq!(metric(&text, "sglang:token_usage"), 0.5);
    assert_eq!(
        histogram(&text, "sglang:time_to_first_token_seconds"),
        (0.0, 0.0)
    );
    assert_eq!(
        histogram(&text, "sglang:inter_token_latency_seconds"),
        (0.0, 0.0)
    );
    assert!(!text.contains("vllm:"));
}

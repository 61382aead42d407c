//! Fake-host tests of the request flow: what a client sends in, what Envoy would see out.
use super::fake::FakeHost;
use super::*;
use crate::in_flight::InFlight;
use filter_config::{FilterConfig, Match, Route, Rule, Server};

fn router() -> Router {
    Router::compile(router_config(), 42).unwrap()
}

fn router_config() -> FilterConfig {
    let server = |name: &str, model: &str, pods: &[&str]| {
        Server::fixture(name, model, pods)
            .with_timeout_ms(10_000)
            .with_retry(Some(2))
    };
    let rule = |s: &str| Rule::fixture("default", Match::default(), &[(s, 100)]);
    // Round-robin picking (the fixture's scheduler): these tests pin the pod order.
    FilterConfig::fixture(
        vec![
            Route::fixture("simple", Some("deepseek-simple"), &[], vec![rule("ds")]),
            Route::fixture("lora", None, &["lora-A"], vec![rule("ds")]),
            Route::fixture("empty", Some("empty"), &[], vec![rule("none")]),
        ],
        vec![
            server(
                "ds",
                "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
                &["127.0.0.2:8000", "127.0.0.3:8000"],
            ),
            server("none", "x", &[]),
        ],
    )
    .with_settings(|s| s.max_body_bytes = 1024)
}

/// Runs headers then the whole body in one chunk; returns the two actions.
fn run(r: &mut Router, h: &mut FakeHost) -> (Action, Action) {
    let mut f = Flow::new();
    let a = f.on_request_headers(Some(r), h, false);
    if h.reply.is_some() {
        return (a, Action::Pause);
    }
    let n = h.body.len();
    let b = f.on_request_body(Some(r), h, &mut InFlight::default(), n, true);
    (a, b)
}

#[test]
fn base_model_request_is_rewritten_and_pinned_to_a_pod() {
    let mut r = router();
    let mut h = FakeHost::post(
        "/v1/completions",
        r#"{"model":"deepseek-simple","prompt":"San Francisco is a"}"#,
        &[],
    );
    assert_eq!(run(&mut r, &mut h), (Action::Pause, Action::Continue));
    let body: serde_json::Value = serde_json::from_slice(&h.body).unwrap();
    assert_eq!(body["model"], "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B");
    assert_eq!(body["prompt"], "San Francisco is a");
    assert_eq!(
        h.get("content-length"),
        Some(h.body.len().to_string().as_str())
    );
    assert_eq!(
        h.get("x-modelroute-cluster"),
        Some("modelserver|default|ds")
    );
    assert_eq!(
        h.get("x-gateway-destination-endpoint"),
        Some("127.0.0.2:8000,127.0.0.3:8000")
    );
    // The timeout bounds the time to the response headers, never a stream that has begun.
    assert_eq!(
        h.get("x-envoy-upstream-rq-per-try-timeout-ms"),
        Some("10000")
    );
    assert_eq!(h.get("x-envoy-upstream-rq-timeout-ms"), None);
    assert_eq!(h.get("x-envoy-max-retries"), Some("2"));
    assert_eq!(h.get("x-request-id").map(str::len), Some(36));
}

#[test]
fn lora_request_keeps_the_adapter_name_and_body_untouched() {
    let mut r = router();
    let original = r#"{"model":"lora-A","prompt":"x"}"#;
    let mut h = FakeHost::post("/v1/completions", original, &[("x-request-id", "abc")]);
    assert_eq!(run(&mut r, &mut h).1, Action::Continue);
    assert_eq!(h.replaced, 0);
    assert_eq!(h.body, original.as_bytes());
    assert_eq!(h.get("x-request-id"), Some("abc"));
}

#[test]
fn client_cannot_choose_cluster_or_pod() {
    let mut r = router();
    let spoof = [
        ("x-modelroute-cluster", "modelserver|default|none"),
        ("x-gateway-destination-endpoint", "10.0.0.1:22"),
        ("x-envoy-original-dst-host", "10.0.0.1:22"),
        ("x-envoy-upstream-rq-timeout-ms", "1"),
        ("x-envoy-upstream-rq-per-try-timeout-ms", "1"),
    ];
    let mut h = FakeHost::post("/v1/completions", r#"{"model":"deepseek-simple"}"#, &spoof);
    run(&mut r, &mut h);
    assert_eq!(
        h.get("x-modelroute-cluster"),
        Some("modelserver|default|ds")
    );
    assert_eq!(
        h.get("x-gateway-destination-endpoint"),
        Some("127.0.0.2:8000,127.0.0.3:8000")
    );
    assert_eq!(h.get("x-envoy-original-dst-host"), None);
    assert_eq!(h.get("x-envoy-upstream-rq-timeout-ms"), None);
    assert_eq!(
        h.get("x-envoy-upstream-rq-per-try-timeout-ms"),
        Some("10000")
    );
    // Pass-through requests are stripped too.
    let mut h = FakeHost::request("GET", "/healthz");
    h.headers
        .extend(spoof.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    assert_eq!(
        Flow::new().on_request_headers(Some(&r), &mut h, true),
        Action::Continue
    );
    assert_eq!(h.headers.len(), 2);
}

#[test]
fn headers_are_read_once_and_absent_ones_not_removed() {
    let mut r = router();
    let mut h = FakeHost::post(
        "/v1/completions",
        r#"{"model":"deepseek-simple"}"#,
        &[("x-request-id", "abc")],
    );
    run(&mut r, &mut h);
    assert_eq!(h.header_reads.get(), 1, "one host call for every header");
    assert!(h.removed.is_empty(), "nothing to strip: {:?}", h.removed);
    assert_eq!(
        h.get("x-request-id"),
        Some("abc"),
        "the client's id is kept"
    );
    // A spoofed header costs exactly its removal.
    let mut h = FakeHost::post(
        "/v1/completions",
        r#"{"model":"deepseek-simple"}"#,
        &[("x-envoy-max-retries", "9")],
    );
    run(&mut r, &mut h);
    assert_eq!(h.removed, ["x-envoy-max-retries"]);
    assert_eq!(
        h.get("x-envoy-max-retries"),
        Some("2"),
        "the server's policy"
    );
    assert!(
        h.get("x-request-id").is_some(),
        "an id is generated when absent"
    );
}

#[test]
fn malformed_json_is_400() {
    let mut r = router();
    let mut h = FakeHost::post("/v1/completions", r#"{"model":"deepseek-simple","#, &[]);
    run(&mut r, &mut h);
    let (s, v) = h.reply_json();
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "invalid_json");
}

#[test]
fn missing_and_unknown_models_are_404() {
    let mut r = router();
    for body in [
        r#"{"prompt":"x"}"#,
        r#"{"model":7}"#,
        r#"{"model":"  "}"#,
        r#"{"model":"nope"}"#,
    ] {
        let mut h = FakeHost::post("/v1/completions", body, &[]);
        run(&mut r, &mut h);
        assert_eq!(h.reply_json().0, 404, "{body}");
        assert_eq!(h.reply_json().1["error"]["code"], "model_not_found");
    }
}

#[test]
fn server_without_ready_pods_is_503() {
    let mut r = router();
    let mut h = FakeHost::post("/v1/chat/completions", r#"{"model":"empty"}"#, &[]);
    run(&mut r, &mut h);
    assert_eq!(h.reply_json().0, 503);
}

#[test]
fn oversized_bodies_are_413_by_header_and_by_size() {
    let mut r = router();
    let big = format!(
        r#"{{"model":"deepseek-simple","prompt":"{}"}}"#,
        "x".repeat(2000)
    );
    let mut h = FakeHost::post("/v1/completions", &big, &[]);
    let mut f = Flow::new();
    assert_eq!(f.on_request_headers(Some(&r), &mut h, false), Action::Pause);
    assert_eq!(h.reply_json().0, 413);
    // Chunked: no content-length, the limit trips while buffering.
    let mut h = FakeHost::post("/v1/completions", &big, &[]);
    h.remove_header("content-length");
    let mut f = Flow::new();
    assert_eq!(f.on_request_headers(Some(&r), &mut h, false), Action::Pause);
    assert_eq!(
        f.on_request_body(Some(&mut r), &mut h, &mut InFlight::default(), 600, false),
        Action::Pause
    );
    assert!(h.reply.is_none());
    assert_eq!(
        f.on_request_body(Some(&mut r), &mut h, &mut InFlight::default(), 1500, false),
        Action::Pause
    );
    assert_eq!(h.reply_json().0, 413);
}

#[test]
fn body_arriving_in_chunks_is_decided_once_at_end_of_stream() {
    let mut r = router();
    let mut h = FakeHost::post("/v1/completions", r#"{"model":"deepseek-simple"}"#, &[]);
    let mut f = Flow::new();
    f.on_request_headers(Some(&r), &mut h, false);
    assert_eq!(
        f.on_request_body(Some(&mut r), &mut h, &mut InFlight::default(), 5, false),
        Action::Pause
    );
    assert!(h.get("x-modelroute-cluster").is_none());
    let n = h.body.len();
    assert_eq!(
        f.on_request_body(Some(&mut r), &mut h, &mut InFlight::default(), n, true),
        Action::Continue
    );
    assert!(h.get("x-modelroute-cluster").is_some());
    assert_eq!(f.outcome.server, "default/ds");
    assert_eq!(f.outcome.endpoint, "127.0.0.2:8000");
}

#[test]
fn empty_post_is_400_and_non_inference_traffic_passes() {
    let r = router();
    let mut h = FakeHost::post("/v1/completions", "", &[]);
    assert_eq!(
        Flow::new().on_request_headers(Some(&r), &mut h, true),
        Action::Pause
    );
    assert_eq!(h.reply_json().0, 400);
    for (m, p) in [
        ("GET", "/v1/completions"),
        ("POST", "/other"),
        ("POST", "/v1"),
        ("GET", "/metrics"),
    ] {
        let mut h = FakeHost::request(m, p);
        assert_eq!(
            Flow::new().on_request_headers(Some(&r), &mut h, false),
            Action::Continue,
            "{m} {p}"
        );
        assert!(h.reply.is_none());
    }
}

#[test]
fn models_endpoint_lists_routes() {
    let r = router();
    let mut h = FakeHost::request("GET", "/v1/models?x=1");
    assert_eq!(
        Flow::new().on_request_headers(Some(&r), &mut h, true),
        Action::Pause
    );
    let (s, v) = h.reply_json();
    assert_eq!(s, 200);
    assert_eq!(v["data"][0]["id"], "deepseek-simple");
    assert_eq!(v["data"][1]["id"], "lora-A");
}

#[test]
fn one_model_is_retrieved_by_id_as_the_openai_sdk_asks() {
    let r = router();
    for (path, id) in [
        ("/v1/models/deepseek-simple", "deepseek-simple"),
        ("/v1/models/lora-A?x=1", "lora-A"),
        ("/v1/models/lora%2DA", "lora-A"),
    ] {
        let mut h = FakeHost::request("GET", path);
        assert_eq!(
            Flow::new().on_request_headers(Some(&r), &mut h, true),
            Action::Pause
        );
        let (s, v) = h.reply_json();
        assert_eq!(s, 200, "{path}");
        assert_eq!(v["id"], id);
        assert_eq!(v["object"], "model");
    }
    for path in ["/v1/models/nope", "/v1/models/", "/v1/models/%zz"] {
        let mut h = FakeHost::request("GET", path);
        Flow::new().on_request_headers(Some(&r), &mut h, true);
        let (s, v) = h.reply_json();
        assert_eq!(s, 404, "{path}");
        assert_eq!(v["error"]["code"], "model_not_found");
    }
}

#[test]
fn unconfigured_filter_answers_503_for_inference_and_passes_the_rest() {
    let mut h = FakeHost::post("/v1/completions", r#"{"model":"m"}"#, &[]);
    assert_eq!(
        Flow::new().on_request_headers(None, &mut h, false),
        Action::Pause
    );
    assert_eq!(h.reply_json().0, 503);
    let mut h = FakeHost::request("GET", "/");
    assert_eq!(
        Flow::new().on_request_headers(None, &mut h, true),
        Action::Continue
    );
}

#[test]
fn request_ids_are_uuid_v4_shaped() {
    let id = request_id(u64::MAX, 0);
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4");
    assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
}

#[test]
fn scheduled_picks_count_in_flight_across_workers_and_release_on_done() {
    // Default scheduler (least-request among others): two hosts share one store, as two
    // Envoy workers share data; the second request avoids the pod the first one holds.
    let mut cfg = router_config();
    cfg.settings.scheduler = filter_config::Scheduler::default();
    let mut r = Router::compile(cfg, 1).unwrap();
    let (mut w1, mut w2) = (InFlight::default(), InFlight::default());
    let mut f1 = Flow::new();
    let mut h1 = FakeHost::post("/v1/completions", r#"{"model":"deepseek-simple"}"#, &[]);
    f1.on_request_headers(Some(&r), &mut h1, false);
    let n = h1.body.len();
    f1.on_request_body(Some(&mut r), &mut h1, &mut w1, n, true);
    // One read of the in-flight counts feeds the pick and the count; the pods' load reports
    // (vLLM) are one read more.
    let reads = h1.shared_gets.borrow().clone();
    let of = |prefix: &str| reads.iter().filter(|k| k.starts_with(prefix)).count();
    assert_eq!(of("modelroute.inflight."), 1, "{reads:?}");
    assert_eq!(of("modelroute.load."), 1, "{reads:?}");
    assert_eq!(reads.len(), 2, "{reads:?}");
    let first = h1
        .get("x-gateway-destination-endpoint")
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let mut h2 = FakeHost::post("/v1/completions", r#"{"model":"deepseek-simple"}"#, &[]);
    h2.shared = h1.shared.clone();
    let mut f2 = Flow::new();
    f2.on_request_headers(Some(&r), &mut h2, false);
    f2.on_request_body(Some(&mut r), &mut h2, &mut w2, n, true);
    let second = h2
        .get("x-gateway-destination-endpoint")
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(first, second, "the busy pod is avoided");
    let key = r.server(0).unwrap().in_flight_key.clone();
    let total = |h: &FakeHost| {
        crate::in_flight::read_counts(h, &key, 2)
            .iter()
            .sum::<u32>()
    };
    assert_eq!(total(&h2), 2);
    f2.on_done(&mut h2, &mut w2);
    f2.on_done(&mut h2, &mut w2);
    assert_eq!(
        total(&h2),
        1,
        "released once, at once: the worker's only request"
    );
}

#[test]
fn a_pods_in_band_load_report_steers_the_next_pick_on_every_worker() {
    let mut cfg = router_config();
    cfg.settings.scheduler = filter_config::Scheduler::default();
    let mut r = Router::compile(cfg, 1).unwrap();
    let first_pod = |h: &FakeHost| {
        h.get("x-gateway-destination-endpoint")
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_string()
    };
    // A client cannot ask the engine for its load itself.
    let body = r#"{"model":"deepseek-simple"}"#;
    let mut h1 = FakeHost::post(
        "/v1/completions",
        body,
        &[("endpoint-load-metrics-format", "JSON")],
    );
    let mut f1 = Flow::new();
    f1.on_request_headers(Some(&r), &mut h1, false);
    assert!(h1
        .removed
        .contains(&"endpoint-load-metrics-format".to_string()));
    let n = h1.body.len();
    let mut w1 = InFlight::default();
    f1.on_request_body(Some(&mut r), &mut h1, &mut w1, n, true);
    // The router asks the vLLM pod it picked for a report with the answer.
    assert_eq!(h1.get("endpoint-load-metrics-format"), Some("TEXT"));
    assert!(f1.wants_load_report());
    // The picked pod refused the connection and Envoy's retry reached the fallback, which
    // answered: the report is the fallback's, and is shared as its own.
    let picked = first_pod(&h1);
    let endpoints = h1
        .get("x-gateway-destination-endpoint")
        .unwrap()
        .to_string();
    let reported = endpoints
        .split(',')
        .find(|a| *a != picked)
        .unwrap()
        .to_string();
    h1.upstream = Some(reported.clone());
    h1.now = 5_000;
    f1.on_load_report(
        &mut h1,
        Some(&r),
        "TEXT named_metrics.kv_cache_usage_perc=0.99, named_metrics.num_requests_waiting=1000.0",
    );
    let server = r.server(0).unwrap();
    let key = server.load_key.clone().unwrap();
    let slots = crate::load_report::read(&h1, &key, 2);
    let of = |a: &str| slots[server.endpoint_index(a).unwrap()];
    assert_eq!(of(&reported).map(|r| r.report.waiting), Some(Some(1000.0)));
    assert_eq!(of(&picked), None);
    assert!(!f1.wants_load_report(), "one report per answer");
    f1.on_done(&mut h1, &mut w1);
    // Another worker's next picks avoid the pod whose queue is past least-request's limit.
    for _ in 0..6 {
        let mut h2 = FakeHost::post("/v1/completions", body, &[]);
        h2.shared = h1.shared.clone();
        h2.now = 5_100;
        let mut f2 = Flow::new();
        f2.on_request_headers(Some(&r), &mut h2, false);
        f2.on_request_body(Some(&mut r), &mut h2, &mut InFlight::default(), n, true);
        assert_ne!(first_pod(&h2), reported);
    }
}

#[test]
fn a_new_prefix_one_worker_placed_is_followed_by_another_before_their_indexes_sync() {
    // Two Envoy workers: each its own router and prefix index, one shared store. A system
    // prompt's first two conversations arrive together, one on each worker, within one tick
    // of the journal. The second worker learns where the first went from its placement
    // record; without it, the in-flight tie-break sent it to the other pod, the prompt was
    // cached on both, and its conversations drifted between them (bench/QUALITY.md).
    let mut cfg = router_config();
    cfg.settings.scheduler = filter_config::Scheduler::cache_affinity();
    let mut workers = [
        (
            Router::compile(cfg.clone(), 1).unwrap(),
            InFlight::default(),
        ),
        (Router::compile(cfg, 2).unwrap(), InFlight::default()),
    ];
    let mut shared = std::collections::HashMap::new();
    // The pod a request went to, and the placement records in the store after it.
    let mut route = |worker: usize, system: &str, user: &str| {
        let body = format!(
            r#"{{"model":"deepseek-simple","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{user}"}}]}}"#
        );
        let mut h = FakeHost::post("/v1/chat/completions", &body, &[]);
        h.shared = std::mem::take(&mut shared);
        let (r, in_flight) = &mut workers[worker];
        let mut f = Flow::new();
        f.on_request_headers(Some(r), &mut h, false);
        f.on_request_body(Some(r), &mut h, in_flight, body.len(), true);
        shared = std::mem::take(&mut h.shared);
        assert_eq!(h.reply, None);
        let endpoints = h.get("x-gateway-destination-endpoint").unwrap();
        let mut records: Vec<(String, Vec<u8>)> = shared
            .iter()
            .filter(|(k, _)| k.starts_with("modelroute.placed."))
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        records.sort();
        (endpoints.split(',').next().unwrap().to_string(), records)
    };
    let system = "You are a careful assistant who answers briefly. ".repeat(12);
    let (first, placed) = route(0, &system, "hello");
    assert_eq!(placed.len(), 1, "a new prompt's placement is published");
    assert_eq!(
        route(1, &system, "good morning"),
        (first.clone(), placed.clone())
    );
    // A prompt its index mostly knows (the next turn, another user) publishes nothing.
    assert_eq!(route(0, &system, "hi again").1, placed);
    // A new system prompt that opens like the first is new all the same: placed, published
    // (under its first block the indexes do not know), and followed.
    let similar = format!(
        "{}Reply in French only. {}",
        &system[..130],
        "Be concise and polite. ".repeat(20)
    );
    let (second, now_placed) = route(0, &similar, "hello");
    assert_eq!(now_placed.len(), 2, "{now_placed:?}");
    assert_eq!(route(1, &similar, "good morning").0, second);
}

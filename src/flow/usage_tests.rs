//! Fake-host tests of usage accounting through the flow: what goes upstream, what the client
//! gets back, what is published when the request ends.
use super::fake::FakeHost;
use super::*;
use crate::in_flight::InFlight;
use filter_config::{published, FilterConfig, Match, Route, Rule, Server};

fn router() -> Router {
    let rule = Rule::fixture("default", Match::default(), &[("ds", 100)]);
    let config = FilterConfig::fixture(
        vec![Route::fixture("simple", Some("ds-model"), &[], vec![rule])],
        vec![Server::fixture("ds", "real/model", &["127.0.0.2:8000"])],
    );
    Router::compile(config, 7).unwrap()
}

/// Headers and the whole body through the flow (the clock at 1000 ms).
fn send(r: &mut Router, h: &mut FakeHost) -> Flow {
    h.now = 1_000;
    let mut f = Flow::new();
    if f.on_request_headers(Some(r), h, false) == Action::Pause && h.reply.is_none() {
        let n = h.body.len();
        f.on_request_body(Some(r), h, &mut InFlight::default(), n, true);
    }
    f
}

/// Delivers one response body piece; returns what the client gets.
fn deliver(f: &mut Flow, h: &mut FakeHost, piece: &str, end: bool) -> String {
    h.response_chunk = piece.as_bytes().to_vec();
    h.response_replaced = None;
    f.on_response_body(h, piece.len(), end);
    let out = h
        .response_replaced
        .take()
        .unwrap_or(h.response_chunk.clone());
    String::from_utf8(out).unwrap()
}

const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\" b\"}}]}\n\n";
const USAGE: &str =
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

#[test]
fn a_stream_without_include_usage_is_asked_for_it_and_the_client_never_sees_it() {
    let mut r = router();
    let mut h = FakeHost::post(
        "/v1/chat/completions",
        r#"{"model":"ds-model","stream":true,"messages":[{"role":"user","content":"Hi"}]}"#,
        &[],
    );
    let mut f = send(&mut r, &mut h);
    let upstream = h.body_json();
    assert_eq!(upstream["model"], "real/model");
    assert_eq!(
        upstream["stream_options"],
        serde_json::json!({"include_usage": true})
    );
    assert_eq!(
        h.get("content-length"),
        Some(h.body.len().to_string().as_str())
    );

    assert!(f.wants_response());
    f.on_response_headers(&mut h, Some(200), "text/event-stream", false, None);
    h.now = 1_050;
    let mut client = deliver(&mut f, &mut h, STREAM, false);
    h.now = 1_090;
    client += &deliver(&mut f, &mut h, &format!("{USAGE}{DONE}"), true);
    assert_eq!(client, format!("{STREAM}{DONE}"));

    f.on_done(&mut h, &mut InFlight::default());
    assert_eq!(h.published(published::MODEL), Some("ds-model"));
    assert_eq!(h.published(published::ROUTE), Some("default/simple"));
    assert_eq!(h.published(published::SERVER), Some("default/ds"));
    assert_eq!(h.published(published::INPUT_TOKENS), Some("9"));
    assert_eq!(h.published(published::OUTPUT_TOKENS), Some("2"));
    assert_eq!(h.published(published::TTFT), Some("0.050"));
    assert_eq!(h.published(published::DURATION), Some("0.090"));
    assert_eq!(
        h.published(published::ERROR_TYPE),
        Some("successful_request")
    );
    // Every active-request gauge the request raised is back down.
    assert_eq!(h.gauges.len(), 2, "{:?}", h.gauges);
    assert!(h.gauges.values().all(|v| *v == 0), "{:?}", h.gauges);
    // Kthena's counters, labels in the name for Envoy's tag extraction.
    let labels = "model=.=ds-model;.;path=.=/v1/chat/completions;.;";
    let target = "model_route=.=default/simple;.;backend_type=.=model_server;.;backend_name=.=default/ds;.;upstream_model=.=real/model;.;";
    let requests = format!(
        "{labels}status_code=.=200;.;error_type=.=successful_request;.;{target}kthena_router_requests_total"
    );
    let output = format!("{labels}token_type=.=output;.;{target}kthena_router_tokens_total");
    let input = format!("{labels}token_type=.=input;.;{target}kthena_router_tokens_total");
    assert_eq!(h.counted.get(&requests), Some(&1), "{:?}", h.counted);
    assert_eq!(h.counted.get(&output), Some(&2), "{:?}", h.counted);
    assert_eq!(h.counted.get(&input), Some(&9), "{:?}", h.counted);
}

#[test]
fn a_client_that_asked_for_usage_is_left_alone() {
    let mut r = router();
    let body = r#"{"model":"ds-model","stream":true,"stream_options":{"include_usage":true},"prompt":"x"}"#;
    let mut h = FakeHost::post("/v1/completions", body, &[]);
    let mut f = send(&mut r, &mut h);
    assert_eq!(
        h.body_json()["stream_options"],
        serde_json::json!({"include_usage": true})
    );
    f.on_response_headers(&mut h, Some(200), "text/event-stream", false, None);
    let all = format!("{STREAM}{USAGE}{DONE}");
    assert_eq!(deliver(&mut f, &mut h, &all, true), all);
}

#[test]
fn unknown_models_are_published_as_unknown_with_kthenas_error_type() {
    let mut r = router();
    let mut h = FakeHost::post(
        "/v1/random-path-7f",
        r#"{"model":"no-such-model-81b2","prompt":"abcdefgh"}"#,
        &[],
    );
    let mut f = send(&mut r, &mut h);
    assert_eq!(h.reply.as_ref().map(|r| r.0), Some(404));
    assert!(!f.wants_response());
    f.on_done(&mut h, &mut InFlight::default());
    assert_eq!(h.published(published::MODEL), Some("unknown"));
    assert_eq!(h.published(published::PATH), Some("other"));
    assert_eq!(h.published(published::ERROR_TYPE), Some("route_not_found"));
    assert_eq!(h.published(published::INPUT_TOKENS), Some("2"));
    assert!(h
        .published(published::ERROR_MESSAGE)
        .is_some_and(|m| m.contains("no-such-model-81b2")));
    assert!(
        h.gauges.keys().all(|g| !g.contains("no-such-model")),
        "{:?}",
        h.gauges
    );
}

#[test]
fn requests_that_are_not_inference_publish_nothing() {
    let mut r = router();
    let mut h = FakeHost::request("GET", "/v1/models");
    let mut f = send(&mut r, &mut h);
    f.on_done(&mut h, &mut InFlight::default());
    assert!(h.published.is_empty());
    assert!(!f.wants_response());
}

/// `ds-model` limited to `input` / `output` tokens a minute.
fn limited_router(input: Option<u64>, output: Option<u64>) -> Router {
    limited_router_in(input, output, None)
}

/// As [`limited_router`], the budget `global` when given.
fn limited_router_in(
    input: Option<u64>,
    output: Option<u64>,
    global: Option<filter_config::GlobalRateLimit>,
) -> Router {
    let rule = Rule::fixture("default", Match::default(), &[("ds", 100)]);
    let limit = filter_config::RateLimit {
        input_per_unit: input,
        output_per_unit: output,
        unit_seconds: 60,
        client_header: None,
        client_slots: 0,
        global,
    };
    let config = FilterConfig::fixture(
        vec![
            Route::fixture("simple", Some("ds-model"), &[], vec![rule.clone()])
                .with_rate_limit(limit.clone()),
            Route::fixture("lora", None, &["ds-lora"], vec![rule]).with_rate_limit(limit),
        ],
        vec![Server::fixture("ds", "real/model", &["127.0.0.2:8000"])],
    );
    Router::compile(config, 7).unwrap()
}

/// A completion whose prompt Kthena estimates at 5 tokens (20 characters).
fn five_token_request(model: &str) -> FakeHost {
    FakeHost::post(
        "/v1/completions",
        &format!(r#"{{"model":"{model}","prompt":"abcdefghijklmnopqrst"}}"#),
        &[],
    )
}

#[test]
fn input_budgets_admit_what_fits_and_refuse_the_rest_with_openai_headers() {
    let mut r = limited_router(Some(30), None);
    let mut shared = std::collections::HashMap::new();
    let mut statuses = vec![];
    let mut last = None;
    for _ in 0..8 {
        let mut h = five_token_request("ds-model");
        h.shared = std::mem::take(&mut shared);
        let mut f = send(&mut r, &mut h);
        f.on_done(&mut h, &mut InFlight::default());
        statuses.push(h.reply.as_ref().map_or(200, |r| r.0));
        shared = std::mem::take(&mut h.shared);
        last = Some(h);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429]);
    let h = last.unwrap();
    let (status, body) = h.reply_json();
    assert_eq!(status, 429);
    assert_eq!(body["error"]["message"], "input token rate limit exceeded");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(h.reply_header("retry-after"), Some("10"));
    assert_eq!(h.reply_header("x-ratelimit-limit-tokens"), Some("30"));
    assert_eq!(h.reply_header("x-ratelimit-remaining-tokens"), Some("0"));
    assert_eq!(h.published(published::ERROR_TYPE), Some("rate_limit"));
    let exceeded = "model=.=ds-model;.;limit_type=.=input_tokens;.;path=.=/v1/completions;.;kthena_router_rate_limit_exceeded_total";
    assert_eq!(h.counted.get(exceeded), Some(&1), "{:?}", h.counted);
}

#[test]
fn a_long_answer_puts_the_output_budget_in_deficit_until_it_refills() {
    let mut r = limited_router(None, Some(100));
    let mut h = five_token_request("ds-model");
    let mut f = send(&mut r, &mut h);
    assert!(h.reply.is_none());
    f.on_response_headers(&mut h, Some(200), "application/json", false, None);
    let answer = r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":250}}"#;
    deliver(&mut f, &mut h, answer, true);
    f.on_done(&mut h, &mut InFlight::default());
    // -150 tokens: refused, and still refused a minute later (+100), not after 91 s.
    for (now, want) in [(1_000, Some(429)), (61_000, Some(429)), (92_000, None)] {
        let mut next = five_token_request("ds-model");
        next.shared = h.shared.clone();
        let mut f = Flow::new();
        next.now = now;
        f.on_request_headers(Some(&r), &mut next, false);
        let n = next.body.len();
        f.on_request_body(Some(&mut r), &mut next, &mut InFlight::default(), n, true);
        assert_eq!(next.reply.as_ref().map(|r| r.0), want, "at {now} ms");
        if want.is_some() {
            assert_eq!(
                next.reply_json().1["error"]["message"],
                "output token rate limit exceeded"
            );
        }
    }
}

#[test]
fn lora_requests_are_never_limited() {
    let mut r = limited_router(Some(1), Some(1));
    for _ in 0..5 {
        let mut h = five_token_request("ds-lora");
        send(&mut r, &mut h);
        assert!(h.reply.is_none(), "{:?}", h.reply);
    }
}

#[test]
fn a_global_budget_is_left_to_envoys_rate_limit_filter_and_its_refusal_is_counted() {
    use filter_config::global_rate_limit::{Budget, ADMIT_HITS, BUDGET, DEBIT_HITS};
    let global = filter_config::GlobalRateLimit {
        redis: "redis:6379".into(),
        deny_on_redis_failure: true,
    };
    let mut r = limited_router_in(Some(30), Some(100), Some(global.clone()));
    // Admitted here: the budget and the estimate are published, nothing is drawn locally.
    let mut h = five_token_request("ds-model");
    let mut f = send(&mut r, &mut h);
    assert!(h.reply.is_none());
    assert!(
        h.shared.is_empty(),
        "no local bucket: {:?}",
        h.shared.keys()
    );
    let budget = Budget::parse(h.published(BUDGET).unwrap()).unwrap();
    assert_eq!(
        (
            budget.model,
            budget.input_per_unit,
            budget.output_per_unit,
            budget.unit_seconds
        ),
        ("ds-model", Some(30), Some(100), 60)
    );
    assert_eq!(
        (budget.redis, budget.deny_on_redis_failure),
        ("redis:6379", true)
    );
    assert_eq!(h.published(ADMIT_HITS), Some("5"));
    // The answer's tokens, once it has ended (before the stream is done).
    f.on_response_headers(&mut h, Some(200), "application/json", false, None);
    let answer = r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":250}}"#;
    deliver(&mut f, &mut h, answer, false);
    assert_eq!(h.published(DEBIT_HITS), None);
    deliver(&mut f, &mut h, "", true);
    assert_eq!(h.published(DEBIT_HITS), Some("250"));

    // Refused by the service: counted and published as this filter's own refusal would be.
    let mut h = five_token_request("ds-model");
    let mut f = send(&mut r, &mut h);
    f.on_response_headers(
        &mut h,
        Some(429),
        "application/json",
        true,
        Some("output_tokens"),
    );
    f.on_done(&mut h, &mut InFlight::default());
    assert_eq!(h.published(published::ERROR_TYPE), Some("rate_limit"));
    assert_eq!(h.published(published::BACKEND_TYPE), Some("none"));
    assert_eq!(h.published(DEBIT_HITS), None);
    let exceeded = "model=.=ds-model;.;limit_type=.=output_tokens;.;path=.=/v1/completions;.;kthena_router_rate_limit_exceeded_total";
    assert_eq!(h.counted.get(exceeded), Some(&1), "{:?}", h.counted);

    // Nothing to debit without an output limit: nothing published, so no call.
    let mut input_only = limited_router_in(Some(30), None, Some(global));
    let mut h = five_token_request("ds-model");
    let mut f = send(&mut input_only, &mut h);
    assert!(h.published(BUDGET).is_some());
    f.on_response_headers(&mut h, Some(200), "application/json", false, None);
    deliver(&mut f, &mut h, answer, true);
    assert_eq!(h.published(DEBIT_HITS), None);

    // An engine's header of that name means nothing for a request without a global budget.
    let mut local = limited_router(Some(30), None);
    let mut h = five_token_request("ds-model");
    let mut f = send(&mut local, &mut h);
    f.on_response_headers(
        &mut h,
        Some(200),
        "application/json",
        true,
        Some("input_tokens"),
    );
    f.on_done(&mut h, &mut InFlight::default());
    assert_eq!(
        h.published(published::ERROR_TYPE),
        Some("successful_request")
    );
}

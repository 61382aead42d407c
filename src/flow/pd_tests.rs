//! Fake-host tests of the PD leg sequences and their failure paths.
use super::fake::FakeHost;
use super::*;
use crate::in_flight::InFlight;
use filter_config::{Engine, FilterConfig, Role, Route, Rule, Server, Settings};
use serde_json::json;

const MODEL: &str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B";

/// A PD server with groups g0 (P .10, D .11) and g1 (P .20, D .21), plus a group with only a
/// prefill pod (never used) and a role-less pod.
fn router(engine: Engine, connector: Option<&str>, retry: Option<u32>) -> Router {
    Router::compile(config(engine, connector, retry), 5).unwrap()
}

fn config(engine: Engine, connector: Option<&str>, retry: Option<u32>) -> FilterConfig {
    let server = Server::fixture("pd", MODEL, &[])
        .with_timeout_ms(10_000)
        .with_retry(retry)
        .with_engine(engine, connector)
        .with_pd(
            "modelserving.volcano.sh/group-name",
            Some(8998),
            &[
                ("127.0.0.10:8000", Some("g0"), Some(Role::Prefill)),
                ("127.0.0.11:8000", Some("g0"), Some(Role::Decode)),
                ("127.0.0.20:8000", Some("g1"), Some(Role::Prefill)),
                ("127.0.0.21:8000", Some("g1"), Some(Role::Decode)),
                ("127.0.0.30:8000", Some("g2"), Some(Role::Prefill)),
                ("127.0.0.40:8000", None, None),
            ],
        );
    let rule = Rule::fixture("default", Default::default(), &[("pd", 100)]);
    // Round-robin pairing (the fixture's scheduler): these tests pin the leg sequences.
    FilterConfig::fixture(
        vec![Route::fixture("pd", Some("pd"), &[], vec![rule])],
        vec![server],
    )
}

const BODY: &str = r#"{"model":"pd","prompt":"San Francisco is a","stream":true,"stream_options":{"include_usage":true},"max_tokens":32}"#;

/// Headers then body; returns the body-phase action.
fn start(r: &mut Router, h: &mut FakeHost) -> Action {
    let mut f = Flow::new();
    start_with(&mut f, r, h)
}

fn start_with(f: &mut Flow, r: &mut Router, h: &mut FakeHost) -> Action {
    assert_eq!(f.on_request_headers(Some(r), h, false), Action::Pause);
    let n = h.body.len();
    f.on_request_body(Some(r), h, &mut InFlight::default(), n, true)
}

fn answer(f: &mut Flow, h: &mut FakeHost, status: Option<u32>, body: &str) {
    let token = h.calls.last().unwrap().0;
    h.call_answer = Some((status, body.as_bytes().to_vec()));
    f.on_call_response(h, token, body.len());
}

#[test]
fn vllm_http_prefill_first_then_decode_in_the_same_group() {
    let mut r = router(Engine::Vllm, None, None);
    let mut h = FakeHost::post("/v1/completions", BODY, &[("x-request-id", "rid-1")]);
    let mut f = Flow::new();
    assert_eq!(start_with(&mut f, &mut r, &mut h), Action::Pause);
    assert_eq!(h.calls.len(), 1);
    let (_, cluster, _, _, timeout) = &h.calls[0];
    assert_eq!(
        (cluster.as_str(), *timeout),
        ("modelserver|default|pd", 10_000)
    );
    assert_eq!(
        h.call_header(0, "x-gateway-destination-endpoint"),
        Some("127.0.0.10:8000")
    );
    assert_eq!(h.call_header(0, "x-request-id"), Some("rid-1"));
    assert_eq!(h.call_header(0, ":path"), Some("/v1/completions"));
    assert_eq!(
        h.call_json(0),
        json!({"model": MODEL, "prompt": "San Francisco is a", "max_tokens": 1})
    );
    assert!(
        h.get("x-modelroute-cluster").is_none(),
        "decode must wait for the prefill"
    );

    answer(&mut f, &mut h, Some(200), r#"{"choices":[{"text":"x"}]}"#);
    assert_eq!(h.resumed, 1);
    assert_eq!(
        h.get("x-gateway-destination-endpoint"),
        Some("127.0.0.11:8000")
    );
    assert_eq!(
        h.get("x-modelroute-cluster"),
        Some("modelserver|default|pd")
    );
    assert_eq!(h.get("x-envoy-max-retries"), Some("0"));
    assert_eq!(h.get("x-request-id"), Some("rid-1"));
    let d = h.body_json();
    assert_eq!(d["model"], MODEL);
    assert_eq!(d["stream"], true);
    assert_eq!(d["max_tokens"], 32);
    assert_eq!(
        h.get("content-length"),
        Some(h.body.len().to_string().as_str())
    );
    assert_eq!(h.counters, vec![Counter::PrefillOk]);
    assert_eq!(f.outcome.prefill, "127.0.0.10:8000");
}

#[test]
fn nixl_kv_transfer_params_travel_verbatim_from_prefill_answer_to_decode() {
    let mut r = router(Engine::Vllm, Some("nixl"), None);
    let mut h = FakeHost::post("/v1/completions", BODY, &[]);
    let mut f = Flow::new();
    start_with(&mut f, &mut r, &mut h);
    assert_eq!(
        h.call_json(0)["kv_transfer_params"]["do_remote_decode"],
        true
    );
    let kv = r#"{"do_remote_prefill":true,"do_remote_decode":false,"remote_engine_id":"e-7","remote_block_ids":[1,2,3],"remote_host":"127.0.0.10","remote_port":8000,"tp_size":1}"#;
    answer(
        &mut f,
        &mut h,
        Some(200),
        &format!(r#"{{"id":"c","kv_transfer_params":{kv}}}"#),
    );
    let sent = String::from_utf8(h.body.clone()).unwrap();
    assert!(
        sent.contains(&format!(r#""kv_transfer_params":{kv}"#)),
        "{sent}"
    );
    // Both legs carry the same request id (generated here, since the client sent none).
    assert_eq!(h.call_header(0, "x-request-id"), h.get("x-request-id"));
}

#[test]
fn nixl_answer_without_params_is_counted_and_decode_computes_itself() {
    let mut r = router(Engine::Vllm, Some("mooncake"), None);
    let mut h = FakeHost::post("/v1/completions", BODY, &[]);
    let mut f = Flow::new();
    start_with(&mut f, &mut r, &mut h);
    answer(&mut f, &mut h, Some(200), r#"{"id":"c"}"#);
    assert_eq!(h.resumed, 1);
    assert!(h.body_json().get("kv_transfer_params").is_none());
    assert!(h.counters.contains(&Counter::KvParamsMissing));
}

#[test]
fn sglang_sends_both_legs_at_once_with_one_bootstrap_room() {
    let mut r = router(Engine::Sglang, None, None);
    let mut h = FakeHost::post("/v1/chat/completions", BODY, &[]);
    let mut f = Flow::new();
    assert_eq!(start_with(&mut f, &mut r, &mut h), Action::Continue);
    let p = h.call_json(0);
    let d = h.body_json();
    assert_eq!(
        h.call_header(0, "x-gateway-destination-endpoint"),
        Some("127.0.0.10:8000")
    );
    assert_eq!(
        h.get("x-gateway-destination-endpoint"),
        Some("127.0.0.11:8000")
    );
    for k in ["bootstrap_host", "bootstrap_port", "bootstrap_room"] {
        assert_eq!(p[k], d[k], "{k}");
    }
    assert_eq!(d["bootstrap_host"], "127.0.0.10");
    assert_eq!(d["bootstrap_port"], 8998);
    assert!(d["bootstrap_room"].as_u64().unwrap() < (1 << 63));
    // The prefill answer, when it comes, is only counted.
    answer(&mut f, &mut h, Some(200), "{}");
    assert_eq!(h.counters, vec![Counter::PrefillOk]);
    assert_eq!(h.resumed, 0);
    // A new attempt gets a new room.
    let mut h2 = FakeHost::post("/v1/chat/completions", BODY, &[]);
    start(&mut r, &mut h2);
    assert_ne!(h2.body_json()["bootstrap_room"], d["bootstrap_room"]);
}

#[test]
fn failed_prefill_moves_to_the_next_pair_in_another_group() {
    let mut r = router(Engine::Vllm, None, Some(2));
    let mut h = FakeHost::post("/v1/completions", BODY, &[]);
    let mut f = Flow::new();
    start_with(&mut f, &mut r, &mut h);
    answer(&mut f, &mut h, Some(500), "boom");
    assert_eq!(h.calls.len(), 2);
    assert_eq!(
        h.call_header(1, "x-gateway-destination-endpoint"),
        Some("127.0.0.20:8000")
    );
    answer(&mut f, &mut h, Some(200), "{}");
    assert_eq!(
        h.get("x-gateway-destination-endpoint"),
        Some("127.0.0.21:8000")
    );
    assert_eq!(
        h.counters,
        vec![Counter::PrefillFailed, Counter::PdRetry, Counter::PrefillOk]
    );
    assert_eq!(h.resumed, 1);
    assert!(h.reply.is_none());
}

#[test]
fn exhausted_prefill_failures_answer_502_503_or_504() {
    // Non-2xx everywhere -> 502.
    let mut r = router(Engine::Vllm, None, Some(1));
    let mut h = FakeHost::post("/v1/completions", BODY, &[]);
    let mut f = Flow::new();
    start_with(&mut f, &mut r, &mut h);
    answer(&mut f, &mut h, Some(500), "");
    answer(&mut f, &mut h, Some(503), "");
    assert_eq!(h.reply_json().0, 502);
    assert_eq!(h.reply_json().1["error"]["code"], "prefill_failed");
    assert_eq!(h.resumed, 0);
    assert!(h.counters.contains(&Counter::PdExhausted));

    // Transport failure -> 503.
    let mut r = router(Engine::Vllm, None, Some(0));
    let mut h = FakeHost::post("/v1/completions", BODY, &[]);
    let mut f = Flow::new();
    start_with(&mut f, &mut r, &mut h);
    answer(&mut f, &mut h, None, "");
    assert_eq!(h.reply_json().0, 503);
    assert!(h.counters.contains(&Counter::PrefillUnreachable));

    // No answer within trafficPolicy.timeout -> 504.
    let mut r = router(Engine::Vllm, None, Some(0));
    let mut h = FakeHost::post("/v1/completions", BODY, &[]);
    let mut f = Flow::new();
    start_with(&mut f, &mut r, &mut h);
    h.now += 10_000;
    answer(&mut f, &mut h, None, "");
    assert_eq!(h.reply_json().0, 504);
    assert!(h.counters.contains(&Counter::PrefillTimeout));
}

#[test]
fn a_host_that_refuses_every_dispatch_gets_a_clear_503() {
    let mut r = router(Engine::Vllm, None, None);
    let mut h = FakeHost::post("/v1/completions", BODY, &[]);
    h.refuse_dispatch = true;
    assert_eq!(start(&mut r, &mut h), Action::Pause);
    assert_eq!(h.reply_json().0, 503);
}

#[test]
fn stale_or_foreign_call_answers_are_ignored() {
    let mut r = router(Engine::Vllm, None, None);
    let mut h = FakeHost::post("/v1/completions", BODY, &[]);
    let mut f = Flow::new();
    start_with(&mut f, &mut r, &mut h);
    h.call_answer = Some((Some(200), b"{}".to_vec()));
    f.on_call_response(&mut h, 9999, 2);
    assert_eq!(h.resumed, 0);
    assert!(h.counters.is_empty());
}

#[test]
fn decode_outcome_is_counted_from_the_response_status() {
    let mut r = router(Engine::Sglang, None, None);
    let mut h = FakeHost::post("/v1/completions", BODY, &[]);
    let mut f = Flow::new();
    start_with(&mut f, &mut r, &mut h);
    f.on_response_headers(&mut h, Some(500), "application/json", true, None);
    assert_eq!(h.counters, vec![Counter::DecodeFailed]);
}

#[test]
fn property_pairs_are_always_within_one_group_and_spread_over_groups() {
    let group_of = |a: &str| match a {
        "127.0.0.10:8000" | "127.0.0.11:8000" => "g0",
        "127.0.0.20:8000" | "127.0.0.21:8000" => "g1",
        other => panic!("{other} is not in a complete group"),
    };
    for (engine, conn) in [
        (Engine::Vllm, None),
        (Engine::Vllm, Some("nixl")),
        (Engine::Sglang, None),
    ] {
        let mut r = router(engine, conn, Some(3));
        let mut per_group = std::collections::HashMap::new();
        for _ in 0..100 {
            let mut h = FakeHost::post("/v1/completions", BODY, &[]);
            let mut f = Flow::new();
            start_with(&mut f, &mut r, &mut h);
            if engine != Engine::Sglang {
                answer(&mut f, &mut h, Some(200), "{}");
            }
            let p = h
                .call_header(0, "x-gateway-destination-endpoint")
                .unwrap()
                .to_string();
            let d = h.get("x-gateway-destination-endpoint").unwrap().to_string();
            assert_eq!(group_of(&p), group_of(&d), "{p} / {d}");
            *per_group.entry(group_of(&d)).or_insert(0) += 1;
        }
        assert_eq!(per_group["g0"], 50);
        assert_eq!(per_group["g1"], 50);
    }
}

#[test]
fn pd_server_without_a_complete_group_is_503() {
    // Only a lonely prefill pod and a role-less pod.
    let mut cfg: FilterConfig = serde_json::from_str(
        r#"{"version":1,"routes":[{"name":"r","model_name":"pd","rules":[{"name":"d","targets":[{"server":"s","weight":1}]}]}],
        "servers":[{"name":"s","cluster":"c","engine":"vllm","pd":{"group_key":"g"},"endpoints":[
        {"address":"127.0.0.30:8000","pod":"p30","group":"g2","role":"prefill"},{"address":"127.0.0.40:8000","pod":"p40"}]}]}"#,
    )
    .unwrap();
    cfg.settings = Settings::default();
    let mut r = Router::compile(cfg, 1).unwrap();
    let mut h = FakeHost::post("/v1/completions", BODY, &[]);
    start(&mut r, &mut h);
    assert_eq!(h.reply_json().0, 503);
    assert_eq!(h.reply_json().1["error"]["code"], "no_pd_pair");
}

#[test]
fn envoys_own_503_for_an_unreachable_pod_counts_as_unreachable_not_failed() {
    let mut r = router(Engine::Vllm, None, Some(0));
    let mut h = FakeHost::post("/v1/completions", BODY, &[]);
    let mut f = Flow::new();
    start_with(&mut f, &mut r, &mut h);
    let body = "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
    answer(&mut f, &mut h, Some(503), body);
    assert_eq!(
        h.counters,
        vec![Counter::PrefillUnreachable, Counter::PdExhausted]
    );
    assert_eq!(h.reply_json().0, 503);
    // An engine's own 503 is a failed prefill (502 to the client).
    let mut h = FakeHost::post("/v1/completions", BODY, &[]);
    let mut f = Flow::new();
    start_with(&mut f, &mut r, &mut h);
    answer(
        &mut f,
        &mut h,
        Some(503),
        r#"{"object":"error","message":"overloaded"}"#,
    );
    assert_eq!(h.reply_json().0, 502);
}

#[test]
fn scheduled_pd_pairs_the_best_decode_with_a_prefill_of_its_group() {
    // The default scheduler; decode 127.0.0.11 (group g0) reports a full KV cache.
    let mut cfg: FilterConfig = serde_json::from_str(&format!(
        r#"{{"version":1,"routes":[{{"name":"r","model_name":"pd","rules":[{{"name":"d","targets":[{{"server":"s","weight":1}}]}}]}}],
        "servers":[{{"name":"s","cluster":"c","engine":"vllm","model":"{MODEL}","retry":{{"attempts":1}},"pd":{{"group_key":"g"}},"endpoints":[
        {{"address":"127.0.0.10:8000","pod":"p10","group":"g0","role":"prefill"}},{{"address":"127.0.0.11:8000","pod":"p11","group":"g0","role":"decode"}},
        {{"address":"127.0.0.20:8000","pod":"p20","group":"g1","role":"prefill"}},{{"address":"127.0.0.21:8000","pod":"p21","group":"g1","role":"decode"}}]}}]}}"#
    ))
    .unwrap();
    cfg.settings = Settings::default();
    let mut r = Router::compile(cfg, 3).unwrap();
    let full = crate::metrics::PodStats {
        up: true,
        kv: 0.99,
        ..Default::default()
    };
    let empty = crate::metrics::PodStats {
        up: true,
        kv: 0.0,
        ..Default::default()
    };
    r.set_stats(
        [
            ("127.0.0.11:8000".to_string(), full),
            ("127.0.0.21:8000".to_string(), empty),
        ]
        .into_iter()
        .collect(),
    );
    for _ in 0..10 {
        let mut h = FakeHost::post("/v1/completions", BODY, &[]);
        let mut f = Flow::new();
        start_with(&mut f, &mut r, &mut h);
        assert_eq!(
            h.call_header(0, "x-gateway-destination-endpoint"),
            Some("127.0.0.20:8000")
        );
        answer(&mut f, &mut h, Some(500), "");
        // The retry pair is the other decode with its own group's prefill.
        assert_eq!(
            h.call_header(1, "x-gateway-destination-endpoint"),
            Some("127.0.0.10:8000")
        );
        answer(&mut f, &mut h, Some(200), "{}");
        assert_eq!(
            h.get("x-gateway-destination-endpoint"),
            Some("127.0.0.11:8000")
        );
        f.on_done(&mut h, &mut InFlight::default());
    }
}

#[test]
fn side_calls_and_the_decode_leg_use_the_configured_header_names() {
    let mut cfg = config(Engine::Vllm, None, None);
    cfg.settings.cluster_header = "x-my-cluster".into();
    cfg.settings.endpoint_header = "x-my-pod".into();
    let mut r = Router::compile(cfg, 5).unwrap();
    let mut h = FakeHost::post("/v1/completions", BODY, &[]);
    let mut f = Flow::new();
    assert_eq!(start_with(&mut f, &mut r, &mut h), Action::Pause);
    let (_, _, headers, _, _) = &h.calls[0];
    let pinned = headers
        .iter()
        .find(|(k, _)| k == "x-my-pod")
        .map(|(_, v)| v.clone());
    assert_eq!(pinned.as_deref(), Some("127.0.0.10:8000"), "{headers:?}");
    assert!(headers
        .iter()
        .all(|(k, _)| k != "x-gateway-destination-endpoint"));
    answer(&mut f, &mut h, Some(200), "{}");
    assert_eq!(h.get("x-my-pod"), Some("127.0.0.11:8000"));
    assert_eq!(h.get("x-my-cluster"), Some("modelserver|default|pd"));
}

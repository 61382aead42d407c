//! PD-disaggregated routing (seed scenario 5) end to end in a real Envoy: vLLM http, NIXL and
//! SGLang, streaming and not, pairing within a group, and every failure path. The mock engines
//! verify what real ones require (NIXL decode pulls the KV blocks from the prefill pod named in
//! kv_transfer_params; SGLang decode waits for its prefill at bootstrap_host) and report it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::HashMap;

use serde_json::Value;
use support::*;

const M15: &str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B";
const GROUP: &str = "modelserving.volcano.sh/group-name";
const ROLE: &str = "modelserving.volcano.sh/rolename";

/// A PD ModelServer + ModelRoute named `pd`, in Kthena's YAML.
fn resources(engine: &str, extra_spec: &str, annotations: &str) -> String {
    format!(
        r#"apiVersion: networking.serving.volcano.sh/v1alpha1
kind: ModelServer
metadata:
  name: pd
  namespace: default
{annotations}spec:
  workloadSelector:
    matchLabels:
      app: pd
    pdGroup:
      groupKey: "{GROUP}"
      prefillLabels:
        {ROLE}: "P-instance"
      decodeLabels:
        {ROLE}: "D-instance"
  workloadPort:
    port: 8000
  model: "{M15}"
  inferenceEngine: "{engine}"
{extra_spec}---
apiVersion: networking.serving.volcano.sh/v1alpha1
kind: ModelRoute
metadata:
  name: pd
  namespace: default
spec:
  modelName: "pd"
  rules:
  - name: "default"
    targetModels:
    - modelServerName: "pd"
"#
    )
}

fn pod(name: &str, group: &str, role: &str, engine: &str) -> Pod {
    let (role_label, pd_role) = match role {
        "P" => ("P-instance", "prefill"),
        _ => ("D-instance", "decode"),
    };
    Pod::new(
        name,
        &[("app", "pd"), (GROUP, group), (ROLE, role_label)],
        M15,
    )
    .env("INFERENCE_ENGINE", engine)
    .env("PD_ROLE", pd_role)
}

/// Two complete groups, plus pods that must never be used: a decode pod whose group has no
/// prefill pod, and a grouped pod with no role.
fn two_groups(engine: &str, connector: Option<&str>) -> Vec<Pod> {
    let with = |p: Pod| match connector {
        Some(c) => p.env("KV_CONNECTOR", c),
        None => p,
    };
    let mut pods = vec![
        with(pod("g0-p", "g0", "P", engine)),
        with(pod("g0-d", "g0", "D", engine)),
        with(pod("g1-p", "g1", "P", engine)),
        with(pod("g1-d", "g1", "D", engine)),
        with(pod("lonely-d", "g9", "D", engine)),
        Pod::new("no-role", &[("app", "pd"), (GROUP, "g0")], M15),
    ];
    if engine == "sglang" {
        pods = pods
            .into_iter()
            .map(|p| p.env("SGLANG_BOOTSTRAP_PORT", "{BOOTSTRAP_PORT}"))
            .collect();
    }
    pods
}

fn group_of(pod: &str) -> &str {
    pod.split('-').next().unwrap()
}

/// Every record a pod saw, keyed by x-request-id.
fn by_request_id(s: &Stack, pod: &str) -> HashMap<String, Value> {
    s.pod_requests(pod)
        .into_iter()
        .map(|r| (r["request_id"].as_str().unwrap_or("").to_string(), r))
        .collect()
}

/// Both groups serve a fair share. With the default scheduler and idle pods every score ties,
/// and ties go by rendezvous hashing of each prompt's first block (so all workers send a new
/// prompt to the same pod): distinct prompts spread like fair coins, not in strict turns.
fn assert_spread(per_group: &HashMap<String, usize>) {
    let (a, b) = (per_group["g0"], per_group["g1"]);
    assert!(
        a.min(b) * 4 >= a + b,
        "a group got less than a quarter: {per_group:?}"
    );
}

fn completion(s: &Stack, stream: bool) -> Response {
    completion_n(s, 0, stream)
}

/// Request `i`: a prompt of its own, as real traffic has (prefix affinity would otherwise
/// send every request to one pod).
fn completion_n(s: &Stack, i: usize, stream: bool) -> Response {
    let body = format!(
        r#"{{"model":"pd","prompt":"Question {i}: San Francisco is a","max_tokens":16,"stream":{stream}}}"#
    );
    s.post("/v1/completions", &body, &[])
}

fn chat(s: &Stack, i: usize, stream: bool) -> Response {
    let body = format!(
        r#"{{"model":"pd","messages":[{{"role":"user","content":"hi number {i}"}}],"stream":{stream},"stream_options":{{"include_usage":true}}}}"#
    );
    s.post("/v1/chat/completions", &body, &[])
}

fn assert_answer(r: &Response, stream: bool) {
    assert_eq!(r.status, 200, "{}", r.text());
    if stream {
        assert!(r
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/event-stream"));
        assert!(
            r.text().trim_end().ends_with("data: [DONE]"),
            "{}",
            r.text()
        );
    } else {
        assert!(
            r.text()
                .contains(&format!("This is simulated message from {M15}")),
            "{}",
            r.text()
        );
    }
}

/// Checks that every request was served by a decode pod whose own group's prefill pod saw the
/// same request id first, and returns (requests per group, decode records, prefill records).
fn check_pairing(s: &Stack, served: &[String]) -> (HashMap<String, usize>, Vec<Value>, Vec<Value>) {
    let mut per_group = HashMap::new();
    let (mut decodes, mut prefills) = (vec![], vec![]);
    for g in ["g0", "g1"] {
        let p = by_request_id(s, &format!("{g}-p"));
        let d = by_request_id(s, &format!("{g}-d"));
        for (rid, rec) in &d {
            let pre = p
                .get(rid)
                .unwrap_or_else(|| panic!("decode {rid} in {g} has no prefill in {g}: {rec}"));
            prefills.push(pre.clone());
            decodes.push(rec.clone());
        }
        *per_group.entry(g.to_string()).or_insert(0) += d.len();
    }
    assert_eq!(
        decodes.len(),
        served.len(),
        "every request decoded exactly once"
    );
    for p in served {
        assert!(p.ends_with("-d") && p != "lonely-d", "served by {p}");
    }
    for unused in ["lonely-d", "no-role"] {
        assert!(s.pod_requests(unused).is_empty(), "{unused} was used");
    }
    (per_group, decodes, prefills)
}

/// Every request of `n` is accounted from its decode leg: the mock's 6-word answer as output
/// tokens, the prefill pod of the decode pod's group, both legs' durations in the metrics.
fn check_accounting(s: &Stack, n: usize) {
    let log = s.access_log(n);
    assert_eq!(log.len(), n);
    for rec in &log {
        assert_eq!(rec["output_tokens"], "6", "{rec}");
        assert_ne!(rec["input_tokens"], "0", "{rec}");
        let decode = s
            .pod_name_of(rec["selected_pod"].as_str().unwrap())
            .unwrap();
        let prefill = s.pod_name_of(rec["prefill_pod"].as_str().unwrap()).unwrap();
        assert_eq!(prefill, format!("{}-p", group_of(&decode)), "{rec}");
    }
    for leg in ["prefill", "decode"] {
        let name = format!("kthena_router_request_{leg}_duration_seconds_count");
        assert_eq!(s.series_sum(&name, &[("model", "pd")], n as f64), n as f64);
    }
}

#[test]
fn vllm_default_connector_prefills_one_token_then_decodes_in_the_same_group() {
    let s = Stack::start(
        &resources("vLLM", "", ""),
        two_groups("vllm", None),
        Options::default(),
    );
    let mut served = vec![];
    for i in 0..12 {
        let stream = i % 3 == 0;
        let r = if i % 2 == 0 {
            completion_n(&s, i, stream)
        } else {
            chat(&s, i, stream)
        };
        assert_answer(&r, stream);
        served.push(r.pod());
    }
    let (per_group, decodes, prefills) = check_pairing(&s, &served);
    assert_spread(&per_group);
    for p in &prefills {
        assert_eq!(p["body"]["max_tokens"], 1, "{p}");
        assert!(
            p["body"].get("stream").is_none() && p["body"].get("stream_options").is_none(),
            "{p}"
        );
        assert_eq!(p["model"], M15);
    }
    for d in &decodes {
        assert_eq!(d["model"], M15);
        assert_ne!(d["body"]["max_tokens"], 1);
    }
    assert_eq!(s.stat("wasmcustom.modelroute.pd.prefill_ok"), 12);
    assert_eq!(s.stat("wasmcustom.modelroute.pd.decode_ok"), 12);
    check_accounting(&s, 12);
}

#[test]
fn nixl_kv_transfer_params_reach_the_decode_pod_verbatim() {
    let kv = "  kvConnector:\n    type: nixl\n";
    let s = Stack::start(
        &resources("vLLM", kv, ""),
        two_groups("vllm", Some("nixl")),
        Options::default(),
    );
    let mut served = vec![];
    for i in 0..8 {
        let stream = i % 2 == 1;
        let r = chat(&s, i, stream);
        assert_answer(&r, stream);
        served.push(r.pod());
    }
    let (_, decodes, prefills) = check_pairing(&s, &served);
    for p in &prefills {
        assert_eq!(
            p["body"]["kv_transfer_params"]["do_remote_decode"], true,
            "{p}"
        );
    }
    for d in &decodes {
        let pod = d["headers"]["x-gateway-destination-endpoint"]
            .as_str()
            .unwrap();
        let group = group_of(&s.pod_name_of(pod).unwrap()).to_string();
        // The decode pod pulled its KV blocks from its own group's prefill pod.
        assert_eq!(
            d["kv_pulled_from"].as_str(),
            Some(s.pod_addr(&format!("{group}-p")).as_str()),
            "{d}"
        );
        assert!(d["body"]["kv_transfer_params"]["remote_block_ids"]
            .as_array()
            .is_some_and(|b| !b.is_empty()));
        assert_ne!(d["local_prefill"], true);
    }
    assert_eq!(s.stat("wasmcustom.modelroute.pd.kv_params_missing"), 0);
    check_accounting(&s, 8);
}

#[test]
fn sglang_legs_run_concurrently_and_meet_at_the_bootstrap_room() {
    let annotations =
        "  annotations:\n    modelroute.io/sglang-bootstrap-port: \"{BOOTSTRAP_PORT}\"\n";
    let s = Stack::start(
        &resources("SGLang", "", annotations),
        two_groups("sglang", None),
        Options::default(),
    );
    let mut served = vec![];
    for i in 0..8 {
        let stream = i % 2 == 0;
        let r = completion_n(&s, i, stream);
        assert_answer(&r, stream);
        served.push(r.pod());
    }
    let (per_group, decodes, prefills) = check_pairing(&s, &served);
    assert_spread(&per_group);
    let rooms: Vec<&Value> = prefills
        .iter()
        .map(|p| &p["body"]["bootstrap_room"])
        .collect();
    for (d, p) in decodes.iter().zip(&prefills) {
        for k in ["bootstrap_host", "bootstrap_port", "bootstrap_room"] {
            assert_eq!(d["body"][k], p["body"][k], "{k}");
        }
        assert_eq!(d["body"]["bootstrap_port"], s.bootstrap_port);
        assert!(d["bootstrap_waited_ms"].is_number(), "{d}");
    }
    let distinct: std::collections::HashSet<String> = rooms.iter().map(|r| r.to_string()).collect();
    assert_eq!(distinct.len(), rooms.len(), "one room per request");
    check_accounting(&s, 8);
}

#[test]
fn a_dead_prefill_pod_is_skipped_for_the_other_group() {
    let mut pods = two_groups("vllm", None);
    pods[0] = pods[0].clone().dead(); // g0-p is listed Ready but nothing listens
    let s = Stack::start(&resources("vLLM", "", ""), pods, Options::default());
    for i in 0..12 {
        let r = completion_n(&s, i, false);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.pod(), "g1-d");
    }
    assert!(
        s.pod_requests("g0-d").is_empty(),
        "a decode ran without its prefill"
    );
    // Until the collector noticed the dead pod, a pair in g0 was tried and replaced.
    let unreachable = s.stat("wasmcustom.modelroute.pd.prefill_unreachable");
    assert_eq!(s.stat("wasmcustom.modelroute.pd.retry"), unreachable);
    assert_eq!(s.stat("wasmcustom.modelroute.pd.exhausted"), 0);
}

#[test]
fn failures_end_with_a_clear_error_never_a_hang() {
    // Every prefill pod answers 500: 502 after trying both groups.
    let failing: Vec<Pod> = two_groups("vllm", None)
        .into_iter()
        .map(|p| {
            if p.name.ends_with("-p") {
                p.env("MOCK_STATUS", "500")
            } else {
                p
            }
        })
        .collect();
    let s = Stack::start(&resources("vLLM", "", ""), failing, Options::default());
    let r = completion(&s, false);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "prefill_failed");
    assert_eq!(
        s.pod_requests("g0-p").len() + s.pod_requests("g1-p").len(),
        2,
        "one try per group"
    );
    assert!(s.pod_requests("g0-d").is_empty() && s.pod_requests("g1-d").is_empty());
    drop(s);

    // Every prefill pod too slow for trafficPolicy.timeout: 504 in about the timeout.
    let slow: Vec<Pod> = two_groups("vllm", None)
        .into_iter()
        .map(|p| {
            if p.name.ends_with("-p") {
                p.env("MOCK_DELAY_MS", "3000")
            } else {
                p
            }
        })
        .collect();
    let policy = "  trafficPolicy:\n    timeout: 500ms\n    retry:\n      attempts: 0\n";
    let s = Stack::start(&resources("vLLM", policy, ""), slow, Options::default());
    let t = std::time::Instant::now();
    let r = completion(&s, false);
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "prefill_timeout");
    assert!(
        t.elapsed() < std::time::Duration::from_millis(2500),
        "took {:?}",
        t.elapsed()
    );
    drop(s);

    // No prefill pod reachable at all: 503.
    let dead: Vec<Pod> = two_groups("vllm", None)
        .into_iter()
        .map(|p| if p.name.ends_with("-p") { p.dead() } else { p })
        .collect();
    let s = Stack::start(&resources("vLLM", "", ""), dead, Options::default());
    let r = completion(&s, false);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.json()["error"]["message"].is_string());
}

#[test]
fn a_decode_failure_after_prefill_is_reported_not_retried() {
    let pods: Vec<Pod> = two_groups("vllm", None)
        .into_iter()
        .map(|p| {
            if p.name.ends_with("-d") {
                p.env("MOCK_STATUS", "500")
            } else {
                p
            }
        })
        .collect();
    let s = Stack::start(&resources("vLLM", "", ""), pods, Options::default());
    let r = completion(&s, false);
    assert_eq!(
        r.status,
        500,
        "the engine's answer is passed through: {}",
        r.text()
    );
    let prefills = s.pod_requests("g0-p").len() + s.pod_requests("g1-p").len();
    let decodes = s.pod_requests("g0-d").len() + s.pod_requests("g1-d").len();
    assert_eq!((prefills, decodes), (1, 1));
    assert_eq!(s.stat("wasmcustom.modelroute.pd.decode_failed"), 1);
}

#[test]
fn escaped_keys_cannot_smuggle_streaming_into_a_nixl_prefill() {
    let kv = "  kvConnector:\n    type: nixl\n";
    let s = Stack::start(
        &resources("vLLM", kv, ""),
        two_groups("vllm", Some("nixl")),
        Options::default(),
    );
    // `stre\u0061m` is `stream` to every JSON parser, the engine's included.
    let body = r#"{"model":"pd","stre\u0061m":true,"stream_opti\u006fns":{"include_usage":true},"messages":[{"role":"user","content":"escaped"}]}"#;
    let r = s.post("/v1/chat/completions", body, &[]);
    assert_answer(&r, true);
    let (_, decodes, prefills) = check_pairing(&s, &[r.pod()]);
    let prefill = &prefills[0]["body"];
    assert!(prefill.get("stream").is_none(), "{prefill}");
    assert!(prefill.get("stream_options").is_none(), "{prefill}");
    assert_eq!(prefill["max_tokens"], 1);
    assert_eq!(prefill["kv_transfer_params"]["do_remote_decode"], true);
    assert!(decodes[0]["kv_pulled_from"].is_string(), "{}", decodes[0]);
    assert_eq!(s.stat("wasmcustom.modelroute.pd.kv_params_missing"), 0);
}

#[test]
fn a_decode_stream_longer_than_the_timeout_runs_to_its_end() {
    // trafficPolicy.timeout bounds the first byte, as in Kthena; a stream that has begun is
    // never cut by it.
    let policy = "  trafficPolicy:\n    timeout: 1s\n";
    let s = Stack::start(
        &resources("vLLM", policy, ""),
        two_groups("vllm", None),
        Options::default(),
    );
    let body =
        r#"{"model":"pd","stream":true,"messages":[{"role":"user","content":"a long answer"}]}"#;
    let t = std::time::Instant::now();
    let r = s.post(
        "/v1/chat/completions",
        body,
        &[("x-mock-chunk-delay-ms", "400")],
    );
    assert!(
        t.elapsed() > std::time::Duration::from_secs(2),
        "the stream should outlast the timeout: {:?}",
        t.elapsed()
    );
    assert_answer(&r, true);
}

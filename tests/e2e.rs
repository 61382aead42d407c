//! End to end in a real Envoy: the seed's scenarios 1-4, every error the filter answers,
//! header injection, a live edit under load and a rejected configuration. Mock engines report
//! what they received; the assertions check what the router did, not what it claims.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

const M15: &str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B";
const M7: &str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B";

fn text_of(r: &Response) -> String {
    let v = r.json();
    v["choices"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn seed_scenarios_1_to_4_behave_as_the_seed_describes() {
    let s = Stack::seed(seed_pods());
    let members_15 = ["ds15-a", "ds15-b", "ds15-v1", "ds15-v2"];

    // 1. Simple: deepseek-simple -> ModelServer deepseek-r1-1-5b, model rewritten to the real name.
    for _ in 0..4 {
        let r = s.completion("deepseek-simple", &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            text_of(&r),
            format!("This is simulated message from {M15}!")
        );
        assert_eq!(r.json()["model"], M15);
        assert!(
            members_15.contains(&r.pod().as_str()),
            "served by {}",
            r.pod()
        );
    }
    let seen: Vec<serde_json::Value> = members_15.iter().flat_map(|p| s.pod_requests(p)).collect();
    assert_eq!(seen.len(), 4);
    assert!(seen
        .iter()
        .all(|q| q["model"] == M15 && q["body"]["prompt"] == "San Francisco is a"));

    // 2. LoRA: the adapter name reaches the engine unchanged.
    let r = s.completion("lora-A", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(text_of(&r), "This is simulated message from lora-A!");
    assert!(members_15.contains(&r.pod().as_str()));

    // 3. Weighted: 70/30 over 100 requests (smooth WRR per Envoy worker; two workers).
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..100 {
        let r = s.completion("deepseek-subset", &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        match text_of(&r).as_str() {
            t if t == format!("This is simulated message from {M15}-v1!") => v1 += 1,
            t if t == format!("This is simulated message from {M15}-v2!") => v2 += 1,
            t => panic!("unexpected answer {t}"),
        }
    }
    assert!((68..=72).contains(&v1) && v1 + v2 == 100, "v1={v1} v2={v2}");

    // 4. Header-based tiers.
    let r = s.completion("deepseek-multi-models", &[("user-type", "premium")]);
    assert_eq!(text_of(&r), format!("This is simulated message from {M7}!"));
    assert_eq!(r.pod(), "ds7-a");
    for h in [vec![], vec![("user-type", "basic")]] {
        let r = s.completion("deepseek-multi-models", &h);
        assert_eq!(
            text_of(&r),
            format!("This is simulated message from {M15}!")
        );
    }

    // GET /v1/models lists every route's modelName and adapters.
    let models = s.request("GET", "/v1/models", &[], b"").json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for want in [
        "deepseek-simple",
        "lora-A",
        "lora-B",
        "deepseek-subset",
        "deepseek-multi-models",
    ] {
        assert!(ids.contains(&want), "{want} missing from {ids:?}");
    }
}

#[test]
fn chat_streaming_and_chunked_uploads_pass_through() {
    let s = Stack::seed(seed_pods());
    let body =
        r#"{"model":"deepseek-simple","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = s.post("/v1/chat/completions", body, &[]);
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/event-stream"));
    let text = r.text();
    assert!(
        text.contains("\"chat.completion.chunk\"") && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );

    // A chunked request body (no content-length) is buffered, rewritten and forwarded whole.
    let r = s.request(
        "POST",
        "/v1/completions",
        &[
            ("content-type", "application/json"),
            ("transfer-encoding", "chunked"),
        ],
        br#"{"model": "deepseek-simple", "prompt": "a chunked prompt"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], M15);
}

#[test]
fn the_gateway_manifest_serves_the_seed_from_the_controllers_configmap() {
    // deploy/envoy-gateway.yaml's bootstrap, unchanged but for addresses and paths, on the
    // files of the ConfigMap the controller renders: validate mode never reads those.
    let s = Stack::start(
        &read_seed_resources(),
        seed_pods(),
        Options {
            gateway_manifest: true,
            ..Options::default()
        },
    );
    let r = s.completion("deepseek-simple", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], M15);
    let r = s.completion("lora-A", &[]);
    assert_eq!(text_of(&r), "This is simulated message from lora-A!");
    let r = s.completion("no-such-model", &[]);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    // Kthena's metrics from its access loggers; the rate-limit filter idle (no service).
    let labels = [("model", "deepseek-simple"), ("status_code", "200")];
    assert!(s.series_sum("kthena_router_requests_total", &labels, 1.0) >= 1.0);
    assert_eq!(
        s.stat(
            "extension_config_discovery.http_filter.envoy.filters.http.ratelimit.update_success"
        ),
        1
    );
    assert!(!s.prometheus().contains("modelroute_ratelimit"));
    // The filter counts each call it makes under the routed cluster: none.
    for outcome in [
        "ratelimit.ok",
        "ratelimit.error",
        "ratelimit.failure_mode_allowed",
    ] {
        assert!(
            s.stats(outcome).iter().all(|(_, n)| *n == 0),
            "the idle filter made a call: {:?}",
            s.stats(outcome)
        );
    }
}

#[test]
fn errors_are_openai_json_with_the_right_status() {
    let resources = read_seed_resources()
        + "\n---\napiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelServer\nmetadata:\n  name: empty\n  namespace: default\nspec:\n  workloadSelector:\n    matchLabels:\n      app: nobody\n  workloadPort:\n    port: 8000\n  model: x\n  inferenceEngine: vLLM\n---\napiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelRoute\nmetadata:\n  name: empty\n  namespace: default\nspec:\n  modelName: empty\n  rules:\n  - name: r\n    targetModels:\n    - modelServerName: empty\n";
    let mut pods = seed_pods();
    pods.push(Pod::new("nobody-0", &[("app", "nobody")], "x").not_ready());
    let s = Stack::start(
        &resources,
        pods,
        Options {
            controller_args: vec!["--max-body-bytes".into(), "65536".into()],
            ..Options::default()
        },
    );

    let check = |r: Response, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = r.json();
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert!(v["error"]["type"].is_string());
    };
    check(
        s.post("/v1/completions", r#"{"model": "deepseek-simple", "#, &[]),
        400,
        "invalid_json",
    );
    check(s.post("/v1/completions", "[1,2]", &[]), 400, "invalid_json");
    check(
        s.post("/v1/completions", r#"{"prompt": "no model"}"#, &[]),
        404,
        "model_not_found",
    );
    check(s.completion("no-such-model", &[]), 404, "model_not_found");
    check(s.completion("empty", &[]), 503, "no_ready_endpoints");
    let big = format!(
        r#"{{"model":"deepseek-simple","prompt":"{}"}}"#,
        "x".repeat(100_000)
    );
    check(
        s.post("/v1/completions", &big, &[]),
        413,
        "request_too_large",
    );
    // Chunked (no content-length): the limit trips while buffering.
    let r = s.request(
        "POST",
        "/v1/completions",
        &[("transfer-encoding", "chunked")],
        big.as_bytes(),
    );
    check(r, 413, "request_too_large");
    // Requests the filter does not claim are left to Envoy's own routes.
    assert_eq!(s.request("GET", "/healthz", &[], b"").status, 200);
    check(s.post("/not-inference", "{}", &[]), 404, "route_not_found");
    // Nothing reached a pod of the empty server, and the not-Ready pod saw nothing.
    assert!(s.pod_requests("nobody-0").is_empty());
    // The VM survived all of it.
    assert_eq!(s.completion("deepseek-simple", &[]).status, 200);
}

#[test]
fn clients_cannot_choose_cluster_or_pod() {
    let s = Stack::seed(seed_pods());
    let seven = s.pod_addr("ds7-a");
    let spoof = [
        ("x-modelroute-cluster", "modelserver|default|deepseek-r1-7b"),
        ("x-gateway-destination-endpoint", seven.as_str()),
        ("x-envoy-original-dst-host", seven.as_str()),
    ];
    for _ in 0..6 {
        let r = s.completion("deepseek-simple", &spoof);
        assert_eq!(r.status, 200);
        assert_ne!(r.pod(), "ds7-a");
        assert_eq!(r.json()["model"], M15);
    }
    assert!(
        s.pod_requests("ds7-a").is_empty(),
        "a spoofed header reached the 7B pod"
    );
    // The pods saw the filter's own endpoint header, naming themselves first.
    for p in ["ds15-a", "ds15-b"] {
        for q in s.pod_requests(p) {
            let ep = q["headers"]["x-gateway-destination-endpoint"]
                .as_str()
                .unwrap_or("");
            assert!(
                ep.is_empty() || ep.starts_with(&s.pod_addr(p)),
                "{p} got {ep}"
            );
        }
    }
    // A pass-through request cannot use the cluster header to reach a ModelServer.
    let r = s.request(
        "POST",
        "/other",
        &[("x-modelroute-cluster", "modelserver|default|deepseek-r1-7b")],
        b"{}",
    );
    assert_eq!(r.status, 404);
    assert!(s.pod_requests("ds7-a").is_empty());
}

#[test]
fn live_weight_edit_applies_without_failing_a_request() {
    let s = Arc::new(Stack::seed(seed_pods()));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (s, stop, failures, sent) =
                (s.clone(), stop.clone(), failures.clone(), sent.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let ok = s.try_request(
                        "POST",
                        "/v1/completions",
                        &[("content-type", "application/json")],
                        br#"{"model":"deepseek-subset","prompt":"x"}"#,
                    );
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !matches!(ok, Ok(ref r) if r.status == 200) {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    wait_until(Duration::from_secs(10), "traffic", || {
        sent.load(Ordering::Relaxed) > 20
    });

    let before = s.stat("extension_config_discovery.http_filter.modelroute.update_success");
    let edited = read_seed_resources()
        .replace("weight: 70", "weight: 0")
        .replace("weight: 30", "weight: 100");
    s.write_resources("routes.yaml", &edited);
    wait_until(
        Duration::from_secs(15),
        "the new weights to reach Envoy",
        || s.stat("extension_config_discovery.http_filter.modelroute.update_success") > before,
    );
    std::thread::sleep(Duration::from_millis(300));
    let mark = sent.load(Ordering::Relaxed);
    wait_until(Duration::from_secs(10), "more traffic", || {
        sent.load(Ordering::Relaxed) > mark + 20
    });
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().expect("load thread");
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during the live edit"
    );

    // After the edit every request goes to v2.
    for _ in 0..20 {
        let r = s.completion("deepseek-subset", &[]);
        assert_eq!(
            text_of(&r),
            format!("This is simulated message from {M15}-v2!")
        );
    }
}

#[test]
fn a_rejected_configuration_leaves_the_previous_one_serving() {
    let s = Stack::seed(seed_pods());
    assert_eq!(s.completion("deepseek-simple", &[]).status, 200);
    let ecds = s.config_dir().join("ecds/modelroute.json");
    let good = std::fs::read_to_string(&ecds).expect("ecds");
    let mut doc: serde_json::Value = serde_json::from_str(&good).expect("ecds json");
    // A config the filter must refuse: an invalid regex in a header match.
    let cfg = &mut doc["resources"][0]["typed_config"]["config"]["configuration"]["value"];
    let mut plugin: serde_json::Value =
        serde_json::from_str(cfg.as_str().expect("value")).expect("plugin json");
    plugin["routes"][0]["rules"][0]["match"] =
        serde_json::json!({"headers": [{"name": "x", "regex": "("}]});
    *cfg = serde_json::Value::String(plugin.to_string());
    doc["version_info"] = "bad".into();

    let rejected = s.stat("extension_config_discovery.http_filter.modelroute.update_rejected");
    let tmp = s.config_dir().join("ecds/.bad.tmp");
    std::fs::write(&tmp, doc.to_string()).expect("write");
    std::fs::rename(&tmp, &ecds).expect("rename");
    wait_until(
        Duration::from_secs(15),
        "Envoy to reject the configuration",
        || s.stat("extension_config_discovery.http_filter.modelroute.update_rejected") > rejected,
    );
    for _ in 0..10 {
        let r = s.completion("deepseek-simple", &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["model"], M15);
    }
}

#[test]
fn shipped_envoy_configs_pass_envoy_validate() {
    let dir = test_support::temp_dir("validate");
    let out = dir.join("config");
    let status = std::process::Command::new(bin("modelroute-controller"))
        .args(["render", "--resources"])
        .arg(repo_root().join("examples/kthena"))
        .arg("--pods")
        .arg(repo_root().join("examples/pods.yaml"))
        .arg("--wasm")
        .arg(wasm())
        .arg("--out")
        .arg(&out)
        .status()
        .expect("controller");
    assert!(status.success());
    // The bootstrap as shipped.
    let boot = dir.join("envoy.yaml");
    std::fs::write(&boot, render_bootstrap(18080, 18081, &out, &[])).expect("write");
    validate(&boot);
    // The controller's clusters and ECDS filter, loaded statically so validate checks them too.
    let cds: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("cds/clusters.json")).unwrap())
            .unwrap();
    let ecds: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ecds/modelroute.json")).unwrap())
            .unwrap();
    let clusters: Vec<serde_json::Value> = cds["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c.as_object_mut().unwrap().remove("@type");
            c
        })
        .collect();
    assert!(!clusters.is_empty());
    let filter = &ecds["resources"][0];
    let static_boot = serde_json::json!({
        "node": {"id": "validate", "cluster": "validate"},
        "static_resources": {
            "clusters": clusters,
            "listeners": [{
                "name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 18082}},
                "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "v",
                    "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster_header": "x-modelroute-cluster"}}]}]},
                    "http_filters": [
                        {"name": filter["name"], "typed_config": filter["typed_config"]},
                        {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                    ]}}]}]
            }]
        }
    });
    let boot = dir.join("static.json");
    std::fs::write(&boot, static_boot.to_string()).expect("write");
    validate(&boot);
    let _ = std::fs::remove_dir_all(&dir);
}

fn validate(config: &std::path::Path) {
    test_support::envoy_validate(config, &config.with_extension("log"));
}

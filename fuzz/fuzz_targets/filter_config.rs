//! The filter-config parser (`router::Router::from_json`) and the decisions of what it built.
//!
//! Input: `config-json 0xFF model 0xFF path 0xFF header-value 0xFF prompt 0xFF pod-stats`.
//! Asserts: no configuration, however odd, panics the parser or the compiler; when one is
//! accepted, the `/v1/models` answers are valid JSON, and `decide` (for the fuzzed model and
//! every listed one, with fuzzed headers (a cookie too), path and query, prompt, engine stats,
//! in-flight counts and session bindings)
//! never panics and only ever names a real server and that config's pods.
//! Why: Envoy hands the filter whatever the control plane wrote; a panic at configure time or
//! on a request aborts the VM, and a decision naming a pod out of the config misroutes.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use modelroute::metrics::{PodStats, Snapshot};
use modelroute::router::{no_load_reports, Request, Router, SharedPlacement, SharedSession};
use modelroute_fuzz::{must_parse, parts};
use serde_json::Value;

/// The request's clock; pod stats are up to 2.55 s older.
const NOW_MS: u64 = 10_000;

/// The `n`th byte of `b`, cycling (0 for an empty `b`).
fn byte(b: &[u8], n: usize) -> u8 {
    b.get(n % b.len().max(1)).copied().unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let [config, model, path, header, prompt, stats] = parts::<6>(data);
    let Ok(mut router) = Router::from_json(config, data.len() as u64) else {
        return;
    };

    let models: Value = must_parse("the models list", router.models_body().as_bytes());
    let ids: Vec<String> = models["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    for id in &ids {
        let one = router.model_body(id);
        let one: Value = must_parse("a model", one.as_deref().unwrap_or("").as_bytes());
        assert_eq!(one["id"].as_str(), Some(id.as_str()));
    }

    let targets = router.scrape_targets();
    let addresses: HashSet<&str> = targets.iter().map(|t| t.address.as_str()).collect();
    assert_eq!(addresses.len(), targets.len(), "a pod is scraped twice");
    let snapshot: Snapshot = targets
        .iter()
        .enumerate()
        .filter(|(i, _)| byte(stats, *i) & 1 == 1)
        .map(|(i, t)| {
            let b = |k: usize| byte(stats, 5 * i + k);
            let s = PodStats {
                up: b(0) & 2 == 2,
                running: f64::from(b(1) % 16),
                waiting: f64::from(b(2) % 16),
                kv: f64::from(b(3)) / 255.0,
                ttft: f64::from(b(4)) / 100.0,
                tpot: f64::from(b(1)) / 1000.0,
                models: (b(2) & 1 == 1).then(|| ids.iter().take(2).cloned().collect()),
                at_ms: NOW_MS - u64::from(b(4)) * 10,
                scraped_ms: NOW_MS.saturating_sub(u64::from(b(3)) * 40),
                totals: [0.0; 4],
                others: f64::from(b(0) % 8),
            };
            (t.address.clone(), s)
        })
        .collect();
    router.set_stats(snapshot);

    let full_path = String::from_utf8_lossy(path);
    let (path, query) = full_path.split_once('?').unwrap_or((&full_path, ""));
    let header_value = String::from_utf8_lossy(header).into_owned();
    let header = |_: &str| (!header_value.is_empty()).then(|| header_value.clone());
    let in_flight =
        |_: &str, n: usize| -> Vec<u32> { (0..n).map(|i| u32::from(byte(stats, i) % 8)).collect() };
    let prompt = &prompt[..prompt.len().min(router.prompt_cap())];
    let fuzzed = String::from_utf8_lossy(model);
    for model in std::iter::once(fuzzed.as_ref()).chain(ids.iter().map(String::as_str)) {
        let req = Request {
            model,
            path,
            query,
            header: &header,
            prompt,
            in_flight: &in_flight,
            load_reports: &no_load_reports,
            // Fuzzed bytes as a session's binding too.
            shared_data: &|key: &str| key.starts_with("modelroute.session.").then(|| prompt.to_vec()),
            // Fuzzed bytes as another gateway's record (with a store in the configuration).
            shared: SharedPlacement::Answered {
                asked: None,
                record: Some(prompt),
                placed: Some(&[1, 0, 2]),
            },
            // Fuzzed bytes as another gateway's session binding.
            session_store: SharedSession::Answered(Some(&header_value)),
            target: None,
            now_ms: NOW_MS,
        };
        // Twice: rotation and prefix state change between requests.
        for _ in 0..2 {
            let Ok(d) = router.decide(&req) else { continue };
            let _ = router.route_name(d.route);
            let Some(server) = router.server(d.server) else {
                panic!("decision names server {} of a config without it", d.server);
            };
            assert!(d.pod_index.is_none_or(|i| i < server.endpoint_count()));
            // Addresses are `ip:port`; one with a comma would make the list ambiguous.
            if !addresses.iter().any(|a| a.contains(',')) {
                for pod in d.endpoints.split(',') {
                    assert!(
                        addresses.contains(pod),
                        "{pod:?} is not a pod of the config"
                    );
                }
            }
            for pair in &d.pairs {
                assert!(addresses.contains(pair.prefill.as_str()), "{pair:?}");
                assert!(addresses.contains(pair.decode.as_str()), "{pair:?}");
            }
            if let Some(first) = d.pairs.first() {
                assert_eq!(d.endpoints, first.decode);
            }
        }
    }
});

//! The metrics parsers (`parse_prometheus`, `parse_models`) and the shared snapshot codec
//! (`metrics::encode` / `metrics::decode`).
//!
//! Input: `scrape-1 0xFF scrape-2 0xFF bytes`. Asserts: nothing panics; KV usage stays in
//! 0..=1; two scrapes folded into a pod's stats give a snapshot every VM can decode back (to
//! the same stats, up to float parsing's last bit); any snapshot `decode` accepts survives
//! `decode(encode(..))`; a models list `parse_models` accepts is valid JSON (when UTF-8).
//! Why: pods are not trusted to speak clean Prometheus text, and the collecting VM publishes
//! one snapshot for all: a snapshot the others cannot decode blinds every scheduler at once.
#![no_main]

use filter_config::Engine;
use libfuzzer_sys::fuzz_target;
use modelroute::metrics::{decode, encode, parse_models, parse_prometheus, PodStats, Snapshot};
use modelroute_fuzz::parts;

/// Equal, or within a few ulps: serde_json's default float parsing is not exactly round-trip.
fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

fn floats(s: &PodStats) -> Vec<f64> {
    let mut v = vec![s.running, s.waiting, s.kv, s.ttft, s.tpot];
    v.extend(s.totals);
    v
}

fn same_stats(a: &PodStats, b: &PodStats) -> bool {
    (a.up, &a.models, a.at_ms) == (b.up, &b.models, b.at_ms)
        && floats(a)
            .into_iter()
            .zip(floats(b))
            .all(|(x, y)| close(x, y))
}

fn assert_round_trips(snap: &Snapshot) {
    let bytes = encode(snap);
    let Some(back) = decode(&bytes) else {
        panic!(
            "a snapshot does not decode: {}\nfrom {snap:?}",
            String::from_utf8_lossy(&bytes)
        );
    };
    assert_eq!(back.len(), snap.len());
    for (pod, stats) in snap {
        let again = back.get(pod);
        assert!(
            again.is_some_and(|b| same_stats(stats, b)),
            "{stats:?} came back as {again:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let [first, second, bytes] = parts::<3>(data);
    let (first, second) = (
        String::from_utf8_lossy(first),
        String::from_utf8_lossy(second),
    );
    for engine in [Engine::Vllm, Engine::Sglang] {
        let mut stats = PodStats {
            models: parse_models(bytes),
            ..PodStats::default()
        };
        for (now, text) in [(1, &first), (2, &second)] {
            let g = parse_prometheus(text, engine);
            assert!((0.0..=1.0).contains(&g.kv_usage), "{g:?}");
            stats.update(&g, now);
            // Found here (fuzz/regressions/metrics/): finite samples summed or divided to
            // infinity, which JSON writes as `null`, and `decode` refused every pod's stats.
            assert!(floats(&stats).iter().all(|f| f.is_finite()), "{stats:?}");
            assert_round_trips(&Snapshot::from([(
                "10.0.0.1:8000".to_string(),
                stats.clone(),
            )]));
        }
    }
    // serde_json skips the strings of ignored fields without checking their UTF-8.
    if parse_models(bytes).is_some() && std::str::from_utf8(bytes).is_ok() {
        assert!(serde_json::from_slice::<serde_json::Value>(bytes).is_ok());
    }
    if let Some(snap) = decode(bytes) {
        assert_round_trips(&snap);
    }
});

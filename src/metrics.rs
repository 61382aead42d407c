//! Engine metrics: parsing what a pod's `GET /metrics` (Prometheus text) and `GET /v1/models`
//! say, and the compact per-pod snapshot the collecting VM shares with the others.
//! Names follow Kthena (shared/KTHENA-BEHAVIOUR.md): vLLM and SGLang, old and new KV names.

use std::collections::HashMap;

use filter_config::Engine;
use serde::{Deserialize, Serialize};

/// What one scrape of `/metrics` said.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineGauges {
    pub running: f64,
    pub waiting: f64,
    /// KV cache usage 0..1.
    pub kv_usage: f64,
    /// Histogram totals: (sum, count) of TTFT and TPOT observations, in seconds.
    pub ttft: (f64, f64),
    pub tpot: (f64, f64),
}

/// Parses the metrics an engine of kind `engine` exposes. Unknown lines are ignored; values
/// of several series with the same name (one per model label) are summed.
pub fn parse_prometheus(text: &str, engine: Engine) -> EngineGauges {
    let (running, waiting, kv, kv_old, ttft, tpot, tpot_old) = match engine {
        Engine::Vllm => (
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:gpu_cache_usage_perc",
            "vllm:time_to_first_token_seconds",
            "vllm:inter_token_latency_seconds",
            "vllm:time_per_output_token_seconds",
        ),
        Engine::Sglang => (
            "sglang:num_running_reqs",
            "sglang:num_queue_reqs",
            "sglang:token_usage",
            "sglang:token_usage",
            "sglang:time_to_first_token_seconds",
            "sglang:inter_token_latency_seconds",
            "sglang:time_per_output_token_seconds",
        ),
    };
    let mut g = EngineGauges::default();
    let (mut kv_new, mut kv_legacy) = (None, None);
    let (mut tpot_new, mut tpot_legacy) = ((0.0, 0.0, false), (0.0, 0.0, false));
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = split_sample(line) else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        let add = |slot: &mut f64| *slot += value;
        match name {
            n if n == running => add(&mut g.running),
            n if n == waiting => add(&mut g.waiting),
            n if n == kv => *kv_new.get_or_insert(0.0) += value,
            n if n == kv_old => *kv_legacy.get_or_insert(0.0) += value,
            n if n.strip_suffix("_sum") == Some(ttft) => add(&mut g.ttft.0),
            n if n.strip_suffix("_count") == Some(ttft) => add(&mut g.ttft.1),
            n if n.strip_suffix("_sum") == Some(tpot) => {
                tpot_new.0 += value;
                tpot_new.2 = true;
            }
            n if n.strip_suffix("_count") == Some(tpot) => tpot_new.1 += value,
            n if n.strip_suffix("_sum") == Some(tpot_old) => {
                tpot_legacy.0 += value;
                tpot_legacy.2 = true;
            }
            n if n.strip_suffix("_count") == Some(tpot_old) => tpot_legacy.1 += value,
            _ => {}
        }
    }
    g.kv_usage = kv_new.or(kv_legacy).unwrap_or(0.0).clamp(0.0, 1.0);
    let t = if tpot_new.2 { tpot_new } else { tpot_legacy };
    g.tpot = (t.0, t.1);
    // Finite samples can still sum past f64.
    for v in [
        &mut g.running,
        &mut g.waiting,
        &mut g.ttft.0,
        &mut g.ttft.1,
        &mut g.tpot.0,
        &mut g.tpot.1,
    ] {
        *v = finite(*v);
    }
    g
}

/// `v` as a number JSON can carry: infinities saturate to the largest finite value (a pod
/// reporting "infinitely loaded" stays the most loaded), NaN is 0. The shared snapshot is
/// JSON, and one non-finite value would make it undecodable for every VM.
fn finite(v: f64) -> f64 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(f64::MIN, f64::MAX)
    }
}

/// `name{labels} value [timestamp]` -> (series, value).
fn split_sample(line: &str) -> Option<(&str, f64)> {
    let cut = match line.rfind('}') {
        Some(close) => close + 1,
        None => line.find(' ')?,
    };
    let (series, rest) = line.split_at(cut);
    let value = rest.split_whitespace().next()?;
    let v = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    v.is_finite().then_some((series.trim(), v))
}

/// Model ids a pod serves (its base model and LoRA adapters), from `GET /v1/models`.
pub fn parse_models(body: &[u8]) -> Option<Vec<String>> {
    #[derive(Deserialize)]
    struct List {
        data: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        id: String,
    }
    let l: List = serde_json::from_slice(body).ok()?;
    Some(l.data.into_iter().map(|i| i.id).collect())
}

/// What the scheduler knows of one pod, shared between VMs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodStats {
    /// False when the last scrape could not reach the pod.
    pub up: bool,
    pub running: f64,
    pub waiting: f64,
    pub kv: f64,
    /// Mean TTFT / TPOT over the last interval, seconds (0 = not observed yet).
    pub ttft: f64,
    pub tpot: f64,
    /// Models the pod serves (`/v1/models`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// When the stats were collected (host clock, ms); an in-band report moves it on.
    pub at_ms: u64,
    /// When the pod was last scraped: the age of `running`, `ttft` and `tpot`, which in-band
    /// reports do not carry.
    #[serde(default)]
    pub scraped_ms: u64,
    /// Histogram totals of the previous scrape, to take interval means.
    #[serde(default)]
    pub totals: [f64; 4],
    /// Requests at the pod that this Envoy did not send, as of the last scrape: the running
    /// and waiting requests the engine reported, less this Envoy's requests in flight to it
    /// when the answer came in (other gateways' load; 0 with one gateway). The scheduler adds
    /// it to its own in-flight count.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub others: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

impl PodStats {
    /// Folds a new scrape into the stats: gauges replace, latencies become the mean over
    /// the interval since the previous scrape (or the all-time mean on the first one).
    pub fn update(&mut self, g: &EngineGauges, now_ms: u64) {
        self.fold_latencies(g);
        self.running = g.running;
        self.waiting = g.waiting;
        self.others = 0.0;
        self.kv = g.kv_usage;
        self.up = true;
        self.at_ms = now_ms;
        self.scraped_ms = now_ms;
    }

    /// Folds a scrape's latency histograms only: TTFT and TPOT become the means since the
    /// previous scrape, the totals move on. (A pod whose load comes in-band keeps its load
    /// and its scrape's age: [`crate::collector::Kind::Latencies`].)
    pub fn fold_latencies(&mut self, g: &EngineGauges) {
        let mean = |sum: f64, count: f64, prev_sum: f64, prev_count: f64, last: f64| {
            let (ds, dc) = (sum - prev_sum, count - prev_count);
            finite(if dc > 0.0 && ds >= 0.0 {
                ds / dc
            } else if prev_count == 0.0 && count > 0.0 {
                sum / count
            } else {
                last
            })
        };
        let [ps, pc, qs, qc] = self.totals;
        self.ttft = mean(g.ttft.0, g.ttft.1, ps, pc, self.ttft);
        self.tpot = mean(g.tpot.0, g.tpot.1, qs, qc, self.tpot);
        self.totals = [g.ttft.0, g.ttft.1, g.tpot.0, g.tpot.1];
    }

    /// The engine's mean time per output token since it started (its histogram's sum over
    /// count as of the last scrape), seconds, once it timed at least `samples` (vLLM and
    /// SGLang time every token, so the first request or two); else 0. A pod's speed: load
    /// swings move it little, and an in-band report does not age it.
    pub fn lifetime_tpot(&self, samples: f64) -> f64 {
        let [.., sum, count] = self.totals;
        match sum / count {
            t if count > 0.0 && count >= samples && t.is_finite() && t > 0.0 => t,
            _ => 0.0,
        }
    }

    /// Counts what the scrape just folded in reported beyond `own`, this Envoy's requests in
    /// flight to the pod when it answered, as other gateways' load.
    pub fn count_others(&mut self, own: u32) {
        self.others = finite((self.running + self.waiting - f64::from(own)).max(0.0));
    }
}

/// The snapshot one VM collects and every VM reads: pod address -> stats.
pub type Snapshot = HashMap<String, PodStats>;

pub fn encode(s: &Snapshot) -> Vec<u8> {
    serde_json::to_vec(s).unwrap_or_default()
}

pub fn decode(b: &[u8]) -> Option<Snapshot> {
    serde_json::from_slice(b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflowing_values_stay_finite_so_the_shared_snapshot_still_decodes() {
        // Two finite samples that sum past f64, and a mean over a denormal count: JSON has no
        // infinity, so one such pod would make every VM's snapshot undecodable.
        let text = "vllm:num_requests_running{m=\"a\"} 1e308\n\
                    vllm:num_requests_running{m=\"b\"} 1e308\n\
                    vllm:time_to_first_token_seconds_sum 1\n\
                    vllm:time_to_first_token_seconds_count 1e-320\n";
        let g = parse_prometheus(text, Engine::Vllm);
        let mut stats = PodStats::default();
        stats.update(&g, 1);
        assert!(stats.running.is_finite() && stats.running > 1e307);
        assert!(stats.ttft.is_finite() && stats.ttft > 1e307);
        let snapshot: Snapshot = [("p".to_string(), stats.clone())].into();
        let back = decode(&encode(&snapshot)).expect("the snapshot decodes");
        assert_eq!(back["p"], stats);
    }

    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 3.0
vllm:num_requests_waiting{model_name="m"} 12.0
vllm:kv_cache_usage_perc{model_name="m"} 0.75
vllm:gpu_cache_usage_perc{model_name="m"} 0.1
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 1
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 4
vllm:time_to_first_token_seconds_sum{model_name="m"} 2.0
vllm:time_to_first_token_seconds_count{model_name="m"} 4
vllm:inter_token_latency_seconds_sum{model_name="m"} 1.0
vllm:inter_token_latency_seconds_count{model_name="m"} 20
vllm:request_success_total{model_name="m"} 7
"#;

    #[test]
    fn vllm_gauges_and_histograms_are_read_and_new_kv_name_wins() {
        let g = parse_prometheus(VLLM, Engine::Vllm);
        assert_eq!((g.running, g.waiting, g.kv_usage), (3.0, 12.0, 0.75));
        assert_eq!(g.ttft, (2.0, 4.0));
        assert_eq!(g.tpot, (1.0, 20.0));
    }

    #[test]
    fn a_pods_lifetime_tpot_is_its_histograms_mean_since_start_whatever_the_last_interval() {
        let mut s = PodStats::default();
        assert_eq!(s.lifetime_tpot(0.0), 0.0);
        // `requests` timed (TTFT, one a request), `tokens` timed (TPOT, one a token).
        let gauges = |requests: f64, tpot: (f64, f64)| EngineGauges {
            ttft: (requests * 0.05, requests),
            tpot,
            ..Default::default()
        };
        s.update(&gauges(10.0, (1.0, 100.0)), 1);
        s.update(&gauges(20.0, (3.0, 200.0)), 2);
        // The last interval: 2 s over 100 tokens; since start: 3 s over 200.
        assert_eq!((s.tpot, s.lifetime_tpot(200.0)), (0.02, 0.015));
        // Too few timed.
        assert_eq!(s.lifetime_tpot(201.0), 0.0);
        s.update(&gauges(30.0, (f64::NAN, 200.0)), 3);
        assert_eq!(s.lifetime_tpot(0.0), 0.0);
    }

    #[test]
    fn old_vllm_kv_and_tpot_names_are_understood() {
        let text = "vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.4\nvllm:time_per_output_token_seconds_sum 3\nvllm:time_per_output_token_seconds_count 6\n";
        let g = parse_prometheus(text, Engine::Vllm);
        assert_eq!(g.kv_usage, 0.4);
        assert_eq!(g.tpot, (3.0, 6.0));
    }

    #[test]
    fn sglang_names_are_read() {
        let text = "sglang:num_running_reqs{model_name=\"m\"} 2\nsglang:num_queue_reqs{model_name=\"m\"} 1\nsglang:token_usage{model_name=\"m\"} 0.5\n";
        let g = parse_prometheus(text, Engine::Sglang);
        assert_eq!((g.running, g.waiting, g.kv_usage), (2.0, 1.0, 0.5));
    }

    #[test]
    fn garbage_lines_are_ignored() {
        let g = parse_prometheus(
            "nonsense\nvllm:num_requests_running{x=\"}\"} NaN\n{}} 1\n",
            Engine::Vllm,
        );
        assert_eq!(g, EngineGauges::default());
    }

    #[test]
    fn latency_is_the_mean_over_the_last_interval() {
        let mut s = PodStats::default();
        let mut g = EngineGauges {
            ttft: (2.0, 4.0),
            tpot: (1.0, 10.0),
            ..Default::default()
        };
        s.update(&g, 1);
        assert_eq!((s.ttft, s.tpot), (0.5, 0.1));
        g.ttft = (2.0 + 3.0, 5.0); // one more observation of 3 s
        s.update(&g, 2);
        assert_eq!(s.ttft, 3.0);
        assert_eq!(s.tpot, 0.1, "no new TPOT observation keeps the last mean");
    }

    #[test]
    fn models_list_and_snapshot_round_trip() {
        let m = parse_models(
            br#"{"object":"list","data":[{"id":"base"},{"id":"lora-A","parent":"base"}]}"#,
        )
        .unwrap();
        assert_eq!(m, ["base", "lora-A"]);
        let mut snap = Snapshot::new();
        snap.insert(
            "127.0.0.1:8000".into(),
            PodStats {
                up: true,
                models: Some(m),
                ..Default::default()
            },
        );
        assert_eq!(decode(&encode(&snap)), Some(snap));
    }
}

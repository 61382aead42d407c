//! Metrics: what a pod's `GET /metrics` says about its load and latency, in the engine's own
//! Prometheus names, and the test-held values behind `POST /mock/metrics`. Pure: the server
//! feeds in live counts and measured latencies (no clock, no I/O here), so every rendering is
//! unit-tested.
//!
//! Gauges (running, waiting, KV-cache usage) are derived from the live counts unless a test
//! holds them. TTFT / TPOT are histograms of the pod's own answers; while a test holds one,
//! real observations stay out of it and every scrape adds exactly one observation of the held
//! value, so both the all-time mean and the mean between two scrapes converge to / equal it.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::engine::{EngineKind, Served};

/// vLLM's `time_to_first_token_seconds` buckets.
const VLLM_TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's `inter_token_latency_seconds` / `time_per_output_token_seconds` buckets.
const VLLM_ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// SGLang's `time_to_first_token_seconds` buckets.
const SGLANG_TTFT_BUCKETS: &[f64] = &[
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0,
    400.0,
];
/// SGLang's `inter_token_latency_seconds` buckets.
const SGLANG_ITL_BUCKETS: &[f64] = &[
    0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08, 0.1, 0.2,
    0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0,
];

/// KV-cache usage derived from load: one request fills 1/64 of the cache.
const KV_REQUESTS_FULL: f64 = 64.0;

/// A Prometheus histogram: fixed upper bounds (ascending, `+Inf` implied), counts, sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); one more than `bounds` for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Record one value (negative or non-finite values are ignored).
    pub fn observe(&mut self, v: f64) {
        if !v.is_finite() || v < 0.0 {
            return;
        }
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// `(le, cumulative count)` per bucket, ending with `+Inf` (= count).
    fn cumulative(&self) -> Vec<(String, u64)> {
        let mut acc = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| format_float(*b));
            out.push((le, acc));
        }
        out
    }
}

/// Test-held values; `None` = derived from the pod's real load / answers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Holds {
    pub running: Option<u64>,
    pub waiting: Option<u64>,
    pub kv_cache_usage: Option<f64>,
    pub ttft_seconds: Option<f64>,
    pub tpot_seconds: Option<f64>,
}

/// One `POST /mock/metrics`: per field, `None` = leave as is, `Some(None)` = release (JSON
/// null), `Some(Some(v))` = hold `v`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HoldUpdate {
    pub running: Option<Option<u64>>,
    pub waiting: Option<Option<u64>>,
    pub kv_cache_usage: Option<Option<f64>>,
    pub ttft_seconds: Option<Option<f64>>,
    pub tpot_seconds: Option<Option<f64>>,
}

const HOLD_FIELDS: &str = "running, waiting, kv_cache_usage, ttft_seconds, tpot_seconds";

/// Parse and validate a `POST /mock/metrics` body; `Err` is the 400 message.
/// `running` / `waiting`: integers >= 0; `kv_cache_usage`: number in 0..=1; `ttft_seconds` /
/// `tpot_seconds`: finite numbers >= 0; any of them null = release. Unknown fields are errors.
pub fn parse_update(body: &[u8]) -> Result<HoldUpdate, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("Invalid JSON in request body: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("The request body must be a JSON object.".to_string());
    };
    if let Some(unknown) = obj
        .keys()
        .find(|k| !HOLD_FIELDS.split(", ").any(|f| f == *k))
    {
        return Err(format!(
            "Unknown field `{unknown}`; expected any of {HOLD_FIELDS}."
        ));
    }
    let count = |key: &str| -> Result<Option<Option<u64>>, String> {
        field(&obj, key, |v| {
            v.as_u64()
                .ok_or_else(|| format!("`{key}` must be an integer >= 0 or null, got {v}."))
        })
    };
    let seconds = |key: &str| -> Result<Option<Option<f64>>, String> {
        field(&obj, key, |v| {
            v.as_f64()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("`{key}` must be a number >= 0 or null, got {v}."))
        })
    };
    Ok(HoldUpdate {
        running: count("running")?,
        waiting: count("waiting")?,
        kv_cache_usage: field(&obj, "kv_cache_usage", |v| {
            v.as_f64()
                .filter(|x| (0.0..=1.0).contains(x))
                .ok_or_else(|| {
                    format!("`kv_cache_usage` must be a number in 0..1 or null, got {v}.")
                })
        })?,
        ttft_seconds: seconds("ttft_seconds")?,
        tpot_seconds: seconds("tpot_seconds")?,
    })
}

fn field<T>(
    obj: &Map<String, Value>,
    key: &str,
    parse: impl Fn(&Value) -> Result<T, String>,
) -> Result<Option<Option<T>>, String> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => parse(v).map(|x| Some(Some(x))),
    }
}

impl Holds {
    pub fn apply(&mut self, u: HoldUpdate) {
        fn set<T>(slot: &mut Option<T>, change: Option<Option<T>>) {
            if let Some(c) = change {
                *slot = c;
            }
        }
        set(&mut self.running, u.running);
        set(&mut self.waiting, u.waiting);
        set(&mut self.kv_cache_usage, u.kv_cache_usage);
        set(&mut self.ttft_seconds, u.ttft_seconds);
        set(&mut self.tpot_seconds, u.tpot_seconds);
    }

    /// Names of the held fields, in `HOLD_FIELDS` order.
    fn held(&self) -> Vec<&'static str> {
        [
            ("running", self.running.is_some()),
            ("waiting", self.waiting.is_some()),
            ("kv_cache_usage", self.kv_cache_usage.is_some()),
            ("ttft_seconds", self.ttft_seconds.is_some()),
            ("tpot_seconds", self.tpot_seconds.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, held)| held.then_some(name))
        .collect()
    }
}

/// The pod's real load at the moment of a scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Live {
    /// Requests being answered (holding a run slot).
    pub running: u64,
    /// Requests queued for a run slot (`--max-running`).
    pub waiting: u64,
    /// Answers with a 2xx status so far.
    pub success_total: u64,
    /// The simulated engine's KV-cache usage (`--sim-kv-blocks`), when it runs one.
    pub kv_usage: Option<f64>,
}

/// The values `/metrics` reports now (held or derived); the `GET /mock/metrics` body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Effective {
    pub running: u64,
    pub waiting: u64,
    pub kv_cache_usage: f64,
    /// Held value, else the mean of the pod's real TTFT observations (0 before any).
    pub ttft_seconds: f64,
    /// Held value, else the mean of the pod's real TPOT observations (0 before any).
    pub tpot_seconds: f64,
    /// Which of the above are held by `POST /mock/metrics`.
    pub held: Vec<&'static str>,
    /// `--max-running` / `MAX_RUNNING`, null = unlimited.
    pub max_running: Option<u64>,
}

/// Sum and count of real observations (kept even while a value is held).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Mean {
    sum: f64,
    count: u64,
}

impl Mean {
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.count += 1;
    }

    fn get(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }
}

/// One pod's metric state: holds and the two latency histograms.
#[derive(Debug, Clone)]
pub struct Metrics {
    engine: EngineKind,
    max_running: Option<u64>,
    holds: Holds,
    ttft: Histogram,
    tpot: Histogram,
    real_ttft: Mean,
    real_tpot: Mean,
}

impl Metrics {
    pub fn new(engine: EngineKind, max_running: Option<u64>) -> Self {
        let (ttft, tpot) = match engine {
            EngineKind::Vllm => (VLLM_TTFT_BUCKETS, VLLM_ITL_BUCKETS),
            EngineKind::Sglang => (SGLANG_TTFT_BUCKETS, SGLANG_ITL_BUCKETS),
        };
        Metrics {
            engine,
            max_running,
            holds: Holds::default(),
            ttft: Histogram::new(ttft),
            tpot: Histogram::new(tpot),
            real_ttft: Mean::default(),
            real_tpot: Mean::default(),
        }
    }

    #[cfg(test)]
    pub fn holds(&self) -> Holds {
        self.holds
    }

    pub fn apply(&mut self, u: HoldUpdate) {
        self.holds.apply(u);
    }

    pub fn release_all(&mut self) {
        self.holds = Holds::default();
    }

    /// A measured time to first token of one answer (kept out of the histogram while held).
    pub fn observe_ttft(&mut self, secs: f64) {
        if !secs.is_finite() || secs < 0.0 {
            return;
        }
        self.real_ttft.add(secs);
        if self.holds.ttft_seconds.is_none() {
            self.ttft.observe(secs);
        }
    }

    /// A measured time per output token of one answer (kept out of the histogram while held).
    pub fn observe_tpot(&mut self, secs: f64) {
        if !secs.is_finite() || secs < 0.0 {
            return;
        }
        self.real_tpot.add(secs);
        if self.holds.tpot_seconds.is_none() {
            self.tpot.observe(secs);
        }
    }

    pub fn effective(&self, live: Live) -> Effective {
        let h = &self.holds;
        Effective {
            running: h.running.unwrap_or(live.running),
            waiting: h.waiting.unwrap_or(live.waiting),
            // Derived from the real load, not a held `running`: each knob stays independent.
            kv_cache_usage: h
                .kv_cache_usage
                .or(live.kv_usage)
                .unwrap_or_else(|| (live.running as f64 / KV_REQUESTS_FULL).min(1.0)),
            ttft_seconds: h.ttft_seconds.unwrap_or_else(|| self.real_ttft.get()),
            tpot_seconds: h.tpot_seconds.unwrap_or_else(|| self.real_tpot.get()),
            held: h.held(),
            max_running: self.max_running,
        }
    }

    /// One `GET /metrics`: adds one observation of each held latency, then renders.
    pub fn scrape(&mut self, served: &Served, live: Live) -> String {
        if let Some(v) = self.holds.ttft_seconds {
            self.ttft.observe(v);
        }
        if let Some(v) = self.holds.tpot_seconds {
            self.tpot.observe(v);
        }
        let e = self.effective(live);
        debug_assert_eq!(served.engine, self.engine);
        render(served, &e, live.success_total, &self.ttft, &self.tpot)
    }
}

/// vLLM's in-band load report (ORCA), the value of its `endpoint-load-metrics` response
/// header for a request that asked with `endpoint-load-metrics-format: format` (TEXT or JSON,
/// any case; None otherwise): KV-cache usage and waiting requests, as vLLM sends them.
pub fn load_report(format: &str, e: &Effective) -> Option<String> {
    // Python floats: vLLM renders its gauges with repr(float), always with a fraction.
    let kv = format!("{:?}", e.kv_cache_usage);
    let waiting = format!("{:?}", e.waiting as f64);
    if format.eq_ignore_ascii_case("text") {
        Some(format!(
            "TEXT named_metrics.kv_cache_usage_perc={kv}, named_metrics.num_requests_waiting={waiting}"
        ))
    } else if format.eq_ignore_ascii_case("json") {
        Some(format!(
            r#"JSON {{"named_metrics": {{"kv_cache_usage_perc": {kv}, "num_requests_waiting": {waiting}}}}}"#
        ))
    } else {
        None
    }
}

/// Prometheus text for `/metrics`, in the engine's own metric names. `e` gives the gauges.
pub fn render(
    served: &Served,
    e: &Effective,
    success_total: u64,
    ttft: &Histogram,
    tpot: &Histogram,
) -> String {
    let label = format!("model_name=\"{}\"", prom_escape(&served.model));
    let mut out = String::new();
    let mut sample = |name: &str, help: &str, kind: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{label}}} {value}\n"
        ));
    };
    let kv = format_float(e.kv_cache_usage);
    let histograms: &[(&str, &str, &Histogram)] = match served.engine {
        EngineKind::Vllm => {
            sample(
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                "gauge",
                e.running.to_string(),
            );
            sample(
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
                "gauge",
                e.waiting.to_string(),
            );
            sample(
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
                "gauge",
                kv.clone(),
            );
            sample(
                "vllm:gpu_cache_usage_perc",
                "GPU KV-cache usage. 1 means 100 percent usage.",
                "gauge",
                kv,
            );
            sample(
                "vllm:request_success_total",
                "Count of successfully processed requests.",
                "counter",
                success_total.to_string(),
            );
            &[
                (
                    "vllm:time_to_first_token_seconds",
                    "Histogram of time to first token in seconds.",
                    ttft,
                ),
                (
                    "vllm:inter_token_latency_seconds",
                    "Histogram of inter-token latency in seconds.",
                    tpot,
                ),
                (
                    "vllm:time_per_output_token_seconds",
                    "Histogram of time per output token in seconds (deprecated name of \
                     inter_token_latency_seconds).",
                    tpot,
                ),
            ]
        }
        EngineKind::Sglang => {
            sample(
                "sglang:num_running_reqs",
                "The number of running requests.",
                "gauge",
                e.running.to_string(),
            );
            sample(
                "sglang:num_queue_reqs",
                "The number of requests in the waiting queue.",
                "gauge",
                e.waiting.to_string(),
            );
            sample("sglang:token_usage", "The token usage.", "gauge", kv);
            &[
                (
                    "sglang:time_to_first_token_seconds",
                    "Histogram of time to first token in seconds.",
                    ttft,
                ),
                (
                    "sglang:inter_token_latency_seconds",
                    "Histogram of inter-token latency in seconds.",
                    tpot,
                ),
            ]
        }
    };
    for (name, help, h) in histograms {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        for (le, n) in h.cumulative() {
            out.push_str(&format!("{name}_bucket{{{label},le=\"{le}\"}} {n}\n"));
        }
        out.push_str(&format!(
            "{name}_sum{{{label}}} {}\n{name}_count{{{label}}} {}\n",
            format_float(h.sum()),
            h.count()
        ));
    }
    out
}

/// Renders with derived gauges and empty histograms (what a fresh pod shows).
pub fn render_derived(served: &Served, live: Live) -> String {
    Metrics::new(served.engine, None).scrape(served, live)
}

fn format_float(v: f64) -> String {
    // Prometheus accepts plain decimals; keep "0.0"-style output like Python's client.
    if v.fract() == 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

fn prom_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
#[path = "metrics/tests.rs"]
mod tests;

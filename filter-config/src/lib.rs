//! The wire schema between `modelroute-controller` and the `modelroute` filter.
//!
//! The controller compiles Kthena `ModelRoute` / `ModelServer` resources and the pods they
//! select into one [`FilterConfig`] and serialises it as JSON; Envoy hands that JSON to the
//! filter as its plugin configuration. This crate owns only the types and their documented
//! meaning: no I/O, no validation beyond what serde does. The filter turns it into indexed
//! runtime tables; the controller is responsible for producing a config that makes sense.
//!
//! Compatibility: [`SCHEMA_VERSION`] changes only on a breaking change. Adding an optional
//! field (with `#[serde(default)]`) is not breaking; unknown fields are ignored so an older
//! filter accepts a newer controller's output within one version.

use serde::{Deserialize, Serialize};

pub mod global_rate_limit;
pub mod placement_store;
pub mod query;
mod session;
pub use session::{
    SessionAffinity, SessionKeyKind, SessionKeySource, SessionSticky, DEFAULT_SESSION_HEADER,
    DEFAULT_SESSION_TTL_MS, DEFAULT_STICKY_TTL_MS,
};

/// Version of this schema. The filter rejects a config whose `version` differs.
pub const SCHEMA_VERSION: u32 = 1;

/// Default request header that carries the Envoy cluster chosen by the filter
/// (the route uses `cluster_header` with this name).
pub const DEFAULT_CLUSTER_HEADER: &str = "x-modelroute-cluster";
/// Default header read by Envoy's `override_host` load-balancing policy: `ip:port[,ip:port...]`.
pub const DEFAULT_ENDPOINT_HEADER: &str = "x-gateway-destination-endpoint";
/// Default limit of a buffered request body.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 8 * 1024 * 1024;
/// Default number of fallback endpoints appended after the chosen one.
pub const DEFAULT_ENDPOINT_FALLBACKS: u32 = 2;

/// Per-request values the filter publishes when an inference request ends, as Envoy filter
/// state: `set_property(name)` is readable as `%FILTER_STATE(wasm.<name>:PLAIN)%` by any access
/// logger. The controller renders Kthena's metrics (Envoy's stats access logger) and Kthena's
/// access log from these names; the filter writes them. Label values are bounded: `MODEL` is
/// `unknown` for a model no route names, `PATH` is `other` outside the OpenAI paths.
pub mod published {
    pub const MODEL: &str = "modelroute.model";
    pub const PATH: &str = "modelroute.path";
    /// `namespace/name` of the ModelRoute, the ModelServer; empty when not routed.
    pub const ROUTE: &str = "modelroute.route";
    pub const SERVER: &str = "modelroute.server";
    /// `model_server` when routed, `none` otherwise (Kthena's `backend_type`).
    pub const BACKEND_TYPE: &str = "modelroute.backend_type";
    pub const UPSTREAM_MODEL: &str = "modelroute.upstream_model";
    /// Kthena's `error_type`: the filter's error code, `successful_request`, `request_failed`,
    /// `client_cancelled` or `stream_interrupted`.
    pub const ERROR_TYPE: &str = "modelroute.error_type";
    /// The filter's own error message (local replies only).
    pub const ERROR_MESSAGE: &str = "modelroute.error_message";
    pub const INPUT_TOKENS: &str = "modelroute.input_tokens";
    pub const OUTPUT_TOKENS: &str = "modelroute.output_tokens";
    /// Seconds (decimal) from the request's headers to its end, as the filter saw them.
    pub const DURATION: &str = "modelroute.duration";
    /// Streams only: seconds to the first streamed byte, and per output token after it.
    pub const TTFT: &str = "modelroute.ttft";
    pub const TPOT: &str = "modelroute.tpot";
    /// PD only: the prefill pod, and the seconds of each leg.
    pub const PREFILL_POD: &str = "modelroute.prefill_pod";
    pub const PREFILL_DURATION: &str = "modelroute.prefill_duration";
    pub const DECODE_DURATION: &str = "modelroute.decode_duration";
    /// With the prefix-cache plugin: the share (0..1) of the prompt's blocks the chosen pod
    /// had served.
    pub const PREFIX_MATCH: &str = "modelroute.prefix_match";
}

/// Kthena's counters and gauges the filter keeps itself (Envoy stats named
/// `label=.=value;.;...;.;<metric>`; tag extraction on the labels, rendered by the controller
/// into the bootstraps' `stats_tags`, makes them Prometheus labels).
pub mod vm_metrics {
    pub const REQUESTS_TOTAL: &str = "kthena_router_requests_total";
    pub const TOKENS_TOTAL: &str = "kthena_router_tokens_total";
    pub const ACTIVE_DOWNSTREAM: &str = "kthena_router_active_downstream_requests";
    pub const ACTIVE_UPSTREAM: &str = "kthena_router_active_upstream_requests";
    /// The prefix indexes of every worker: entries held, entries evicted.
    pub const PREFIX_ENTRIES: &str = "kthena_router_prefix_cache_entries";
    pub const PREFIX_EVICTIONS: &str = "kthena_router_prefix_cache_evictions_total";
    pub const RATE_LIMIT_EXCEEDED: &str = "kthena_router_rate_limit_exceeded_total";
    /// Every label those carry.
    pub const LABELS: [&str; 11] = [
        "model",
        "path",
        "status_code",
        "error_type",
        "token_type",
        "limit_type",
        "model_route",
        "model_server",
        "backend_type",
        "backend_name",
        "upstream_model",
    ];
}

/// The whole plugin configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterConfig {
    /// Must equal [`SCHEMA_VERSION`].
    pub version: u32,
    #[serde(default)]
    pub settings: Settings,
    /// Routes in precedence order: for a given model name the filter tries them first to last
    /// (the controller sorts by creationTimestamp, resourceVersion, namespace/name).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Every ModelServer, referenced from targets by `name`.
    #[serde(default)]
    pub servers: Vec<Server>,
}

/// Filter-wide knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Header the filter sets to the chosen ModelServer's Envoy cluster.
    pub cluster_header: String,
    /// Header the filter sets to the chosen pod (`ip:port`, then fallbacks, comma-separated).
    pub endpoint_header: String,
    /// Largest request body the filter buffers; larger requests get 413.
    pub max_body_bytes: u64,
    /// How many other ready pods follow the chosen one in the endpoint header (retry order).
    pub endpoint_fallbacks: u32,
    /// How a rule picks among weighted targets.
    pub target_selection: TargetSelection,
    /// Label used as `owned_by` in the `GET /v1/models` answer.
    pub models_owned_by: String,
    /// Pod picking (Kthena's scheduler plugins).
    pub scheduler: Scheduler,
    /// Where gateways share the placements of new prompts, so every Envoy in front of the
    /// same pods sends a prompt family to one pod; none: each Envoy places on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_placements: Option<SharedPlacements>,
}

/// The store of shared placements: Redis, reached through the rate-limit service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedPlacements {
    /// The Envoy cluster of the rate-limit service (`modelroute-ratelimit`).
    pub cluster: String,
    /// The Redis the service keeps placements in (`host:port`).
    pub redis: String,
    /// How long a request waits for the store before placing on its own.
    pub timeout_ms: u64,
    /// How long a placement is kept.
    pub ttl_s: u64,
}

/// Kthena's router scheduler configuration, resolved: which plugins filter and score pods,
/// with what weights and arguments. Defaults are Kthena's Helm defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Scheduler {
    /// Filter plugins in order (`least-request`, `lora-affinity`).
    pub filters: Vec<Plugin>,
    /// Score plugins with weights; scores 0..100 are summed by weight.
    pub scores: Vec<WeightedPlugin>,
    /// least-request filter: pods reporting this many waiting requests or more are dropped.
    pub max_waiting_requests: u32,
    /// least-latency: weight of TTFT against TPOT, 0..1 (`TTFTTPOTWeightFactor`).
    pub ttft_tpot_weight_factor: f64,
    /// prefix-cache: prompt bytes per hashed block (`blockSizeToHash`).
    pub prefix_block_size: u32,
    /// prefix-cache: blocks hashed at most per prompt (`maxBlocksToMatch`).
    pub prefix_max_blocks: u32,
    /// prefix-cache: block hashes remembered per pod, LRU (`maxHashCacheSize`).
    pub prefix_max_hashes: u32,
    /// prefix-cache: pods considered per lookup (`topKMatches`).
    pub prefix_top_k: u32,
    /// prefix-cache, modelroute's `boundedLoad` (Kthena ignores the argument): 0, off;
    /// otherwise a conversation's next turn stays on the pods holding most of it, and a prompt
    /// that starts something new (a first turn after a shared system prompt, a prompt no pod
    /// has seen) goes only to pods that took at most this many times the mean share of the
    /// server's recent requests.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prefix_bounded_load: f64,
    /// prefix-cache, modelroute's `podSpeed`: the prompt's uncached part (and `boundedLoad`'s
    /// share) weighed by how much slower each pod decodes than the fastest, from its engine's
    /// mean time per output token; for fleets of mixed hardware.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefix_pod_speed: bool,
    /// session-affinity's arguments (None: its defaults, [`SessionAffinity::default`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
    /// How often engine metrics (`/metrics`, `/v1/models`) are collected from every pod.
    pub metrics_interval_ms: u64,
    /// Metrics older than this are ignored and the pod counts as unreachable.
    pub metrics_stale_ms: u64,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler {
            filters: vec![Plugin::LeastRequest],
            scores: [
                Plugin::LeastRequest,
                Plugin::GpuUsage,
                Plugin::LeastLatency,
                Plugin::PrefixCache,
            ]
            .into_iter()
            .map(|name| WeightedPlugin { name, weight: 1 })
            .collect(),
            max_waiting_requests: 10,
            ttft_tpot_weight_factor: 0.5,
            prefix_block_size: 64,
            prefix_max_blocks: 128,
            prefix_max_hashes: 50_000,
            prefix_top_k: 5,
            prefix_bounded_load: 0.0,
            prefix_pod_speed: false,
            session_affinity: None,
            metrics_interval_ms: 1000,
            metrics_stale_ms: 5000,
        }
    }
}

impl Scheduler {
    /// Whether `plugin` is a score plugin with a weight above 0.
    pub fn scores_with(&self, plugin: Plugin) -> bool {
        self.scores.iter().any(|s| s.name == plugin && s.weight > 0)
    }

    /// session-affinity's header, its default when not configured.
    pub fn session_header(&self) -> &str {
        self.session_affinity
            .as_ref()
            .map_or(DEFAULT_SESSION_HEADER, |a| a.header.as_str())
    }

    /// session-affinity's TTL, its default when not configured.
    pub fn session_ttl_ms(&self) -> u64 {
        self.session_affinity
            .as_ref()
            .map_or(DEFAULT_SESSION_TTL_MS, |a| a.ttl_ms)
    }
}

/// A scheduler plugin, by Kthena's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Plugin {
    LeastRequest,
    GpuUsage,
    LeastLatency,
    PrefixCache,
    LoraAffinity,
    Random,
    SessionAffinity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedPlugin {
    pub name: Plugin,
    pub weight: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cluster_header: DEFAULT_CLUSTER_HEADER.to_string(),
            endpoint_header: DEFAULT_ENDPOINT_HEADER.to_string(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            endpoint_fallbacks: DEFAULT_ENDPOINT_FALLBACKS,
            target_selection: TargetSelection::default(),
            models_owned_by: "kthena".to_string(),
            scheduler: Scheduler::default(),
            shared_placements: None,
        }
    }
}

/// Weighted target selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSelection {
    /// Smooth weighted round-robin per worker: exact proportions over every weight-sum window.
    #[default]
    WeightedRoundRobin,
    /// Independent weighted random draw per request (Kthena's behaviour).
    WeightedRandom,
}

/// One ModelRoute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// `namespace/name` of the ModelRoute (for logs and metrics).
    pub name: String,
    /// Requests whose `model` equals this are base-model requests for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// Requests whose `model` is one of these are LoRA requests for this route
    /// (only consulted when no route has a matching `model_name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora_adapters: Vec<String>,
    /// Ordered rules; the first whose match holds decides.
    pub rules: Vec<Rule>,
    /// Kthena's `spec.rateLimit`: token budgets of requests for `model_name` (never for LoRA
    /// adapters), shared by every worker of one Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Kthena's `spec.sessionSticky`: requests naming the same session go to the pod the
    /// session is bound to while it passes the filters (PD servers: not applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_sticky: Option<SessionSticky>,
}

/// Token budgets per unit of time: a bucket of `per_unit` tokens refilled continuously over
/// `unit_seconds` (Kthena's `x/time/rate` limiter: rate = limit / unit, burst = limit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_per_unit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_per_unit: Option<u64>,
    pub unit_seconds: u64,
    /// Beyond Kthena: the budgets apply per value of this request header (lower-case), not
    /// per model; clients are spread over `client_slots` buckets (bounded shared data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_header: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub client_slots: u32,
    /// Kthena's `global`: one budget for every Envoy, in this Redis, enforced by Envoy's
    /// rate-limit filter and `modelroute-ratelimit` ([`global_rate_limit`]); absent: the
    /// buckets live in this Envoy's shared data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalRateLimit>,
}

/// Where a global budget lives, and what requests get while it cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalRateLimit {
    /// `host:port`.
    pub redis: String,
    #[serde(default)]
    pub deny_on_redis_failure: bool,
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

/// One rule of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub name: String,
    /// All conditions are ANDed; an empty match matches every request.
    #[serde(default, rename = "match", skip_serializing_if = "Match::is_empty")]
    pub matches: Match,
    /// Weighted targets (at least one with weight > 0).
    pub targets: Vec<Target>,
}

/// Request conditions of a rule.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Match {
    /// Header conditions; `name` is lower-case. The first value is compared; a missing header
    /// compares as the empty string.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Condition on the request path (without the query string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// Exact comparison with the request body's `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_model: Option<String>,
}

impl Match {
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.uri.is_none() && self.body_model.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(flatten)]
    pub value: StringMatch,
}

/// Kthena's StringMatch, already resolved to the one kind in force
/// (exact > prefix > regex; none set = matches anything).
/// Serialised as `{"exact": "..."}`, `{"prefix": "..."}`, `{"regex": "..."}` or `{"any": {}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// RE2-style, unanchored (a match anywhere in the value).
    Regex(String),
    Any {},
}

/// A weighted target of a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// `namespace/name` of the ModelServer; must be present in `FilterConfig::servers`,
    /// otherwise requests choosing this target get 404 (as Kthena answers).
    pub server: String,
    /// Relative weight (Kthena default 100).
    pub weight: u32,
}

/// One ModelServer with its ready pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    /// `namespace/name` of the ModelServer.
    pub name: String,
    /// Envoy cluster that holds exactly these endpoints (override_host LB policy).
    pub cluster: String,
    /// `spec.model`: base-model requests are rewritten to this name when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub engine: Engine,
    /// `trafficPolicy.timeout` in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `trafficPolicy.retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// `kvConnector.type`, lower-case (http | lmcache | nixl | mooncake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_connector: Option<String>,
    /// Ready pods, in a stable order (by pod name).
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Prefill/decode disaggregation (`workloadSelector.pdGroup`); absent for plain servers.
    /// When present, requests are served by a prefill and a decode endpoint of one group and
    /// endpoints without a `role` take no part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pd: Option<Pd>,
}

/// PD-disaggregation settings of a ModelServer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pd {
    /// `pdGroup.groupKey`: the pod label whose value forms a group (for logs).
    pub group_key: String,
    /// SGLang: the prefill pods' bootstrap port sent as `bootstrap_port`
    /// (default [`DEFAULT_SGLANG_BOOTSTRAP_PORT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_port: Option<u16>,
}

/// SGLang's default disaggregation bootstrap port.
pub const DEFAULT_SGLANG_BOOTSTRAP_PORT: u16 = 8998;

/// The part a pod plays in PD disaggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Prefill,
    Decode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Vllm,
    Sglang,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retry {
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
}

/// A ready pod of a ModelServer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `podIP:workloadPort` (IPv6 as `[addr]:port`), exactly as Envoy lists the host.
    pub address: String,
    /// `namespace/name` of the pod.
    pub pod: String,
    /// PD servers only: the pod's `groupKey` label value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// PD servers only: prefill or decode (decode wins when a pod matches both label sets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

#[cfg(feature = "fixtures")]
mod fixtures;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_match_wire_form_is_single_key_object() {
        let m = HeaderMatch {
            name: "user-type".into(),
            value: StringMatch::Exact("premium".into()),
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"name":"user-type","exact":"premium"}"#);
        let any: StringMatch = serde_json::from_str(r#"{"any":{}}"#).unwrap();
        assert_eq!(any, StringMatch::Any {});
    }

    #[test]
    fn scheduler_defaults_are_kthenas_helm_defaults() {
        let s = Scheduler::default();
        assert_eq!(s.filters, vec![Plugin::LeastRequest]);
        let names: Vec<Plugin> = s.scores.iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                Plugin::LeastRequest,
                Plugin::GpuUsage,
                Plugin::LeastLatency,
                Plugin::PrefixCache
            ]
        );
        assert!(s.scores.iter().all(|p| p.weight == 1));
        assert_eq!(
            (
                s.max_waiting_requests,
                s.prefix_block_size,
                s.prefix_max_hashes
            ),
            (10, 64, 50_000)
        );
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains(r#"{"name":"gpu-usage","weight":1}"#),
            "{json}"
        );
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c: FilterConfig = serde_json::from_str(r#"{"version":1}"#).unwrap();
        assert_eq!(c.settings, Settings::default());
        assert!(c.routes.is_empty() && c.servers.is_empty());
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        let c: FilterConfig =
            serde_json::from_str(r#"{"version":1,"future":true,"settings":{"new_knob":3}}"#)
                .unwrap();
        assert_eq!(c.version, 1);
    }

    #[test]
    fn full_config_round_trips() {
        let c = FilterConfig {
            version: SCHEMA_VERSION,
            settings: Settings::default(),
            routes: vec![Route {
                name: "default/r".into(),
                model_name: Some("m".into()),
                lora_adapters: vec!["a".into()],
                rules: vec![Rule {
                    name: "r0".into(),
                    matches: Match {
                        headers: vec![HeaderMatch {
                            name: "h".into(),
                            value: StringMatch::Regex("^x".into()),
                        }],
                        uri: Some(StringMatch::Prefix("/v1".into())),
                        body_model: Some("m".into()),
                    },
                    targets: vec![Target {
                        server: "default/s".into(),
                        weight: 100,
                    }],
                }],
                rate_limit: Some(RateLimit {
                    input_per_unit: Some(30),
                    output_per_unit: None,
                    unit_seconds: 60,
                    client_header: Some("x-user".into()),
                    client_slots: 64,
                    global: None,
                }),
                session_sticky: Some(SessionSticky {
                    sources: vec![
                        SessionKeySource::new(SessionKeyKind::Header, "x-session-id"),
                        SessionKeySource::new(SessionKeyKind::Cookie, "sid"),
                    ],
                    ttl_ms: DEFAULT_STICKY_TTL_MS,
                }),
            }],
            servers: vec![Server {
                name: "default/s".into(),
                cluster: "modelserver|default|s".into(),
                model: Some("real".into()),
                engine: Engine::Vllm,
                timeout_ms: Some(10_000),
                retry: Some(Retry {
                    attempts: 3,
                    interval_ms: Some(100),
                }),
                kv_connector: None,
                endpoints: vec![Endpoint {
                    address: "127.0.0.2:8000".into(),
                    pod: "default/p".into(),
                    group: Some("g0".into()),
                    role: Some(Role::Decode),
                }],
                pd: Some(Pd {
                    group_key: "modelserving.volcano.sh/group-name".into(),
                    bootstrap_port: Some(8998),
                }),
            }],
        };
        let json = serde_json::to_string(&c).unwrap();
        let back: FilterConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }
}

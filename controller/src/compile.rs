//! Compile: validated Kthena resources + pods -> the filter's [`FilterConfig`] plus the cluster
//! facts an Envoy (or later Istio) renderer needs. Pure: no I/O (beyond one debug log line
//! summarising the pods a PD server leaves out), no Envoy JSON here.
//! Assumes `validate` found no errors (it stays total on bad input, but the result is then
//! meaningless). Non-fatal surprises become warnings.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use filter_config::{
    Endpoint, Engine, FilterConfig, HeaderMatch, Match, Pd, Retry, Role, Route, Rule, Server,
    Settings, Target, SCHEMA_VERSION,
};

use crate::diag::{object_line, Diagnostics};
use crate::duration::parse_duration_ms;
use crate::kthena::{
    self, annotation_path, parse_port_annotation, ModelRouteSpec, ModelServerSpec, Object, PdGroup,
    SGLANG_BOOTSTRAP_PORT_ANNOTATION,
};
use crate::load::Inputs;
use crate::order::{parse_rfc3339, sort_routes};
use crate::pods;

/// One Envoy cluster: a ModelServer's ready pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// `modelserver|<namespace>|<name>`.
    pub name: String,
    /// `workloadPort.protocol: https`: talk TLS to the pods.
    pub tls: bool,
    /// Ready pods as (IP, port), sorted by pod name.
    pub endpoints: Vec<(IpAddr, u16)>,
}

pub use crate::gateway::Gateway;

/// How long a request new to this gateway waits for the shared placement store: past it, the
/// gateway places the prompt on its own (a loopback or in-cluster round trip is ~1 ms).
pub const SHARED_PLACEMENTS_TIMEOUT_MS: u64 = 25;
/// How long a shared placement is kept after it was written or last read (a gateway new to
/// the prompt reads it); gateways that know the prompt do not ask, so a family placed
/// longer ago than this is placed afresh by the next gateway new to it.
pub const SHARED_PLACEMENTS_TTL_S: u64 = 600;

/// The result of a compile: what the filter reads and what Envoy must know.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub config: FilterConfig,
    /// One per server, in the same order as `config.servers`.
    pub clusters: Vec<Cluster>,
    /// How the gateway's routes behave; the caller sets it (compile leaves the default).
    pub gateway: Gateway,
}

impl Compiled {
    /// Sets how the gateway behaves (compile leaves the default). A global budget
    /// (`spec.rateLimit.global`) needs the gateway's rate-limit service; without one
    /// (`--rate-limit-service`) each Envoy enforces it on its own, and the routes are named.
    pub fn with_gateway(mut self, gateway: Gateway, diags: &mut Diagnostics) -> Compiled {
        if gateway.rate_limit_service.is_none() {
            for r in &mut self.config.routes {
                let Some(limit) = r.rate_limit.as_mut() else {
                    continue;
                };
                if limit.global.take().is_some() {
                    diags.warn(format!(
                        "ModelRoute {}: spec.rateLimit.global: no rate-limit service configured (--rate-limit-service): each Envoy enforces the limits on its own",
                        r.name
                    ));
                }
            }
        }
        if let Some(redis) = &gateway.shared_placements_redis {
            if gateway.rate_limit_service.is_none() {
                diags.warn("--shared-placements-redis: no rate-limit service configured (--rate-limit-service) to reach it through: each Envoy places new prompts on its own".to_string());
            } else {
                self.config.settings.shared_placements = Some(filter_config::SharedPlacements {
                    cluster: crate::render::rate_limit::CLUSTER.to_string(),
                    redis: redis.clone(),
                    timeout_ms: SHARED_PLACEMENTS_TIMEOUT_MS,
                    ttl_s: SHARED_PLACEMENTS_TTL_S,
                });
            }
        }
        self.gateway = gateway;
        self
    }

    pub fn endpoint_count(&self) -> usize {
        self.config.servers.iter().map(|s| s.endpoints.len()).sum()
    }

    /// Test fixture for renderers: no routes, one cluster `modelserver|ns|s` with one pod
    /// at 10.0.0.1:8000.
    #[cfg(test)]
    pub(crate) fn one_cluster() -> Self {
        Compiled {
            config: FilterConfig {
                version: filter_config::SCHEMA_VERSION,
                settings: filter_config::Settings::default(),
                routes: vec![],
                servers: vec![],
            },
            clusters: vec![Cluster {
                name: "modelserver|ns|s".into(),
                tls: false,
                endpoints: vec![(std::net::IpAddr::from([10, 0, 0, 1]), 8000)],
            }],
            gateway: Gateway::default(),
        }
    }
}

/// The Envoy cluster of ModelServer `namespace/name`.
pub fn cluster_name(namespace: &str, name: &str) -> String {
    format!("modelserver|{namespace}|{name}")
}

/// Kthena's StringMatch resolved to the one condition in force: exact > prefix > regex; none = any.
pub fn resolve_string_match(m: &kthena::StringMatch) -> filter_config::StringMatch {
    use filter_config::StringMatch as S;
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), _, _) => S::Exact(e.clone()),
        (None, Some(p), _) => S::Prefix(p.clone()),
        (None, None, Some(r)) => S::Regex(r.clone()),
        (None, None, None) => S::Any {},
    }
}

/// Builds the filter config. `diags` receives warnings only.
pub fn compile(inputs: &Inputs, settings: Settings, diags: &mut Diagnostics) -> Compiled {
    let server_keys: BTreeSet<String> = inputs.servers.iter().map(|s| s.meta.key()).collect();

    let mut sorted: Vec<&Object<ModelRouteSpec>> = inputs.routes.iter().collect();
    for r in &sorted {
        if let Some(ts) = &r.meta.creation_timestamp {
            if parse_rfc3339(ts).is_none() {
                diags.warn(object_line(
                    &r.file,
                    "ModelRoute",
                    &r.meta.key(),
                    "metadata.creationTimestamp",
                    &format!("{ts:?} is not RFC3339; ordered as if absent"),
                ));
            }
        }
    }
    sort_routes(&mut sorted);
    let routes: Vec<Route> = sorted
        .into_iter()
        .filter_map(|r| compile_route(r, &server_keys, diags))
        .collect();
    report_shadowed_rate_limits(&routes, diags);

    let mut servers: Vec<&Object<ModelServerSpec>> = inputs.servers.iter().collect();
    servers.sort_by_key(|s| s.meta.key());
    let mut excluded = Vec::new();
    let (servers, clusters): (Vec<_>, _) = servers
        .into_iter()
        .map(|s| compile_server(s, &inputs.pods, &mut excluded, diags))
        .unzip();
    report_sticky_pd_targets(&routes, &servers, diags);
    if !excluded.is_empty() {
        log::debug!(
            "ready pods left out of PD servers: {}",
            excluded
                .iter()
                .map(|e: &PdExcluded| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    Compiled {
        config: FilterConfig {
            version: SCHEMA_VERSION,
            settings,
            routes,
            servers,
        },
        clusters,
        gateway: Gateway::default(),
    }
}

/// Kthena lets two routes with one modelName overwrite each other's limiter; here the oldest
/// route's limit applies (the filter takes the first in this order) and the others are named.
fn report_shadowed_rate_limits(routes: &[Route], diags: &mut Diagnostics) {
    let mut first: BTreeMap<&str, &str> = BTreeMap::new();
    for r in routes.iter().filter(|r| r.rate_limit.is_some()) {
        let Some(model) = r.model_name.as_deref() else {
            continue;
        };
        match first.get(model) {
            Some(oldest) => diags.warn(format!(
                "ModelRoute {}: spec.rateLimit: modelName {model:?} is already limited by the older ModelRoute {oldest}; its limit applies, this one is ignored",
                r.name
            )),
            None => {
                first.insert(model, &r.name);
            }
        }
    }
}

fn compile_route(
    r: &Object<ModelRouteSpec>,
    server_keys: &BTreeSet<String>,
    diags: &mut Diagnostics,
) -> Option<Route> {
    let key = r.meta.key();
    let ns = r.meta.namespace();
    let warn = |diags: &mut Diagnostics, path: &str, msg: &str| {
        diags.warn(object_line(&r.file, "ModelRoute", &key, path, msg))
    };
    let rate_limit = r.spec.rate_limit.as_ref().and_then(|rl| {
        if r.spec.model_name.as_deref().unwrap_or("").is_empty() {
            warn(
                diags,
                "spec.rateLimit",
                "a route without modelName is not limited (LoRA adapters never are, as in Kthena)",
            );
            return None;
        }
        let annotations = &r.meta.annotations;
        let global = rl.global.as_ref().and_then(|g| {
            let address = g
                .pointer("/redis/address")
                .and_then(|a| a.as_str())
                .unwrap_or("")
                .trim();
            if address.is_empty() {
                warn(
                    diags,
                    "spec.rateLimit.global.redis.address",
                    "missing: each Envoy enforces the limits on its own",
                );
                return None;
            }
            let failure = kthena::RATE_LIMIT_REDIS_FAILURE_ANNOTATION;
            let deny_on_redis_failure = match annotations.get(failure).map(|v| v.trim()) {
                None | Some("allow") => false,
                Some("deny") => true,
                Some(v) => {
                    warn(
                        diags,
                        &kthena::annotation_path(failure),
                        &format!("{v:?} is neither allow nor deny; using allow"),
                    );
                    false
                }
            };
            Some(filter_config::GlobalRateLimit {
                redis: address.to_string(),
                deny_on_redis_failure,
            })
        });
        let client_header = annotations
            .get(kthena::RATE_LIMIT_CLIENT_HEADER_ANNOTATION)
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty());
        let slots_path = kthena::annotation_path(kthena::RATE_LIMIT_CLIENTS_ANNOTATION);
        let client_slots = match annotations.get(kthena::RATE_LIMIT_CLIENTS_ANNOTATION) {
            None => kthena::DEFAULT_RATE_LIMIT_CLIENTS,
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) if (1..=1_000_000).contains(&n) => n,
                _ => {
                    warn(
                        diags,
                        &slots_path,
                        &format!(
                            "{v:?} is not a number from 1 to 1000000; using {}",
                            kthena::DEFAULT_RATE_LIMIT_CLIENTS
                        ),
                    );
                    kthena::DEFAULT_RATE_LIMIT_CLIENTS
                }
            },
        };
        Some(filter_config::RateLimit {
            input_per_unit: rl.input_tokens_per_unit,
            output_per_unit: rl.output_tokens_per_unit,
            unit_seconds: rl.unit_seconds()?,
            client_slots: if client_header.is_some() {
                client_slots
            } else {
                0
            },
            client_header,
            global,
        })
    });
    let mut rules = Vec::new();
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let mut targets = Vec::new();
        for (j, t) in rule.target_models.iter().enumerate() {
            let path = format!("spec.rules[{i}].targetModels[{j}]");
            if let Some(p) = t
                .external_model_provider_name
                .as_deref()
                .filter(|p| !p.is_empty())
            {
                warn(diags, &path, &format!("externalModelProviderName {p:?}: external providers are not supported yet; target dropped"));
                continue;
            }
            let Some(server) = t.model_server_name.as_deref() else {
                continue;
            };
            let server = format!("{ns}/{server}");
            if !server_keys.contains(&server) {
                warn(
                    diags,
                    &format!("{path}.modelServerName"),
                    &format!(
                        "ModelServer {server} not found; requests choosing this target get 404"
                    ),
                );
            }
            let weight = u32::try_from(t.weight().clamp(0, i64::from(u32::MAX))).unwrap_or(0);
            targets.push(Target { server, weight });
        }
        if targets.iter().all(|t| t.weight == 0) {
            warn(
                diags,
                &format!("spec.rules[{i}]"),
                "no usable target left; rule dropped",
            );
            continue;
        }
        let matches = rule
            .model_match
            .as_ref()
            .map(compile_match)
            .unwrap_or_default();
        rules.push(Rule {
            name: rule.name.clone(),
            matches,
            targets,
        });
    }
    if rules.is_empty() {
        warn(diags, "spec.rules", "no usable rule left; route dropped");
        return None;
    }
    Some(Route {
        name: key.clone(),
        model_name: r.spec.model_name.clone().filter(|m| !m.is_empty()),
        lora_adapters: r.spec.lora_adapters.clone(),
        rules,
        rate_limit,
        session_sticky: r.spec.session_sticky.as_ref().map(compile_session_sticky),
    })
}

/// `spec.sessionSticky` as the filter takes it (validated before): header names lower-case,
/// names trimmed, the TTL in ms.
fn compile_session_sticky(s: &kthena::SessionStickySpec) -> filter_config::SessionSticky {
    use filter_config::{SessionKeyKind as Kind, SessionKeySource as Source};
    let sources = s
        .sources
        .iter()
        .filter_map(|src| {
            let name = src.name.trim();
            match src.kind.as_str() {
                "Header" => Some(Source::new(Kind::Header, &name.to_ascii_lowercase())),
                "Query" => Some(Source::new(Kind::Query, name)),
                "Cookie" => Some(Source::new(Kind::Cookie, name)),
                _ => None,
            }
        })
        .collect();
    let ttl_ms = s
        .session_affinity_seconds
        .filter(|s| *s >= 1)
        .map_or(filter_config::DEFAULT_STICKY_TTL_MS, |s| {
            u64::try_from(s).unwrap_or(1).saturating_mul(1000)
        });
    filter_config::SessionSticky { sources, ttl_ms }
}

/// Kthena bypasses a route's session stickiness for PD-disaggregated servers (its proposal
/// leaves PD to later work); so does the filter, and this says so.
fn report_sticky_pd_targets(
    routes: &[Route],
    servers: &[filter_config::Server],
    diags: &mut Diagnostics,
) {
    for r in routes.iter().filter(|r| r.session_sticky.is_some()) {
        for t in r.rules.iter().flat_map(|rule| &rule.targets) {
            if servers.iter().any(|s| s.name == t.server && s.pd.is_some()) {
                diags.warn(format!(
                    "ModelRoute {}: spec.sessionSticky: ModelServer {} is PD-disaggregated; its requests are scheduled without session stickiness (as in Kthena)",
                    r.name, t.server
                ));
            }
        }
    }
}

fn compile_match(m: &kthena::ModelMatch) -> Match {
    // Lower-cased names; a BTreeMap keeps the output stable.
    let headers: BTreeMap<String, filter_config::StringMatch> = m
        .headers
        .iter()
        .map(|(name, sm)| (name.to_ascii_lowercase(), resolve_string_match(sm)))
        .collect();
    Match {
        headers: headers
            .into_iter()
            .map(|(name, value)| HeaderMatch { name, value })
            .collect(),
        uri: m.uri.as_ref().map(resolve_string_match),
        body_model: m.body.as_ref().and_then(|b| b.model.clone()),
    }
}

/// Why a ready pod selected by `matchLabels` takes no part in a PD server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PdExclusion {
    /// The pod lacks the `groupKey` label (or its value is empty, which Kthena treats alike).
    NoGroup,
    /// The pod has a group but matches neither `decodeLabels` nor `prefillLabels`.
    NoRole,
}

/// A pod's place in a PD server: its group (the `groupKey` label value) and its role. Decode is
/// checked first, so a pod matching both label sets decodes (as in Kthena).
pub fn pd_membership(pod: &pods::Pod, pd: &PdGroup) -> Result<(String, Role), PdExclusion> {
    let group = pod
        .metadata
        .labels
        .get(&pd.group_key)
        .filter(|g| !g.is_empty())
        .ok_or(PdExclusion::NoGroup)?;
    let role = if pod.matches_labels(&pd.decode_labels) {
        Role::Decode
    } else if pod.matches_labels(&pd.prefill_labels) {
        Role::Prefill
    } else {
        return Err(PdExclusion::NoRole);
    };
    Ok((group.clone(), role))
}

/// How many ready pods of one PD server were left out, by reason (for one summary log line).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PdExcluded {
    server: String,
    group_key: String,
    no_group: usize,
    no_role: usize,
}

impl std::fmt::Display for PdExcluded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} without label {}, {} in a group but neither prefill nor decode",
            self.server, self.no_group, self.group_key, self.no_role
        )
    }
}

/// `Server.pd` of a ModelServer with `pdGroup`, warning about a bootstrap-port annotation
/// that has no effect. Validation has already rejected a malformed annotation value.
fn compile_pd(
    s: &Object<ModelServerSpec>,
    pd_group: Option<&PdGroup>,
    engine: Engine,
    diags: &mut Diagnostics,
) -> Option<Pd> {
    let annotation = s.meta.annotations.get(SGLANG_BOOTSTRAP_PORT_ANNOTATION);
    let ignored = |diags: &mut Diagnostics, why: &str| {
        diags.warn(object_line(
            &s.file,
            "ModelServer",
            &s.meta.key(),
            &annotation_path(SGLANG_BOOTSTRAP_PORT_ANNOTATION),
            &format!("{why}; ignored"),
        ));
    };
    let Some(pd) = pd_group else {
        if annotation.is_some() {
            ignored(diags, "only used with spec.workloadSelector.pdGroup");
        }
        return None;
    };
    let bootstrap_port = match (annotation, engine) {
        (None, _) => None,
        (Some(_), Engine::Vllm) => {
            ignored(diags, "only used by SGLang, not vLLM");
            None
        }
        (Some(v), Engine::Sglang) => parse_port_annotation(v),
    };
    Some(Pd {
        group_key: pd.group_key.clone(),
        bootstrap_port,
    })
}

fn compile_server(
    s: &Object<ModelServerSpec>,
    all_pods: &[pods::Pod],
    excluded: &mut Vec<PdExcluded>,
    diags: &mut Diagnostics,
) -> (Server, Cluster) {
    let ns = s.meta.namespace();
    let key = s.meta.key();
    let spec = &s.spec;
    let cluster = cluster_name(ns, &s.meta.name);
    let engine = match spec.inference_engine.as_deref() {
        Some(e) if e.eq_ignore_ascii_case("sglang") => Engine::Sglang,
        _ => Engine::Vllm,
    };
    let port = spec
        .workload_port
        .as_ref()
        .and_then(|p| u16::try_from(p.port).ok())
        .unwrap_or(0);
    let tls = spec
        .workload_port
        .as_ref()
        .is_some_and(kthena::WorkloadPort::is_https);
    if tls {
        diags.warn(object_line(
            &s.file,
            "ModelServer",
            &key,
            "spec.workloadPort.protocol",
            "https: upstream TLS without verifying the server certificate",
        ));
    }
    let policy = spec.traffic_policy.as_ref();
    let timeout_ms = policy
        .and_then(|p| p.timeout.as_deref())
        .and_then(|t| parse_duration_ms(t).ok());
    let retry = policy.and_then(|p| p.retry.as_ref()).map(|r| Retry {
        attempts: r.attempts.and_then(|a| u32::try_from(a).ok()).unwrap_or(0),
        interval_ms: r
            .retry_interval
            .as_deref()
            .and_then(|i| parse_duration_ms(i).ok()),
    });
    let kv_connector = spec
        .kv_connector
        .as_ref()
        .and_then(|k| k.kind.as_deref())
        .map(str::to_ascii_lowercase);
    let empty = BTreeMap::new();
    let selector = spec
        .workload_selector
        .as_ref()
        .map_or(&empty, |w| &w.match_labels);
    let pd_group = spec
        .workload_selector
        .as_ref()
        .and_then(|w| w.pd_group.as_ref());
    let pd = compile_pd(s, pd_group, engine, diags);
    let ready = pods::select(all_pods, ns, selector);
    let mut endpoints = Vec::with_capacity(ready.len());
    let mut addrs = Vec::with_capacity(ready.len());
    let mut left_out = (0, 0);
    for pod in ready {
        let Some(ip) = pod.ip() else { continue };
        let (group, role) = match pd_group.map(|g| pd_membership(pod, g)) {
            None => (None, None),
            Some(Ok((group, role))) => (Some(group), Some(role)),
            Some(Err(PdExclusion::NoGroup)) => {
                left_out.0 += 1;
                continue;
            }
            Some(Err(PdExclusion::NoRole)) => {
                left_out.1 += 1;
                continue;
            }
        };
        endpoints.push(Endpoint {
            address: pods::endpoint_address(ip, port),
            pod: pod.metadata.key(),
            group,
            role,
        });
        addrs.push((ip, port));
    }
    if let Some(g) = pd_group.filter(|_| left_out != (0, 0)) {
        excluded.push(PdExcluded {
            server: key.clone(),
            group_key: g.group_key.clone(),
            no_group: left_out.0,
            no_role: left_out.1,
        });
    }
    let server = Server {
        name: key,
        cluster: cluster.clone(),
        model: spec.model.clone().filter(|m| !m.is_empty()),
        engine,
        timeout_ms,
        retry,
        kv_connector,
        endpoints,
        pd,
    };
    (
        server,
        Cluster {
            name: cluster,
            tls,
            endpoints: addrs,
        },
    )
}

#[cfg(test)]
mod tests;

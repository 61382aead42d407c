//! Routing decisions: the compiled form of a [`FilterConfig`], [`Router::find`] (request ->
//! route -> rule -> weighted target -> ModelServer) and [`Router::decide`], which adds the pod
//! choice of `pick` (shared by plain and PD servers).
//!
//! Semantics are Kthena's (see shared/KTHENA-BEHAVIOUR.md): routes whose `modelName` equals the
//! request model are tried first, in precedence order; only when no route has that
//! `modelName` are LoRA routes consulted. Within a route the first matching rule decides; a
//! route none of whose rules match is skipped. Everything that can be computed from the config
//! is computed once here (indexes, compiled regexes, the `/v1/models` answer), never per
//! request. Owns: matching (`router/rule.rs`), target choice; pod choice lives in
//! `router/pick.rs` (a sticky session's pin in `router/sticky.rs`, the rotation without
//! plugins in `router/round_robin.rs`). Must not touch the host.

use std::collections::HashMap;

use filter_config::{FilterConfig, Role, Settings, DEFAULT_SGLANG_BOOTSTRAP_PORT, SCHEMA_VERSION};

use crate::metrics::Snapshot;
use crate::pd::Protocol;
use crate::prefix::PrefixIndex;
use crate::rng::Rng;
use crate::scheduler::{self, RecentPicks};
use crate::weights::Weighted;

mod request;
mod rule;
pub use request::{
    no_in_flight, no_load_reports, no_shared_data, Request, SharedPlacement, SharedSession,
};
use rule::{Matcher, Rule};

/// Why a configuration was rejected (`on_configure` returns false; the old one keeps serving).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig(pub String);

impl std::fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid modelroute configuration: {}", self.0)
    }
}

/// Why a request could not be routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No route names this model (as `modelName` or LoRA adapter).
    ModelNotFound,
    /// Routes exist for the model but none of their rules match the request.
    NoRuleMatched,
    /// The chosen target names a ModelServer that does not exist.
    ServerNotFound(String),
    /// The chosen ModelServer has no ready pods.
    NoReadyEndpoints(String),
    /// The chosen PD ModelServer has no group with both a prefill and a decode pod.
    NoPdPair(String),
    /// Every ready pod of the ModelServer was dropped by a scheduler filter.
    AllFiltered(String, filter_config::Plugin),
    /// The compiled configuration contradicts itself (a bug, not the client's doing).
    Internal(&'static str),
    /// Not a failure: asked with [`SharedPlacement::Unasked`], the prompt is one no local
    /// record answers for; ask the gateways' store under these keys, then decide again.
    PlacementUnknown(crate::prefix_sync::SharedKeys, Target),
    /// Not a failure: asked with [`SharedSession::Unasked`], the request's sticky session has
    /// no binding this Envoy confirmed within [`crate::session::RENEW_MS`]; claim it in the
    /// gateways' store for the pod this Envoy would pick, then decide again with the answer.
    SessionUnknown(StoreBinding, Target),
}

#[derive(Debug)]
struct Route {
    name: String,
    rules: Vec<Rule>,
    rate_limit: Option<filter_config::RateLimit>,
    session_sticky: Option<filter_config::SessionSticky>,
}

/// A ModelServer as the filter uses it.
#[derive(Debug)]
pub struct Server {
    pub name: String,
    pub cluster: String,
    pub model: Option<String>,
    pub timeout_ms: Option<u64>,
    pub retry_attempts: Option<u32>,
    pub engine: filter_config::Engine,
    /// Present for PD-disaggregated servers.
    pub pd: Option<PdServer>,
    endpoints: Vec<String>,
    /// The endpoints' identities in session bindings ([`crate::session::pod_id`]).
    pod_ids: Vec<u64>,
    next: usize,
    /// Shared-data key of this server's in-flight counts (changes with the pod list).
    pub in_flight_key: String,
    /// Shared-data key of its pods' in-band load reports: vLLM servers only (the engines
    /// that answer `endpoint-load-metrics-format`).
    pub load_key: Option<String>,
    prefix: Option<PrefixIndex>,
    /// Shared-data key of the journal that keeps the workers' prefix indexes in step, and
    /// how far this worker has read it ([`crate::prefix_sync`]).
    prefix_journal: String,
    journal_seen: u64,
    /// An id of the pod list, so that a placement record names a pod of this list.
    pod_list: u32,
    /// Which pods this worker's picks went to lately (prefix-cache's `boundedLoad`).
    recent: RecentPicks,
}

/// A PD-disaggregated ModelServer: its protocol and its complete groups.
#[derive(Debug)]
pub struct PdServer {
    pub protocol: Protocol,
    pub bootstrap_port: u16,
    groups: Vec<Group>,
    next_group: usize,
}

/// One PD group (pods sharing the groupKey label value) with both roles present.
#[derive(Debug)]
struct Group {
    name: String,
    /// Indices into the server's endpoints.
    prefill: Vec<usize>,
    decode: Vec<usize>,
    next: usize,
}

/// A prefill pod and a decode pod of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub group: String,
    pub prefill: String,
    pub decode: String,
}

/// Where a request goes, before any pod is chosen ([`Router::find`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub route: usize,
    pub server: usize,
    /// True when the request model matched a LoRA adapter (the model is then kept as is).
    pub lora: bool,
}

/// The outcome of routing one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub route: usize,
    pub server: usize,
    /// True when the request model matched a LoRA adapter (the model is then kept as is).
    pub lora: bool,
    /// `ip:port[,ip:port...]`: the chosen pod first, then fallbacks in retry order.
    /// For a PD server: the first pair's decode pod only (a decode is never retried blindly).
    pub endpoints: String,
    /// PD servers: prefill/decode pairs in the order to try them (first = chosen).
    pub pairs: Vec<Pair>,
    /// When the scheduler picked: the chosen pod's index in the server's endpoints.
    pub pod_index: Option<usize>,
    /// With the prefix-cache plugin: the share of the prompt's blocks the chosen pod had
    /// served (Kthena's `prefix_cache_match_ratio`), in thousandths.
    pub prefix_match: Option<u16>,
    /// A new prompt was placed and no other worker's record had: the shared-data key and
    /// value of its placement record ([`crate::prefix_sync`]), for the flow to publish at once.
    pub placement_record: Option<(String, Vec<u8>)>,
    /// With shared placements: the store's keys for that record (the server it was placed
    /// on decides them, not the one the store was asked about).
    pub shared_keys: Option<crate::prefix_sync::SharedKeys>,
    /// sessionSticky with the gateways' store: the binding to write there (replacing the
    /// one this Envoy saw), when the store holds another pod or none.
    pub session_store_write: Option<StoreBinding>,
    /// sessionSticky and session-affinity: shared-data keys and records binding the request's session to the
    /// chosen pod (and, PD, prefill pod) when the binding is new, moved or due for renewal
    /// ([`crate::session::RENEW_MS`]).
    pub session_bindings: Vec<(String, Vec<u8>)>,
    /// sessionSticky: what to rebind the session with if another pod than the chosen one
    /// answers ([`SessionFollow`]).
    pub session_follow: Option<SessionFollow>,
    /// sessionSticky: the session was bound to a pod the filters dropped, and moved.
    pub session_moved: bool,
}

/// Compiled configuration plus the per-worker state decisions need (weights, round-robin
/// positions, RNG).
#[derive(Debug)]
pub struct Router {
    pub settings: Settings,
    routes: Vec<Route>,
    by_model: HashMap<String, Vec<usize>>,
    by_lora: HashMap<String, Vec<usize>>,
    servers: Vec<Server>,
    models_body: String,
    rng: Rng,
    /// Engine stats of every pod, as last collected (shared snapshot).
    stats: Snapshot,
    scheduling: bool,
    /// Prompt bytes prefix hashing reads (0: prefix-cache is not scored, no prompt needed).
    prompt_cap: usize,
}

impl Router {
    /// Parses and compiles the plugin configuration JSON.
    pub fn from_json(json: &[u8], seed: u64) -> Result<Self, InvalidConfig> {
        let cfg: FilterConfig =
            serde_json::from_slice(json).map_err(|e| InvalidConfig(e.to_string()))?;
        Self::compile(cfg, seed)
    }

    pub fn compile(cfg: FilterConfig, seed: u64) -> Result<Self, InvalidConfig> {
        if cfg.version != SCHEMA_VERSION {
            return Err(InvalidConfig(format!(
                "schema version {} is not supported (this filter speaks version {SCHEMA_VERSION})",
                cfg.version
            )));
        }
        check_header_name(&cfg.settings.cluster_header, "settings.cluster_header")?;
        check_header_name(&cfg.settings.endpoint_header, "settings.endpoint_header")?;
        if let Some(sessions) = &cfg.settings.scheduler.session_affinity {
            check_header_name(
                &sessions.header,
                "settings.scheduler.session_affinity.header",
            )?;
        }
        for r in &cfg.routes {
            let sources = r.session_sticky.iter().flat_map(|s| &s.sources);
            for source in sources.filter(|s| s.kind == filter_config::SessionKeyKind::Header) {
                check_header_name(
                    &source.name,
                    &format!("route {}: session_sticky header", r.name),
                )?;
            }
        }

        let uses_prefix = cfg
            .settings
            .scheduler
            .scores_with(filter_config::Plugin::PrefixCache);
        let mut servers = Vec::with_capacity(cfg.servers.len());
        let mut server_index = HashMap::with_capacity(cfg.servers.len());
        for (i, s) in cfg.servers.into_iter().enumerate() {
            if s.cluster.is_empty() {
                return Err(InvalidConfig(format!("server {}: empty cluster", s.name)));
            }
            if server_index.insert(s.name.clone(), i).is_some() {
                return Err(InvalidConfig(format!("server {} is listed twice", s.name)));
            }
            let pd = s.pd.as_ref().map(|pd| PdServer {
                protocol: Protocol::of(s.engine, s.kv_connector.as_deref()),
                bootstrap_port: pd.bootstrap_port.unwrap_or(DEFAULT_SGLANG_BOOTSTRAP_PORT),
                groups: pd_groups(&s.endpoints),
                next_group: 0,
            });
            let key = in_flight_key(&s.cluster, &s.endpoints);
            let load_key =
                (s.engine == filter_config::Engine::Vllm).then(|| crate::load_report::key_of(&key));
            servers.push(Server {
                name: s.name,
                cluster: s.cluster,
                model: s.model.filter(|m| !m.is_empty()),
                timeout_ms: s.timeout_ms.filter(|t| *t > 0),
                retry_attempts: s.retry.map(|r| r.attempts),
                engine: s.engine,
                pd,
                prefix_journal: crate::prefix_sync::key_of(&key),
                journal_seen: 0,
                pod_list: crate::prefix::hash(0, key.as_bytes()) as u32,
                recent: RecentPicks::default(),
                in_flight_key: key,
                load_key,
                prefix: uses_prefix.then(|| {
                    PrefixIndex::with_key(
                        cfg.settings.scheduler.prefix_max_hashes as usize,
                        seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    )
                }),
                pod_ids: s
                    .endpoints
                    .iter()
                    .map(|e| crate::session::pod_id(&e.address))
                    .collect(),
                endpoints: s.endpoints.into_iter().map(|e| e.address).collect(),
                next: 0,
            });
        }

        let mut routes = Vec::with_capacity(cfg.routes.len());
        let mut by_model: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_lora: HashMap<String, Vec<usize>> = HashMap::new();
        let mut listed: Vec<&str> = Vec::new();
        for (ri, r) in cfg.routes.iter().enumerate() {
            if r.model_name.as_deref().unwrap_or("").is_empty() && r.lora_adapters.is_empty() {
                return Err(InvalidConfig(format!(
                    "route {}: neither model_name nor lora_adapters",
                    r.name
                )));
            }
            let mut rules = Vec::with_capacity(r.rules.len());
            for rule in &r.rules {
                let what = format!("route {} rule {}", r.name, rule.name);
                let headers = rule
                    .matches
                    .headers
                    .iter()
                    .map(|h| {
                        Ok((
                            h.name.to_ascii_lowercase(),
                            Matcher::compile(&h.value, &what)?,
                        ))
                    })
                    .collect::<Result<Vec<_>, InvalidConfig>>()?;
                let uri = rule
                    .matches
                    .uri
                    .as_ref()
                    .map(|u| Matcher::compile(u, &what))
                    .transpose()?;
                let weights = Weighted::new(rule.targets.iter().map(|t| t.weight).collect())
                    .ok_or_else(|| {
                        InvalidConfig(format!("{what}: no target with a positive weight"))
                    })?;
                let targets = rule
                    .targets
                    .iter()
                    .map(|t| {
                        server_index
                            .get(&t.server)
                            .copied()
                            .ok_or_else(|| t.server.clone())
                    })
                    .collect();
                rules.push(Rule {
                    headers,
                    uri,
                    body_model: rule.matches.body_model.clone(),
                    targets,
                    weights,
                });
            }
            if let Some(m) = r.model_name.as_deref().filter(|m| !m.is_empty()) {
                by_model.entry(m.to_string()).or_default().push(ri);
                listed.push(m);
            }
            for a in &r.lora_adapters {
                by_lora.entry(a.clone()).or_default().push(ri);
                listed.push(a);
            }
            routes.push(Route {
                name: r.name.clone(),
                rules,
                // Kthena limits requests for a route's modelName, never its LoRA adapters.
                rate_limit: r.rate_limit.clone().filter(|_| r.model_name.is_some()),
                session_sticky: r.session_sticky.clone(),
            });
        }
        let settings_scheduler = cfg.settings.scheduler.clone();
        let models_body = models_list(&listed, &cfg.settings.models_owned_by);
        Ok(Router {
            settings: cfg.settings,
            routes,
            by_model,
            by_lora,
            servers,
            models_body,
            rng: Rng::new(seed),
            stats: Snapshot::new(),
            scheduling: scheduler::is_active(&settings_scheduler),
            prompt_cap: if uses_prefix {
                (settings_scheduler.prefix_max_blocks as usize)
                    .saturating_mul(settings_scheduler.prefix_block_size.max(1) as usize)
            } else {
                0
            },
        })
    }

    /// The `GET /v1/models` answer (an OpenAI model list), computed at configure time.
    pub fn models_body(&self) -> &str {
        &self.models_body
    }

    /// One model as `GET /v1/models/{id}` answers it, if a route serves `id` (by `modelName`
    /// or as a LoRA adapter).
    pub fn model_body(&self, id: &str) -> Option<String> {
        (self.by_model.contains_key(id) || self.by_lora.contains_key(id))
            .then(|| model_object(id, &self.settings.models_owned_by).to_string())
    }

    pub fn server(&self, i: usize) -> Option<&Server> {
        self.servers.get(i)
    }

    /// The token rate limits for requests naming `model`: the oldest route with that
    /// `modelName` and a limit decides (the controller reports the others).
    pub fn rate_limit(&self, model: &str) -> Option<&filter_config::RateLimit> {
        self.by_model
            .get(model)?
            .iter()
            .find_map(|&i| self.routes.get(i)?.rate_limit.as_ref())
    }

    pub fn route_name(&self, i: usize) -> &str {
        self.routes.get(i).map(|r| r.name.as_str()).unwrap_or("")
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Routes one request: [`Router::find`] its ModelServer, then pick that server's pods.
    pub fn decide(&mut self, req: &Request<'_>) -> Result<Decision, RouteError> {
        // Deciding again after a store answer: the first decision's target, while this
        // configuration still has it.
        let known = req
            .target
            .filter(|t| self.routes.get(t.route).is_some() && self.servers.get(t.server).is_some());
        let target = match known {
            Some(t) => t,
            None => self.find(req)?,
        };
        self.pick(target, req)
    }

    /// Which ModelServer serves a request (Kthena's precedence): routes naming the model as
    /// `modelName` first, else routes listing it as a LoRA adapter; in each, the first rule
    /// whose conditions all hold; then a weighted target of that rule. Mutable only for the
    /// weighted choice's per-worker state.
    pub fn find(&mut self, req: &Request<'_>) -> Result<Target, RouteError> {
        let (candidates, lora) = match self.by_model.get(req.model) {
            Some(c) => (c, false),
            None => (
                self.by_lora
                    .get(req.model)
                    .ok_or(RouteError::ModelNotFound)?,
                true,
            ),
        };
        let (route, rule) = candidates
            .iter()
            .find_map(|&ri| {
                let rules = &self.routes.get(ri)?.rules;
                let qi = rules.iter().position(|rule| rule.matches(req))?;
                Some((ri, qi))
            })
            .ok_or(RouteError::NoRuleMatched)?;
        let how = self.settings.target_selection;
        let matched = self
            .routes
            .get_mut(route)
            .and_then(|r| r.rules.get_mut(rule))
            .ok_or(RouteError::Internal("a matched rule vanished"))?;
        let pick = matched.weights.pick(how, &mut self.rng);
        let server = match matched.targets.get(pick) {
            Some(Ok(si)) => *si,
            Some(Err(missing)) => return Err(RouteError::ServerNotFound(missing.clone())),
            None => return Err(RouteError::Internal("the weighted pick named no target")),
        };
        Ok(Target {
            route,
            server,
            lora,
        })
    }
}

impl Router {
    /// Replaces the engine stats (the shared snapshot, read once per tick).
    pub fn set_stats(&mut self, stats: Snapshot) {
        self.stats = stats;
    }

    /// Prompt bytes prefix hashing reads: `maxBlocksToMatch` x `blockSizeToHash`, or 0 when
    /// prefix-cache is not scored (then no prompt is extracted at all). Fixed at configure.
    pub fn prompt_cap(&self) -> usize {
        self.prompt_cap
    }

    /// Root tick: shares what this worker's prefix indexes learned with the other workers and
    /// takes what they learned ([`crate::prefix_sync`]).
    pub fn sync_prefixes(&mut self, host: &mut dyn crate::host::Host) {
        for s in &mut self.servers {
            if let Some(index) = s.prefix.as_mut() {
                crate::prefix_sync::sync(host, &s.prefix_journal, index, &mut s.journal_seen);
            }
        }
    }

    /// This VM's prefix indexes: entries held, and entries evicted since they were made.
    pub fn prefix_totals(&self) -> (u64, u64) {
        self.servers
            .iter()
            .filter_map(|s| s.prefix.as_ref())
            .fold((0, 0), |(n, e), p| (n + p.len() as u64, e + p.evicted()))
    }

    /// Whether pods are picked by the scheduler (and metrics must be collected).
    pub fn scheduling(&self) -> bool {
        self.scheduling
    }

    /// Every pod to scrape, once per address, with the in-flight slot of every server that
    /// lists it. A pod some PD server sends prefill legs to gets none: those legs are side
    /// calls, never counted in flight, so its load cannot be split into this Envoy's and
    /// other gateways'.
    pub fn scrape_targets(&self) -> Vec<crate::collector::Target> {
        let prefill_pods: std::collections::HashSet<&str> = self
            .servers
            .iter()
            .filter_map(|s| s.pd.as_ref().map(|pd| (s, pd)))
            .flat_map(|(s, pd)| {
                pd.groups
                    .iter()
                    .flat_map(|g| &g.prefill)
                    .map(move |i| (s, *i))
            })
            .filter_map(|(s, i)| s.endpoints.get(i).map(String::as_str))
            .collect();
        let mut at: HashMap<String, usize> = HashMap::new();
        let mut out: Vec<crate::collector::Target> = Vec::new();
        for s in &self.servers {
            let n = s.endpoints.len();
            for (i, a) in s.endpoints.iter().enumerate() {
                let counted = !prefill_pods.contains(a.as_str());
                let slot = counted.then(|| (s.in_flight_key.clone(), n, i));
                if let Some(&j) = at.get(a) {
                    // Servers of one cluster and pod list share their counts: one slot.
                    if let Some((t, slot)) = out.get_mut(j).zip(slot) {
                        if !t.in_flight_slots.contains(&slot) {
                            t.in_flight_slots.push(slot);
                        }
                    }
                    continue;
                }
                at.insert(a.clone(), out.len());
                out.push(crate::collector::Target {
                    cluster: s.cluster.clone(),
                    address: a.clone(),
                    engine: s.engine,
                    load_slot: s.load_key.as_ref().map(|k| (k.clone(), n, i)),
                    in_flight_slots: slot.into_iter().collect(),
                });
            }
        }
        out
    }
}

/// The shared-data key of a server's in-flight counts: its cluster and pod list, so counts
/// indexed by position never mix two pod lists.
fn in_flight_key(cluster: &str, endpoints: &[filter_config::Endpoint]) -> String {
    let mut h = crate::prefix::hash(0, cluster.as_bytes());
    for e in endpoints {
        h = crate::prefix::hash(h, e.address.as_bytes());
    }
    format!("modelroute.inflight.{h:016x}")
}

/// Groups the endpoints by PD group; groups lacking either role take no part.
fn pd_groups(endpoints: &[filter_config::Endpoint]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        let (Some(name), Some(role)) = (&e.group, e.role) else {
            continue;
        };
        let idx = match groups.iter().position(|g| &g.name == name) {
            Some(i) => i,
            None => {
                groups.push(Group {
                    name: name.clone(),
                    prefill: vec![],
                    decode: vec![],
                    next: 0,
                });
                groups.len() - 1
            }
        };
        if let Some(g) = groups.get_mut(idx) {
            match role {
                Role::Prefill => g.prefill.push(i),
                Role::Decode => g.decode.push(i),
            }
        }
    }
    groups.retain(|g| !g.prefill.is_empty() && !g.decode.is_empty());
    groups
}

fn check_header_name(name: &str, what: &str) -> Result<(), InvalidConfig> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InvalidConfig(format!(
            "{what}: {name:?} is not a lower-case header name"
        )))
    }
}

fn model_object(id: &str, owned_by: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": owned_by})
}

fn models_list(names: &[&str], owned_by: &str) -> String {
    let mut seen = std::collections::HashSet::new();
    let data: Vec<serde_json::Value> = names
        .iter()
        .filter(|n| seen.insert(**n))
        .map(|n| model_object(n, owned_by))
        .collect();
    serde_json::json!({"object": "list", "data": data}).to_string()
}

mod pick;
mod round_robin;
mod sticky;
pub use sticky::{SessionFollow, StoreBinding};
#[cfg(test)]
mod sticky_tests;
#[cfg(test)]
mod tests;

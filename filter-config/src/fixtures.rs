//! Builders for configurations in tests and benchmarks (cargo feature `fixtures`): the shapes
//! the tests need, named, so none of them hand-builds a [`FilterConfig`]. Names follow the
//! controller's: ModelServer `default/<name>` with cluster `modelserver|default|<name>`.

use crate::{
    Endpoint, Engine, FilterConfig, Match, Pd, Plugin, RateLimit, Retry, Role, Route, Rule,
    Scheduler, Server, SessionKeySource, SessionSticky, Settings, Target, WeightedPlugin,
    SCHEMA_VERSION,
};

impl FilterConfig {
    /// `routes` and `servers` with default settings and the round-robin scheduler.
    pub fn fixture(routes: Vec<Route>, servers: Vec<Server>) -> Self {
        FilterConfig {
            version: SCHEMA_VERSION,
            settings: Settings {
                scheduler: Scheduler::round_robin(),
                ..Settings::default()
            },
            routes,
            servers,
        }
    }

    pub fn with_settings(mut self, edit: impl FnOnce(&mut Settings)) -> Self {
        edit(&mut self.settings);
        self
    }
}

impl Scheduler {
    /// No plugins: pods are picked round robin, so tests can pin the order.
    pub fn round_robin() -> Self {
        Scheduler {
            filters: vec![],
            scores: vec![],
            ..Default::default()
        }
    }

    /// examples/scheduler/cache-affinity.yaml without `boundedLoad` and `podSpeed`: prefix-cache weight 3,
    /// least-request 1, no filter.
    pub fn cache_affinity() -> Self {
        Scheduler {
            filters: vec![],
            scores: vec![
                WeightedPlugin {
                    name: Plugin::PrefixCache,
                    weight: 3,
                },
                WeightedPlugin {
                    name: Plugin::LeastRequest,
                    weight: 1,
                },
            ],
            ..Default::default()
        }
    }
}

impl Server {
    /// ModelServer `default/<name>` serving `model` on vLLM, its pods at `addresses` (pod
    /// `default/<name>-<i>`).
    pub fn fixture(name: &str, model: &str, addresses: &[&str]) -> Self {
        Server {
            name: format!("default/{name}"),
            cluster: format!("modelserver|default|{name}"),
            model: Some(model.into()),
            engine: Engine::Vllm,
            timeout_ms: None,
            retry: None,
            kv_connector: None,
            endpoints: addresses
                .iter()
                .enumerate()
                .map(|(i, a)| Endpoint {
                    address: a.to_string(),
                    pod: format!("default/{name}-{i}"),
                    group: None,
                    role: None,
                })
                .collect(),
            pd: None,
        }
    }

    pub fn with_timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    pub fn with_retry(mut self, attempts: Option<u32>) -> Self {
        self.retry = attempts.map(|attempts| Retry {
            attempts,
            interval_ms: None,
        });
        self
    }

    pub fn with_engine(mut self, engine: Engine, kv_connector: Option<&str>) -> Self {
        self.engine = engine;
        self.kv_connector = kv_connector.map(Into::into);
        self
    }

    /// A PD server: each endpoint is `(address, group, role)`; `None`s take no part.
    pub fn with_pd(
        mut self,
        group_key: &str,
        bootstrap_port: Option<u16>,
        endpoints: &[(&str, Option<&str>, Option<Role>)],
    ) -> Self {
        self.pd = Some(Pd {
            group_key: group_key.into(),
            bootstrap_port,
        });
        self.endpoints = endpoints
            .iter()
            .enumerate()
            .map(|(i, (a, group, role))| Endpoint {
                address: a.to_string(),
                pod: format!("{}-{i}", self.name),
                group: group.map(Into::into),
                role: *role,
            })
            .collect();
        self
    }
}

impl Route {
    /// ModelRoute `default/<name>` for `model` and/or the LoRA adapters `lora`.
    pub fn fixture(name: &str, model: Option<&str>, lora: &[&str], rules: Vec<Rule>) -> Self {
        Route {
            name: format!("default/{name}"),
            model_name: model.map(Into::into),
            lora_adapters: lora.iter().map(|s| s.to_string()).collect(),
            rules,
            rate_limit: None,
            session_sticky: None,
        }
    }

    /// The route with `spec.sessionSticky` reading the session key from `sources`.
    pub fn with_session_sticky(mut self, sources: Vec<SessionKeySource>, ttl_ms: u64) -> Self {
        self.session_sticky = Some(SessionSticky { sources, ttl_ms });
        self
    }

    /// The route with Kthena's token rate limits.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }
}

impl Rule {
    /// A rule sending what `matches` matches to ModelServers `default/<server>` by weight.
    pub fn fixture(name: &str, matches: Match, targets: &[(&str, u32)]) -> Self {
        Rule {
            name: name.into(),
            matches,
            targets: targets
                .iter()
                .map(|(s, w)| Target {
                    server: format!("default/{s}"),
                    weight: *w,
                })
                .collect(),
        }
    }
}

//! The per-request state machine, written against the [`Host`] trait so native tests can drive
//! it with a recording fake host. The proxy-wasm glue only adapts Envoy's callbacks to it.
//!
//! Headers: strip client copies of routing headers; answer `GET /v1/models`; claim
//! `POST /v1/...` requests (pause for the body), let everything else pass untouched.
//! Body: wait for end of stream (enforcing the size limit), scan once, decide, rewrite `model`
//! by splicing, set the cluster / endpoint / request-id / upstream-policy headers, continue.

use crate::errors::ErrorReply;
use crate::rewrite::splice_string;
use crate::router::{Request, Router};
use crate::scan::{scan, Model};
use filter_config::{DEFAULT_CLUSTER_HEADER, DEFAULT_ENDPOINT_HEADER};

/// Envoy headers the filter owns on inference requests; client copies are always removed.
pub const ENVOY_TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-timeout-ms";
pub const ENVOY_MAX_RETRIES_HEADER: &str = "x-envoy-max-retries";
pub const ENVOY_ORIGINAL_DST_HEADER: &str = "x-envoy-original-dst-host";
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What the host should do after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// The host operations the flow needs. Implementations must never panic.
pub trait Host {
    /// First value of a request header (`:method`, `:path` included).
    fn header(&self, name: &str) -> Option<String>;
    fn set_header(&mut self, name: &str, value: &str);
    fn remove_header(&mut self, name: &str);
    /// `len` bytes of the buffered request body from `start`.
    fn body(&self, start: usize, len: usize) -> Option<Vec<u8>>;
    /// Replaces the first `old_len` bytes of the buffered body (all of it) with `body`.
    fn replace_body(&mut self, old_len: usize, body: &[u8]);
    /// Answers the request locally.
    fn respond(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// Not ours (or already answered / routed): do nothing.
    #[default]
    Idle,
    /// An inference request whose body we are buffering.
    AwaitBody,
}

/// What was decided for a request, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub model: String,
    pub route: String,
    pub server: String,
    pub endpoint: String,
    pub upstream_model: String,
    pub local_status: Option<u32>,
}

/// State of one HTTP request.
#[derive(Debug, Default)]
pub struct Flow {
    phase: Phase,
    path: String,
    pub outcome: Outcome,
}

impl Flow {
    pub fn new() -> Self {
        Flow::default()
    }

    pub fn on_request_headers(
        &mut self,
        router: Option<&Router>,
        host: &mut dyn Host,
        end_of_stream: bool,
    ) -> Action {
        let (cluster_header, endpoint_header) = match router {
            Some(r) => (
                r.settings.cluster_header.as_str(),
                r.settings.endpoint_header.as_str(),
            ),
            None => (DEFAULT_CLUSTER_HEADER, DEFAULT_ENDPOINT_HEADER),
        };
        for h in [
            cluster_header,
            endpoint_header,
            ENVOY_ORIGINAL_DST_HEADER,
            ENVOY_TIMEOUT_HEADER,
            ENVOY_MAX_RETRIES_HEADER,
        ] {
            if host.header(h).is_some() {
                host.remove_header(h);
            }
        }

        let method = host.header(":method").unwrap_or_default();
        let full_path = host.header(":path").unwrap_or_default();
        let path = full_path.split(['?', '#']).next().unwrap_or("");

        if method == "GET" && path == "/v1/models" {
            return match router {
                Some(r) => {
                    host.respond(
                        200,
                        &[("content-type", "application/json")],
                        r.models_body().as_bytes(),
                    );
                    self.outcome.local_status = Some(200);
                    Action::Pause
                }
                None => self.fail(host, &ErrorReply::not_configured()),
            };
        }
        if method != "POST" || !path.starts_with("/v1/") {
            return Action::Continue;
        }
        let Some(router) = router else {
            return self.fail(host, &ErrorReply::not_configured());
        };
        let limit = router.settings.max_body_bytes;
        if let Some(len) = host
            .header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            if len > limit {
                return self.fail(host, &ErrorReply::too_large(limit));
            }
        }
        if end_of_stream {
            return self.fail(host, &ErrorReply::invalid_json("the body is empty"));
        }
        self.path = path.to_string();
        self.phase = Phase::AwaitBody;
        Action::Pause
    }

    pub fn on_request_body(
        &mut self,
        router: Option<&mut Router>,
        host: &mut dyn Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if self.phase != Phase::AwaitBody {
            return Action::Continue;
        }
        let Some(router) = router else {
            return self.fail(host, &ErrorReply::not_configured());
        };
        let limit = router.settings.max_body_bytes;
        if body_size as u64 > limit {
            return self.fail(host, &ErrorReply::too_large(limit));
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.phase = Phase::Idle;
        let body = host.body(0, body_size).unwrap_or_default();
        let scanned = match scan(&body) {
            Ok(s) => s,
            Err(e) => return self.fail(host, &ErrorReply::invalid_json(e)),
        };
        let (model, span) = match scanned.model {
            Some(Model::Str { value, span }) if !value.trim().is_empty() => (value, span),
            _ => return self.fail(host, &ErrorReply::model_missing()),
        };
        self.outcome.model = model.to_string();

        let header = |name: &str| host.header(name);
        let decision = router.decide(&Request {
            model: &model,
            path: &self.path,
            header: &header,
        });
        let decision = match decision {
            Ok(d) => d,
            Err(e) => return self.fail(host, &ErrorReply::from_route(&e, &model)),
        };
        let Some(server) = router.server(decision.server) else {
            return Action::Continue;
        };
        self.outcome.route = router.route_name(decision.route).to_string();
        self.outcome.server = server.name.clone();
        self.outcome.endpoint = decision
            .endpoints
            .split(',')
            .next()
            .unwrap_or("")
            .to_string();

        // Base-model requests carry the ModelServer's real model name upstream; LoRA requests
        // keep the adapter name, which the engine resolves.
        let rewrite_to = server
            .model
            .as_deref()
            .filter(|m| !decision.lora && *m != model.as_ref());
        match rewrite_to {
            Some(real) => {
                let new_body = splice_string(&body, span, real);
                host.replace_body(body_size, &new_body);
                if host.header("content-length").is_some() {
                    host.set_header("content-length", &new_body.len().to_string());
                }
                self.outcome.upstream_model = real.to_string();
            }
            None => self.outcome.upstream_model = model.to_string(),
        }

        host.set_header(&router.settings.cluster_header, &server.cluster);
        host.set_header(&router.settings.endpoint_header, &decision.endpoints);
        if let Some(ms) = server.timeout_ms {
            host.set_header(ENVOY_TIMEOUT_HEADER, &ms.to_string());
        }
        if let Some(n) = server.retry_attempts {
            host.set_header(ENVOY_MAX_RETRIES_HEADER, &n.to_string());
        }
        if host.header(REQUEST_ID_HEADER).is_none() {
            let id = request_id(router.rng().next_u64(), router.rng().next_u64());
            host.set_header(REQUEST_ID_HEADER, &id);
        }
        Action::Continue
    }

    fn fail(&mut self, host: &mut dyn Host, e: &ErrorReply) -> Action {
        self.phase = Phase::Idle;
        self.outcome.local_status = Some(e.status);
        host.respond(
            e.status,
            &[("content-type", "application/json")],
            e.body().as_bytes(),
        );
        Action::Pause
    }
}

/// A random (version 4) UUID from two random words.
pub fn request_id(a: u64, b: u64) -> String {
    let a = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x4000;
    let b = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFFF,
        b >> 48,
        b & 0xFFFF_FFFF_FFFF
    )
}

#[cfg(test)]
mod tests;

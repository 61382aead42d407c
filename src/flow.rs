//! The per-request state machine, written against the [`Host`] trait so native tests can drive
//! it with a recording fake host. The proxy-wasm glue only adapts Envoy's callbacks to it.
//!
//! Headers: strip client copies of routing headers; answer `GET /v1/models[/{id}]`; claim
//! `POST /v1/...` requests (pause for the body), let everything else pass untouched.
//! Body: wait for end of stream (enforcing the size limit), scan once, decide, rewrite `model`
//! by splicing, set the cluster / endpoint / request-id / upstream-policy headers, continue.
//! PD servers hand over to `prefill` (the prefill side call, then the decode leg); what a
//! request reports for Kthena's metrics lives in `metrics`.
//!
//! Every hook documents when Envoy calls it and what its return means. A hook that answers the
//! request locally returns [`Action::Pause`]: the local reply ends the stream, and continuing
//! would let the request go upstream as well.

use filter_config::{published, DEFAULT_CLUSTER_HEADER, DEFAULT_ENDPOINT_HEADER};

use crate::accounting::{self, Accounting, Ending, Routed};
use crate::errors::ErrorReply;
use crate::headers::Headers;
use crate::host::{Action, Counter, Host, MetricKind};
use crate::in_flight::InFlight;
use crate::load_report;
use crate::prompt::estimate_input_tokens;
use crate::rate_limit::{self, Direction, Draw};
use crate::router::{Router, Target};
use crate::scan::{scan, Model, Scan};

mod prefill;
use prefill::PdRequest;
mod route;
mod shared_placement;
mod shared_session;
pub use prefill::DEFAULT_PREFILL_TIMEOUT_MS;
use shared_placement::{Parsed, PlacementAsk};
use shared_session::SessionAsk;

/// Envoy headers the filter owns on inference requests; client copies are always removed.
/// The whole-request timeout is never set (it would cut a stream that has begun); the route's
/// own timeout is 0 and a client copy is dropped.
pub const ENVOY_TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-timeout-ms";
/// `trafficPolicy.timeout` as Kthena means it: connecting, sending the request and receiving the
/// response headers. Envoy stops a per-try timeout once the response has started, so a stream
/// runs to its end (gaps between chunks are bounded by the route's idle timeout).
pub const ENVOY_PER_TRY_TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-per-try-timeout-ms";
pub const ENVOY_MAX_RETRIES_HEADER: &str = "x-envoy-max-retries";
pub const ENVOY_ORIGINAL_DST_HEADER: &str = "x-envoy-original-dst-host";
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Where a request stands; each phase holds what is valid in it.
#[derive(Debug, Default)]
enum Phase {
    /// Not ours, answered, or routed to a plain ModelServer: nothing left to do.
    #[default]
    Idle,
    /// An inference request whose body is being buffered.
    AwaitBody,
    /// A PD request held while its prefill leg runs (vLLM protocols).
    AwaitPrefill(Box<PdRequest>),
    /// A PD request released to its decode pod (SGLang: its prefill leg may still answer).
    Decoding(Box<PdRequest>),
}

/// What was decided for a request, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub model: String,
    pub route: String,
    pub server: String,
    pub endpoint: String,
    pub upstream_model: String,
    /// PD: the prefill pod of the (last) attempt.
    pub prefill: String,
    pub local_status: Option<u32>,
    /// The filter's error reply: (code, message).
    pub error: Option<(&'static str, String)>,
    /// A route names the request's model (else its metrics label is `unknown`).
    pub model_known: bool,
}

/// State of one HTTP request.
#[derive(Debug, Default)]
pub struct Flow {
    phase: Phase,
    path: String,
    full_path: String,
    /// The pod counted in flight for this request: (key, pods, index).
    counted: Option<(String, usize, usize)>,
    /// The request headers as they arrived (client routing headers included; those are
    /// removed upstream but never read from here).
    headers: Headers,
    pub outcome: Outcome,
    /// Tokens and timings, for inference requests (`POST /v1/...`).
    acct: Accounting,
    /// The active-request gauges this request holds (+1 now, -1 when it ends).
    gauges_held: Vec<String>,
    /// The output budget (its limits and shared-data key) the answer's tokens are debited
    /// from when the request ends.
    output_limit: Option<(filter_config::RateLimit, String)>,
    /// The request draws on a global budget (Envoy's rate-limit filter admits it): Some(whether
    /// its output is limited, so the answer's tokens are published for the debit when it ends).
    global_budget: Option<bool>,
    /// The pod was asked for an in-band load report: where to share it (load key, pods, the
    /// server's index).
    load_report_slot: Option<(String, usize, usize)>,
    /// The gateways' store of placements was asked about this request's prompt.
    placement_ask: Option<PlacementAsk>,
    /// The gateways' store was asked about this request's sticky session.
    session_ask: Option<SessionAsk>,
    /// A sticky session's request went to a plain server (its index): the session follows
    /// the pod that answers.
    session_follow: Option<(usize, crate::router::SessionFollow)>,
    /// When the request was first routed, and where the first decision sent it: a decision
    /// made again after a store answer uses both, so that a weighted target is chosen once
    /// per request and a session confirmed then is not asked about in the same request.
    first_decision: Option<(u64, Option<Target>)>,
}

impl Flow {
    pub fn new() -> Self {
        Flow::default()
    }

    /// Runs when Envoy has the request headers (`end_of_stream`: there is no body). Strips
    /// client copies of the routing headers from every request. Continue: not an inference
    /// request, let it through untouched. Pause: the request is answered here (model list, an
    /// error) or its body is awaited ([`Flow::on_request_body`]).
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
        // One host call reads every header; removals cost a call only when a client sent one.
        let headers = host.request_headers();
        for h in [
            cluster_header,
            endpoint_header,
            ENVOY_ORIGINAL_DST_HEADER,
            ENVOY_TIMEOUT_HEADER,
            ENVOY_PER_TRY_TIMEOUT_HEADER,
            ENVOY_MAX_RETRIES_HEADER,
            load_report::FORMAT_HEADER,
        ] {
            if headers.contains(h) {
                host.remove_header(h);
            }
        }

        let method = headers.get(":method").unwrap_or_default();
        let full_path = headers.get(":path").unwrap_or_default();
        let path = full_path.split(['?', '#']).next().unwrap_or("");

        if method == "GET" && path == "/v1/models" {
            return match router {
                Some(r) => self.answer_json(host, r.models_body()),
                None => self.fail(host, &ErrorReply::not_configured()),
            };
        }
        // The OpenAI SDKs' `models.retrieve(id)`; ids may hold `/` (`org/model`).
        if let Some(id) = path.strip_prefix("/v1/models/").filter(|_| method == "GET") {
            let Some(r) = router else {
                return self.fail(host, &ErrorReply::not_configured());
            };
            return match percent_decode(id).and_then(|id| r.model_body(&id)) {
                Some(body) => self.answer_json(host, &body),
                None => self.fail(host, &ErrorReply::model_missing_id(id)),
            };
        }
        if method != "POST" || !path.starts_with("/v1/") {
            return Action::Continue;
        }
        // From here on the request is accounted for, whatever becomes of it.
        self.acct.start_ms = host.now_ms().max(1);
        self.path = path.to_string();
        let Some(router) = router else {
            return self.fail(host, &ErrorReply::not_configured());
        };
        let limit = router.settings.max_body_bytes;
        if let Some(len) = headers
            .get("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            if len > limit {
                return self.fail(host, &ErrorReply::too_large(limit));
            }
        }
        if end_of_stream {
            return self.fail(host, &ErrorReply::invalid_json("the body is empty"));
        }
        self.full_path = full_path.to_string();
        self.headers = headers;
        self.phase = Phase::AwaitBody;
        Action::Pause
    }

    /// Runs for each piece of a claimed request's body (`body_size`: all buffered so far).
    /// Pause: wait for more, or the request is answered here (413, 400, 404, 503, ...) or held
    /// for its prefill leg. Continue: routed, with the cluster, pod and policy headers set and
    /// the body rewritten; Envoy sends it upstream. Unclaimed requests continue untouched.
    pub fn on_request_body(
        &mut self,
        router: Option<&mut Router>,
        host: &mut dyn Host,
        in_flight: &mut InFlight,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if !matches!(self.phase, Phase::AwaitBody) {
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
        let (model, span) = match &scanned.model {
            Some(Model::Str { value, span }) if !value.trim().is_empty() => {
                (value.to_string(), span.clone())
            }
            _ => return self.fail(host, &ErrorReply::model_missing()),
        };
        self.outcome.model.clone_from(&model);
        self.acct.input_estimate = estimate_input_tokens(&body, &scanned);
        if let Some(limit) = router.rate_limit(&model).cloned() {
            let client = limit
                .client_header
                .as_deref()
                .and_then(|h| self.headers.get(h));
            if let Some(global) = &limit.global {
                let estimate = self.acct.input_estimate;
                let debits =
                    signals::publish_global_budget(host, &model, &limit, global, client, estimate);
                self.global_budget = Some(debits);
            } else {
                // Kthena's order of checks, output first since it takes nothing: a request
                // refused for output does not spend input budget. Both buckets in one
                // shared-data update, at the time the request arrived, with what this
                // worker's finished requests still owe the output budget.
                let key = rate_limit::key(&model, &limit, client);
                let draws = [
                    (Direction::Output, Draw::Debit(in_flight.debits.take(&key))),
                    (Direction::Output, Draw::Require),
                    (Direction::Input, Draw::Take(self.acct.input_estimate)),
                ];
                let now = self.acct.start_ms;
                if let Err(refusal) = rate_limit::draw(host, &key, &limit, &draws, now) {
                    self.outcome.model_known = true;
                    return self.refuse(host, &refusal);
                }
                if limit.output_per_unit.is_some() {
                    in_flight.debits.admitted();
                    self.output_limit = Some((limit, key));
                }
            }
        }

        let Scan {
            stream,
            members,
            object,
            ..
        } = scanned;
        let parsed = Parsed {
            scanned: Scan {
                model: None,
                stream,
                members,
                object,
            },
            body,
            body_size,
            model,
            span,
        };
        self.route(router, host, in_flight, parsed)
    }

    /// Runs once when the request is over, completed or reset (Envoy's `on_log`, before
    /// Envoy's access loggers run): releases its in-flight count and active-request gauges,
    /// and publishes what the request cost ([`filter_config::published`]) for them to read.
    /// Nothing to return.
    pub fn on_done(&mut self, host: &mut dyn Host, in_flight: &mut InFlight) {
        // A store answer still due would route a request that is over.
        self.placement_ask = None;
        self.session_ask = None;
        if let Some((key, n, idx)) = self.counted.take() {
            in_flight.release(host, &key, n, idx);
        }
        for gauge in std::mem::take(&mut self.gauges_held) {
            host.add_to_metric(MetricKind::Gauge, &gauge, -1);
        }
        if self.acct.start_ms == 0 {
            return;
        }
        let routed = (!self.outcome.server.is_empty()).then(|| Routed {
            route: &self.outcome.route,
            server: &self.outcome.server,
            upstream_model: &self.outcome.upstream_model,
            prefill_pod: &self.outcome.prefill,
        });
        let ending = match (&self.outcome.error, self.acct.response_status()) {
            (Some((code, _)), _) => Some(Ending::Local(code)),
            (None, Some(status)) => Some(Ending::Status(status)),
            (None, None) => None,
        };
        let now_ms = host.now_ms();
        let values = self
            .acct
            .published(self.model_label(), &self.path, routed, ending, now_ms);
        for (name, value) in &values {
            host.publish(name, value);
        }
        if let Some((_, message)) = &self.outcome.error {
            host.publish(published::ERROR_MESSAGE, message);
        }
        let status = match ending {
            Some(Ending::Local(_)) => self.outcome.local_status.unwrap_or(0),
            Some(Ending::Status(s)) => s,
            None => 0,
        };
        self.count_request(host, &values, status);
        if let Some((limit, key)) = self.output_limit.take() {
            let output = values
                .iter()
                .find(|(k, _)| *k == published::OUTPUT_TOKENS)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            in_flight.debits.ended(host, &key, &limit, output, now_ms);
        }
    }

    /// Whether the response matters: for inference requests that went upstream (usage,
    /// timings, PD decode counters). Other requests skip reading it.
    pub fn wants_response(&self) -> bool {
        self.acct.start_ms != 0 && self.outcome.local_status.is_none()
    }

    /// Runs when the response headers arrive (`status`: their `:status`, `content_type`),
    /// only for requests that [`Flow::wants_response`]: counts the PD decode leg's outcome
    /// and prepares the usage scan of the body. The response always continues.
    pub fn on_response_headers(
        &mut self,
        host: &mut dyn Host,
        status: Option<u32>,
        content_type: &str,
        end_of_stream: bool,
        refused: Option<&str>,
    ) {
        if let Some(limit_type) = refused.filter(|_| self.global_budget.is_some()) {
            self.global_budget = None;
            let direction = if limit_type == Direction::Input.limit_type() {
                Direction::Input
            } else {
                Direction::Output
            };
            return self.refused_globally(host, direction);
        }
        if end_of_stream {
            self.publish_global_debit(host);
        }
        if matches!(self.phase, Phase::Decoding(_)) && self.outcome.local_status.is_none() {
            host.count(if matches!(status, Some(s) if s < 500) {
                Counter::DecodeOk
            } else {
                Counter::DecodeFailed
            });
        }
        self.acct
            .on_response_headers(status.unwrap_or(0), content_type, end_of_stream);
    }

    /// Runs for each piece of the response body (`body_size`: this piece; nothing is
    /// buffered), for requests that [`Flow::wants_response`]: reads usage and timings as it
    /// passes, and cuts the usage-only chunk the router caused. The response always continues.
    pub fn on_response_body(&mut self, host: &mut dyn Host, body_size: usize, end_of_stream: bool) {
        if !self.acct.reads_body() {
            if end_of_stream {
                self.publish_global_debit(host);
            }
            return;
        }
        let chunk = if body_size == 0 {
            Vec::new()
        } else {
            host.response_body(body_size).unwrap_or_default()
        };
        let now_ms = if self.acct.wants_clock() {
            host.now_ms()
        } else {
            0
        };
        if let Some(changed) = self.acct.on_response_body(&chunk, end_of_stream, now_ms) {
            host.replace_response_body(body_size, &changed);
        }
        if end_of_stream {
            self.publish_global_debit(host);
        }
    }

    /// The request's `model` label: its model if a route names it, else `unknown`.
    fn model_label(&self) -> &str {
        if self.outcome.model_known {
            &self.outcome.model
        } else {
            accounting::UNKNOWN_MODEL
        }
    }

    fn answer_json(&mut self, host: &mut dyn Host, body: &str) -> Action {
        host.respond(
            200,
            &[("content-type", "application/json")],
            body.as_bytes(),
        );
        self.outcome.local_status = Some(200);
        Action::Pause
    }

    fn fail(&mut self, host: &mut dyn Host, e: &ErrorReply) -> Action {
        self.fail_with(host, e, &[])
    }

    /// Answers with the error `e` (JSON) and `extra` headers; the request ends here.
    fn fail_with(
        &mut self,
        host: &mut dyn Host,
        e: &ErrorReply,
        extra: &[(&str, String)],
    ) -> Action {
        self.phase = Phase::Idle;
        self.outcome.local_status = Some(e.status);
        self.outcome.error = Some((e.code, e.message.clone()));
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        host.respond(e.status, &headers, e.body().as_bytes());
        Action::Pause
    }
}

/// A URL path segment with its `%XX` escapes decoded; None if an escape is malformed or the
/// result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let digit = |d: u8| (d as char).to_digit(16);
            out.push((digit(*hex.first()?)? * 16 + digit(*hex.get(1)?)?) as u8);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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

mod metrics;

mod signals;

#[cfg(test)]
mod affinity_tests;
#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod pd_tests;
#[cfg(test)]
mod session_tests;
#[cfg(test)]
mod shared_placement_tests;
#[cfg(test)]
mod shared_session_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod usage_tests;
#[cfg(test)]
mod workers;

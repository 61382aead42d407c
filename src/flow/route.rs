//! Routing a parsed request: the router's decision, the pod counted in flight, the body and
//! headers Envoy forwards (or the PD legs started). Part of [`Flow`]; runs once per request,
//! again after each answer of the gateways' store ([`super::shared_placement`],
//! [`super::shared_session`]).

use std::borrow::Cow;

use filter_config::vm_metrics;

use super::prefill::PdRequest;
use super::prefill::DEFAULT_PREFILL_TIMEOUT_MS;
use super::shared_placement::Parsed;
use super::{
    request_id, Flow, ENVOY_MAX_RETRIES_HEADER, ENVOY_PER_TRY_TIMEOUT_HEADER, REQUEST_ID_HEADER,
};
use crate::accounting;
use crate::errors::ErrorReply;
use crate::host::{Action, Counter, Host};
use crate::in_flight::{InFlight, Read};
use crate::load_report;
use crate::prompt::prompt_text;
use crate::rewrite::{json_string, splice_string};
use crate::router::{Request, RouteError, Router, Server};
use crate::scan::{Key, Scan};
use crate::tally::metric_name;

impl Flow {
    /// Routes the parsed request: decides the server and pod and sends it on (or starts its
    /// PD legs). With the gateways' store, a prompt no local record answers for, or a sticky
    /// session this Envoy has not confirmed lately, pauses the request while the store is
    /// asked ([`Flow::ask_shared_placement`], [`Flow::ask_shared_session`]), and this runs
    /// again with the answer.
    pub(super) fn route(
        &mut self,
        router: &mut Router,
        host: &mut dyn Host,
        in_flight: &mut InFlight,
        parsed: Parsed,
    ) -> Action {
        let Parsed {
            body,
            body_size,
            scanned,
            model,
            span,
        } = parsed;
        let prompt = match router.prompt_cap() {
            0 => Cow::Borrowed(&[][..]),
            cap => prompt_text(&body, &scanned, cap),
        };
        // One clock per request (metrics freshness, session bindings' age), whether or not
        // the store was asked meanwhile.
        let (now_ms, target) = *self
            .first_decision
            .get_or_insert_with(|| (host.now_ms(), None));
        let headers = &self.headers;
        let header = |name: &str| headers.get_lossy(name);
        // The scheduler's read of in-flight counts also supplies the token to count this
        // request with (one shared-data write when no other worker wrote in between).
        let last_read = std::cell::RefCell::new(None);
        let counts = |key: &str, n: usize| {
            let (view, read) = in_flight.read(&*host, key, n);
            *last_read.borrow_mut() = Some(read);
            view
        };
        // The pods' reports as read for the pick also tell whether the chosen one is due.
        let last_reports = std::cell::RefCell::new(Vec::new());
        let reports = |key: &str, n: usize| {
            let read = load_report::read(&*host, key, n);
            last_reports.borrow_mut().clone_from(&read);
            read
        };
        let decision = router.decide(&Request {
            model: &model,
            path: &self.path,
            query: query_of(&self.full_path),
            header: &header,
            prompt: &prompt,
            in_flight: &counts,
            load_reports: &reports,
            shared_data: &|key: &str| host.shared_get(key).0,
            shared: self.placement_store(router),
            session_store: self.session_store(router),
            target,
            now_ms,
        });
        drop(prompt);
        if let Err(RouteError::SessionUnknown(_, t) | RouteError::PlacementUnknown(_, t)) = decision
        {
            self.first_decision = Some((now_ms, Some(t)));
            let parsed = Parsed {
                body,
                body_size,
                scanned,
                model,
                span,
            };
            return match decision {
                Err(RouteError::SessionUnknown(claim, t)) => {
                    // Counted on the pod it claims while it waits (most likely where it
                    // goes): new sessions claimed at once are then proposed apart.
                    let server = router.server(t.server).filter(|_| router.scheduling());
                    if let Some((server, idx)) =
                        server.and_then(|s| Some((s, s.endpoint_index(&claim.pod)?)))
                    {
                        self.count_in_flight(host, in_flight, server, idx, last_read.take());
                    }
                    self.ask_shared_session(router, host, in_flight, parsed, claim)
                }
                Err(RouteError::PlacementUnknown(key, _)) => {
                    self.ask_shared_placement(router, host, in_flight, parsed, key)
                }
                _ => Action::Continue,
            };
        }
        self.outcome.model_known =
            !matches!(decision, Err(crate::router::RouteError::ModelNotFound));
        let name = metric_name(
            vm_metrics::ACTIVE_DOWNSTREAM,
            &[("model", self.model_label())],
        );
        self.hold_gauge(host, name);
        let mut decision = match decision {
            Ok(d) => d,
            Err(e) => return self.fail(host, &ErrorReply::from_route(&e, &model)),
        };
        self.acct.prefix_match = decision.prefix_match;
        if let Some((key, record)) = &decision.placement_record {
            // Last writer wins: a placement is a hint, not a count.
            host.shared_put(key, record);
            Flow::share_placement(router, host, record, decision.shared_keys.as_ref());
        }
        for (key, record) in &decision.session_bindings {
            // Last writer wins, as in Kthena: a session follows its latest pick.
            host.shared_put(key, record);
        }
        if let Some(write) = &decision.session_store_write {
            Flow::share_session(router, host, write);
        }
        self.session_follow = decision.session_follow.take().map(|f| (decision.server, f));
        if decision.session_moved {
            host.count(Counter::SessionMoved);
        }
        // Clients streaming without usage still get counted: ask the engine for it (the
        // usage-only chunk that adds is removed from the answer).
        let stream_options =
            if scanned.stream == Some(true) && accounting::supports_stream_options(&self.path) {
                let current = scanned
                    .member(Key::StreamOptions)
                    .and_then(|span| body.get(span));
                accounting::include_usage(current)
            } else {
                None
            };
        self.acct.usage_injected = stream_options.is_some();
        // Envoy generates one unless configured not to.
        let request_id = match self.headers.get(REQUEST_ID_HEADER) {
            Some(id) => id.to_string(),
            None => {
                let id = request_id(router.rng().next_u64(), router.rng().next_u64());
                host.set_header(REQUEST_ID_HEADER, &id);
                id
            }
        };
        let Some(server) = router.server(decision.server) else {
            return Action::Continue;
        };
        if let Some(idx) = decision.pod_index {
            let n = server.endpoint_count();
            self.count_in_flight(host, in_flight, server, idx, last_read.take());
            // The scheduler picked it: ask a vLLM pod for its load with the answer, unless
            // it reported a moment ago.
            let last = last_reports.borrow().get(idx).copied().flatten();
            let due = router.scheduling() && load_report::due(last, now_ms);
            if let Some(key) = server.load_key.as_ref().filter(|_| due) {
                host.set_header(load_report::FORMAT_HEADER, load_report::FORMAT);
                self.load_report_slot = Some((key.clone(), n, decision.server));
            }
        }
        self.outcome.route = router.route_name(decision.route).to_string();
        self.outcome.server = server.name.clone();
        self.outcome.endpoint = decision
            .endpoints
            .split(',')
            .next()
            .unwrap_or("")
            .to_string();

        if let Some(pd) = &server.pd {
            let upstream_model = match &server.model {
                Some(m) if !decision.lora => m.clone(),
                _ => model.to_string(),
            };
            self.outcome.upstream_model = upstream_model.clone();
            // The leg builders reuse this scan's record of the members they edit.
            let layout = Scan {
                model: None,
                stream: scanned.stream,
                members: scanned.members.clone(),
                object: scanned.object.clone(),
            };
            let request = Box::new(PdRequest {
                protocol: pd.protocol,
                layout,
                body,
                model: upstream_model,
                cluster: server.cluster.clone(),
                cluster_header: router.settings.cluster_header.clone(),
                endpoint_header: router.settings.endpoint_header.clone(),
                full_path: self.full_path.clone(),
                authority: self
                    .headers
                    .get(":authority")
                    .unwrap_or("modelroute")
                    .to_string(),
                request_id,
                authorization: self.headers.get("authorization").map(str::to_string),
                pairs: decision.pairs,
                attempt: 0,
                token: None,
                sent_ms: 0,
                prefill_timeout_ms: server.timeout_ms.unwrap_or(DEFAULT_PREFILL_TIMEOUT_MS),
                decode_timeout_ms: server.timeout_ms,
                bootstrap_port: pd.bootstrap_port,
                bootstrap: None,
                stream_options,
            });
            self.hold_upstream_gauge(host);
            return self.start_pd(request, router.rng(), host, body_size);
        }

        // Base-model requests carry the ModelServer's real model name upstream; LoRA requests
        // keep the adapter name, which the engine resolves.
        let rewrite_to = server
            .model
            .as_deref()
            .filter(|m| !decision.lora && *m != model.as_str());
        let new_body = match (rewrite_to, stream_options) {
            (Some(real), None) => Some(splice_string(&body, span, real)),
            (real, Some(options)) => {
                let mut set = vec![(Key::StreamOptions, options)];
                set.extend(real.map(|m| (Key::Model, json_string(m))));
                Some(crate::pd::edit_object(&body, &scanned, &[], &set))
            }
            (None, None) => None,
        };
        if let Some(new_body) = new_body {
            host.replace_body(body_size, &new_body);
            if self.headers.contains("content-length") {
                host.set_header("content-length", &new_body.len().to_string());
            }
        }
        self.outcome.upstream_model = rewrite_to.unwrap_or(&model).to_string();
        self.hold_upstream_gauge(host);

        host.set_header(&router.settings.cluster_header, &server.cluster);
        host.set_header(&router.settings.endpoint_header, &decision.endpoints);
        if let Some(ms) = server.timeout_ms {
            host.set_header(ENVOY_PER_TRY_TIMEOUT_HEADER, &ms.to_string());
        }
        if let Some(n) = server.retry_attempts {
            host.set_header(ENVOY_MAX_RETRIES_HEADER, &n.to_string());
        }
        Action::Continue
    }

    /// Counts the request in flight on pod `idx` of `server` (`read`: the scheduler's read of
    /// the counts), once: a count there already stays, one on another pod (made while a
    /// sticky session's claim waited, and the store sent the request on) moves.
    fn count_in_flight(
        &mut self,
        host: &mut dyn Host,
        in_flight: &mut InFlight,
        server: &Server,
        idx: usize,
        read: Option<Read>,
    ) {
        let (key, n) = (&server.in_flight_key, server.endpoint_count());
        if matches!(&self.counted, Some((k, m, i)) if k == key && *m == n && *i == idx) {
            return;
        }
        if let Some((key, n, idx)) = self.counted.take() {
            in_flight.release(host, &key, n, idx);
        }
        if in_flight.acquire(host, key, n, idx, read) {
            self.counted = Some((key.clone(), n, idx));
        }
    }
}

/// The query string of a request's `:path` (between `?` and any `#`; empty if none).
fn query_of(full_path: &str) -> &str {
    let path = full_path.split('#').next().unwrap_or("");
    path.split_once('?').map_or("", |(_, q)| q)
}

//! What the flow reports for Kthena's metrics: the request and token counters when a request
//! ends, the active-request gauges it holds while it runs, and the 429 of a rate limit (with
//! its counter). Part of [`Flow`]; the values come from [`crate::accounting`].

use filter_config::{published, vm_metrics};

use super::Flow;
use crate::accounting;
use crate::errors::ErrorReply;
use crate::host::{Action, Host, MetricKind};
use crate::rate_limit::{self, Direction};
use crate::tally::metric_name;

impl Flow {
    /// Kthena's `requests_total` and `tokens_total` for the request whose published `values`
    /// these are.
    pub(super) fn count_request(
        &self,
        host: &mut dyn Host,
        values: &[(&str, String)],
        status: u32,
    ) {
        let value = |name: &str| {
            values
                .iter()
                .find(|(k, _)| *k == name)
                .map_or("", |(_, v)| v.as_str())
        };
        let status = status.to_string();
        let (model, path) = (value(published::MODEL), value(published::PATH));
        let target = [
            ("model_route", value(published::ROUTE)),
            ("backend_type", value(published::BACKEND_TYPE)),
            ("backend_name", value(published::SERVER)),
            ("upstream_model", value(published::UPSTREAM_MODEL)),
        ];
        let mut labels = vec![
            ("model", model),
            ("path", path),
            ("status_code", status.as_str()),
            ("error_type", value(published::ERROR_TYPE)),
        ];
        labels.extend(target);
        let requests = metric_name(vm_metrics::REQUESTS_TOTAL, &labels);
        host.add_to_metric(MetricKind::Counter, &requests, 1);
        for (kind, name) in [
            ("input", published::INPUT_TOKENS),
            ("output", published::OUTPUT_TOKENS),
        ] {
            let mut labels = vec![("model", model), ("path", path), ("token_type", kind)];
            labels.extend(target);
            let tokens = value(name).parse::<i64>().unwrap_or(0);
            let counter = metric_name(vm_metrics::TOKENS_TOTAL, &labels);
            host.add_to_metric(MetricKind::Counter, &counter, tokens);
        }
    }

    pub(super) fn hold_gauge(&mut self, host: &mut dyn Host, name: String) {
        host.add_to_metric(MetricKind::Gauge, &name, 1);
        self.gauges_held.push(name);
    }

    /// Kthena's `active_upstream_requests`, labelled by where the request went.
    pub(super) fn hold_upstream_gauge(&mut self, host: &mut dyn Host) {
        let o = &self.outcome;
        let name = metric_name(
            vm_metrics::ACTIVE_UPSTREAM,
            &[
                ("model_server", &o.server),
                ("model_route", &o.route),
                ("backend_type", "model_server"),
                ("backend_name", &o.server),
                ("upstream_model", &o.upstream_model),
            ],
        );
        self.hold_gauge(host, name);
    }

    /// 429 with the headers OpenAI's SDKs back off by, counted in Kthena's
    /// `rate_limit_exceeded_total`.
    pub(super) fn refuse(&mut self, host: &mut dyn Host, r: &rate_limit::Refusal) -> Action {
        self.count_refusal(host, r.direction);
        self.fail_with(host, &ErrorReply::rate_limited(r.direction), &r.headers())
    }

    /// The rate-limit service refused the request (a global budget; Envoy's rate-limit filter
    /// sent the 429, with the service's headers and body): counted and logged as if this
    /// filter had refused it, and nothing was routed.
    pub(super) fn refused_globally(&mut self, host: &mut dyn Host, direction: Direction) {
        self.count_refusal(host, direction);
        let e = ErrorReply::rate_limited(direction);
        self.outcome.local_status = Some(e.status);
        self.outcome.error = Some((e.code, e.message));
        for routed in [
            &mut self.outcome.route,
            &mut self.outcome.server,
            &mut self.outcome.upstream_model,
            &mut self.outcome.prefill,
        ] {
            routed.clear();
        }
    }

    fn count_refusal(&self, host: &mut dyn Host, direction: Direction) {
        let name = metric_name(
            vm_metrics::RATE_LIMIT_EXCEEDED,
            &[
                ("model", &self.outcome.model),
                ("limit_type", direction.limit_type()),
                ("path", accounting::path_label(&self.path)),
            ],
        );
        host.add_to_metric(MetricKind::Counter, &name, 1);
    }
}

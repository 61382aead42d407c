//! What the flow exchanges with its neighbours beside the request itself: the pod's in-band
//! load report (asked for on the pick, read from the answer) and a global token budget
//! (published for Envoy's rate-limit filter, its refusal and its debit). Part of [`Flow`].

use filter_config::{global_rate_limit, GlobalRateLimit, RateLimit};

use super::Flow;
use crate::host::Host;
use crate::load_report;
use crate::rate_limit;
use crate::router::Router;

/// A request for a globally limited model: publishes its budget and input estimate for
/// Envoy's rate-limit filter, after this one, which asks the rate-limit service before routing
/// and debits the answer when the stream is done. Returns whether the answer's tokens are to
/// be debited (the budget limits output).
pub(super) fn publish_global_budget(
    host: &mut dyn Host,
    model: &str,
    limit: &RateLimit,
    global: &GlobalRateLimit,
    client: Option<&str>,
    input_estimate: u64,
) -> bool {
    let budget = global_rate_limit::Budget {
        model,
        input_per_unit: limit.input_per_unit,
        output_per_unit: limit.output_per_unit,
        unit_seconds: limit.unit_seconds,
        redis: &global.redis,
        deny_on_redis_failure: global.deny_on_redis_failure,
        client_slot: rate_limit::client_slot(limit, client),
    };
    host.publish(global_rate_limit::BUDGET, &budget.descriptor());
    host.publish(global_rate_limit::ADMIT_HITS, &input_estimate.to_string());
    limit.output_per_unit.is_some()
}

impl Flow {
    /// Whether the answer may carry the pod's in-band load report (it was asked for one): the
    /// glue then reads and removes [`load_report::REPORT_HEADER`] and hands it to
    /// [`Flow::on_load_report`].
    pub fn wants_load_report(&self) -> bool {
        self.load_report_slot.is_some()
    }

    /// The pod's answer carried `value` as its load report (runs before
    /// [`Flow::on_response_headers`]): shared at once with every worker, so the next pick,
    /// here or elsewhere, sees it. It is the report of the pod that answered, which after a
    /// connect failure is a fallback, not the one picked (`upstream`: which, found by address
    /// among the server's pods). A report that does not parse is ignored.
    pub fn on_load_report(&mut self, host: &mut dyn Host, router: Option<&Router>, value: &str) {
        let Some((key, n, server)) = self.load_report_slot.take() else {
            return;
        };
        let Some(report) = load_report::parse(value) else {
            return;
        };
        // The same server still (the configuration may have changed since the pick).
        let server = router
            .and_then(|r| r.server(server))
            .filter(|s| s.load_key.as_deref() == Some(key.as_str()));
        let idx = host
            .upstream_address()
            .and_then(|a| server.and_then(|s| s.endpoint_index(&a)));
        if let Some(idx) = idx {
            let now = host.now_ms();
            load_report::record(host, &key, n, idx, report, now);
        }
    }

    /// Whether the response may be the rate-limit service's refusal (the request drew on a
    /// global budget): the glue then reads and removes [`global_rate_limit::REFUSED_HEADER`].
    pub fn awaits_global_verdict(&self) -> bool {
        self.global_budget.is_some()
    }

    /// The answer ended: the completion tokens Envoy's rate-limit filter debits from the
    /// global budget when the stream is done (its stream-done hook runs before `on_log`, so
    /// they cannot wait for [`Flow::on_done`]). Nothing to debit, nothing published: the
    /// rate-limit filter then makes no call. A stream the client cut is not debited.
    pub(super) fn publish_global_debit(&mut self, host: &mut dyn Host) {
        if self.global_budget.take() == Some(true) {
            let output = self.acct.output_tokens();
            if output > 0 {
                host.publish(global_rate_limit::DEBIT_HITS, &output.to_string());
            }
        }
    }
}

//! `GET /mock/metrics` and `POST /mock/metrics`: what a test reads of a pod's load (the values
//! `/metrics` reports, scrapes and answers so far, the simulated engine's cache counters) and
//! the gauges and latencies it holds.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::sync::atomic::Ordering;

use super::body::{error_response, json_response, plain, MockBody};
use super::{lock, State, CONTROL_BODY_LIMIT};
use crate::metrics;

/// `GET /mock/metrics`: the values `/metrics` reports now (held or derived), as JSON.
pub(super) fn mock_metrics_status(state: &State) -> Response<MockBody> {
    let live = state.live();
    let effective = state.with_metrics(|m| m.effective(live));
    let status = serde_json::to_value(&effective).map(|mut v| {
        v["scrapes"] = state.scrapes.load(Ordering::Relaxed).into();
        v["requests_ok"] = state.success.load(Ordering::Relaxed).into();
        if let Some(kv) = &state.kv {
            let kv = lock(kv);
            v["sim"] = serde_json::json!({"block_queries": kv.queries, "block_hits": kv.hits});
        }
        v.to_string()
    });
    match status {
        Ok(b) => json_response(200, b),
        Err(e) => error_response(500, &format!("cannot serialize metrics: {e}")),
    }
}

/// `POST /mock/metrics`: hold (value) or release (null) gauges and latencies; 204, or 400.
pub(super) async fn hold_metrics(state: &State, req: Request<Incoming>) -> Response<MockBody> {
    let bytes = match Limited::new(req.into_body(), CONTROL_BODY_LIMIT)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => return error_response(400, &format!("Cannot read request body: {e}")),
    };
    match metrics::parse_update(&bytes) {
        Ok(update) => {
            state.with_metrics(|m| m.apply(update));
            plain(StatusCode::NO_CONTENT, None, MockBody::empty())
        }
        Err(msg) => error_response(400, &msg),
    }
}

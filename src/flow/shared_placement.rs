//! Placements shared by every gateway in front of the same pods (Settings'
//! `shared_placements`). Each Envoy's prefix index knows only what it routed, so two gateways
//! meeting a new system prompt each place it by their own view, often on two pods, and its
//! conversations then alternate between them with the gateway each turn reaches. So before
//! placing a prompt no local record answers for, the request pauses while the store
//! (Redis, through the rate-limit service) is asked for the placement record under the
//! prompt's key: another gateway's record is followed as a local one is; none (or no answer
//! in time), this gateway places it and writes its record, kept unless one is there already.
//! Part of [`Flow`].

use std::ops::Range;

use filter_config::placement_store as store;
use filter_config::SharedPlacements;

use super::Flow;
use crate::errors::ErrorReply;
use crate::host::{Action, Host};
use crate::in_flight::InFlight;
use crate::prefix_sync::SharedKeys;
use crate::router::{Router, SharedPlacement};
use crate::scan::Scan;

/// A request's body as parsed, kept while the store is asked (its scan without the model,
/// which is `model` and `span` here).
#[derive(Debug)]
pub(super) struct Parsed {
    pub body: Vec<u8>,
    pub body_size: usize,
    pub scanned: Scan<'static>,
    pub model: String,
    pub span: Range<usize>,
}

/// The store was asked about this request's prompt (the call's token until it answers) under
/// `key`; the parsed request waits here meanwhile.
#[derive(Debug)]
pub(super) struct PlacementAsk {
    token: Option<u32>,
    key: SharedKeys,
    waiting: Option<Parsed>,
}

impl Flow {
    /// The prompt is new to this gateway and no local record answers for it: ask the store
    /// under `key` and pause; the answer continues in [`Flow::on_shared_placement`]. A call
    /// the host refuses places it here and now.
    pub(super) fn ask_shared_placement(
        &mut self,
        router: &mut Router,
        host: &mut dyn Host,
        in_flight: &mut InFlight,
        parsed: Parsed,
        key: SharedKeys,
    ) -> Action {
        let Some(shared) = router.settings.shared_placements.clone() else {
            return self.route(router, host, in_flight, parsed, UNANSWERED);
        };
        let token = dispatch(host, &shared, &key, b"");
        self.placement_ask = Some(PlacementAsk {
            token,
            key,
            waiting: None,
        });
        match token {
            Some(_) => {
                if let Some(ask) = self.placement_ask.as_mut() {
                    ask.waiting = Some(parsed);
                }
                Action::Pause
            }
            None => self.route(router, host, in_flight, parsed, UNANSWERED),
        }
    }

    /// A side call answered (the request context's `on_http_call_response`): if it is the
    /// store's answer about this request's prompt, the request is routed with it and
    /// resumed. True when the call was the store's.
    pub fn on_shared_placement(
        &mut self,
        router: Option<&mut Router>,
        host: &mut dyn Host,
        in_flight: &mut InFlight,
        token: u32,
        body_size: usize,
    ) -> bool {
        let Some(ask) = self
            .placement_ask
            .as_mut()
            .filter(|a| a.token == Some(token))
        else {
            return false;
        };
        ask.token = None;
        let Some(parsed) = ask.waiting.take() else {
            return true;
        };
        let Some(router) = router else {
            self.fail(host, &ErrorReply::not_configured());
            return true;
        };
        let answer = match host.call_status() {
            Some(200) => host.call_body(body_size).unwrap_or_default(),
            _ => Vec::new(),
        };
        let answer = store::Answer::decode(&answer);
        let asked = ask.key.clone();
        let shared = match &answer {
            Some(a) => SharedPlacement::Answered {
                asked: Some(&asked),
                record: (!a.record.is_empty()).then_some(a.record.as_slice()),
                placed: Some(&a.placed_blocks),
            },
            None => UNANSWERED,
        };
        if matches!(
            self.route(router, host, in_flight, parsed, shared),
            Action::Continue
        ) {
            host.resume();
        }
        true
    }

    /// This gateway placed a prompt the store had no record for: write its record there
    /// under `keys` (the server it was placed on decides them), kept unless another gateway's
    /// came first (the answer is not awaited).
    pub(super) fn share_placement(
        router: &Router,
        host: &mut dyn Host,
        record: &[u8],
        keys: Option<&SharedKeys>,
    ) {
        let (Some(shared), Some(keys)) = (&router.settings.shared_placements, keys) else {
            return;
        };
        let _ = dispatch(host, shared, keys, record);
    }
}

/// The store did not answer (in time): this gateway places the prompt by its own knowledge.
const UNANSWERED: SharedPlacement<'static> = SharedPlacement::Answered {
    asked: None,
    record: None,
    placed: None,
};

/// A call to the store: an empty body reads the record under `key`, a record writes it
/// unless one (placed on the same pod list) is there; the answer is the record kept and the
/// prompt blocks placed on each pod.
fn dispatch(
    host: &mut dyn Host,
    shared: &SharedPlacements,
    key: &SharedKeys,
    record: &[u8],
) -> Option<u32> {
    let ttl = shared.ttl_s.to_string();
    let headers = [
        (":method", "POST"),
        (":path", store::PATH),
        (":authority", "modelroute-placements"),
        ("content-type", "application/octet-stream"),
        (store::REDIS_HEADER, shared.redis.as_str()),
        (store::KEY_HEADER, key.record.as_str()),
        (store::PLACED_BLOCKS_HEADER, key.placed_blocks.as_str()),
        (store::TTL_HEADER, ttl.as_str()),
    ];
    host.dispatch(&shared.cluster, &headers, record, shared.timeout_ms)
}

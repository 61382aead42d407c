//! Placements shared by every gateway in front of the same pods (Settings'
//! `shared_placements`). Each Envoy's prefix index knows only what it routed, so two gateways
//! meeting a new system prompt each place it by their own view, often on two pods, and its
//! conversations then alternate between them with the gateway each turn reaches. So before
//! placing a prompt no local record answers for, the request pauses while the store
//! (Redis, through the rate-limit service) is asked for the placement record under the
//! prompt's key: another gateway's record is followed as a local one is; none (or no answer
//! in time), this gateway places it and writes its record, kept unless one is there already.
//! (A route's sticky sessions use the same store: [`super::shared_session`].) Part of
//! [`Flow`].

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

/// A call this request made to the store (its token until it answers), and the request
/// waiting for the answer.
#[derive(Debug, Default)]
pub(super) struct Waiting {
    token: Option<u32>,
    parsed: Option<Parsed>,
}

impl Waiting {
    /// Waits for call `token` with `parsed`; None (the host refused the call): gives
    /// `parsed` back, to be routed at once.
    pub(super) fn on(&mut self, token: Option<u32>, parsed: Parsed) -> Option<Parsed> {
        self.token = token;
        match token {
            Some(_) => {
                self.parsed = Some(parsed);
                None
            }
            None => Some(parsed),
        }
    }

    /// For the answer to side call `token`: None when it is not the call waited for; else
    /// the request that waited (None if it no longer does, the client went away) and the
    /// answer's body (None: no answer, not a 200, or longer than `max` bytes, which no
    /// store answer is: nothing beyond is read).
    pub(super) fn answer(
        &mut self,
        host: &dyn Host,
        token: u32,
        body_size: usize,
        max: usize,
    ) -> Option<Option<(Parsed, Option<Vec<u8>>)>> {
        if self.token != Some(token) {
            return None;
        }
        self.token = None;
        Some(self.parsed.take().map(|parsed| {
            let body = match host.call_status() {
                Some(200) if body_size <= max => {
                    Some(host.call_body(body_size).unwrap_or_default())
                }
                _ => None,
            };
            (parsed, body)
        }))
    }
}

/// The store was asked about this request's prompt under `key`; `answer` is what it said
/// (None: nothing yet, or no answer).
#[derive(Debug)]
pub(super) struct PlacementAsk {
    call: Waiting,
    key: SharedKeys,
    answer: Option<store::Answer>,
}

impl PlacementAsk {
    /// For the answer to side call `token`: None when it is not this ask's call; else the
    /// request that waited (None if it no longer does), the store's answer recorded.
    fn take_answer(
        &mut self,
        host: &dyn Host,
        token: u32,
        body_size: usize,
    ) -> Option<Option<Parsed>> {
        let max = 4 + store::MAX_RECORD + 4 * store::MAX_PODS;
        let waited = self.call.answer(host, token, body_size, max)?;
        Some(waited.map(|(parsed, answer)| {
            self.answer = answer.and_then(|a| store::Answer::decode(&a));
            parsed
        }))
    }
}

impl Flow {
    /// Where the store of placements stands for this request.
    pub(super) fn placement_store(&self, router: &Router) -> SharedPlacement<'_> {
        if router.settings.shared_placements.is_none() || !router.scheduling() {
            return SharedPlacement::Off;
        }
        match &self.placement_ask {
            None => SharedPlacement::Unasked,
            Some(PlacementAsk {
                key,
                answer: Some(a),
                ..
            }) => SharedPlacement::Answered {
                asked: Some(key),
                record: (!a.record.is_empty()).then_some(a.record.as_slice()),
                placed: Some(&a.placed_blocks),
            },
            Some(_) => UNANSWERED,
        }
    }

    /// The prompt is new to this gateway and no local record answers for it: ask the store
    /// under `key` and pause; the answer continues in [`Flow::on_store_answer`]. A call
    /// the host refuses places it here and now.
    pub(super) fn ask_shared_placement(
        &mut self,
        router: &mut Router,
        host: &mut dyn Host,
        in_flight: &mut InFlight,
        parsed: Parsed,
        key: SharedKeys,
    ) -> Action {
        let token = router
            .settings
            .shared_placements
            .as_ref()
            .and_then(|shared| dispatch(host, shared, &key, b""));
        let ask = self.placement_ask.insert(PlacementAsk {
            call: Waiting::default(),
            key,
            answer: None,
        });
        match ask.call.on(token, parsed) {
            None => Action::Pause,
            Some(parsed) => self.route(router, host, in_flight, parsed),
        }
    }

    /// A side call answered (the request context's `on_http_call_response`): if it is the
    /// store's answer about this request's session or prompt, the request is routed with it
    /// and resumed. True when the call was the store's.
    pub fn on_store_answer(
        &mut self,
        router: Option<&mut Router>,
        host: &mut dyn Host,
        in_flight: &mut InFlight,
        token: u32,
        body_size: usize,
    ) -> bool {
        let waited = self
            .session_ask
            .as_mut()
            .and_then(|ask| ask.take_answer(host, token, body_size))
            .or_else(|| {
                let ask = self.placement_ask.as_mut()?;
                ask.take_answer(host, token, body_size)
            });
        let Some(waited) = waited else {
            return false;
        };
        if let Some(parsed) = waited {
            self.resume_routed(router, host, in_flight, parsed);
        }
        true
    }

    /// Routes a request that waited for the store and resumes it (unless it waits for the
    /// store again).
    pub(super) fn resume_routed(
        &mut self,
        router: Option<&mut Router>,
        host: &mut dyn Host,
        in_flight: &mut InFlight,
        parsed: Parsed,
    ) {
        let Some(router) = router else {
            self.fail(host, &ErrorReply::not_configured());
            return;
        };
        if matches!(
            self.route(router, host, in_flight, parsed),
            Action::Continue
        ) {
            host.resume();
        }
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
    let named = [
        (store::KEY_HEADER, key.record.as_str()),
        (store::PLACED_BLOCKS_HEADER, key.placed_blocks.as_str()),
        (store::TTL_HEADER, ttl.as_str()),
    ];
    call_store(host, shared, store::PATH, &named, record)
}

/// A call to the store (`modelroute-ratelimit` in front of Redis) at `path`: the headers
/// every call carries, then `named` (what the call is about), and `body`; its token.
pub(super) fn call_store(
    host: &mut dyn Host,
    shared: &SharedPlacements,
    path: &str,
    named: &[(&str, &str)],
    body: &[u8],
) -> Option<u32> {
    let mut headers = Vec::with_capacity(5 + named.len());
    headers.extend([
        (":method", "POST"),
        (":path", path),
        (":authority", "modelroute-placements"),
        ("content-type", "application/octet-stream"),
        (store::REDIS_HEADER, shared.redis.as_str()),
    ]);
    headers.extend_from_slice(named);
    host.dispatch(&shared.cluster, &headers, body, shared.timeout_ms)
}

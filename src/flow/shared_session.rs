//! Sticky sessions' bindings shared by every gateway in front of the same pods, through the
//! store of placements ([`super::shared_placement`]; Settings' `shared_placements`). Each
//! Envoy binds a session where its own pick sent it, so behind several gateways one session
//! would be bound to as many pods. So a session this Envoy has not confirmed within
//! [`crate::session::RENEW_MS`] is claimed in the store before the pick counts: the request
//! pauses while the store binds the session to the pod this Envoy would pick unless it holds
//! another (which the request then goes to; the call renews the binding there), so gateways
//! meeting a new session at once agree. A binding this Envoy moves (its pod no longer
//! passes the filters) is written there, replacing only the pod it saw (compare-and-set;
//! not awaited). Without an answer in time, this Envoy's binding holds. Part of [`Flow`].

use filter_config::placement_store as store;
use filter_config::SharedPlacements;

use super::shared_placement::{call_store, Parsed, Waiting};
use super::Flow;
use crate::host::{Action, Counter, Host};
use crate::in_flight::InFlight;
use crate::router::{Router, SharedSession, StoreBinding};

/// The store was asked about this request's sticky session; `answer` is what it said (None:
/// nothing yet, or no answer; then the pod address bound, if any).
#[derive(Debug, Default)]
pub(super) struct SessionAsk {
    pub call: Waiting,
    answer: Option<Option<String>>,
}

impl SessionAsk {
    /// For the answer to side call `token`: None when it is not this ask's call; else the
    /// request that waited (None if it no longer does), the store's answer recorded (the
    /// pod address bound; empty: none).
    pub(super) fn take_answer(
        &mut self,
        host: &dyn Host,
        token: u32,
        body_size: usize,
    ) -> Option<Option<Parsed>> {
        let waited = self
            .call
            .answer(host, token, body_size, store::MAX_SESSION_POD)?;
        Some(waited.map(|(parsed, answer)| {
            self.answer = answer.map(|a| String::from_utf8(a).ok().filter(|a| !a.is_empty()));
            parsed
        }))
    }
}

impl Flow {
    /// Where the store of session bindings stands for this request.
    pub(super) fn session_store(&self, router: &Router) -> SharedSession<'_> {
        match (&router.settings.shared_placements, &self.session_ask) {
            (None, _) => SharedSession::Off,
            (Some(_), None) => SharedSession::Unasked,
            (Some(_), Some(ask)) => match &ask.answer {
                Some(bound) => SharedSession::Answered(bound.as_deref()),
                None => SharedSession::Unanswered,
            },
        }
    }

    /// The request's sticky session has no binding this Envoy confirmed lately: send the
    /// store the `claim` and pause; the answer continues in [`Flow::on_store_answer`]. A
    /// call the host refuses routes it by this Envoy's binding, here and now.
    pub(super) fn ask_shared_session(
        &mut self,
        router: &mut Router,
        host: &mut dyn Host,
        in_flight: &mut InFlight,
        parsed: Parsed,
        claim: StoreBinding,
    ) -> Action {
        let token = router
            .settings
            .shared_placements
            .as_ref()
            .and_then(|shared| dispatch(host, shared, &claim));
        let ask = self.session_ask.insert(SessionAsk::default());
        match ask.call.on(token, parsed) {
            None => Action::Pause,
            Some(parsed) => self.route(router, host, in_flight, parsed),
        }
    }

    /// Whether the request is a sticky session's: the glue then hands the answer's status
    /// to [`Flow::on_session_answered`] (before [`Flow::on_response_headers`]).
    pub fn follows_session(&self) -> bool {
        self.session_follow.is_some()
    }

    /// A pod answered the sticky session's request (`status`: the answer's): when Envoy
    /// sent it to another pod than the chosen one (that one refused or reset the connection
    /// before the request was sent: the route's retry policy) and the
    /// pod answered below 500, the session is bound to it, here and in the gateways' store
    /// (replacing the chosen pod there), as Kthena binds a session to the pod that handled
    /// its request.
    pub fn on_session_answered(
        &mut self,
        host: &mut dyn Host,
        router: Option<&Router>,
        status: Option<u32>,
    ) {
        let Some((server, follow)) = self.session_follow.take() else {
            return;
        };
        let (Some(router), Some(200..=499)) = (router, status) else {
            return;
        };
        let Some((server, answered)) = router.server(server).zip(host.upstream_address()) else {
            return;
        };
        let now = host.now_ms();
        if let Some(moved) = follow.answered_by(server, &answered, now) {
            host.count(Counter::SessionMoved);
            host.shared_put(&moved.local.0, &moved.local.1);
            if let Some(write) = &moved.store {
                Flow::share_session(router, host, write);
            }
        }
    }

    /// This Envoy bound (or moved) a sticky session: write the binding to the store; the
    /// answer is not awaited.
    pub(super) fn share_session(router: &Router, host: &mut dyn Host, write: &StoreBinding) {
        if let Some(shared) = &router.settings.shared_placements {
            let _ = dispatch(host, shared, write);
        }
    }
}

/// A call to the store setting a session's binding (compare-and-set); the answer is the
/// address bound after it.
fn dispatch(host: &mut dyn Host, shared: &SharedPlacements, b: &StoreBinding) -> Option<u32> {
    let ttl = b.ttl_s.to_string();
    let named = [
        (store::KEY_HEADER, b.key.as_str()),
        (store::TTL_HEADER, ttl.as_str()),
        (store::SESSION_EXPECT_HEADER, b.expect.as_str()),
    ];
    call_store(host, shared, store::SESSION_PATH, &named, b.pod.as_bytes())
}

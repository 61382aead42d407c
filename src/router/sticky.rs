//! A route's `sessionSticky` during one pick: the session's binding, the pod it pins, and
//! (with the gateways' store) what the store holds and what to write there. The pick asks
//! [`StickySession::of`] before ranking, [`StickySession::claim`] once it has ranked (before
//! anything is learnt from the ranking), and [`StickySession::rebind`] once it has chosen;
//! the flow asks [`SessionFollow::answered_by`] when the answer came from another pod.

use super::{Decision, Request, Route, Server, SharedSession};
use crate::session::source::session_key;
use crate::session::{pod_id, Binding, Role, Slot};

/// A sticky session's binding to set in the gateways' store: the session's key there, the
/// binding's time to live there (the route's `sessionAffinitySeconds`), the pod's address,
/// and the binding it may replace (compare-and-set: set only if the store holds `expect` or
/// nothing; empty: only nothing). The store answers with the pod bound after the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreBinding {
    pub key: String,
    pub ttl_s: u64,
    pub pod: String,
    pub expect: String,
}

/// A sticky session's key in the gateways' store and how long a binding lives there (the
/// route's `sessionAffinitySeconds`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoreEntry {
    key: String,
    ttl_s: u64,
}

impl StoreEntry {
    /// The call binding the session to `pod` where the store holds `expect` or nothing.
    fn bind(&self, pod: &str, expect: &str) -> StoreBinding {
        StoreBinding {
            key: self.key.clone(),
            ttl_s: self.ttl_s,
            pod: pod.to_string(),
            expect: expect.to_string(),
        }
    }
}

/// A sticky session's request as routed, for its answer: Envoy tries the next pod of the
/// ranking when the chosen one refuses the connection, and the session then follows the pod
/// that answered (as Kthena binds a session to the pod that handled its request), in this
/// Envoy's shared data and the gateways' store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFollow {
    slot: Slot,
    /// The chosen pod's address.
    chosen: String,
    store: Option<StoreEntry>,
}

/// A sticky session's binding moved to the pod that answered: in this Envoy's shared data
/// (key and record), and in the gateways' store (with one).
#[derive(Debug)]
pub struct Rebinding {
    pub local: (String, Vec<u8>),
    pub store: Option<StoreBinding>,
}

impl SessionFollow {
    /// The pod at `answered` (its address) answered the request: when it is another of
    /// `server`'s pods than the chosen one, the session's new binding (in the store,
    /// replacing the chosen pod).
    pub fn answered_by(&self, server: &Server, answered: &str, now_ms: u64) -> Option<Rebinding> {
        if answered == self.chosen || server.endpoint_index(answered).is_none() {
            return None;
        }
        let record = self.slot.rebind(None, pod_id(answered), now_ms)?;
        let store = self.store.as_ref().map(|e| e.bind(answered, &self.chosen));
        Some(Rebinding {
            local: (self.slot.key.clone(), record),
            store,
        })
    }
}

/// A request's session on a route with sessionSticky: its binding in this Envoy's shared
/// data, the pod it is pinned to, and where the gateways' store stands for it (with one).
pub(super) struct StickySession {
    binding: Binding,
    /// The bound pod's index: the store's answer if it named one of the server's pods, else
    /// this Envoy's binding.
    pub pinned: Option<u32>,
    store: Option<InStore>,
}

/// A sticky session in the gateways' store, as this request sees it.
struct InStore {
    entry: StoreEntry,
    /// The address of the pod the store holds for the session, as far as this Envoy knows
    /// (empty: none), which a move replaces (compare-and-set): the store's answer as it
    /// came, also when it names no pod of the server (one that left; else the binding there
    /// could never be replaced), or (not asked) the pod this Envoy confirmed lately.
    held: String,
    /// Not confirmed lately and not asked yet: the store is to be claimed first.
    ask: bool,
}

impl StickySession {
    /// None when the route is not sticky, the server is PD (Kthena bypasses it), or the
    /// request names no session.
    pub(super) fn of(route: &Route, server: &Server, req: &Request<'_>) -> Option<Self> {
        let cfg = route
            .session_sticky
            .as_ref()
            .filter(|_| server.pd.is_none())?;
        let binding = session_key(&cfg.sources, req.header, req.query)
            .and_then(|key| Binding::read(&route.name, Role::Sticky, &key, req.shared_data))?;
        let local = binding.pod(&server.pod_ids, req.now_ms, cfg.ttl_ms);
        let in_store = |held: Option<&str>, ask| InStore {
            entry: StoreEntry {
                key: binding.store_key(&route.name),
                ttl_s: cfg.ttl_ms.div_ceil(1000),
            },
            held: held.unwrap_or_default().to_string(),
            ask,
        };
        let (pinned, store) = match req.session_store {
            SharedSession::Off | SharedSession::Unanswered => (local, None),
            SharedSession::Unasked => {
                let confirmed = binding.confirmed(req.now_ms);
                let held = local
                    .filter(|_| confirmed)
                    .and_then(|i| server.endpoints.get(i as usize));
                (local, Some(in_store(held.map(String::as_str), !confirmed)))
            }
            SharedSession::Answered(pod) => {
                let stored = pod
                    .and_then(|a| server.endpoint_index(a))
                    .and_then(|i| u32::try_from(i).ok());
                (stored.or(local), Some(in_store(pod, false)))
            }
        };
        Some(StickySession {
            binding,
            pinned,
            store,
        })
    }

    /// With the gateways' store and a binding this Envoy has not confirmed lately, the claim
    /// to send before the pick counts ([`super::RouteError::SessionUnknown`]): bind the
    /// session to `proposed` (the pod this Envoy would send it to: its index) unless the
    /// store holds another pod, which the request is then decided again with (the call renews
    /// the binding there either way). Two gateways meeting a new session at once thus agree.
    pub(super) fn claim(&self, server: &Server, proposed: Option<usize>) -> Option<StoreBinding> {
        let store = self.store.as_ref().filter(|s| s.ask)?;
        let pod = server.endpoints.get(proposed?)?;
        Some(store.entry.bind(pod, pod))
    }

    /// Binds the session to the pod `d` goes to (the first of its endpoints) when it moved
    /// or a renewal is due, in this Envoy's shared data; with a store, there too when the
    /// store holds another pod (replacing only that one) or none.
    pub(super) fn rebind(self, server: &Server, d: &mut Decision, now_ms: u64) {
        let Some(chosen) = d.endpoints.split(',').next() else {
            return;
        };
        let Some(index) = server.endpoint_index(chosen) else {
            return;
        };
        let Some(&pod) = server.pod_ids.get(index) else {
            return;
        };
        d.session_moved = self.pinned.is_some_and(|p| p as usize != index);
        d.session_follow = Some(SessionFollow {
            slot: self.binding.slot().clone(),
            chosen: chosen.to_string(),
            store: self.store.as_ref().map(|s| s.entry.clone()),
        });
        d.session_store_write = self
            .store
            .filter(|s| s.held != chosen)
            .map(|s| s.entry.bind(chosen, &s.held));
        if let Some(record) = self.binding.rebind(pod, now_ms) {
            d.session_bindings.push(record);
        }
    }
}

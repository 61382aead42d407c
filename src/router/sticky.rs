//! A route's `sessionSticky` during one pick: the session's binding, the pod it pins, and
//! (with the gateways' store) what the store holds and what to write there. The pick asks
//! [`StickySession::of`] before ranking and [`StickySession::rebind`] once it has chosen.

use super::{Decision, Request, Route, Server, SharedSession};
use crate::session::source::session_key;
use crate::session::{Binding, Role};

/// A sticky session's entry in the gateways' store: its key there, and how long a binding
/// lives there after its last read or write (the route's `sessionAffinitySeconds`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub key: String,
    pub ttl_s: u64,
}

/// A request's session on a route with sessionSticky: its binding in this Envoy's shared
/// data, the pod it is pinned to, and its key in the gateways' store (with one).
pub(super) struct StickySession {
    binding: Binding,
    /// The bound pod's index: the store's answer if it named one of the server's pods, else
    /// this Envoy's binding.
    pub pinned: Option<u32>,
    store_entry: Option<StoredSession>,
    /// The pod the store holds for the session, as far as this Envoy knows: its answer, or
    /// (not asked) what this Envoy confirmed lately.
    stored: Option<u32>,
}

impl StickySession {
    /// None when the route is not sticky, the server is PD (Kthena bypasses it), or the
    /// request names no session. With the gateways' store and a binding this Envoy has not
    /// confirmed lately, the store is to be asked first ([`super::RouteError::SessionUnknown`]).
    /// Err: the session's entry, to ask the store about.
    pub(super) fn of(
        route: &Route,
        server: &Server,
        req: &Request<'_>,
    ) -> Result<Option<Self>, StoredSession> {
        let Some(cfg) = route
            .session_sticky
            .as_ref()
            .filter(|_| server.pd.is_none())
        else {
            return Ok(None);
        };
        let Some(binding) = session_key(&cfg.sources, req.header, req.query)
            .and_then(|key| Binding::read(&route.name, Role::Sticky, &key, req.shared_data))
        else {
            return Ok(None);
        };
        let local = binding.pod(&server.pod_ids, req.now_ms, cfg.ttl_ms);
        let entry = || StoredSession {
            key: binding.store_key(&route.name),
            ttl_s: cfg.ttl_ms.div_ceil(1000),
        };
        let (pinned, stored, store_entry) = match req.session_store {
            SharedSession::Off | SharedSession::Unanswered => (local, None, None),
            SharedSession::Unasked if binding.confirmed(req.now_ms) => {
                (local, local, Some(entry()))
            }
            SharedSession::Unasked => return Err(entry()),
            SharedSession::Answered(pod) => {
                let stored = pod
                    .and_then(|a| server.endpoint_index(a))
                    .and_then(|i| u32::try_from(i).ok());
                (stored.or(local), stored, Some(entry()))
            }
        };
        Ok(Some(StickySession {
            binding,
            pinned,
            store_entry,
            stored,
        }))
    }

    /// Binds the session to the pod `d` goes to (the first of its endpoints) when it moved
    /// or a renewal is due, in this Envoy's shared data; with a store, there too when the
    /// store holds another pod or none (a read renews it there).
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
        if self.stored != u32::try_from(index).ok() {
            d.session_store_write = self.store_entry.map(|entry| (entry, chosen.to_string()));
        }
        if let Some(record) = self.binding.rebind(pod, now_ms) {
            d.session_bindings.push(record);
        }
    }
}

//! Session bindings: a session's requests go to the pod its earlier ones went to. Two uses:
//! - a route's `spec.sessionSticky` (Kthena's session-sticky proposal): the session key comes
//!   from the route's sources ([`source`]), and the bound pod is picked whenever it passes
//!   the scheduler's filters (PD servers: not applied, as in Kthena);
//! - the `session-affinity` score plugin: the session is named by a header (`X-Session-ID`
//!   unless configured otherwise), and the bound pod scores 100; on a PD server the decode
//!   and the prefill pod are bound separately.
//!
//! Every pick (re)binds the session to the pod chosen, and a binding holds for the TTL after
//! its session's last request.
//!
//! Bindings live in shared data so every Envoy worker follows them. Shared data never frees a
//! key, so a scope (a route, or a server) has [`SLOTS`] keys per role and a session uses the
//! one its hash selects: memory stays bounded whatever the clients send, and a session whose
//! slot another session took meanwhile is simply placed anew (Kthena keeps a map entry per
//! session instead). A record names the session (its hash), the pod (a hash of its address:
//! a binding survives other pods coming and going, and one to a pod that left is void) and
//! when it was made, so that the TTL configured now applies to it.
//!
//! A client chooses a session name, never a pod: the bound pod is one the scheduler picked.

pub mod source;

use crate::prefix::hash;

/// Slots per scope and role. With N sessions live, a new session's slot already holds
/// another live one's binding with a chance of about N / SLOTS (while N is well below it).
pub const SLOTS: u64 = 8192;
/// Hash seeds for session names and pod addresses (any constants; keep them apart from
/// prompt block hashes).
const SEED: u64 = 0x5e55_1011;
const POD_SEED: u64 = 0x90d5_1011;
const RECORD: usize = 24;
/// A binding is renewed (rewritten with a new time) at most this often: a busy session
/// costs a shared-data write a second, not one a request, and lives the TTL after its last
/// request less at most this.
pub const RENEW_MS: u64 = 1000;

/// What a binding is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A route's `sessionSticky`: the pod of a plain server.
    Sticky,
    /// session-affinity: a plain server's pod, or a PD server's decode pod.
    Pod,
    /// session-affinity: a PD server's prefill pod.
    Prefill,
}

/// The identity a record names a pod by: a hash of its address.
pub fn pod_id(address: &str) -> u64 {
    hash(POD_SEED, address.as_bytes())
}

/// One session's binding slot in one scope: where it is kept and what names the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub key: String,
    session: u64,
}

impl Slot {
    /// The slot of session `name` in `scope` (a route's name, or a server's cluster); None
    /// for an empty name (no session, as in Kthena).
    pub fn of(scope: &str, role: Role, name: &[u8]) -> Option<Slot> {
        if name.is_empty() {
            return None;
        }
        // Hashed whole (Envoy bounds a request's headers): names sharing a long start stay apart.
        let session = hash(SEED, name);
        let role = match role {
            Role::Sticky => "sticky",
            Role::Pod => "pod",
            Role::Prefill => "prefill",
        };
        Some(Slot {
            key: format!("modelroute.session.{scope}.{role}.{}", session % SLOTS),
            session,
        })
    }

    /// The index in `pods` (the pods' [`pod_id`]s) of the pod the session is bound to, from
    /// the slot's record: None when the record is another session's, names no pod of
    /// `pods`, is older than `ttl_ms`, or is garbled.
    pub fn bound_pod(&self, record: &[u8], pods: &[u64], now_ms: u64, ttl_ms: u64) -> Option<u32> {
        let r = Record::decode(record)?;
        if r.session != self.session || now_ms.saturating_sub(r.bound_ms) >= ttl_ms {
            return None;
        }
        let at = pods.iter().position(|p| *p == r.pod)?;
        u32::try_from(at).ok()
    }

    /// Whether the slot's record is this session's, (re)bound less than [`RENEW_MS`] before
    /// `now_ms`: this Envoy confirmed the binding lately (several gateways check the
    /// gateways' store only past that).
    pub fn confirmed(&self, record: &[u8], now_ms: u64) -> bool {
        Record::decode(record).is_some_and(|r| {
            r.session == self.session && now_ms.saturating_sub(r.bound_ms) < RENEW_MS
        })
    }

    /// The session's key in the gateways' store, in `scope`.
    pub fn store_key(&self, scope: &str) -> String {
        format!(
            "{}{scope}:{:016x}",
            filter_config::placement_store::SESSION_KEY_PREFIX,
            self.session
        )
    }

    /// The record binding the session to the pod `pod` (its [`pod_id`]) from `now_ms`, or
    /// None when the slot already holds that binding, made less than [`RENEW_MS`] ago
    /// (spares a shared-data write on most requests of a busy session).
    pub fn rebind(&self, current: Option<&[u8]>, pod: u64, now_ms: u64) -> Option<Vec<u8>> {
        let fresh = current.and_then(Record::decode).is_some_and(|r| {
            r.session == self.session
                && r.pod == pod
                && now_ms.saturating_sub(r.bound_ms) < RENEW_MS
        });
        (!fresh).then(|| {
            Record {
                session: self.session,
                pod,
                bound_ms: now_ms,
            }
            .encode()
        })
    }
}

/// A session's slot in one scope and the record it held when the request read it.
pub struct Binding {
    slot: Slot,
    current: Option<Vec<u8>>,
}

impl Binding {
    /// Session `name`'s slot for `role` in `scope`, read from shared data; None for an
    /// empty name.
    pub fn read(
        scope: &str,
        role: Role,
        name: &[u8],
        shared_data: &dyn Fn(&str) -> Option<Vec<u8>>,
    ) -> Option<Binding> {
        let slot = Slot::of(scope, role, name)?;
        let current = shared_data(&slot.key);
        Some(Binding { slot, current })
    }

    /// The index in `pods` of the pod the session is bound to ([`Slot::bound_pod`]).
    pub fn pod(&self, pods: &[u64], now_ms: u64, ttl_ms: u64) -> Option<u32> {
        self.slot
            .bound_pod(self.current.as_deref()?, pods, now_ms, ttl_ms)
    }

    /// Whether this Envoy (re)bound the session less than [`RENEW_MS`] ago ([`Slot::confirmed`]).
    pub fn confirmed(&self, now_ms: u64) -> bool {
        self.current
            .as_deref()
            .is_some_and(|r| self.slot.confirmed(r, now_ms))
    }

    /// The session's key in the gateways' store ([`Slot::store_key`]).
    pub fn store_key(&self, scope: &str) -> String {
        self.slot.store_key(scope)
    }

    /// The session's slot.
    pub fn slot(&self) -> &Slot {
        &self.slot
    }

    /// The slot's key and new record when binding the session to `pod` (its [`pod_id`])
    /// changes or renews what it held ([`Slot::rebind`]).
    pub fn rebind(self, pod: u64, now_ms: u64) -> Option<(String, Vec<u8>)> {
        let record = self.slot.rebind(self.current.as_deref(), pod, now_ms)?;
        Some((self.slot.key, record))
    }
}

/// `session hash u64 | pod id u64 | bound at ms u64`, little-endian.
struct Record {
    session: u64,
    pod: u64,
    bound_ms: u64,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD);
        out.extend_from_slice(&self.session.to_le_bytes());
        out.extend_from_slice(&self.pod.to_le_bytes());
        out.extend_from_slice(&self.bound_ms.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Record> {
        if bytes.len() != RECORD {
            return None;
        }
        let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
        Some(Record {
            session: u64_at(0)?,
            pod: u64_at(8)?,
            bound_ms: u64_at(16)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: u64 = 60_000;

    fn pods() -> Vec<u64> {
        ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]
            .map(pod_id)
            .to_vec()
    }

    fn slot(name: &str) -> Slot {
        Slot::of("outbound|80||llama", Role::Pod, name.as_bytes()).unwrap()
    }

    #[test]
    fn a_binding_holds_for_its_session_pod_and_ttl_only() {
        let pods = pods();
        let s = slot("user-1");
        let record = s.rebind(None, pods[2], 1_000).unwrap();
        assert_eq!(s.bound_pod(&record, &pods, 1_000, TTL), Some(2));
        assert_eq!(s.bound_pod(&record, &pods, 1_000 + TTL - 1, TTL), Some(2));
        assert_eq!(
            s.bound_pod(&record, &pods, 1_000 + TTL, TTL),
            None,
            "expired"
        );
        // The TTL configured now counts, not the one it was made under.
        assert_eq!(s.bound_pod(&record, &pods, 1_000 + TTL / 2, TTL / 4), None);
        // Other pods coming and going move the bound pod's index, not the binding.
        let scaled = ["10.0.0.9:80", "10.0.0.3:80", "10.0.0.1:80"].map(pod_id);
        assert_eq!(s.bound_pod(&record, &scaled, 1_000, TTL), Some(1));
        assert_eq!(
            s.bound_pod(&record, &pods[..2], 1_000, TTL),
            None,
            "the pod is gone"
        );
        // Another session in the same slot does not inherit the binding.
        let other = (0..)
            .map(|i| slot(&format!("other-{i}")))
            .find(|o| o.key == s.key)
            .unwrap();
        assert_eq!(other.bound_pod(&record, &pods, 1_000, TTL), None);
        assert_eq!(
            s.bound_pod(&record[..23], &pods, 1_000, TTL),
            None,
            "garbled"
        );
    }

    #[test]
    fn rebinding_writes_when_the_pod_changes_or_a_renewal_is_due() {
        let pods = pods();
        let s = slot("user-1");
        let first = s.rebind(None, pods[2], 0).unwrap();
        assert_eq!(s.rebind(Some(&first), pods[2], RENEW_MS - 1), None);
        let moved = s.rebind(Some(&first), pods[3], 10).unwrap();
        assert_eq!(s.bound_pod(&moved, &pods, 10, TTL), Some(3));
        // Renewed: the TTL runs from the latest request, less at most RENEW_MS.
        let renewed = s.rebind(Some(&first), pods[2], RENEW_MS).unwrap();
        assert_eq!(
            s.bound_pod(&renewed, &pods, TTL + RENEW_MS - 1, TTL),
            Some(2)
        );
        let taken = slot("user-2").rebind(None, pods[2], 0).unwrap();
        assert!(
            s.rebind(Some(&taken), pods[2], 10).is_some(),
            "another session's slot"
        );
    }

    #[test]
    fn sessions_spread_over_bounded_slots_per_scope_and_role_and_are_told_apart_whole() {
        let pods = pods();
        assert_eq!(Slot::of("c", Role::Pod, b""), None);
        let keys: Vec<String> = [
            ("c", Role::Pod),
            ("c", Role::Prefill),
            ("c", Role::Sticky),
            ("d", Role::Pod),
        ]
        .map(|(scope, role)| Slot::of(scope, role, b"s").unwrap().key)
        .to_vec();
        for (i, k) in keys.iter().enumerate() {
            assert!(!keys[..i].contains(k), "{k} twice");
        }
        let long = "x".repeat(100_000);
        let c = Slot::of("c", Role::Pod, long.as_bytes()).unwrap();
        let slot: u64 = c.key.rsplit('.').next().unwrap().parse().unwrap();
        assert!(slot < SLOTS);
        // Two names sharing their first 100,000 bytes are two sessions.
        let d = Slot::of("c", Role::Pod, format!("{long}y").as_bytes()).unwrap();
        let record = c.rebind(None, pods[1], 0).unwrap();
        assert_eq!(d.bound_pod(&record, &pods, 0, TTL), None);
    }
}

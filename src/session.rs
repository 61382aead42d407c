//! Session bindings for Kthena's `session-affinity` score plugin: a request carrying a session
//! header (`X-Session-ID` unless configured otherwise) scores 100 on the pod the session's
//! last request went to, while that request is younger than the TTL; every pick (re)binds
//! the session to the chosen pod. On a PD server the decode and the prefill pod are bound
//! separately, as Kthena does.
//!
//! Bindings live in shared data so every Envoy worker follows them. Shared data never frees a
//! key, so a server has [`SLOTS`] keys per role and a session uses the one its hash selects:
//! memory stays bounded whatever the clients send, and a session whose slot another session
//! took meanwhile is simply placed anew (Kthena's in-memory map is unbounded instead). A
//! record names the session (its hash), the pod (its index, with the pod list it indexes: a
//! binding to another pod list is void, as a placement record is) and when it was made, so
//! that the TTL configured now applies to it.
//!
//! A client chooses a session name, never a pod: the bound pod is one the scheduler picked,
//! and a binding only adds to that pod's score.

use crate::prefix::hash;

/// Slots per server and role. With N sessions live, a new session's slot already holds
/// another live one's binding with a chance of about N / SLOTS (while N is well below it).
pub const SLOTS: u64 = 8192;
/// Hash seed for session names (any constant; keeps them apart from prompt block hashes).
const SEED: u64 = 0x5e55_1011;
const RECORD: usize = 24;
/// A binding is renewed (rewritten with a new time) at most this often: a busy session
/// costs a shared-data write a second, not one a request, and lives the TTL after its last
/// request less at most this.
pub const RENEW_MS: u64 = 1000;

/// Which pod of a request a binding is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A plain server's pod, or a PD server's decode pod.
    Pod,
    /// A PD server's prefill pod.
    Prefill,
}

/// One session's binding slot on one server: where it is kept and what names the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub key: String,
    session: u64,
}

impl Slot {
    /// The slot of session `name` on the server whose cluster is `cluster`; None for an
    /// empty name (no session, as in Kthena).
    pub fn of(cluster: &str, role: Role, name: &str) -> Option<Slot> {
        if name.is_empty() {
            return None;
        }
        // Hashed whole (Envoy bounds a request's headers): names sharing a long start stay apart.
        let session = hash(SEED, name.as_bytes());
        let role = match role {
            Role::Pod => "pod",
            Role::Prefill => "prefill",
        };
        Some(Slot {
            key: format!("modelroute.session.{cluster}.{role}.{}", session % SLOTS),
            session,
        })
    }

    /// The pod the session is bound to, from the slot's record: None when the record is
    /// another session's, for another pod list, for a pod beyond `pods`, older than `ttl_ms`,
    /// or garbled.
    pub fn bound_pod(
        &self,
        record: &[u8],
        (pod_list, pods): (u32, usize),
        now_ms: u64,
        ttl_ms: u64,
    ) -> Option<u32> {
        let r = Record::decode(record)?;
        let live = r.session == self.session
            && r.pod_list == pod_list
            && (r.pod as usize) < pods
            && now_ms.saturating_sub(r.bound_ms) < ttl_ms;
        live.then_some(r.pod)
    }

    /// The record binding the session to `pod` from `now_ms`, or None when the slot already
    /// holds that binding, made less than [`RENEW_MS`] ago (spares a shared-data write on
    /// most requests of a busy session).
    pub fn rebind(
        &self,
        current: Option<&[u8]>,
        pod_list: u32,
        pod: u32,
        now_ms: u64,
    ) -> Option<Vec<u8>> {
        let fresh = current.and_then(Record::decode).is_some_and(|r| {
            r.session == self.session
                && r.pod_list == pod_list
                && r.pod == pod
                && now_ms.saturating_sub(r.bound_ms) < RENEW_MS
        });
        (!fresh).then(|| {
            Record {
                session: self.session,
                pod_list,
                pod,
                bound_ms: now_ms,
            }
            .encode()
        })
    }
}

/// A session's slot on one server and the record it held when the request read it.
pub struct Binding {
    slot: Slot,
    current: Option<Vec<u8>>,
}

impl Binding {
    /// Session `name`'s slot for `role` on the server of `cluster`, read from shared data;
    /// None for an empty name.
    pub fn read(
        cluster: &str,
        role: Role,
        name: &str,
        shared_data: &dyn Fn(&str) -> Option<Vec<u8>>,
    ) -> Option<Binding> {
        let slot = Slot::of(cluster, role, name)?;
        let current = shared_data(&slot.key);
        Some(Binding { slot, current })
    }

    /// The pod the session is bound to, among `(pod list, pods)` ([`Slot::bound_pod`]).
    pub fn pod(&self, pods: (u32, usize), now_ms: u64, ttl_ms: u64) -> Option<u32> {
        self.slot
            .bound_pod(self.current.as_deref()?, pods, now_ms, ttl_ms)
    }

    /// The slot's key and new record when binding the session to `pod` changes or renews
    /// what it held ([`Slot::rebind`]).
    pub fn rebind(self, pod_list: u32, pod: u32, now_ms: u64) -> Option<(String, Vec<u8>)> {
        let record = self
            .slot
            .rebind(self.current.as_deref(), pod_list, pod, now_ms)?;
        Some((self.slot.key, record))
    }
}

/// `session hash u64 | pod list u32 | pod u32 | bound at ms u64`, little-endian.
struct Record {
    session: u64,
    pod_list: u32,
    pod: u32,
    bound_ms: u64,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD);
        out.extend_from_slice(&self.session.to_le_bytes());
        out.extend_from_slice(&self.pod_list.to_le_bytes());
        out.extend_from_slice(&self.pod.to_le_bytes());
        out.extend_from_slice(&self.bound_ms.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Record> {
        if bytes.len() != RECORD {
            return None;
        }
        let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
        let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        Some(Record {
            session: u64_at(0)?,
            pod_list: u32_at(8)?,
            pod: u32_at(12)?,
            bound_ms: u64_at(16)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: u64 = 60_000;
    const PODS: (u32, usize) = (7, 4);

    fn slot(name: &str) -> Slot {
        Slot::of("outbound|80||llama", Role::Pod, name).unwrap()
    }

    #[test]
    fn a_binding_holds_for_its_session_pod_list_and_ttl_only() {
        let s = slot("user-1");
        let record = s.rebind(None, 7, 2, 1_000).unwrap();
        assert_eq!(s.bound_pod(&record, PODS, 1_000, TTL), Some(2));
        assert_eq!(s.bound_pod(&record, PODS, 1_000 + TTL - 1, TTL), Some(2));
        assert_eq!(
            s.bound_pod(&record, PODS, 1_000 + TTL, TTL),
            None,
            "expired"
        );
        // The TTL configured now counts, not the one it was made under.
        assert_eq!(s.bound_pod(&record, PODS, 1_000 + TTL / 2, TTL / 4), None);
        assert_eq!(
            s.bound_pod(&record, (8, 4), 1_000, TTL),
            None,
            "another pod list"
        );
        assert_eq!(
            s.bound_pod(&record, (7, 2), 1_000, TTL),
            None,
            "the pod is gone"
        );
        // Another session in the same slot does not inherit the binding.
        let other = (0..)
            .map(|i| slot(&format!("other-{i}")))
            .find(|o| o.key == s.key)
            .unwrap();
        assert_eq!(other.bound_pod(&record, PODS, 1_000, TTL), None);
        assert_eq!(
            s.bound_pod(&record[..23], PODS, 1_000, TTL),
            None,
            "garbled"
        );
    }

    #[test]
    fn rebinding_writes_when_the_pod_changes_or_a_renewal_is_due() {
        let s = slot("user-1");
        let first = s.rebind(None, 7, 2, 0).unwrap();
        assert_eq!(s.rebind(Some(&first), 7, 2, RENEW_MS - 1), None);
        let moved = s.rebind(Some(&first), 7, 3, 10).unwrap();
        assert_eq!(s.bound_pod(&moved, PODS, 10, TTL), Some(3));
        // Renewed: the TTL runs from the latest request, less at most RENEW_MS.
        let renewed = s.rebind(Some(&first), 7, 2, RENEW_MS).unwrap();
        assert_eq!(
            s.bound_pod(&renewed, PODS, TTL + RENEW_MS - 1, TTL),
            Some(2)
        );
        assert!(s.rebind(Some(&first), 8, 2, 10).is_some(), "new pod list");
    }

    #[test]
    fn sessions_spread_over_bounded_slots_per_role_and_are_told_apart_whole() {
        assert_eq!(Slot::of("c", Role::Pod, ""), None);
        let a = Slot::of("c", Role::Pod, "s").unwrap();
        let b = Slot::of("c", Role::Prefill, "s").unwrap();
        assert_ne!(a.key, b.key);
        let long = "x".repeat(100_000);
        let c = Slot::of("c", Role::Pod, &long).unwrap();
        let slot: u64 = c.key.rsplit('.').next().unwrap().parse().unwrap();
        assert!(slot < SLOTS);
        // Two names sharing their first 100,000 bytes are two sessions.
        let d = Slot::of("c", Role::Pod, &format!("{long}y")).unwrap();
        let record = c.rebind(None, 7, 1, 0).unwrap();
        assert_eq!(d.bound_pod(&record, PODS, 0, TTL), None);
    }
}

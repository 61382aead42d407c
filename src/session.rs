//! Session bindings for Kthena's `session-affinity` score plugin: a request carrying a session
//! header (`X-Session-ID` unless configured otherwise) scores 100 on the pod the session's
//! last request went to, while that binding is younger than its TTL; every pick (re)binds
//! the session to the chosen pod. On a PD server the decode and the prefill pod are bound
//! separately, as Kthena does.
//!
//! Bindings live in shared data so every Envoy worker follows them. Shared data never frees a
//! key, so a server has [`SLOTS`] keys per role and a session uses the one its hash selects:
//! memory stays bounded whatever the clients send, and a session whose slot another session
//! took meanwhile is simply placed anew (Kthena's in-memory map is unbounded instead). A
//! record names the session (its hash), the pod (its index, with the pod list it indexes: a
//! binding to another pod list is void, as a placement record is) and when it expires.
//!
//! A client chooses a session name, never a pod: the bound pod is one the scheduler picked,
//! and a binding only adds to that pod's score.

use crate::prefix::hash;

/// Slots per server and role: about this many sessions can be bound at once before they
/// start taking each other's slot (with N sessions live, about N / SLOTS of them).
pub const SLOTS: u64 = 8192;
/// Hash seed for session names (any constant; keeps them apart from prompt block hashes).
const SEED: u64 = 0x5e55_1011;
const RECORD: usize = 24;
/// Longest session name hashed in full: a longer header is hashed by its first bytes only
/// (names are ids; the request's header size is Envoy's to bound).
const MAX_NAME: usize = 256;

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
        let bytes = name.as_bytes();
        let session = hash(SEED, bytes.get(..MAX_NAME).unwrap_or(bytes));
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
    /// another session's, for another pod list, for a pod beyond `pods`, expired, or garbled.
    pub fn bound_pod(&self, record: &[u8], pod_list: u32, pods: usize, now_ms: u64) -> Option<u32> {
        let r = Record::decode(record)?;
        let live = r.session == self.session
            && r.pod_list == pod_list
            && (r.pod as usize) < pods
            && r.expires_ms > now_ms;
        live.then_some(r.pod)
    }

    /// The record binding the session to `pod` until `now_ms + ttl_ms`, or None when the slot
    /// already holds that binding for more than half its TTL (spares a shared-data write on
    /// most requests of a busy session; the binding then lives at least half a TTL).
    pub fn rebind(
        &self,
        current: Option<&[u8]>,
        pod_list: u32,
        pod: u32,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Option<Vec<u8>> {
        let fresh = current.and_then(Record::decode).is_some_and(|r| {
            r.session == self.session
                && r.pod_list == pod_list
                && r.pod == pod
                && r.expires_ms.saturating_sub(now_ms) > ttl_ms / 2
        });
        (!fresh).then(|| {
            Record {
                session: self.session,
                pod_list,
                pod,
                expires_ms: now_ms.saturating_add(ttl_ms),
            }
            .encode()
        })
    }
}

/// `session hash u64 | pod list u32 | pod u32 | expires ms u64`, little-endian.
struct Record {
    session: u64,
    pod_list: u32,
    pod: u32,
    expires_ms: u64,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD);
        out.extend_from_slice(&self.session.to_le_bytes());
        out.extend_from_slice(&self.pod_list.to_le_bytes());
        out.extend_from_slice(&self.pod.to_le_bytes());
        out.extend_from_slice(&self.expires_ms.to_le_bytes());
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
            expires_ms: u64_at(16)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: u64 = 60_000;

    fn slot(name: &str) -> Slot {
        Slot::of("outbound|80||llama", Role::Pod, name).unwrap()
    }

    #[test]
    fn a_binding_holds_for_its_session_pod_list_and_ttl_only() {
        let s = slot("user-1");
        let record = s.rebind(None, 7, 2, 1_000, TTL).unwrap();
        assert_eq!(s.bound_pod(&record, 7, 4, 1_000), Some(2));
        assert_eq!(s.bound_pod(&record, 7, 4, 1_000 + TTL - 1), Some(2));
        assert_eq!(s.bound_pod(&record, 7, 4, 1_000 + TTL), None, "expired");
        assert_eq!(s.bound_pod(&record, 8, 4, 1_000), None, "another pod list");
        assert_eq!(s.bound_pod(&record, 7, 2, 1_000), None, "the pod is gone");
        // Another session in the same slot does not inherit the binding.
        let other = (0..)
            .map(|i| slot(&format!("other-{i}")))
            .find(|o| o.key == s.key)
            .unwrap();
        assert_eq!(other.bound_pod(&record, 7, 4, 1_000), None);
        assert_eq!(s.bound_pod(&record[..23], 7, 4, 1_000), None, "garbled");
    }

    #[test]
    fn rebinding_writes_only_when_the_pod_changes_or_half_the_ttl_has_passed() {
        let s = slot("user-1");
        let first = s.rebind(None, 7, 2, 0, TTL).unwrap();
        assert_eq!(s.rebind(Some(&first), 7, 2, TTL / 2 - 1, TTL), None);
        let moved = s.rebind(Some(&first), 7, 3, 10, TTL).unwrap();
        assert_eq!(s.bound_pod(&moved, 7, 4, 10), Some(3));
        let renewed = s.rebind(Some(&first), 7, 2, TTL / 2 + 1, TTL).unwrap();
        assert_eq!(s.bound_pod(&renewed, 7, 4, TTL + 10), Some(2));
        assert!(
            s.rebind(Some(&first), 8, 2, 10, TTL).is_some(),
            "new pod list"
        );
    }

    #[test]
    fn sessions_spread_over_bounded_slots_per_role() {
        assert_eq!(Slot::of("c", Role::Pod, ""), None);
        let a = Slot::of("c", Role::Pod, "s").unwrap();
        let b = Slot::of("c", Role::Prefill, "s").unwrap();
        assert_ne!(a.key, b.key);
        let long = "x".repeat(100_000);
        let c = Slot::of("c", Role::Pod, &long).unwrap();
        let slot: u64 = c.key.rsplit('.').next().unwrap().parse().unwrap();
        assert!(slot < SLOTS);
    }
}

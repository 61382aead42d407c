//! Counters shared by every Envoy worker through the host's shared data (compare-and-swap):
//! per-pod in-flight requests. A value is a little-endian `u32` per pod of one ModelServer,
//! in endpoint order; the key names the pod list, so two lists never mix.
//!
//! Host calls are the filter's main cost, so under load a request touches shared data twice,
//! not five times: the read that feeds the scheduler also supplies the CAS token its increment
//! is written with, and while this worker has other requests in flight a finished request's
//! decrement is only recorded here ([`InFlight::release`]) and folded into the worker's next
//! write, which is imminent. The last request of a worker to finish publishes at once, and the
//! root context's tick ([`InFlight::flush`], every 100 ms) publishes whatever is left, so an
//! idle worker never leaves counts behind.

use std::collections::HashMap;

use crate::host::Host;

/// CAS attempts before an update is given up (another worker kept winning).
const MAX_TRIES: usize = 16;

fn decode(bytes: &[u8], n: usize) -> Vec<u32> {
    let mut v: Vec<u32> = bytes
        .chunks_exact(4)
        .filter_map(|c| c.try_into().ok().map(u32::from_le_bytes))
        .take(n)
        .collect();
    v.resize(n, 0);
    v
}

fn encode(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The in-flight counts of the `n` pods under `key` (zeros when absent), as stored.
pub fn read_counts(host: &dyn Host, key: &str, n: usize) -> Vec<u32> {
    match host.shared_get(key) {
        (Some(b), _) => decode(&b, n),
        _ => vec![0; n],
    }
}

/// One read of a key: the stored counts and the CAS token they were read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub key: String,
    pub counts: Vec<u32>,
    pub cas: Option<u32>,
}

/// This worker's view of the in-flight counts: decrements of finished requests not yet
/// written to shared data, per key and pod. It also carries the worker's other deferred
/// shared-data writes, the rate limits' output debits, which follow the same rule.
#[derive(Debug, Default)]
pub struct InFlight {
    pending: HashMap<String, Vec<u32>>,
    /// Requests this worker counted and has not released.
    active: usize,
    /// Output tokens owed to rate-limit budgets ([`crate::rate_limit::Debits`]).
    pub debits: crate::rate_limit::Debits,
}

impl InFlight {
    /// Reads `key` for scheduling: the counts with this worker's unpublished decrements
    /// applied, and the read itself (for [`InFlight::acquire`]).
    pub fn read(&self, host: &dyn Host, key: &str, n: usize) -> (Vec<u32>, Read) {
        let (bytes, cas) = host.shared_get(key);
        let counts = bytes.map(|b| decode(&b, n)).unwrap_or_else(|| vec![0; n]);
        let mut view = counts.clone();
        self.apply(key, &mut view);
        let read = Read {
            key: key.to_string(),
            counts,
            cas,
        };
        (view, read)
    }

    fn apply(&self, key: &str, counts: &mut [u32]) {
        if let Some(p) = self.pending.get(key) {
            for (c, d) in counts.iter_mut().zip(p) {
                *c = c.saturating_sub(*d);
            }
        }
    }

    /// Counts pod `idx` of `key` in flight, with any pending decrements of `key`. Tries the
    /// CAS token of `read` first (one host call when no other worker wrote since), then
    /// re-reads. False if it could not be stored.
    pub fn acquire(
        &mut self,
        host: &mut dyn Host,
        key: &str,
        n: usize,
        idx: usize,
        read: Option<Read>,
    ) -> bool {
        if idx >= n {
            return false;
        }
        let mut current = read
            .filter(|r| r.key == key && r.counts.len() == n)
            .map(|r| (r.counts, r.cas));
        for _ in 0..MAX_TRIES {
            let (mut counts, cas) = match current.take() {
                Some(c) => c,
                None => {
                    let (bytes, cas) = host.shared_get(key);
                    (
                        bytes.map(|b| decode(&b, n)).unwrap_or_else(|| vec![0; n]),
                        cas,
                    )
                }
            };
            self.apply(key, &mut counts);
            if let Some(slot) = counts.get_mut(idx) {
                *slot = slot.saturating_add(1);
            }
            if host.shared_set(key, &encode(&counts), cas) {
                self.pending.remove(key);
                self.active += 1;
                return true;
            }
        }
        false
    }

    /// A request counted on pod `idx` of `key` finished: written with this worker's next
    /// count while others are in flight here, else at once.
    pub fn release(&mut self, host: &mut dyn Host, key: &str, n: usize, idx: usize) {
        self.defer(key, n, idx);
        self.active = self.active.saturating_sub(1);
        if self.active == 0 {
            self.flush(host);
        }
    }

    fn defer(&mut self, key: &str, n: usize, idx: usize) {
        let p = self
            .pending
            .entry(key.to_string())
            .or_insert_with(|| vec![0; n]);
        if p.len() < n {
            p.resize(n, 0);
        }
        if let Some(slot) = p.get_mut(idx) {
            *slot = slot.saturating_add(1);
        }
    }

    /// Whether decrements wait to be written.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Writes every pending decrement (the root context's tick). Keys that lose the CAS race
    /// too often stay pending for the next tick.
    pub fn flush(&mut self, host: &mut dyn Host) {
        let keys: Vec<String> = self.pending.keys().cloned().collect();
        for key in keys {
            let Some(dec) = self.pending.get(&key) else {
                continue;
            };
            let n = dec.len();
            for _ in 0..MAX_TRIES {
                let (bytes, cas) = host.shared_get(&key);
                let Some(bytes) = bytes else {
                    // Nothing stored (the host restarted its data): nothing to release.
                    self.pending.remove(&key);
                    break;
                };
                let mut counts = decode(&bytes, n.max(bytes.len() / 4));
                self.apply(&key, &mut counts);
                if host.shared_set(&key, &encode(&counts), cas) {
                    self.pending.remove(&key);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::fake::FakeHost;

    fn stored(h: &FakeHost, key: &str) -> Vec<u32> {
        read_counts(h, key, 3)
    }

    #[test]
    fn acquire_with_a_fresh_read_is_one_write() {
        let mut h = FakeHost::default();
        let mut f = InFlight::default();
        let (view, read) = f.read(&h, "k", 3);
        assert_eq!(view, [0, 0, 0]);
        assert!(f.acquire(&mut h, "k", 3, 1, Some(read)));
        assert_eq!(stored(&h, "k"), [0, 1, 0]);
        let (_, read) = f.read(&h, "k", 3);
        let gets = h.shared_gets.borrow().len();
        assert!(f.acquire(&mut h, "k", 3, 1, Some(read)));
        assert_eq!(h.shared_gets.borrow().len(), gets, "no second read");
        assert_eq!(stored(&h, "k"), [0, 2, 0]);
    }

    #[test]
    fn two_workers_counting_a_pod_list_first_at_once_keep_both_counts() {
        // Both read no counts yet; the other worker's first count lands between this one's
        // read and write, which must not land over it.
        let mut other = FakeHost::default();
        assert!(InFlight::default().acquire(&mut other, "k", 3, 2, None));
        let mut h = FakeHost {
            racing_write: Some(("k".to_string(), other.shared["k"].0.clone())),
            ..FakeHost::default()
        };
        let mut f = InFlight::default();
        let (_, read) = f.read(&h, "k", 3);
        assert!(f.acquire(&mut h, "k", 3, 1, Some(read)));
        assert_eq!(stored(&h, "k"), [0, 1, 1]);
    }

    #[test]
    fn a_stale_read_is_retried_not_lost() {
        let mut h = FakeHost::default();
        let (mut a, mut b) = (InFlight::default(), InFlight::default());
        assert!(a.acquire(&mut h, "k", 3, 1, None));
        let (_, read_a) = a.read(&h, "k", 3);
        let (_, read_b) = b.read(&h, "k", 3);
        assert!(a.acquire(&mut h, "k", 3, 0, Some(read_a)));
        // b's token is stale now: it re-reads and keeps a's count.
        assert!(b.acquire(&mut h, "k", 3, 2, Some(read_b)));
        assert_eq!(stored(&h, "k"), [1, 1, 1]);
    }

    #[test]
    fn releases_are_seen_at_once_locally_and_published_by_the_next_write_or_flush() {
        let mut h = FakeHost::default();
        let mut f = InFlight::default();
        for idx in [0, 0, 2] {
            let (_, r) = f.read(&h, "k", 3);
            assert!(f.acquire(&mut h, "k", 3, idx, Some(r)));
        }
        assert_eq!(stored(&h, "k"), [2, 0, 1]);
        f.release(&mut h, "k", 3, 0);
        assert_eq!(
            stored(&h, "k"),
            [2, 0, 1],
            "not written yet: two still in flight"
        );
        let (view, r) = f.read(&h, "k", 3);
        assert_eq!(view, [1, 0, 1], "this worker already counts it");
        assert!(f.acquire(&mut h, "k", 3, 1, Some(r)));
        assert_eq!(stored(&h, "k"), [1, 1, 1], "folded into the next write");
        assert!(f.is_empty());
        f.release(&mut h, "k", 3, 1);
        f.release(&mut h, "k", 3, 2);
        assert_eq!(stored(&h, "k"), [1, 1, 1], "one still in flight: deferred");
        f.flush(&mut h);
        assert_eq!(stored(&h, "k"), [1, 0, 0], "the tick publishes");
        assert!(f.is_empty());
        // The worker's last request publishes at once, keeping other workers' counts.
        let mut other = InFlight::default();
        let (_, r) = other.read(&h, "k", 3);
        assert!(other.acquire(&mut h, "k", 3, 2, Some(r)));
        f.release(&mut h, "k", 3, 0);
        assert!(f.is_empty());
        assert_eq!(stored(&h, "k"), [0, 0, 1]);
    }

    #[test]
    fn counts_never_underflow_and_bad_indices_are_refused() {
        let mut h = FakeHost::default();
        let mut f = InFlight::default();
        f.defer("k", 3, 0);
        f.defer("k", 3, 7);
        let (view, r) = f.read(&h, "k", 3);
        assert_eq!(view, [0, 0, 0]);
        assert!(!f.acquire(&mut h, "k", 3, 3, Some(r)));
        assert!(f.acquire(&mut h, "k", 3, 1, None));
        assert_eq!(stored(&h, "k"), [0, 1, 0]);
    }
}

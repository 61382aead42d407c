//! Counters shared by every Envoy worker through the host's shared data (compare-and-swap):
//! per-pod in-flight requests. A value is a little-endian `u32` per pod of one ModelServer,
//! in endpoint order; the key names the pod list, so two lists never mix.

use crate::flow::Host;

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

/// The in-flight counts of the `n` pods under `key` (zeros when absent).
pub fn read_counts(host: &dyn Host, key: &str, n: usize) -> Vec<u32> {
    match host.shared_get(key) {
        (Some(b), _) => decode(&b, n),
        _ => vec![0; n],
    }
}

/// Adds `delta` to pod `idx`'s count (saturating at 0). False if it could not be stored.
pub fn add(host: &mut dyn Host, key: &str, n: usize, idx: usize, delta: i64) -> bool {
    for _ in 0..MAX_TRIES {
        let (bytes, cas) = host.shared_get(key);
        let mut v = bytes.map(|b| decode(&b, n)).unwrap_or_else(|| vec![0; n]);
        let Some(slot) = v.get_mut(idx) else {
            return false;
        };
        *slot = (i64::from(*slot) + delta).clamp(0, i64::from(u32::MAX)) as u32;
        if host.shared_set(key, &encode(&v), cas) {
            return true;
        }
    }
    false
}

//! A tiny seeded PRNG (SplitMix64). Randomness is always passed in so every decision is
//! reproducible in tests; the glue seeds it with [`vm_seed`].

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); multiply-shift, bias negligible for our n.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// A seed no other VM shares: `clock_ns` mixed with the randomness std draws from the host
/// once per VM (WASI `random_get`, which Envoy serves from its own generator). The clock alone
/// is not enough: Envoy's workers configured at the same instant read the same value, and two
/// workers then drew the same SGLang bootstrap rooms and request ids (seen once in CI).
pub fn vm_seed(clock_ns: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(clock_ns);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vms_configured_at_the_same_instant_get_different_seeds() {
        // In one process std also steps its keys per RandomState, so this checks the mixing;
        // that two VMs differ is the PD e2e's one bootstrap room per request (tests/pd.rs).
        let seeds: std::collections::HashSet<u64> = (0..64).map(|_| vm_seed(1_000)).collect();
        assert_eq!(seeds.len(), 64);
    }

    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = Rng::new(1);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let v = r.below(7) as usize;
            assert!(v < 7);
            seen[v] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}

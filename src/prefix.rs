//! prefix-cache scoring: the prompt is cut into fixed-size byte blocks, each block's hash is
//! chained to the previous one (starting from the model name), and an index remembers which
//! pods recently served which block hashes. A pod's score is the share of the prompt's leading
//! blocks it has seen: a proxy for its engine's KV prefix cache (Kthena's algorithm).
//!
//! Memory is bounded: at most `capacity` block hashes per index (one index per ModelServer, per
//! Envoy worker), each remembering at most [`PODS_PER_BLOCK`] pods; when full, the least
//! recently used eighth is dropped at once (amortised O(1) per insert). At the default 50,000
//! hashes that is about 50,000 x ([`ENTRY_BYTES`]) = ~2.4 MB per ModelServer per worker.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};

/// Pods remembered per block hash (most recent first).
pub const PODS_PER_BLOCK: usize = 4;
/// Upper bound of the bytes one index entry takes (key, value and hash-table overhead).
pub const ENTRY_BYTES: usize = 48;

const MUL: u64 = 0xbf58_476d_1ce4_e5b9;

/// 64-bit hash of `bytes`, continuing from `seed` (chained block hashes). Eight bytes per
/// multiply (byte-at-a-time FNV-1a ran at ~0.9 GB/s natively, this at several GB/s) and a
/// splitmix64 finish. Not cryptographic: a forged collision can at most bias one pick.
pub fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed ^ 0xcbf2_9ce4_8422_2325 ^ (bytes.len() as u64).wrapping_mul(MUL);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().unwrap_or_default());
        h = (h ^ w).wrapping_mul(MUL).rotate_left(29);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut tail = [0u8; 8];
        for (t, b) in tail.iter_mut().zip(rest) {
            *t = *b;
        }
        h = (h ^ u64::from_le_bytes(tail))
            .wrapping_mul(MUL)
            .rotate_left(29);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(MUL);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Chained hashes of the prompt's blocks: at most `max_blocks` of `block_size` bytes.
pub fn block_hashes(model: &str, prompt: &[u8], block_size: usize, max_blocks: usize) -> Vec<u64> {
    let block_size = block_size.max(1);
    let mut prev = hash(0, model.as_bytes());
    prompt
        .chunks(block_size)
        .take(max_blocks)
        .map(|block| {
            prev = hash(prev, block);
            prev
        })
        .collect()
}

/// Hasher for keys that are already hashes: a per-index random key and one multiply-xorshift
/// spread the block hash bits over the table's index and tag bits. SipHash (the std default)
/// costs several times more per lookup; the key keeps clients from aiming prompts at one
/// bucket.
#[derive(Debug, Default, Clone, Copy)]
struct BlockHasher(u64);

#[derive(Debug, Default, Clone, Copy)]
struct BlockHash(u64);

impl BuildHasher for BlockHash {
    type Hasher = BlockHasher;
    fn build_hasher(&self) -> BlockHasher {
        BlockHasher(self.0)
    }
}

impl Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

type BlockMap<V> = HashMap<u64, V, BlockHash>;

#[derive(Debug, Clone)]
struct Entry {
    /// Pod ids, most recent first.
    pods: [u32; PODS_PER_BLOCK],
    len: u8,
    last_use: u64,
    /// The full blocks seen to follow this one: [`NO_SUCCESSOR`], the fingerprint of the one
    /// block every prompt so far continued with, or [`BRANCHES`].
    next: u32,
}

const NO_SUCCESSOR: u32 = 0;
const BRANCHES: u32 = u32::MAX;

/// A block hash's successor fingerprint: never one of the two markers.
fn fingerprint(h: u64) -> u32 {
    (h as u32).clamp(1, BRANCHES - 1)
}

/// What one index learned and the other workers' indexes have not yet: (block hash, pod),
/// at most this many between two syncs (beyond, the oldest are dropped).
pub const OUTBOX_MAX: usize = 4096;

/// Block hash -> pods that recently served a prompt with that prefix.
#[derive(Debug, Clone)]
pub struct PrefixIndex {
    entries: BlockMap<Entry>,
    capacity: usize,
    clock: u64,
    evicted: u64,
    /// New (block hash, pod) facts since the last [`PrefixIndex::take_outbox`], for
    /// `prefix_sync` to share with the other workers.
    outbox: VecDeque<(u64, u32)>,
    /// Per pod id (below [`MAX_COUNTED_POD`]): the blocks whose pods include it, i.e. how much
    /// of the index's picture of the KV caches that pod holds.
    held: Vec<u32>,
}

/// Pod ids from here on are not counted in [`PrefixIndex::held`] (bounds its memory; a
/// ModelServer has far fewer pods).
pub const MAX_COUNTED_POD: u32 = 1 << 16;

impl PrefixIndex {
    pub fn new(capacity: usize) -> Self {
        Self::with_key(capacity, 0)
    }

    /// An index whose table is keyed with `key` (a random value per index in the filter).
    pub fn with_key(capacity: usize, key: u64) -> Self {
        PrefixIndex {
            entries: BlockMap::with_hasher(BlockHash(key)),
            capacity: capacity.max(8),
            clock: 0,
            evicted: 0,
            outbox: VecDeque::new(),
            held: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether prompts through block `h` went on with different blocks: `h` ends a prefix
    /// several prompts share (a system prompt), not one conversation's history. Learnt from
    /// this index's own picks ([`PrefixIndex::note_successors`]), not from other workers'.
    pub fn branches_after(&self, h: u64) -> bool {
        self.entries.get(&h).is_some_and(|e| e.next == BRANCHES)
    }

    /// Whether a prompt whose first `known` blocks of `hashes` were served before starts a new
    /// branch there: none was, or the last of them ends a prefix earlier prompts went on from
    /// in different ways (a new conversation after a shared system prompt). A prompt that goes
    /// on past one conversation's blocks, or was served whole as far as it is hashed,
    /// continues a line instead.
    pub fn starts_branch(&self, hashes: &[u64], known: usize) -> bool {
        match known.checked_sub(1).and_then(|last| hashes.get(last)) {
            None => true,
            Some(last) => known < hashes.len() && self.branches_after(*last),
        }
    }

    /// Whether some pod served a prompt starting with block hash `h`.
    pub fn knows(&self, h: u64) -> bool {
        self.entries.contains_key(&h)
    }

    /// For each pod id in `pods`, how many leading blocks of `hashes` it has served.
    pub fn matches(&self, hashes: &[u64], pods: &[u32]) -> Vec<usize> {
        let mut matched = vec![0usize; pods.len()];
        for (i, h) in hashes.iter().enumerate() {
            let Some(e) = self.entries.get(h) else { break };
            let mut any = false;
            for (slot, pod) in matched.iter_mut().zip(pods) {
                if *slot == i
                    && e.pods
                        .get(..e.len as usize)
                        .is_some_and(|p| p.contains(pod))
                {
                    *slot = i + 1;
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        matched
    }

    /// Records that `pod` served a prompt with these block hashes. What is new (the pod was
    /// not the block's most recent one) goes to the outbox too.
    pub fn insert(&mut self, hashes: &[u64], pod: u32) {
        self.clock += 1;
        for h in hashes {
            if self.touch(*h, pod) {
                if self.outbox.len() >= OUTBOX_MAX {
                    self.outbox.pop_front();
                }
                self.outbox.push_back((*h, pod));
            }
        }
        if self.entries.len() > self.capacity {
            self.evict();
        }
    }

    /// Notes which block followed which in a prompt just inserted: among its first `whole`
    /// blocks, those of the full block size. (A prompt's last block is usually partial, and
    /// the same conversation's next turn fills it differently: counted, every turn would look
    /// like a branch off the one before.) A block seen followed by two different blocks
    /// [`PrefixIndex::branches_after`].
    pub fn note_successors(&mut self, hashes: &[u64], whole: usize) {
        let whole = hashes.get(..whole.min(hashes.len())).unwrap_or_default();
        for (block, next) in whole.iter().zip(whole.iter().skip(1)) {
            if let Some(e) = self.entries.get_mut(block) {
                let f = fingerprint(*next);
                e.next = match e.next {
                    NO_SUCCESSOR => f,
                    same if same == f => f,
                    _ => BRANCHES,
                };
            }
        }
    }

    /// Records what another worker's index learned (`prefix_sync`): `pod` served block `h`.
    pub fn insert_shared(&mut self, learned: impl IntoIterator<Item = (u64, u32)>) {
        self.clock += 1;
        for (h, pod) in learned {
            self.touch(h, pod);
        }
        if self.entries.len() > self.capacity {
            self.evict();
        }
    }

    /// Whether it learned anything the other workers do not know yet.
    pub fn has_news(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// What this index learned since the last call.
    pub fn take_outbox(&mut self) -> Vec<(u64, u32)> {
        std::mem::take(&mut self.outbox).into()
    }

    /// Puts back news that could not be shared, before what was learned since (bounded).
    pub fn insert_outbox(&mut self, news: Vec<(u64, u32)>) {
        let mut all = VecDeque::from(news);
        all.append(&mut self.outbox);
        all.drain(..all.len().saturating_sub(OUTBOX_MAX));
        self.outbox = all;
    }

    /// How many blocks the index knows `pod` to hold: SGLang's "tree size", which sends a
    /// prompt no pod has seen to the pod with the least cached, spreading distinct prefixes.
    pub fn held(&self, pod: u32) -> u32 {
        self.held.get(pod as usize).copied().unwrap_or(0)
    }

    fn count_held(&mut self, pod: u32, up: bool) {
        if pod >= MAX_COUNTED_POD {
            return;
        }
        let i = pod as usize;
        if self.held.len() <= i {
            self.held.resize(i + 1, 0);
        }
        if let Some(n) = self.held.get_mut(i) {
            *n = if up {
                n.saturating_add(1)
            } else {
                n.saturating_sub(1)
            };
        }
    }

    /// Makes `pod` block `h`'s most recent pod; whether it was not already.
    fn touch(&mut self, h: u64, pod: u32) -> bool {
        let (added, dropped, news) = {
            let clock = self.clock;
            let e = self.entries.entry(h).or_insert(Entry {
                pods: [0; PODS_PER_BLOCK],
                len: 0,
                last_use: clock,
                next: NO_SUCCESSOR,
            });
            e.last_use = clock;
            let len = e.len as usize;
            let pos = e
                .pods
                .get(..len)
                .and_then(|p| p.iter().position(|x| *x == pod));
            // Move (or put) the pod to the front, dropping the oldest when full.
            let end = match pos {
                Some(p) => p,
                None => len.min(PODS_PER_BLOCK - 1),
            };
            // A new pod on a full entry pushes the oldest out.
            let dropped = (pos.is_none() && len == PODS_PER_BLOCK)
                .then(|| e.pods.get(end).copied())
                .flatten();
            if let Some(window) = e.pods.get_mut(..=end) {
                window.rotate_right(1);
                if let Some(front) = window.first_mut() {
                    *front = pod;
                }
            }
            if pos.is_none() && len < PODS_PER_BLOCK {
                e.len += 1;
            }
            (pos.is_none(), dropped, pos != Some(0))
        };
        if added {
            self.count_held(pod, true);
        }
        if let Some(old) = dropped {
            self.count_held(old, false);
        }
        news
    }

    /// Drops the least recently used eighth of the entries (at least down to capacity).
    fn evict(&mut self) {
        let target = self.capacity - self.capacity / 8;
        let drop_n = self.entries.len().saturating_sub(target);
        let mut ages: Vec<u64> = self.entries.values().map(|e| e.last_use).collect();
        // The drop_n-th oldest use: a linear-time selection, not a sort of every entry.
        let cutoff = match drop_n.checked_sub(1) {
            Some(k) if k < ages.len() => *ages.select_nth_unstable(k).1,
            _ => 0,
        };
        let mut dropped = 0;
        let mut released: Vec<u32> = Vec::new();
        self.entries.retain(|_, e| {
            if dropped < drop_n && e.last_use <= cutoff {
                dropped += 1;
                released.extend(e.pods.get(..e.len as usize).unwrap_or_default());
                false
            } else {
                true
            }
        });
        for pod in released {
            self.count_held(pod, false);
        }
        self.evicted += dropped as u64;
    }

    /// Entries dropped to stay within capacity, since the index was made.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The share of `hashes`' leading blocks `pod` has served (0 when there are none).
    pub fn match_ratio(&self, hashes: &[u64], pod: u32) -> f32 {
        let matched = self.matches(hashes, &[pod]).first().copied().unwrap_or(0);
        if hashes.is_empty() {
            0.0
        } else {
            matched as f32 / hashes.len() as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_covers_every_byte_and_the_length() {
        let base = b"0123456789abcdefXYZ".to_vec();
        let h = hash(1, &base);
        assert_ne!(hash(2, &base), h, "the seed");
        for i in 0..base.len() {
            let mut b = base.clone();
            b[i] ^= 1;
            assert_ne!(hash(1, &b), h, "byte {i}");
        }
        assert_ne!(hash(1, &base[..18]), h);
        assert_ne!(
            hash(1, b"ab\0"),
            hash(1, b"ab"),
            "a zero tail byte still counts"
        );
        assert_ne!(hash(1, b""), hash(0, b""));
    }

    #[test]
    fn hashes_chain_from_the_model_so_models_never_share_blocks() {
        let p = b"x".repeat(200);
        let a = block_hashes("m1", &p, 64, 128);
        let b = block_hashes("m2", &p, 64, 128);
        assert_eq!(a.len(), 4);
        assert!(a.iter().all(|h| !b.contains(h)));
        assert_eq!(block_hashes("m1", &p, 64, 2).len(), 2);
        assert!(block_hashes("m1", b"", 64, 128).is_empty());
    }

    #[test]
    fn a_shared_prefix_matches_only_its_leading_blocks() {
        let base = "You are a helpful assistant. ".repeat(10);
        let a = format!("{base}Question one?");
        let b = format!("{base}A different question");
        let ha = block_hashes("m", a.as_bytes(), 64, 128);
        let hb = block_hashes("m", b.as_bytes(), 64, 128);
        let mut idx = PrefixIndex::new(1000);
        idx.insert(&ha, 7);
        let m = idx.matches(&hb, &[7, 8]);
        assert_eq!(m[1], 0);
        assert_eq!(
            m[0],
            base.len() / 64,
            "the blocks fully inside the shared prefix"
        );
        assert_eq!(idx.matches(&ha, &[7])[0], ha.len());
        // Kthena's match ratio: the share of the prompt's blocks.
        assert_eq!(idx.match_ratio(&ha, 7), 1.0);
        assert_eq!(idx.match_ratio(&ha, 8), 0.0);
        let shared = (base.len() / 64) as f32 / hb.len() as f32;
        assert_eq!(idx.match_ratio(&hb, 7), shared);
        assert_eq!(idx.match_ratio(&[], 7), 0.0);
    }

    #[test]
    fn recent_pods_are_kept_per_block() {
        let h = block_hashes("m", b"abc", 64, 128);
        let mut idx = PrefixIndex::new(100);
        for pod in 0..6 {
            idx.insert(&h, pod);
        }
        assert_eq!(idx.matches(&h, &[5, 4, 3, 2, 1, 0]), [1, 1, 1, 1, 0, 0]);
        idx.insert(&h, 3);
        assert_eq!(idx.matches(&h, &[3])[0], 1);
    }

    #[test]
    fn held_counts_the_blocks_each_pod_holds_through_moves_and_eviction() {
        let a = block_hashes("m", &b"a".repeat(64 * 3), 64, 128);
        let b = block_hashes("m", &b"b".repeat(64 * 2), 64, 128);
        let mut idx = PrefixIndex::new(100);
        idx.insert(&a, 1);
        idx.insert(&a, 1);
        idx.insert(&b, 2);
        assert_eq!((idx.held(1), idx.held(2), idx.held(3)), (3, 2, 0));
        // Five pods on one entry of four: the oldest is pushed out.
        for pod in [3, 4, 5, 6] {
            idx.insert(&b, pod);
        }
        assert_eq!((idx.held(2), idx.held(6)), (0, 2));
        idx.insert_shared([(a[0], 7)]);
        assert_eq!(idx.held(7), 1);
        assert_eq!(idx.held(MAX_COUNTED_POD + 1), 0);
        // Eviction releases what the dropped entries held: the sum stays the pod slots held.
        let mut small = PrefixIndex::new(8);
        for i in 0..100u32 {
            small.insert(&block_hashes(&format!("m{i}"), b"x", 64, 128), i % 3);
        }
        let held: u32 = (0..3).map(|p| small.held(p)).sum();
        assert_eq!(held as usize, small.len());
    }

    #[test]
    fn memory_is_bounded_by_capacity() {
        let mut idx = PrefixIndex::new(1000);
        for i in 0..50_000u32 {
            let prompt = format!("prompt number {i} with its own text");
            idx.insert(&block_hashes("m", prompt.as_bytes(), 8, 128), i % 16);
            assert!(idx.len() <= 1000, "len {} at {i}", idx.len());
        }
        assert!(idx.len() >= 1000 - 1000 / 8 - 8);
        // Every entry ever made is either held or was evicted (one block per model here).
        let mut small = PrefixIndex::new(8);
        for i in 0..100 {
            small.insert(&block_hashes(&format!("m{i}"), b"x", 64, 128), 0);
        }
        assert_eq!(small.len() as u64 + small.evicted(), 100);
        assert!(small.evicted() > 0);
        // The most recent prompt survives eviction.
        let last = block_hashes("m", b"prompt number 49999 with its own text", 8, 128);
        assert_eq!(idx.matches(&last, &[49_999 % 16])[0], last.len());
    }

    #[test]
    fn the_block_where_prompts_go_separate_ways_branches_and_a_conversations_last_does_not() {
        let system = "You are a helpful assistant for a travel company. ".repeat(6);
        let mut idx = PrefixIndex::new(1000);
        let mut route = |text: &str, pod: u32| {
            let h = block_hashes("m", text.as_bytes(), 64, 128);
            idx.insert(&h, pod);
            idx.note_successors(&h, text.len() / 64);
            h
        };
        let first = format!("{system}user one asks where to go in spring, and why there");
        assert_ne!(
            first.len() % 64,
            0,
            "the first turn ends in a partial block"
        );
        let h1 = route(&first, 0);
        let h2 = route(
            &format!("{system}user two wants a cheap flight for two next week"),
            1,
        );
        let shared = h1.iter().zip(&h2).take_while(|(a, b)| a == b).count();
        assert!(shared >= 4, "{shared}");
        let ends_shared = |i: usize| idx.branches_after(h1[i]);
        assert!(ends_shared(shared - 1));
        assert!(
            !ends_shared(shared - 2),
            "within the system prompt nothing branches"
        );
        // User one's next turn extends its first: the longest match ends at the first turn's
        // last whole block, which only ever went on one way (its partial block is no
        // successor), so the turn reads as a continuation.
        let next = format!("{first}\nassistant: Lisbon, for the light.\nuser one: and in May?");
        let h3 = block_hashes("m", next.as_bytes(), 64, 128);
        let m = idx.matches(&h3, &[0])[0];
        assert_eq!(m, first.len() / 64);
        assert!(!idx.branches_after(h3[m - 1]));
        // Blocks learnt from other workers carry no successors: nothing branches by them.
        let mut other = PrefixIndex::new(1000);
        other.insert_shared(h1.iter().chain(&h2).map(|h| (*h, 0)));
        assert!(!other.branches_after(h1[shared - 1]));
    }
}

//! The prefix indexes of Envoy's workers, kept in step: each worker's index learns only from
//! the requests it routes, so a conversation whose earlier turns went through one worker would
//! be unknown to another (measured: a third of the prefix-cache hits lost with two workers,
//! bench/QUALITY.md). On each root tick every worker appends what its index learned since
//! (block hash, pod) to a journal in shared data, one per ModelServer, and applies what the
//! others appended: the indexes agree within a tick, with no journal access on the request
//! path.
//!
//! The journal is a ring of [`RECORDS`] records behind a sequence number: `next_seq (u64) |
//! RECORDS x (block hash u64, pod u32, 0u32)`, record `seq` at slot `seq % RECORDS`. A worker
//! that fell more than a ring behind skips what was overwritten (its index just knows less).
//!
//! One thing cannot wait for a tick: where a new prompt was placed. Those placements are also
//! published at once, as placement records ([`encode_placement`] under [`placement_key`]),
//! and read before placing a prompt the reader's index hardly knows.

use crate::host::Host;
use crate::prefix::PrefixIndex;
use filter_config::placement_store::{PLACED_BLOCKS_KEY_PREFIX, RECORD_KEY_PREFIX};

/// Records the ring holds: a tick of several workers' news at a few thousand requests a second.
pub const RECORDS: usize = 4096;
const RECORD: usize = 16;
const HEADER: usize = 8;
/// Compare-and-swap attempts per tick before the news waits for the next.
const MAX_TRIES: usize = 4;

/// The journal key of the server whose in-flight key is `in_flight_key` (same pod list).
pub fn key_of(in_flight_key: &str) -> String {
    in_flight_key.replacen(".inflight.", ".prefix.", 1)
}

/// The key of the journal's sequence number alone, so that a worker with no news reads 8
/// bytes, not the ring, when nothing changed.
fn version_key(key: &str) -> String {
    format!("{key}.seq")
}

/// One worker's sync of one index: applies the others' news since `seen` (the sequence this
/// worker has read up to) and appends its own. Returns whether its news was stored (else it
/// is kept for the next tick).
pub fn sync(host: &mut dyn Host, key: &str, index: &mut PrefixIndex, seen: &mut u64) -> bool {
    let version = version_key(key);
    if !index.has_news() {
        let (bytes, _) = host.shared_get(&version);
        if read_u64(&bytes.unwrap_or_default(), 0) == *seen {
            return true;
        }
    }
    let mut news = index.take_outbox();
    if news.len() > RECORDS {
        news.drain(..news.len() - RECORDS);
    }
    for _ in 0..MAX_TRIES {
        // No journal yet: this worker's news starts one, written only if no other worker
        // started it meanwhile (two workers creating it at once each wiped the other's news
        // while shared data had no create-if-absent: seen in Envoy, the first conversations
        // through one worker unknown to the other).
        let (bytes, cas) = host.shared_get(key);
        let mut journal = bytes.unwrap_or_default();
        journal.resize(HEADER + RECORDS * RECORD, 0);
        let next = read_u64(&journal, 0);
        index.insert_shared(records(
            &journal,
            (*seen).max(next.saturating_sub(RECORDS as u64)),
            next,
        ));
        *seen = next;
        if news.is_empty() {
            return true;
        }
        for (k, (h, pod)) in news.iter().enumerate() {
            let at = slot_at(next.wrapping_add(k as u64));
            let record = h
                .to_le_bytes()
                .into_iter()
                .chain(pod.to_le_bytes())
                .chain([0; 4]);
            if let Some(slot) = journal.get_mut(at..at + RECORD) {
                for (dst, b) in slot.iter_mut().zip(record) {
                    *dst = b;
                }
            }
        }
        let end = next.wrapping_add(news.len() as u64);
        for (dst, b) in journal.iter_mut().zip(end.to_le_bytes()) {
            *dst = b;
        }
        if host.shared_set(key, &journal, cas) {
            *seen = end;
            publish_version(host, &version, end);
            return true;
        }
    }
    // Others kept writing: keep the news for the next tick.
    index.insert_outbox(news);
    false
}

/// Raises the journal's published sequence number to `end` (another writer may have raised
/// it further already: never lowered).
fn publish_version(host: &mut dyn Host, version: &str, end: u64) {
    for _ in 0..MAX_TRIES {
        let (bytes, cas) = host.shared_get(version);
        if read_u64(&bytes.unwrap_or_default(), 0) >= end
            || host.shared_set(version, &end.to_le_bytes(), cas)
        {
            return;
        }
    }
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// Where record `seq` lives in the journal.
fn slot_at(seq: u64) -> usize {
    HEADER + (seq % RECORDS as u64) as usize * RECORD
}

/// The records with sequence numbers `from..to` (at most a ring's worth).
fn records(journal: &[u8], from: u64, to: u64) -> Vec<(u64, u32)> {
    (from..to)
        .filter_map(|seq| {
            let at = slot_at(seq);
            let slot = journal.get(at..at + RECORD)?;
            let h = u64::from_le_bytes(slot.get(..8)?.try_into().ok()?);
            let pod = u32::from_le_bytes(slot.get(8..12)?.try_into().ok()?);
            Some((h, pod))
        })
        .collect()
}

// Placements. A tick is long enough for two workers to place the same new prefix (a system
// prompt's first conversations, arriving in one burst) on two pods, whose caches then both hold
// it and whose conversations drift between them with the load (bench/QUALITY.md, item 4). So a
// worker that places a new prompt (its index knows less than [`NEW_PROMPT_KNOWN`] of its
// blocks: a one-off, or a new system prompt, whatever opening it shares with others) publishes
// the placement at once, in a placement record (the prompt's block hashes and the pod) keyed
// by the prompt's first block the index does not know; a worker about to place a new prompt
// first reads the record under that block. Prompts mostly known (a conversation's next turn)
// cost nothing; a new one, one read, and one write when no record answered.

/// A prompt is new when its index knows less than this share of its blocks (half: the
/// block in the middle says, one lookup, since a prompt's blocks are learned together).
pub const NEW_PROMPT_KNOWN: f64 = 0.5;
/// Keys the placement records of one server are spread over (reused, so bounded: the records
/// of one server take at most this many keys, whatever its pod lists were).
pub const PLACEMENT_SLOTS: u64 = 64;
/// Blocks a placement record carries at most (8 bytes each).
pub const PLACEMENT_MAX_BLOCKS: usize = 256;
/// After this the journal has shared the placement: the record is ignored.
pub const PLACEMENT_FRESH_MS: u64 = 1_000;
const PLACEMENT_HEADER: usize = 16;

/// The leading blocks of `hashes` the index knows, when that makes the prompt new
/// ([`NEW_PROMPT_KNOWN`]); None for a prompt mostly known.
pub fn new_prompt_known_blocks(index: &PrefixIndex, hashes: &[u64]) -> Option<usize> {
    // Chained hashes: knowing a block means knowing every block before it. So whether half
    // is known is one lookup, and only a new prompt is walked (at most half its blocks).
    let half = (NEW_PROMPT_KNOWN * hashes.len() as f64).ceil() as usize;
    if index.knows(*hashes.get(half.checked_sub(1)?)?) {
        return None;
    }
    Some(hashes.iter().take_while(|h| index.knows(**h)).count())
}

/// The leading blocks of `hashes` the index knows, when the prompt starts a new branch there:
/// what it knows ends at a block earlier prompts went on from in different ways (a shared
/// system prompt, before a new conversation). With prefix-cache's `boundedLoad` such a prompt
/// may be placed away from the pods holding that prefix, so its placement is published as a
/// new prompt's is; and a conversation's next turn reaching a worker that has not yet heard
/// of its first looks the same, and finds that record. None otherwise.
pub fn new_branch_known_blocks(index: &PrefixIndex, hashes: &[u64]) -> Option<usize> {
    // Chained hashes: knowing a block means knowing those before it, so the known length is
    // a binary search (seven lookups for 128 blocks), not a walk. Nothing known is a new
    // prompt ([`new_prompt_known_blocks`]), not a branch.
    let known = hashes.partition_point(|h| index.knows(*h));
    (known > 0 && index.starts_branch(hashes, known)).then_some(known)
}

/// The key of the placement record for prompts whose first block unknown to the index has
/// the chained hash `block`, among the records of the server with Envoy cluster `cluster`
/// (records of distinct prompts may share a key: the newest wins).
pub fn placement_key(cluster: &str, block: u64) -> String {
    format!("modelroute.placed.{cluster}.{}", block % PLACEMENT_SLOTS)
}

/// Where the gateways' shared store keeps a placement: its record's key (the whole block
/// hash: the store is not bounded by slots; the record still says which prompt it is for),
/// and the key of the prompt blocks placed on each of the server's pods (by pod list: a new
/// list starts afresh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedKeys {
    pub record: String,
    pub placed_blocks: String,
}

pub fn shared_placement_keys(cluster: &str, pod_list: u32, block: u64) -> SharedKeys {
    SharedKeys {
        record: format!("{RECORD_KEY_PREFIX}{cluster}:{block:016x}"),
        placed_blocks: format!("{PLACED_BLOCKS_KEY_PREFIX}{cluster}:{pod_list:08x}"),
    }
}

/// The placement record of a prompt with block hashes `hashes` on `pod` of the pod list
/// `pod_list` (an id of the server's endpoint list), at `now_ms`:
/// `at_ms (u64) | pod (u32) | pod_list (u32) | hashes (u64 each)`.
pub fn encode_placement(hashes: &[u64], pod: u32, pod_list: u32, now_ms: u64) -> Vec<u8> {
    let hashes = hashes.get(..PLACEMENT_MAX_BLOCKS).unwrap_or(hashes);
    let mut out = Vec::with_capacity(PLACEMENT_HEADER + hashes.len() * 8);
    out.extend(now_ms.to_le_bytes());
    out.extend(pod.to_le_bytes());
    out.extend(pod_list.to_le_bytes());
    for h in hashes {
        out.extend(h.to_le_bytes());
    }
    out
}

/// The (pod, block hashes) a record holds for a prompt with block hashes `hashes` whose
/// first `known` blocks the reader's index knows: None unless the record's prompt has the
/// same first `known + 1` blocks (chained hashes: the same block `known`), was placed on this
/// pod list (`pod_list`, `pods` pods) and within [`PLACEMENT_FRESH_MS`] of `now_ms`, and is
/// a record at all.
pub fn decode_placement(
    bytes: &[u8],
    hashes: &[u64],
    known: usize,
    pods: (u32, usize),
    now_ms: u64,
) -> Option<(u32, Vec<u64>)> {
    decode_placement_within(bytes, hashes, known, pods, now_ms, PLACEMENT_FRESH_MS)
}

/// [`decode_placement`] for a record of any age up to `max_age_ms`: the gateways' shared
/// store keeps a prompt family's record for as long as it lives there.
pub fn decode_placement_within(
    bytes: &[u8],
    hashes: &[u64],
    known: usize,
    (pod_list, pods): (u32, usize),
    now_ms: u64,
    max_age_ms: u64,
) -> Option<(u32, Vec<u64>)> {
    let at = read_u64(bytes, 0);
    let pod = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
    let list = u32::from_le_bytes(bytes.get(12..16)?.try_into().ok()?);
    let body = bytes.get(PLACEMENT_HEADER..)?;
    let at_block = known.checked_mul(8)?;
    let block = body.get(at_block..at_block.checked_add(8)?)?;
    if u64::from_le_bytes(block.try_into().ok()?) != *hashes.get(known)?
        || body.len() % 8 != 0
        || body.len() / 8 > PLACEMENT_MAX_BLOCKS
        || now_ms.abs_diff(at) > max_age_ms
        || list != pod_list
        || pod as usize >= pods
    {
        return None;
    }
    let placed = body
        .chunks_exact(8)
        .filter_map(|c| c.try_into().ok().map(u64::from_le_bytes))
        .collect();
    Some((pod, placed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::fake::FakeHost;
    use crate::prefix::block_hashes;

    #[test]
    fn a_record_too_short_to_hold_the_readers_block_is_no_record() {
        // Found by the `placement` fuzz target: a record of one block, read by a prompt whose
        // index knows two blocks and whose third block hashes to 0 (what a missing block read
        // as), was taken for that prompt's.
        let record = encode_placement(&[5], 1, 7, 1_000);
        assert_eq!(
            decode_placement(&record, &[5, 6, 0], 2, (7, 4), 1_000),
            None
        );
        let whole = encode_placement(&[5, 6, 0], 1, 7, 1_000);
        assert_eq!(
            decode_placement(&whole, &[5, 6, 0], 2, (7, 4), 1_000),
            Some((1, vec![5, 6, 0]))
        );
    }

    #[test]
    fn what_one_worker_learns_the_other_knows_after_a_tick() {
        let mut host = FakeHost::default();
        let key = key_of("modelroute.inflight.00aa");
        assert_eq!(key, "modelroute.prefix.00aa");
        let (mut a, mut b) = (
            PrefixIndex::with_key(1000, 1),
            PrefixIndex::with_key(1000, 2),
        );
        let (mut seen_a, mut seen_b) = (0, 0);
        let conversation = block_hashes("m", &[b'x'; 640], 64, 128);
        a.insert(&conversation, 3);
        assert_eq!(b.matches(&conversation, &[3]), [0]);
        // The first sync makes the journal with the news.
        assert!(sync(&mut host, &key, &mut a, &mut seen_a));
        assert!(sync(&mut host, &key, &mut b, &mut seen_b));
        assert_eq!(
            b.matches(&conversation, &[3]),
            [10],
            "b learned a's ten blocks"
        );
        // Nothing new: nothing written again; b's own news reaches a.
        let longer = block_hashes("m", &[b'x'; 768], 64, 128);
        b.insert(&longer, 3);
        assert!(sync(&mut host, &key, &mut b, &mut seen_b));
        assert!(sync(&mut host, &key, &mut a, &mut seen_a));
        assert_eq!(
            a.matches(&longer, &[3]),
            [12],
            "only the two new blocks were sent"
        );
        assert_eq!(seen_a, 12);
        // Nothing new anywhere: a sync reads the 8-byte sequence number, not the ring.
        host.shared_gets.borrow_mut().clear();
        assert!(sync(&mut host, &key, &mut a, &mut seen_a));
        assert_eq!(*host.shared_gets.borrow(), [format!("{key}.seq")]);
    }

    #[test]
    fn two_workers_making_the_journal_at_once_both_keep_their_news() {
        let key = "modelroute.prefix.2".to_string();
        let (mut a, mut b) = (
            PrefixIndex::with_key(1000, 1),
            PrefixIndex::with_key(1000, 2),
        );
        let (mut seen_a, mut seen_b) = (0, 0);
        let (from_a, from_b) = (
            block_hashes("m", &[b'a'; 640], 64, 128),
            block_hashes("m", &[b'b'; 640], 64, 128),
        );
        a.insert(&from_a, 1);
        b.insert(&from_b, 2);
        // Both find no journal in one tick; a's (with its news) lands between b's read and
        // b's write, which must not land over it.
        let mut made_by_a = FakeHost::default();
        assert!(sync(&mut made_by_a, &key, &mut a, &mut seen_a));
        let mut host = FakeHost {
            racing_write: Some((key.clone(), made_by_a.shared[&key].0.clone())),
            ..FakeHost::default()
        };
        assert!(sync(&mut host, &key, &mut b, &mut seen_b));
        for _ in 0..2 {
            sync(&mut host, &key, &mut a, &mut seen_a);
            sync(&mut host, &key, &mut b, &mut seen_b);
        }
        assert_eq!(b.matches(&from_a, &[1]), [10], "b learned a's news");
        assert_eq!(a.matches(&from_b, &[2]), [10], "a learned b's news");
    }

    #[test]
    fn a_worker_a_ring_behind_skips_what_was_overwritten() {
        let mut host = FakeHost::default();
        let key = "modelroute.prefix.1";
        let mut writer = PrefixIndex::with_key(100_000, 1);
        let mut seen_w = 0;
        let mut late = PrefixIndex::with_key(100_000, 2);
        let mut seen_l = 0;
        for round in 0..3u8 {
            let hashes = block_hashes("m", &[round; 64 * 2000], 64, 2000);
            writer.insert(&hashes, 1);
            assert!(sync(&mut host, key, &mut writer, &mut seen_w));
        }
        assert_eq!(seen_w, 6000);
        sync(&mut host, key, &mut late, &mut seen_l);
        assert_eq!(seen_l, 6000);
        // The last RECORDS records were kept: the third round's 2,000 and 2,096 of the second.
        let third = block_hashes("m", &[2u8; 64 * 2000], 64, 2000);
        assert_eq!(late.matches(&third, &[1]), [2000]);
        assert_eq!(late.len(), RECORDS);
    }

    #[test]
    fn a_garbled_journal_is_read_as_empty_not_a_panic() {
        let mut host = FakeHost::default();
        host.shared.insert("k".into(), (vec![0xff; 20], 1));
        let mut index = PrefixIndex::with_key(100, 1);
        index.insert(&block_hashes("m", b"news", 64, 8), 0);
        let mut seen = 0;
        assert!(sync(&mut host, "k", &mut index, &mut seen));
        assert!(index.len() <= 100);
    }

    #[test]
    fn a_placement_record_answers_prompts_that_share_its_blocks_up_to_the_first_unknown_one() {
        // Two prompts with a common opening (three blocks every index knows), then apart.
        let opening = [b'o'; 192];
        let prompt = |tail: u8| [&opening[..], &[tail; 448]].concat();
        let (a, b) = (
            block_hashes("m", &prompt(b'a'), 64, 128),
            block_hashes("m", &prompt(b'b'), 64, 128),
        );
        let record = encode_placement(&a, 2, 7, 10_000);
        let read = |hashes: &[u64], known, list, pods, now| {
            decode_placement(&record, hashes, known, (list, pods), now)
        };
        assert_eq!(read(&a, 0, 7, 4, 10_500), Some((2, a.clone())));
        assert_eq!(
            read(&a, 3, 7, 4, 9_500),
            Some((2, a.clone())),
            "known up to the opening"
        );
        assert_eq!(
            read(&b, 3, 7, 4, 10_500),
            None,
            "another prompt from block 3 on"
        );
        assert_eq!(read(&a, 3, 8, 4, 10_500), None, "another pod list");
        assert_eq!(read(&a, 3, 7, 2, 10_500), None, "no such pod");
        let late = 10_000 + PLACEMENT_FRESH_MS + 1;
        assert_eq!(read(&a, 3, 7, 4, late), None, "the journal has it by now");
        assert_eq!(
            read(&a, 3, 7, 4, 10_000 - PLACEMENT_FRESH_MS - 1),
            None,
            "the clock stepped back"
        );
        assert_eq!(read(&a, a.len(), 7, 4, 10_500), None, "nothing unknown");
        let long = block_hashes("m", &[b'y'; 64 * 400], 64, 400);
        let capped = decode_placement(&encode_placement(&long, 0, 0, 0), &long, 0, (0, 1), 0);
        assert_eq!(capped.map(|(_, h)| h.len()), Some(PLACEMENT_MAX_BLOCKS));
        for garbled in [&record[..20], &record[..3], &[][..], &[0xff; 17][..]] {
            assert_eq!(decode_placement(garbled, &a, 0, (7, 4), 10_500), None);
        }
    }

    #[test]
    fn a_prompt_is_new_while_its_index_knows_less_than_half_of_it() {
        let mut index = PrefixIndex::with_key(1_000, 1);
        let old = block_hashes("m", &[b's'; 640], 64, 128);
        index.insert(&old, 0);
        let longer = block_hashes("m", &[b's'; 64 * 12], 64, 128);
        assert_eq!(
            new_prompt_known_blocks(&index, &longer),
            None,
            "10 of 12 known"
        );
        let other = block_hashes(
            "m",
            &[[b's'; 128].as_slice(), &[b'x'; 512]].concat(),
            64,
            128,
        );
        assert_eq!(new_prompt_known_blocks(&index, &other), Some(2));
        assert_eq!(
            new_prompt_known_blocks(&index, &block_hashes("m", b"fresh", 64, 8)),
            Some(0)
        );
    }
}

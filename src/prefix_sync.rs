//! The prefix indexes of Envoy's workers, kept in step: each worker's index learns only from
//! the requests it routes, so a conversation whose earlier turns went through one worker would
//! be unknown to another (measured: a third of the prefix-cache hits lost with two workers,
//! bench/QUALITY.md). On each root tick every worker appends what its index learned since
//! (block hash, pod) to a journal in shared data, one per ModelServer, and applies what the
//! others appended: the indexes agree within a tick, with no shared-data access on the
//! request path.
//!
//! The journal is a ring of [`RECORDS`] records behind a sequence number: `next_seq (u64) |
//! RECORDS x (block hash u64, pod u32, 0u32)`, record `seq` at slot `seq % RECORDS`. A worker
//! that fell more than a ring behind skips what was overwritten (its index just knows less).
//!
//! One thing cannot wait for a tick: where a prompt no index knew was placed. Those
//! placements are also published at once, as placement records ([`encode_placement`] under
//! [`placement_key`]), and read before placing a prompt the reader's index does not know.

use crate::host::Host;
use crate::prefix::PrefixIndex;

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
        let (bytes, cas) = host.shared_get(key);
        let mut journal = bytes.unwrap_or_default();
        journal.resize(HEADER + RECORDS * RECORD, 0);
        let next = read_u64(&journal, 0);
        index.insert_shared(&records(
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
// worker that places a prompt its index has never seen publishes the placement at once, in a
// small record of its own (the prompt's block hashes and the pod), and a worker about to place
// a prompt it has never seen first reads the record under that prompt's first block. Prompts
// the index knows cost nothing; a new one, one read and one write.

/// Keys the placement records of one journal are spread over.
pub const PLACEMENT_SLOTS: u64 = 256;
/// Blocks a placement record carries at most (8 bytes each).
pub const PLACEMENT_MAX_BLOCKS: usize = 256;
/// After this the journal has shared the placement: the record is ignored.
pub const PLACEMENT_FRESH_MS: u64 = 1_000;
const PLACEMENT_HEADER: usize = 16;

/// The key of the placement record for prompts whose first block hash is `first`, in the
/// journal `journal` (records of distinct prompts may share a key: the newest wins).
pub fn placement_key(journal: &str, first: u64) -> String {
    format!("{journal}.placed.{}", first % PLACEMENT_SLOTS)
}

/// The placement record of a prompt with block hashes `hashes` on `pod`, at `now_ms`:
/// `at_ms (u64) | pod (u32) | 0u32 | hashes (u64 each)`.
pub fn encode_placement(hashes: &[u64], pod: u32, now_ms: u64) -> Vec<u8> {
    let hashes = hashes.get(..PLACEMENT_MAX_BLOCKS).unwrap_or(hashes);
    let mut out = Vec::with_capacity(PLACEMENT_HEADER + hashes.len() * 8);
    out.extend(now_ms.to_le_bytes());
    out.extend(pod.to_le_bytes());
    out.extend([0; 4]);
    for h in hashes {
        out.extend(h.to_le_bytes());
    }
    out
}

/// The (pod, block hashes) a record holds for a prompt whose first block hash is `first`:
/// None when the record is another prompt's, older than [`PLACEMENT_FRESH_MS`], names a pod at or
/// beyond `pods`, or is not a record.
pub fn decode_placement(
    bytes: &[u8],
    first: u64,
    pods: usize,
    now_ms: u64,
) -> Option<(u32, Vec<u64>)> {
    let at = read_u64(bytes, 0);
    let pod = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
    let body = bytes.get(PLACEMENT_HEADER..)?;
    if read_u64(body, 0) != first
        || body.len() % 8 != 0
        || now_ms.saturating_sub(at) > PLACEMENT_FRESH_MS
        || pod as usize >= pods
    {
        return None;
    }
    let hashes = body
        .chunks_exact(8)
        .take(PLACEMENT_MAX_BLOCKS)
        .filter_map(|c| c.try_into().ok().map(u64::from_le_bytes))
        .collect();
    Some((pod, hashes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::fake::FakeHost;
    use crate::prefix::block_hashes;

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
    fn a_placement_record_is_read_back_only_for_its_prompt_while_fresh() {
        let hashes = block_hashes("m", &[b'x'; 640], 64, 128);
        let record = encode_placement(&hashes, 2, 10_000);
        assert_eq!(
            decode_placement(&record, hashes[0], 4, 10_500),
            Some((2, hashes.clone()))
        );
        assert_eq!(
            decode_placement(&record, hashes[0] ^ 1, 4, 10_500),
            None,
            "another prompt"
        );
        assert_eq!(
            decode_placement(&record, hashes[0], 4, 10_000 + PLACEMENT_FRESH_MS + 1),
            None,
            "the journal has it by now"
        );
        assert_eq!(
            decode_placement(&record, hashes[0], 2, 10_500),
            None,
            "no such pod"
        );
        let long = block_hashes("m", &[b'y'; 64 * 400], 64, 400);
        let capped = decode_placement(&encode_placement(&long, 0, 0), long[0], 1, 0).unwrap();
        assert_eq!(capped.1.len(), PLACEMENT_MAX_BLOCKS);
        for garbled in [&record[..20], &record[..3], &[][..], &[0xff; 17][..]] {
            assert_eq!(decode_placement(garbled, hashes[0], 4, 10_500), None);
        }
    }
}

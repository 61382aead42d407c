//! A simulated engine, for the routing-quality benchmark: a prefix KV cache of bounded size
//! (blocks of the prompt's text, chained hashes, least recently used evicted first), and the
//! time a request takes from it: prefill proportional to the blocks not in the cache, decode
//! per output token. Queueing comes from the pod's batch limit (`--max-running`). Pure: the
//! server sleeps for what [`KvCache::admit`] and [`SimSettings`] say.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

/// Characters per KV block (about 16 tokens at 4 characters a token, vLLM's block size).
pub const BLOCK_CHARS: usize = 64;

/// `--sim-kv-blocks`, `--sim-prefill-us-per-block`, `--sim-decode-ms-per-token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimSettings {
    pub kv_blocks: u32,
    pub prefill_us_per_block: u32,
    pub decode_ms_per_token: u32,
}

impl SimSettings {
    /// Prefill time for `uncached` blocks, microseconds.
    pub fn prefill_us(&self, uncached: usize) -> u64 {
        u64::from(self.prefill_us_per_block).saturating_mul(uncached as u64)
    }
}

/// The pod's prefix cache: block hash -> last use, and the reverse for eviction.
#[derive(Debug, Default)]
pub struct KvCache {
    capacity: usize,
    last_use: HashMap<u64, u64>,
    by_use: BTreeMap<u64, u64>,
    clock: u64,
    /// Blocks looked up and found, since start.
    pub queries: u64,
    pub hits: u64,
}

impl KvCache {
    pub fn new(capacity: u32) -> KvCache {
        KvCache {
            capacity: capacity.max(1) as usize,
            ..KvCache::default()
        }
    }

    /// A prompt arrives: how many of its leading blocks are cached (a block counts only if
    /// every block before it is, as in vLLM's prefix caching), and how many it has. Its blocks
    /// are then in the cache, most recently used; the least recently used go beyond capacity.
    pub fn admit(&mut self, prompt: &[u8]) -> (usize, usize) {
        let hashes = block_hashes(prompt);
        let cached = hashes
            .iter()
            .take_while(|h| self.last_use.contains_key(h))
            .count();
        self.queries += hashes.len() as u64;
        self.hits += cached as u64;
        for h in &hashes {
            self.clock += 1;
            if let Some(old) = self.last_use.insert(*h, self.clock) {
                self.by_use.remove(&old);
            }
            self.by_use.insert(self.clock, *h);
        }
        while self.last_use.len() > self.capacity {
            let Some((_, h)) = self.by_use.pop_first() else {
                break;
            };
            self.last_use.remove(&h);
        }
        (cached, hashes.len())
    }

    /// KV-cache usage, 0..1.
    pub fn usage(&self) -> f64 {
        self.last_use.len() as f64 / self.capacity as f64
    }
}

/// Chained hashes of the prompt's blocks (a partial last block counts as one).
fn block_hashes(prompt: &[u8]) -> Vec<u64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    prompt
        .chunks(BLOCK_CHARS)
        .map(|block| {
            for b in block {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            h
        })
        .collect()
}

/// The text an engine would prefill for a request: chat messages as `role\ncontent\n`, or
/// the completion prompt.
pub fn prompt_text(body: &Value) -> String {
    if let Some(Value::Array(messages)) = body.get("messages") {
        let mut out = String::new();
        for m in messages {
            out.push_str(m.get("role").and_then(Value::as_str).unwrap_or(""));
            out.push('\n');
            match m.get("content") {
                Some(Value::String(s)) => out.push_str(s),
                Some(Value::Array(parts)) => {
                    for p in parts {
                        out.push_str(p.get("text").and_then(Value::as_str).unwrap_or(""));
                    }
                }
                _ => {}
            }
            out.push('\n');
        }
        return out;
    }
    match body.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_prefix_is_a_hit_and_the_least_recently_used_is_evicted() {
        let mut kv = KvCache::new(7);
        let system = "s".repeat(4 * BLOCK_CHARS);
        let a = format!("{system}{}", "a".repeat(2 * BLOCK_CHARS));
        let b = format!("{system}{}", "b".repeat(2 * BLOCK_CHARS));
        assert_eq!(kv.admit(a.as_bytes()), (0, 6));
        // Same system prompt: its four blocks are cached, the rest is new.
        assert_eq!(kv.admit(b.as_bytes()), (4, 6));
        assert_eq!((kv.hits, kv.queries), (4, 12));
        // 7 blocks of room: a's first own block was used least recently and is gone.
        assert_eq!(kv.usage(), 1.0);
        assert_eq!(kv.admit(a.as_bytes()), (4, 6));
        // A block counts only behind a cached prefix.
        let other = format!("x{}", &a[1..]);
        assert_eq!(kv.admit(other.as_bytes()).0, 0);
    }

    #[test]
    fn prefill_grows_with_the_uncached_blocks() {
        let s = SimSettings {
            kv_blocks: 10,
            prefill_us_per_block: 500,
            decode_ms_per_token: 10,
        };
        assert_eq!(s.prefill_us(0), 0);
        assert_eq!(s.prefill_us(8), 4_000);
    }

    #[test]
    fn the_prompt_is_what_an_engine_would_prefill() {
        let chat = serde_json::json!({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        assert_eq!(prompt_text(&chat), "system\nbe brief\nuser\nhi\n");
        assert_eq!(prompt_text(&serde_json::json!({"prompt": "abc"})), "abc");
    }
}

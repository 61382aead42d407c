//! The store of placements shared by gateways ([`filter_config::placement_store`]): a
//! record per key in Redis, read, or written unless one placed on the same pod list is
//! there. Records are opaque here but for the bytes naming their pod list; they travel to
//! Redis hex-encoded (the script's arguments are text).

use std::time::Duration;

use filter_config::placement_store as contract;

use crate::redis::{Clients, Reply};

/// GET the record (a record read lives on: its time to live starts again); with one to
/// write, keep the one there if it was placed on the same pod list (bytes 12..16, hex
/// characters 25..32 in Lua's 1-based strings), else SET it with its time to live and count
/// its prompt's blocks on its pod (bytes 8..12, little-endian) in the server's placed blocks
/// (KEYS[2]): a family's long system prompt weighs more than a one-off question. Returns the
/// record kept (or '') and the placed blocks, pod and count by turns.
const SCRIPT: &str = r#"
local old = redis.call('GET', KEYS[1])
if old then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
local kept = old
if ARGV[1] ~= '' and not (old and string.sub(old, 25, 32) == string.sub(ARGV[1], 25, 32)) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  local h = ARGV[1]
  local pod = tonumber(string.sub(h, 23, 24) .. string.sub(h, 21, 22) .. string.sub(h, 19, 20) .. string.sub(h, 17, 18), 16)
  redis.call('HINCRBY', KEYS[2], tostring(pod), math.floor((string.len(h) / 2 - 16) / 8))
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  kept = ARGV[1]
end
return {kept or '', redis.call('HGETALL', KEYS[2])}
"#;

/// The store's state: a client per Redis address.
pub struct Placements {
    clients: Clients,
}

impl Placements {
    pub fn new(redis_override: Option<String>, timeout: Duration) -> Placements {
        Placements {
            clients: Clients::new(SCRIPT, timeout, redis_override),
        }
    }

    /// Reads the record under `key` (`record` empty) or writes `record` with `ttl_s`; the
    /// record kept and the blocks placed per pod under `placed_blocks`. None when Redis did not answer
    /// (the gateway then places the prompt on its own).
    pub async fn call(
        &self,
        redis: &str,
        key: &str,
        placed_blocks: &str,
        record: &[u8],
        ttl_s: u64,
    ) -> Option<contract::Answer> {
        if record.len() > contract::MAX_RECORD
            || (!record.is_empty() && record.len() < contract::POD_LIST_BYTES.end)
        {
            return None;
        }
        let addr = self.clients.address(redis);
        let client = self.clients.get(redis).await?;
        let args = [hex(record), ttl_s.max(1).to_string()];
        match client.eval(&[key, placed_blocks], &args).await {
            Ok(Reply::Array(reply)) => answer(&reply),
            Ok(other) => {
                log::warn!("modelroute-ratelimit: placement {key}: unexpected reply {other:?}");
                None
            }
            Err(e) => {
                log::warn!("modelroute-ratelimit: Redis {addr}: placement {key}: {e}");
                None
            }
        }
    }
}

/// The script's reply as the filter reads it.
fn answer(reply: &[Reply]) -> Option<contract::Answer> {
    let [Reply::Bulk(kept), Reply::Array(fields)] = reply else {
        return None;
    };
    let record = kept.as_deref().and_then(unhex).unwrap_or_default();
    let mut placed_blocks = Vec::new();
    for pair in fields.chunks_exact(2) {
        let (Reply::Bulk(Some(pod)), Reply::Bulk(Some(count))) = (&pair[0], &pair[1]) else {
            continue;
        };
        let number = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<u64>().ok();
        let (Some(pod), Some(count)) = (number(pod), number(count)) else {
            continue;
        };
        let Ok(pod) = usize::try_from(pod) else {
            continue;
        };
        if pod < contract::MAX_PODS {
            if placed_blocks.len() <= pod {
                placed_blocks.resize(pod + 1, 0);
            }
            placed_blocks[pod] = u32::try_from(count).unwrap_or(u32::MAX);
        }
    }
    Some(contract::Answer {
        record,
        placed_blocks,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks_exact(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_travel_hex_encoded_and_the_pod_list_is_where_the_script_reads_it() {
        let record: Vec<u8> = (0u8..40).collect();
        assert_eq!(unhex(hex(&record).as_bytes()), Some(record.clone()));
        assert_eq!(unhex(b"0g"), None);
        assert_eq!(unhex(b"abc"), None);
        // The script compares hex characters 25..32 (1-based): bytes 12..16.
        let h = hex(&record);
        let range = contract::POD_LIST_BYTES;
        assert_eq!(&h[24..32], hex(&record[range]));
    }
}

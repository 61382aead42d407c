//! The store of placements shared by gateways ([`filter_config::placement_store`]): a
//! record per key in Redis, read, or written unless one placed on the same pod list is
//! there. Records are opaque here but for the bytes naming their pod list; they travel to
//! Redis hex-encoded (the script's arguments are text).

use std::time::Duration;

use filter_config::placement_store as contract;

use crate::redis::{Clients, Reply};

/// GET the record (a record read lives on: its time to live starts again); with one to
/// write, keep the one there if it was placed on the same pod list (bytes 12..16, hex
/// characters 25..32 in Lua's 1-based strings), else SET it with its time to live. Returns
/// the record kept, or nil.
const SCRIPT: &str = r#"
local old = redis.call('GET', KEYS[1])
if old then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if ARGV[1] == '' then return old end
if old and string.sub(old, 25, 32) == string.sub(ARGV[1], 25, 32) then return old end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
"#;

/// The store's state: a client per Redis address.
pub struct Placements {
    /// Every record's Redis, whatever the call names (`--redis`).
    redis_override: Option<String>,
    clients: Clients,
}

impl Placements {
    pub fn new(redis_override: Option<String>, timeout: Duration) -> Placements {
        Placements {
            redis_override,
            clients: Clients::new(SCRIPT, timeout),
        }
    }

    /// Reads the record under `key` (`record` empty) or writes `record` with `ttl_s`; the
    /// record kept, empty when none or Redis did not answer (the gateway then places the
    /// prompt on its own).
    pub async fn call(&self, redis: &str, key: &str, record: &[u8], ttl_s: u64) -> Vec<u8> {
        if record.len() > contract::MAX_RECORD
            || (!record.is_empty() && record.len() < contract::POD_LIST_BYTES.end)
        {
            return Vec::new();
        }
        let addr = self.redis_override.as_deref().unwrap_or(redis);
        let Some(client) = self.clients.get(addr).await else {
            return Vec::new();
        };
        let args = [hex(record), ttl_s.max(1).to_string()];
        match client.eval(&[key], &args).await {
            Ok(Reply::Bulk(Some(kept))) => unhex(&kept).unwrap_or_default(),
            Ok(_) => Vec::new(),
            Err(e) => {
                log::warn!("modelroute-ratelimit: Redis {addr}: placement {key}: {e}");
                Vec::new()
            }
        }
    }
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

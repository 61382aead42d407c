//! Sticky sessions' bindings shared by gateways ([`filter_config::placement_store::SESSION_PATH`]):
//! a pod address per session key in Redis, read, or written with its time to live.

use std::time::Duration;

use filter_config::placement_store as contract;

use crate::redis::{Clients, Reply};

/// With an address to bind (ARGV[1]), SET it with its time to live (ARGV[2], seconds); else
/// GET the binding, whose time to live starts again (a gateway reads a live session's binding
/// about once a second, and writes only when it moves). Returns the address bound ('' for
/// none).
const SCRIPT: &str = r#"
if ARGV[1] ~= '' then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return ARGV[1]
end
local bound = redis.call('GET', KEYS[1])
if bound then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return bound or ''
"#;

/// The bindings' state: a client per Redis address.
pub struct Sessions {
    /// Every binding's Redis, whatever the call names (`--redis`).
    redis_override: Option<String>,
    clients: Clients,
}

impl Sessions {
    pub fn new(redis_override: Option<String>, timeout: Duration) -> Sessions {
        Sessions {
            redis_override,
            clients: Clients::new(SCRIPT, timeout),
        }
    }

    /// Reads the binding under `key` (`pod` empty) or binds it to `pod` for `ttl_s`; the
    /// address bound after the call (empty: none). None when Redis did not answer, or `pod`
    /// is no address.
    pub async fn call(&self, redis: &str, key: &str, pod: &[u8], ttl_s: u64) -> Option<Vec<u8>> {
        let pod = std::str::from_utf8(pod).ok()?;
        if pod.len() > contract::MAX_SESSION_POD || pod.bytes().any(|b| b.is_ascii_whitespace()) {
            return None;
        }
        let addr = self.redis_override.as_deref().unwrap_or(redis);
        let client = self.clients.get(addr).await?;
        let args = [pod.to_string(), ttl_s.max(1).to_string()];
        match client.eval(&[key], &args).await {
            Ok(Reply::Bulk(bound)) => Some(bound.unwrap_or_default()),
            Ok(other) => {
                log::warn!("modelroute-ratelimit: session {key}: unexpected reply {other:?}");
                None
            }
            Err(e) => {
                log::warn!("modelroute-ratelimit: Redis {addr}: session {key}: {e}");
                None
            }
        }
    }
}

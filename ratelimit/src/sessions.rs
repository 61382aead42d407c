//! Sticky sessions' bindings shared by gateways ([`filter_config::placement_store::SESSION_PATH`]):
//! a pod address per session key in Redis, read, or written with its time to live.

use std::time::Duration;

use filter_config::placement_store as contract;

use crate::redis::{Clients, Reply};

/// With an address to bind (ARGV[1]), SET it with its time to live (ARGV[2], seconds)
/// unconditionally (ARGV[3] '0') or only if the session is unbound or bound to ARGV[4]
/// (compare-and-set); else, or with no address, the binding's time to live starts again (a
/// gateway reads or claims a live session's binding about once a second, and moves it
/// rarely). Returns the address bound after the call ('' for none).
const SCRIPT: &str = r#"
local bound = redis.call('GET', KEYS[1])
if ARGV[1] ~= '' and (ARGV[3] == '0' or not bound or bound == ARGV[4]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return ARGV[1]
end
if bound then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return bound or ''
"#;

/// The bindings' state: a client per Redis address.
pub struct Sessions {
    clients: Clients,
}

impl Sessions {
    pub fn new(redis_override: Option<String>, timeout: Duration) -> Sessions {
        Sessions {
            clients: Clients::new(SCRIPT, timeout, redis_override),
        }
    }

    /// Reads the binding under `key` (`pod` empty) or binds it to `pod` for `ttl_s`: with
    /// `expect`, only if unbound or bound to `expect` (an empty `expect`: only if unbound).
    /// The address bound after the call (empty: none). None when Redis did not answer, or
    /// `pod` or `expect` is no address.
    pub async fn call(
        &self,
        redis: &str,
        key: &str,
        pod: &[u8],
        expect: Option<&str>,
        ttl_s: u64,
    ) -> Option<Vec<u8>> {
        let pod = std::str::from_utf8(pod).ok()?;
        let address = |a: &str| {
            a.len() <= contract::MAX_SESSION_POD && !a.bytes().any(|b| b.is_ascii_whitespace())
        };
        if !address(pod) || !expect.is_none_or(address) {
            return None;
        }
        let addr = self.clients.address(redis);
        let client = self.clients.get(redis).await?;
        let args = [
            pod.to_string(),
            ttl_s.max(1).to_string(),
            if expect.is_some() { "1" } else { "0" }.to_string(),
            expect.unwrap_or_default().to_string(),
        ];
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use test_support::RedisServer;

    const KEY: &str = "modelroute:session:default/chat:00000000000000aa";

    #[tokio::test]
    async fn a_claim_binds_a_free_session_and_learns_a_bound_one_and_a_move_replaces_only_what_it_saw(
    ) {
        let redis = RedisServer::start();
        let sessions = Sessions::new(None, Duration::from_secs(2));
        let call = |pod: &'static str, expect: Option<&'static str>, ttl_s: u64| {
            let (sessions, addr) = (&sessions, redis.addr());
            async move {
                let bound = sessions
                    .call(&addr, KEY, pod.as_bytes(), expect, ttl_s)
                    .await;
                String::from_utf8(bound.unwrap()).unwrap()
            }
        };
        // (pod sent, binding expected, address bound after the call, why), in turn:
        let (p1, p2, p3, p4, p9) = (
            "10.0.0.1:80",
            "10.0.0.2:80",
            "10.0.0.3:80",
            "10.0.0.4:80",
            "10.0.0.9:80",
        );
        let steps = [
            ("", None, "", "a read of a free session"),
            (p1, Some(p1), p1, "a claim binds a free session"),
            (p2, Some(p2), p1, "a second claim learns the first"),
            (
                p2,
                Some(""),
                p1,
                "an empty expectation binds only a free session",
            ),
            (
                p3,
                Some(p9),
                p1,
                "a move off a pod no longer bound keeps the binding",
            ),
            (p3, Some(p1), p3, "a move off the pod bound replaces it"),
            ("", None, p3, "a read"),
            (
                p4,
                None,
                p4,
                "a write without expectation (older filters) is unconditional",
            ),
        ];
        for (pod, expect, bound, why) in steps {
            assert_eq!(call(pod, expect, 30).await, bound, "{why}");
        }
        // Every call renews the binding for the time to live it names.
        assert_eq!(call("10.0.0.5:80", Some("10.0.0.5:80"), 7).await, p4);
        let ttl: u64 = redis.cli(&["TTL", KEY]).parse().unwrap();
        assert!((1..=7).contains(&ttl), "{ttl}");
        // Not an address: refused before Redis.
        let odd = sessions
            .call(&redis.addr(), KEY, b"10.0.0.6:80", Some("a b"), 7)
            .await;
        assert_eq!(odd, None);
    }
}

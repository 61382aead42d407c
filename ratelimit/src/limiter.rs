//! Kthena's global token buckets, run in Redis: what one `ShouldRateLimit` call asks (the
//! descriptors the filter's published values became), the script that answers it atomically,
//! and the response Envoy turns into the 429.
//!
//! The buckets are Kthena's (`kthena:ratelimit:{model}:{input|output}`, hash fields `tokens`
//! and `last_update`, time from Redis, continuous refill, expiry 3 x unit in [600 s, 90 days]),
//! so Kthena routers pointed at the same Redis share the budget. Unlike Kthena: the output
//! debit goes into deficit (long answers are paid for), and a refused request writes nothing.

use std::time::Duration;

use filter_config::global_rate_limit::{self as contract, Budget};
use modelroute::errors::ErrorReply;
use modelroute::rate_limit::{Direction, Refusal};

use crate::proto::{self, HeaderValue, RateLimitRequest, RateLimitResponse};
use crate::redis::{Clients, Error, Reply};

/// Admission and debit in one script, so every check-and-take is atomic across gateways.
/// KEYS: input bucket, output bucket. ARGV: mode (admit | debit), input limit, output limit
/// (0: none), unit seconds, tokens (admit: the input estimate; debit: completion tokens),
/// expiry seconds. Returns {1} (admitted / debited) or {0, direction, whole tokens left,
/// ms until the request would fit (-1: never, it exceeds the limit)}.
pub const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local mode, in_cap, out_cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local unit, hits, expire = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local function level(key, cap)
  local b = redis.call('HMGET', key, 'tokens', 'last_update')
  local tokens = tonumber(b[1]) or cap
  local last = tonumber(b[2]) or now
  return math.min(cap, tokens + math.max(0, now - last) * cap / unit)
end
local function store(key, tokens)
  redis.call('HSET', key, 'tokens', tostring(tokens), 'last_update', tostring(now))
  redis.call('EXPIRE', key, expire)
end
local function wait_ms(level, need, cap)
  if need > cap then return -1 end
  return math.ceil((need - level) * unit / cap * 1000)
end
if mode == 'debit' then
  if out_cap > 0 and hits > 0 then store(KEYS[2], level(KEYS[2], out_cap) - hits) end
  return {1}
end
if out_cap > 0 then
  local out = level(KEYS[2], out_cap)
  if out < 1 then
    return {0, 'output', math.floor(math.max(out, 0)), wait_ms(out, 1, out_cap)}
  end
end
if in_cap > 0 then
  local level_in = level(KEYS[1], in_cap)
  if level_in < hits then
    return {0, 'input', math.floor(math.max(level_in, 0)), wait_ms(level_in, hits, in_cap)}
  end
  if hits > 0 then store(KEYS[1], level_in - hits) end
end
return {1}
"#;

/// What one descriptor asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Admit,
    Debit,
}

/// The service's state: a client per Redis address.
pub struct Limiter {
    clients: Clients,
}

/// One budget's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Refused(Refusal),
    /// Redis could not answer and the budget says requests are refused then.
    Unavailable(Direction),
}

impl Limiter {
    pub fn new(redis_override: Option<String>, timeout: Duration) -> Limiter {
        Limiter {
            clients: Clients::new(SCRIPT, timeout, redis_override),
        }
    }

    /// Answers one `ShouldRateLimit` call: every descriptor of ours is applied, the first
    /// refusal decides. Descriptors of other keys are ignored (allowed).
    pub async fn should_rate_limit(&self, req: &RateLimitRequest) -> RateLimitResponse {
        let mut refusal = None;
        for d in &req.descriptors {
            let Some((mode, budget)) = d.entries.iter().find_map(|e| {
                let mode = match e.key.as_str() {
                    contract::ADMIT => Mode::Admit,
                    contract::DEBIT => Mode::Debit,
                    _ => return None,
                };
                Some((mode, Budget::parse(&e.value)?))
            }) else {
                continue;
            };
            let hits = d
                .hits_addend
                .map(|h| h.value)
                .unwrap_or(u64::from(req.hits_addend.max(1)));
            let verdict = self.apply(mode, &budget, hits).await;
            if refusal.is_none() && verdict != Verdict::Allowed {
                refusal = Some(verdict);
            }
        }
        match refusal {
            None | Some(Verdict::Allowed) => RateLimitResponse {
                overall_code: proto::OK,
                ..Default::default()
            },
            Some(Verdict::Refused(r)) => over_limit(r.direction, &r.headers()),
            Some(Verdict::Unavailable(direction)) => {
                over_limit(direction, &[("retry-after", "1".to_string())])
            }
        }
    }

    /// Applies `budget` (`hits`: tokens to take or debit).
    pub async fn apply(&self, mode: Mode, budget: &Budget<'_>, hits: u64) -> Verdict {
        if mode == Mode::Debit && (hits == 0 || budget.output_per_unit.is_none()) {
            return Verdict::Allowed;
        }
        let addr = self.clients.address(budget.redis);
        let reply = match self.clients.get(budget.redis).await {
            Some(redis) => {
                let [input, output] = keys(budget);
                redis
                    .eval(&[&input, &output], &args(mode, budget, hits))
                    .await
            }
            None => Err(Error::Protocol("too many Redis addresses")),
        };
        match reply.and_then(|r| verdict(&r, budget)) {
            Ok(v) => v,
            Err(e) => {
                log::warn!("modelroute-ratelimit: Redis {addr}: {e}");
                let direction = if budget.input_per_unit.is_some() {
                    Direction::Input
                } else {
                    Direction::Output
                };
                if budget.deny_on_redis_failure && mode == Mode::Admit {
                    Verdict::Unavailable(direction)
                } else {
                    Verdict::Allowed
                }
            }
        }
    }
}

fn keys(budget: &Budget<'_>) -> [String; 2] {
    [budget.key("input"), budget.key("output")]
}

/// Kthena's key expiry: three units, at least 10 minutes, at most 90 days.
pub fn expiry_seconds(unit_seconds: u64) -> u64 {
    unit_seconds.saturating_mul(3).clamp(600, 90 * 86_400)
}

fn args(mode: Mode, budget: &Budget<'_>, hits: u64) -> Vec<String> {
    vec![
        match mode {
            Mode::Admit => "admit",
            Mode::Debit => "debit",
        }
        .to_string(),
        budget.input_per_unit.unwrap_or(0).to_string(),
        budget.output_per_unit.unwrap_or(0).to_string(),
        budget.unit_seconds.to_string(),
        hits.to_string(),
        expiry_seconds(budget.unit_seconds).to_string(),
    ]
}

/// The script's reply as a verdict.
pub fn verdict(reply: &Reply, budget: &Budget<'_>) -> Result<Verdict, Error> {
    let Reply::Array(items) = reply else {
        return Err(Error::Protocol("script reply"));
    };
    let int = |i: usize| match items.get(i) {
        Some(Reply::Int(n)) => Some(*n),
        _ => None,
    };
    match int(0) {
        Some(1) => Ok(Verdict::Allowed),
        Some(0) => {
            let direction = match items.get(1) {
                Some(Reply::Bulk(Some(d))) if d == b"input" => Direction::Input,
                Some(Reply::Bulk(Some(d))) if d == b"output" => Direction::Output,
                _ => return Err(Error::Protocol("script reply direction")),
            };
            let limit = match direction {
                Direction::Input => budget.input_per_unit,
                Direction::Output => budget.output_per_unit,
            };
            Ok(Verdict::Refused(Refusal {
                direction,
                limit: limit.unwrap_or(0),
                remaining: int(2).and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                retry_after_ms: int(3).and_then(|n| u64::try_from(n).ok()),
            }))
        }
        _ => Err(Error::Protocol("script reply code")),
    }
}

/// The 429 Envoy sends: Kthena's message in the OpenAI shape, the headers SDKs back off by,
/// and [`contract::REFUSED_HEADER`] for the filter's metrics.
fn over_limit(direction: Direction, headers: &[(&str, String)]) -> RateLimitResponse {
    let reply = ErrorReply::rate_limited(direction);
    let mut add = vec![
        ("content-type", "application/json".to_string()),
        (contract::REFUSED_HEADER, direction.limit_type().to_string()),
    ];
    add.extend(headers.iter().map(|(k, v)| (*k, v.clone())));
    RateLimitResponse {
        overall_code: proto::OVER_LIMIT,
        response_headers_to_add: add
            .into_iter()
            .map(|(key, value)| HeaderValue {
                key: key.to_string(),
                value,
            })
            .collect(),
        raw_body: reply.body().into_bytes(),
    }
}

#[cfg(test)]
mod tests;

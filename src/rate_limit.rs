//! Kthena's token rate limits (`ModelRoute.spec.rateLimit`), one budget per Envoy: a token
//! bucket per model and direction (input, output) in Envoy's shared data, so every worker
//! draws from the same budget (compare-and-swap, as [`crate::in_flight`]).
//!
//! Kthena's semantics, with its known flaw fixed: a bucket holds at most `per_unit` tokens
//! and refills continuously at `per_unit / unit` (full at start); the input estimate is taken
//! before routing or the request is refused; output needs at least one token before routing
//! and the engine-reported completion tokens are taken after the answer *even into deficit*,
//! so a burst of long answers is paid for by the requests after it (Kthena's `AllowN` takes
//! nothing when short, so they went uncounted).

use std::collections::HashMap;

use filter_config::RateLimit;

use crate::host::Host;

/// CAS attempts before an update is given up (other workers kept winning).
const MAX_TRIES: usize = 16;

/// Which budget (the discriminant is its slot in the shared value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Input = 0,
    Output = 1,
}

impl Direction {
    /// Kthena's `limit_type` label.
    pub fn limit_type(self) -> &'static str {
        match self {
            Direction::Input => "input_tokens",
            Direction::Output => "output_tokens",
        }
    }

    /// Kthena's rejection message.
    pub fn message(self) -> &'static str {
        match self {
            Direction::Input => "input token rate limit exceeded",
            Direction::Output => "output token rate limit exceeded",
        }
    }
}

/// One bucket: thousandths of a token (negative: a deficit) as of `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub milli: i64,
    pub at_ms: u64,
}

/// A bucket's shape: capacity and refill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub per_unit: u64,
    pub unit_ms: u64,
}

impl Shape {
    pub fn of(limit: &RateLimit, direction: Direction) -> Option<Shape> {
        let per_unit = match direction {
            Direction::Input => limit.input_per_unit,
            Direction::Output => limit.output_per_unit,
        }?;
        Some(Shape {
            per_unit,
            unit_ms: limit.unit_seconds.max(1).saturating_mul(1000),
        })
    }

    fn capacity_milli(self) -> i64 {
        i64::try_from(self.per_unit.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    /// A new bucket: full.
    pub fn full(self, now_ms: u64) -> Bucket {
        Bucket {
            milli: self.capacity_milli(),
            at_ms: now_ms,
        }
    }

    /// `b` refilled up to `now_ms` (never above capacity; a clock going back refills nothing).
    pub fn refill(self, b: Bucket, now_ms: u64) -> Bucket {
        let elapsed = now_ms.saturating_sub(b.at_ms);
        // per_unit tokens per unit_ms = per_unit * 1000 milli-tokens per unit_ms.
        let gained =
            i128::from(elapsed) * i128::from(self.per_unit) * 1000 / i128::from(self.unit_ms);
        let milli = (i128::from(b.milli) + gained).min(i128::from(self.capacity_milli()));
        Bucket {
            milli: i64::try_from(milli).unwrap_or(i64::MAX),
            at_ms: now_ms.max(b.at_ms),
        }
    }

    /// Milliseconds until `b` holds `tokens` (0 if it does; None if it never can).
    pub fn wait_ms(self, b: Bucket, tokens: u64) -> Option<u64> {
        let want = i128::from(tokens) * 1000;
        if want > i128::from(self.capacity_milli()) {
            return None;
        }
        let short = want - i128::from(b.milli);
        if short <= 0 {
            return Some(0);
        }
        // Rounded up: after this many ms the bucket holds enough.
        let rate = i128::from(self.per_unit) * 1000;
        let ms = (short * i128::from(self.unit_ms) + rate - 1) / rate;
        Some(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

/// Whole tokens in a bucket (0 when in deficit).
pub fn tokens(b: Bucket) -> u64 {
    u64::try_from(b.milli / 1000).unwrap_or(0)
}

/// What a refusal tells the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub direction: Direction,
    pub limit: u64,
    pub remaining: u64,
    /// Milliseconds until the request would fit (None: it never can, it exceeds the limit).
    pub retry_after_ms: Option<u64>,
}

impl Refusal {
    /// The response headers OpenAI's SDKs back off by: `retry-after` (seconds),
    /// `x-ratelimit-limit-tokens`, `x-ratelimit-remaining-tokens`, `x-ratelimit-reset-tokens`.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let reset_ms = self.retry_after_ms.unwrap_or(0);
        let mut h = vec![
            ("x-ratelimit-limit-tokens", self.limit.to_string()),
            ("x-ratelimit-remaining-tokens", self.remaining.to_string()),
            ("x-ratelimit-reset-tokens", format!("{}ms", reset_ms)),
        ];
        if let Some(ms) = self.retry_after_ms {
            h.push(("retry-after", ms.div_ceil(1000).max(1).to_string()));
        }
        h
    }
}

/// How a request draws on a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draw {
    /// Take `n` tokens now, or refuse (input).
    Take(u64),
    /// Require at least one token, take nothing (output, before routing).
    Require,
    /// Take `n` even into deficit (output, after the answer).
    Debit(u64),
}

/// The shared-data key of the buckets a request draws on: input then output, 16 bytes each,
/// so admitting a request reads and writes shared data once. Per model, or with a client
/// header per client slot: `client` is that header's value (absent: the empty value), spread
/// over `client_slots` buckets by hash, so the shared data a model uses stays bounded (clients
/// whose values collide share a budget).
pub fn key(model: &str, limit: &RateLimit, client: Option<&str>) -> String {
    match client_slot(limit, client) {
        Some(slot) => format!("modelroute.rl.{model}.{slot}"),
        None => format!("modelroute.rl.{model}"),
    }
}

/// With per-client budgets, the slot of the client whose header value is `client` (absent:
/// the empty value); None when the budget is the model's.
pub fn client_slot(limit: &RateLimit, client: Option<&str>) -> Option<u64> {
    limit.client_header.as_ref()?;
    Some(
        crate::prefix::hash(0, client.unwrap_or("").as_bytes())
            % u64::from(limit.client_slots.max(1)),
    )
}

fn decode(bytes: Option<&[u8]>, slot: usize) -> Option<Bucket> {
    let b = bytes?.get(slot * 16..slot * 16 + 16)?;
    let milli = i64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let at_ms = u64::from_le_bytes(b.get(8..)?.try_into().ok()?);
    Some(Bucket { milli, at_ms })
}

fn encode(buckets: [Bucket; 2]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let bytes = buckets.iter().flat_map(|b| {
        b.milli
            .to_le_bytes()
            .into_iter()
            .chain(b.at_ms.to_le_bytes())
    });
    for (o, byte) in out.iter_mut().zip(bytes) {
        *o = byte;
    }
    out
}

/// The pure decision: the bucket after `draw`, or the refusal.
pub fn apply(shape: Shape, b: Bucket, draw: Draw, direction: Direction) -> Result<Bucket, Refusal> {
    let refuse = |need: u64| Refusal {
        direction,
        limit: shape.per_unit,
        remaining: tokens(b),
        retry_after_ms: shape.wait_ms(b, need),
    };
    match draw {
        Draw::Take(n) => {
            let n_milli = i64::try_from(n.saturating_mul(1000)).unwrap_or(i64::MAX);
            if b.milli >= n_milli {
                Ok(Bucket {
                    milli: b.milli - n_milli,
                    ..b
                })
            } else {
                Err(refuse(n))
            }
        }
        Draw::Require if b.milli >= 1000 => Ok(b),
        Draw::Require => Err(refuse(1)),
        Draw::Debit(n) => Ok(Bucket {
            milli: b
                .milli
                .saturating_sub(i64::try_from(n.saturating_mul(1000)).unwrap_or(i64::MAX)),
            ..b
        }),
    }
}

/// Draws on the shared buckets under `key` ([`key`]; refilled to `now_ms`): each `(direction,
/// draw)` in order, until one refuses. What was drawn before a refusal is written: put
/// [`Draw::Debit`]s first (a refused request takes nothing itself, as in Kthena, but the
/// debits of earlier answers it carries are kept). Ok when the request may go on (also when
/// the shared data could not be updated: a limiter that cannot count lets traffic through
/// rather than failing it).
pub fn draw(
    host: &mut dyn Host,
    key: &str,
    limit: &RateLimit,
    draws: &[(Direction, Draw)],
    now_ms: u64,
) -> Result<(), Refusal> {
    let shaped: Vec<(Direction, Shape, Draw)> = draws
        .iter()
        .filter(|(_, d)| *d != Draw::Debit(0))
        .filter_map(|&(dir, d)| Some((dir, Shape::of(limit, dir)?, d)))
        .collect();
    if shaped.is_empty() {
        return Ok(());
    }
    for _ in 0..MAX_TRIES {
        let (bytes, cas) = host.shared_get(key);
        let mut buckets = [Direction::Input, Direction::Output].map(|dir| {
            let slot = dir as usize;
            match (Shape::of(limit, dir), decode(bytes.as_deref(), slot)) {
                (Some(shape), Some(b)) => shape.refill(b, now_ms),
                (Some(shape), None) => shape.full(now_ms),
                (None, stored) => stored.unwrap_or(Bucket {
                    milli: 0,
                    at_ms: now_ms,
                }),
            }
        });
        let mut changed = false;
        let mut refused = None;
        for &(direction, shape, d) in &shaped {
            let Some(b) = buckets.get_mut(direction as usize) else {
                continue;
            };
            match apply(shape, *b, d, direction) {
                Ok(next) => {
                    changed |= next != *b;
                    *b = next;
                }
                Err(refusal) => {
                    refused = Some(refusal);
                    break;
                }
            }
        }
        if !changed || host.shared_set(key, &encode(buckets), cas) {
            return refused.map_or(Ok(()), Err);
        }
    }
    log::warn!("modelroute: rate limit buckets {key} could not be updated");
    Ok(())
}

/// The output tokens this worker's finished requests owe their budgets and has not written
/// yet. Like the in-flight decrements ([`crate::in_flight`]), a debit is written at once only
/// when no other limited request of this worker is running; otherwise the worker's next
/// admission on that budget carries it in its own write ([`Debits::take`]), or the root tick
/// flushes it ([`Debits::flush`]), so under load a limited request costs one shared-data read
/// and write instead of two. Other workers see a debit that late (at most a tick).
#[derive(Debug, Default)]
pub struct Debits {
    /// Budget key -> its limits and the tokens owed.
    pending: HashMap<String, (RateLimit, u64)>,
    /// Requests with an output budget this worker admitted and has not seen end.
    running: usize,
}

impl Debits {
    /// A request with an output budget was admitted.
    pub fn admitted(&mut self) {
        self.running += 1;
    }

    /// That request ended having produced `tokens`: owed to the budget under `key`, and written
    /// at once (with everything else owed) when it was the worker's last one running.
    pub fn ended(
        &mut self,
        host: &mut dyn Host,
        key: &str,
        limit: &RateLimit,
        tokens: u64,
        now_ms: u64,
    ) {
        self.running = self.running.saturating_sub(1);
        if self.running > 0 {
            if tokens > 0 {
                let owed = self
                    .pending
                    .entry(key.to_string())
                    .or_insert_with(|| (limit.clone(), 0));
                owed.1 = owed.1.saturating_add(tokens);
            }
            return;
        }
        let owed = tokens.saturating_add(self.take(key));
        debit(host, key, limit, owed, now_ms);
        self.flush(host, now_ms);
    }

    /// What the budget under `key` is owed, handed over to the caller's write.
    pub fn take(&mut self, key: &str) -> u64 {
        self.pending.remove(key).map_or(0, |(_, tokens)| tokens)
    }

    /// Whether debits wait to be written.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Writes every debit owed (the root tick, or the worker's last limited request ending).
    pub fn flush(&mut self, host: &mut dyn Host, now_ms: u64) {
        for (key, (limit, tokens)) in std::mem::take(&mut self.pending) {
            debit(host, &key, &limit, tokens, now_ms);
        }
    }
}

/// Takes `tokens` from the output budget under `key`, into deficit if need be (nothing to
/// write for 0).
fn debit(host: &mut dyn Host, key: &str, limit: &RateLimit, tokens: u64, now_ms: u64) {
    let _ = draw(
        host,
        key,
        limit,
        &[(Direction::Output, Draw::Debit(tokens))],
        now_ms,
    );
}

#[cfg(test)]
mod tests;

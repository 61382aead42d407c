//! The contract between the filter, Envoy's rate-limit filter and `modelroute-ratelimit` (the
//! rate-limit service) for `spec.rateLimit.global`: one budget shared by every Envoy, kept
//! in Redis.
//!
//! The filter publishes, per request of a globally limited model, the [`Budget`] as filter
//! state ([`BUDGET`]) and the tokens to take ([`ADMIT_HITS`], the input estimate). The
//! controller renders Envoy's rate-limit filter after ours with two descriptors built from
//! those values: [`ADMIT`] before routing and [`DEBIT`] when the stream is done (hits: the
//! completion tokens, [`DEBIT_HITS`], published when the answer ends). The service answers
//! from the budget alone, so it needs no configuration of its own and scales out freely.

/// Descriptor key checked before routing: input estimate taken, output needs >= 1 token.
pub const ADMIT: &str = "modelroute_admit";
/// Descriptor key applied when the stream is done: completion tokens debited (into deficit).
pub const DEBIT: &str = "modelroute_debit";
/// Published per request (filter state `wasm.<name>`): the budget, [`Budget::descriptor`].
pub const BUDGET: &str = "modelroute.rate_limit";
/// Published per request: the input estimate the admission takes.
pub const ADMIT_HITS: &str = "modelroute.rate_limit_admit";
/// Published when the answer ends: the completion tokens the debit takes.
pub const DEBIT_HITS: &str = "modelroute.rate_limit_debit";
/// Response header the service adds to a refusal (`input_tokens` / `output_tokens`, Kthena's
/// `limit_type`); the filter reads it for its metrics and removes it.
pub const REFUSED_HEADER: &str = "x-modelroute-rate-limited";

/// A model's (or a client slot's) budget as the service needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget<'a> {
    pub model: &'a str,
    pub input_per_unit: Option<u64>,
    pub output_per_unit: Option<u64>,
    pub unit_seconds: u64,
    /// `host:port` of the Redis holding the buckets (the route's `global.redis.address`).
    pub redis: &'a str,
    /// What a request gets while Redis cannot be reached: refused (true) or let through.
    pub deny_on_redis_failure: bool,
    /// With per-client budgets: the client's slot (its own bucket pair).
    pub client_slot: Option<u64>,
}

impl<'a> Budget<'a> {
    /// The descriptor value: `v1;in=N;out=N;unit=S;redis=H:P;deny=0|1[;client=N];model=NAME`,
    /// `in`/`out` empty when not limited. The model comes last and runs to the end, so any
    /// model name fits.
    pub fn descriptor(&self) -> String {
        let n = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        let client = self
            .client_slot
            .map(|s| format!(";client={s}"))
            .unwrap_or_default();
        format!(
            "v1;in={};out={};unit={};redis={};deny={}{client};model={}",
            n(self.input_per_unit),
            n(self.output_per_unit),
            self.unit_seconds,
            self.redis,
            u8::from(self.deny_on_redis_failure),
            self.model
        )
    }

    /// Reads [`Budget::descriptor`]'s output; None if it is not one.
    pub fn parse(s: &'a str) -> Option<Budget<'a>> {
        let (head, model) = s.split_once(";model=")?;
        let mut fields = head.split(';');
        if fields.next()? != "v1" {
            return None;
        }
        let mut b = Budget {
            model,
            input_per_unit: None,
            output_per_unit: None,
            unit_seconds: 0,
            redis: "",
            deny_on_redis_failure: false,
            client_slot: None,
        };
        let limit = |v: &str| -> Option<Option<u64>> {
            if v.is_empty() {
                Some(None)
            } else {
                v.parse().ok().filter(|n| *n > 0).map(Some)
            }
        };
        for field in fields {
            let (k, v) = field.split_once('=')?;
            match k {
                "in" => b.input_per_unit = limit(v)?,
                "out" => b.output_per_unit = limit(v)?,
                "unit" => b.unit_seconds = v.parse().ok()?,
                "redis" => b.redis = v,
                "deny" => b.deny_on_redis_failure = v == "1",
                "client" => b.client_slot = Some(v.parse().ok()?),
                _ => {}
            }
        }
        (b.unit_seconds > 0 && !b.redis.is_empty() && !model.is_empty()).then_some(b)
    }

    /// Kthena's Redis key of a bucket (`kthena:ratelimit:{model}:{input|output}`), so Kthena
    /// routers pointed at the same Redis share the budget; a client slot gets its own pair.
    pub fn key(&self, direction: &str) -> String {
        match self.client_slot {
            Some(slot) => format!("kthena:ratelimit:{}:client-{slot}:{direction}", self.model),
            None => format!("kthena:ratelimit:{}:{direction}", self.model),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Budget<'static> {
        Budget {
            model: "deep;seek=r1",
            input_per_unit: Some(30),
            output_per_unit: None,
            unit_seconds: 60,
            redis: "redis.svc:6379",
            deny_on_redis_failure: true,
            client_slot: Some(7),
        }
    }

    #[test]
    fn a_descriptor_reads_back_whatever_the_model_name() {
        let b = budget();
        let d = b.descriptor();
        assert_eq!(
            d,
            "v1;in=30;out=;unit=60;redis=redis.svc:6379;deny=1;client=7;model=deep;seek=r1"
        );
        assert_eq!(Budget::parse(&d), Some(b));
        let plain = Budget {
            client_slot: None,
            deny_on_redis_failure: false,
            ..budget()
        };
        assert_eq!(Budget::parse(&plain.descriptor()), Some(plain));
    }

    #[test]
    fn anything_else_is_not_a_budget() {
        for bad in [
            "",
            "v1",
            "v2;in=1;out=;unit=1;redis=r:1;deny=0;model=m",
            "v1;in=x;out=;unit=1;redis=r:1;deny=0;model=m",
            "v1;in=0;out=;unit=1;redis=r:1;deny=0;model=m",
            "v1;in=1;out=;unit=0;redis=r:1;deny=0;model=m",
            "v1;in=1;out=;unit=1;deny=0;model=m",
            "v1;in=1;out=;unit=1;redis=r:1;deny=0;model=",
            "v1;in=1;garbage;unit=1;redis=r:1;model=m",
        ] {
            assert_eq!(Budget::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn keys_are_kthenas() {
        let b = Budget {
            client_slot: None,
            ..budget()
        };
        assert_eq!(b.key("input"), "kthena:ratelimit:deep;seek=r1:input");
        assert_eq!(
            budget().key("output"),
            "kthena:ratelimit:deep;seek=r1:client-7:output"
        );
    }
}

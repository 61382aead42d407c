#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use test_support::RedisServer;

use super::*;

fn hget(redis: &RedisServer, key: &str, field: &str) -> Option<String> {
    Some(redis.cli(&["HGET", key, field])).filter(|s| !s.is_empty())
}

fn budget<'a>(redis: &'a str, model: &'a str) -> Budget<'a> {
    Budget {
        model,
        input_per_unit: Some(30),
        output_per_unit: Some(100),
        unit_seconds: 60,
        redis,
        deny_on_redis_failure: false,
        client_slot: None,
    }
}

fn limiter() -> Limiter {
    Limiter::new(None, Duration::from_millis(200))
}

fn refused(v: &Verdict) -> &Refusal {
    match v {
        Verdict::Refused(r) => r,
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test]
async fn input_is_taken_until_it_runs_out_and_a_refusal_takes_nothing() {
    let redis = RedisServer::start();
    let addr = redis.addr();
    let b = budget(&addr, "m");
    let l = limiter();
    for _ in 0..6 {
        assert_eq!(l.apply(Mode::Admit, &b, 5).await, Verdict::Allowed);
    }
    let v = l.apply(Mode::Admit, &b, 5).await;
    let r = refused(&v);
    assert_eq!((r.direction, r.limit), (Direction::Input, 30));
    assert!(r.remaining < 5);
    // 5 tokens at 30 a minute: at most 10 s.
    assert!(matches!(r.retry_after_ms, Some(1..=10_000)), "{r:?}");
    // Kthena's layout; the refusal wrote nothing (Kthena's script does: its issue #1456).
    let tokens: f64 = hget(&redis, "kthena:ratelimit:m:input", "tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(tokens < 1.0, "{tokens}");
    assert!(hget(&redis, "kthena:ratelimit:m:input", "last_update").is_some());
    // More than the whole budget never fits.
    let v = l.apply(Mode::Admit, &budget(&addr, "other"), 31).await;
    assert_eq!(refused(&v).retry_after_ms, None);
}

#[tokio::test]
async fn a_long_answer_puts_output_in_deficit_and_the_next_request_waits() {
    let redis = RedisServer::start();
    let addr = redis.addr();
    let b = budget(&addr, "m");
    let l = limiter();
    assert_eq!(l.apply(Mode::Admit, &b, 1).await, Verdict::Allowed);
    assert_eq!(l.apply(Mode::Debit, &b, 250).await, Verdict::Allowed);
    let tokens: f64 = hget(&redis, "kthena:ratelimit:m:output", "tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!((-151.0..=-149.0).contains(&tokens), "{tokens}");
    let v = l.apply(Mode::Admit, &b, 1).await;
    let r = refused(&v);
    assert_eq!((r.direction, r.remaining), (Direction::Output, 0));
    // 151 tokens short at 100 a minute: about 90 s.
    assert!(matches!(r.retry_after_ms, Some(89_000..=91_000)), "{r:?}");
    // A zero debit (a refused or failed request) touches nothing.
    assert_eq!(
        l.apply(Mode::Debit, &budget(&addr, "none"), 0).await,
        Verdict::Allowed
    );
    assert_eq!(hget(&redis, "kthena:ratelimit:none:output", "tokens"), None);
}

#[tokio::test]
async fn a_bucket_kthena_wrote_is_honoured() {
    let redis = RedisServer::start();
    let addr = redis.addr();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let now = now.to_string();
    redis.cli(&[
        "HSET",
        "kthena:ratelimit:k:input",
        "tokens",
        "2",
        "last_update",
        &now,
    ]);
    let l = limiter();
    let v = l.apply(Mode::Admit, &budget(&addr, "k"), 5).await;
    assert_eq!(refused(&v).direction, Direction::Input);
    assert_eq!(
        l.apply(Mode::Admit, &budget(&addr, "k"), 2).await,
        Verdict::Allowed
    );
}

#[tokio::test]
async fn redis_down_lets_through_or_refuses_as_the_budget_says_and_recovery_is_immediate() {
    let redis = RedisServer::start();
    let port = redis.port;
    let addr = redis.addr();
    let open = budget(&addr, "m");
    let closed = Budget {
        deny_on_redis_failure: true,
        ..budget(&addr, "m")
    };
    let l = limiter();
    assert_eq!(l.apply(Mode::Admit, &open, 30).await, Verdict::Allowed);
    drop(redis);
    assert_eq!(l.apply(Mode::Admit, &open, 30).await, Verdict::Allowed);
    assert_eq!(
        l.apply(Mode::Admit, &closed, 1).await,
        Verdict::Unavailable(Direction::Input)
    );
    // Debits are never refused.
    assert_eq!(l.apply(Mode::Debit, &closed, 1).await, Verdict::Allowed);
    // A fresh Redis (empty, its scripts flushed) is used at once: full bucket, script reloaded.
    let _redis = RedisServer::start_on(port);
    assert_eq!(l.apply(Mode::Admit, &closed, 30).await, Verdict::Allowed);
    assert_eq!(
        refused(&l.apply(Mode::Admit, &closed, 1).await).direction,
        Direction::Input
    );
}

#[tokio::test]
async fn a_call_with_our_descriptors_answers_as_envoy_expects() {
    let redis = RedisServer::start();
    let addr = redis.addr();
    let b = budget(&addr, "m");
    let descriptor = |key: &str, hits: u64| proto::RateLimitDescriptor {
        entries: vec![proto::Entry {
            key: key.into(),
            value: b.descriptor(),
        }],
        hits_addend: Some(proto::UInt64Value { value: hits }),
    };
    let call = |d| RateLimitRequest {
        domain: "modelroute".into(),
        descriptors: vec![d],
        hits_addend: 0,
    };
    let l = limiter();
    let ok = l
        .should_rate_limit(&call(descriptor(contract::ADMIT, 30)))
        .await;
    assert_eq!(ok.overall_code, proto::OK);
    let over = l
        .should_rate_limit(&call(descriptor(contract::ADMIT, 30)))
        .await;
    assert_eq!(over.overall_code, proto::OVER_LIMIT);
    let header = |name: &str| {
        over.response_headers_to_add
            .iter()
            .find(|h| h.key == name)
            .map(|h| h.value.as_str())
    };
    assert_eq!(header("content-type"), Some("application/json"));
    assert_eq!(header(contract::REFUSED_HEADER), Some("input_tokens"));
    assert_eq!(header("x-ratelimit-limit-tokens"), Some("30"));
    assert!(header("retry-after").is_some());
    let body: serde_json::Value = serde_json::from_slice(&over.raw_body).unwrap();
    assert_eq!(body["error"]["message"], "input token rate limit exceeded");
    // Someone else's descriptors are not ours to judge.
    let foreign = proto::RateLimitDescriptor {
        entries: vec![proto::Entry {
            key: "remote_address".into(),
            value: "1.2.3.4".into(),
        }],
        hits_addend: None,
    };
    assert_eq!(
        l.should_rate_limit(&call(foreign)).await.overall_code,
        proto::OK
    );
}

//! Kthena's token rate limits (`ModelRoute.spec.rateLimit`, local mode) in a real Envoy: a
//! budget admits exactly what fits and refuses the rest with a 429 OpenAI SDKs back off by;
//! a long answer puts the output budget in deficit; Envoy's workers share one budget.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use support::*;

/// The model `pool` (served by one pod) with `limit` as its `spec.rateLimit`.
fn limited(limit: &str) -> Stack {
    let resources = pool_resources("served", &[]).replace(
        "  modelName: \"pool\"\n",
        &format!("  modelName: \"pool\"\n  rateLimit: {limit}\n"),
    );
    assert!(resources.contains("rateLimit"));
    Stack::start(
        &resources,
        vec![Pod::new("a", &[("app", "pool")], "served")],
        Options::default(),
    )
}

#[test]
fn an_input_budget_admits_what_fits_and_refuses_the_rest() {
    let s = limited("{inputTokensPerUnit: 30, unit: minute}");
    let statuses: Vec<u16> = (0..8).map(|_| five_tokens(&s).status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429]);
    let r = five_tokens(&s);
    assert_eq!(r.status, 429);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"]["message"], "input token rate limit exceeded");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    // At most 5 tokens short at 0.5 a second: the SDKs wait up to 10 s (less as it refills).
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "retry-after {retry}");
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("30"));
    // Fewer than the 5 the request needs (the bucket refills by one token every 2 s).
    let remaining: u64 = r
        .header("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining < 5, "remaining {remaining}");
    assert!(r.header("x-ratelimit-reset-tokens").is_some());
    // Counted under Kthena's name, and in the access log as Kthena's `rate_limit`.
    let labels = [
        ("model", "pool"),
        ("limit_type", "input_tokens"),
        ("path", "/v1/completions"),
    ];
    assert_eq!(
        s.series_sum("kthena_router_rate_limit_exceeded_total", &labels, 3.0),
        3.0
    );
    let log = s.access_log(9);
    assert_eq!(
        log.iter()
            .filter(|r| r["error_type"] == "rate_limit")
            .count(),
        3
    );
}

#[test]
fn a_long_answer_is_paid_for_by_the_requests_after_it() {
    // The mock answers 6 tokens; a budget of 10 a minute is in deficit after two answers.
    let s = limited("{outputTokensPerUnit: 10, unit: minute}");
    assert_eq!(five_tokens(&s).status, 200);
    assert_eq!(five_tokens(&s).status, 200);
    let r = five_tokens(&s);
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("output token rate limit exceeded"));
    // 10 - 12 = -2 tokens: 3 to come back to one, at 10 a minute: up to 18 s.
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((12..=18).contains(&retry), "retry-after {retry}");
}

#[test]
fn envoys_workers_share_one_budget_under_concurrency() {
    let s = limited("{inputTokensPerUnit: 30, unit: hour}");
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..24)
            .map(|_| scope.spawn(|| five_tokens(&s).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let admitted = statuses.iter().filter(|&&st| st == 200).count();
    let refused = statuses.iter().filter(|&&st| st == 429).count();
    // Input is taken before routing, atomically across workers: exactly 30 / 5 get through.
    assert_eq!((admitted, refused), (6, 18), "{statuses:?}");
}

#[test]
fn per_client_budgets_follow_the_header_the_operator_names() {
    let resources = pool_resources("served", &[])
        .replace(
            "metadata: { name: pool, namespace: default }\nspec:\n  modelName",
            "metadata:\n  name: pool\n  namespace: default\n  annotations: { modelroute.io/rate-limit-client-header: x-user-id }\nspec:\n  modelName",
        )
        .replace(
            "  modelName: \"pool\"\n",
            "  modelName: \"pool\"\n  rateLimit: {inputTokensPerUnit: 10, unit: hour}\n",
        );
    assert!(
        resources.contains("rate-limit-client-header"),
        "{resources}"
    );
    let s = Stack::start(
        &resources,
        vec![Pod::new("a", &[("app", "pool")], "served")],
        Options::default(),
    );
    let as_user = |user: &str| {
        s.post(
            "/v1/completions",
            r#"{"model":"pool","prompt":"abcdefghijklmnopqrst"}"#,
            &[("x-user-id", user)],
        )
        .status
    };
    // 10 tokens an hour each: two 5-token requests per user, whoever else is busy.
    let alice: Vec<u16> = (0..3).map(|_| as_user("alice")).collect();
    let bob: Vec<u16> = (0..3).map(|_| as_user("bob")).collect();
    assert_eq!(alice, [200, 200, 429]);
    assert_eq!(bob, [200, 200, 429]);
}

//! Kthena's global token rate limits (`spec.rateLimit.global`) in real Envoys: Envoy's
//! rate-limit filter asks `modelroute-ratelimit`, which keeps Kthena's buckets in a real Redis,
//! so two Envoys share one budget; Redis going away and coming back behaves as the route's
//! annotation says.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use support::*;
use test_support::{RateLimitService, RedisServer};

/// A gateway serving the model `pool` with `limit` (and `annotations` on its ModelRoute),
/// global on `redis`, through `service`.
fn gateway(
    redis: &RedisServer,
    service: &RateLimitService,
    limit: &str,
    annotations: &str,
) -> Stack {
    gateway_of(redis, service, limit, annotations, false)
}

/// [`gateway`], the Envoy of deploy/envoy-gateway.yaml on the controller's ConfigMap when
/// `manifest`.
fn gateway_of(
    redis: &RedisServer,
    service: &RateLimitService,
    limit: &str,
    annotations: &str,
    manifest: bool,
) -> Stack {
    let limit = limit.replace(
        '}',
        &format!(", global: {{redis: {{address: \"{}\"}}}}}}", redis.addr()),
    );
    let resources = pool_resources("served", &[])
        .replace(
            "metadata: { name: pool, namespace: default }\nspec:\n  modelName",
            &format!("metadata:\n  name: pool\n  namespace: default\n  annotations: {{{annotations}}}\nspec:\n  modelName"),
        )
        .replace(
            "  modelName: \"pool\"\n",
            &format!("  modelName: \"pool\"\n  rateLimit: {limit}\n"),
        );
    assert!(resources.contains("global:"), "{resources}");
    let service_flag = vec!["--rate-limit-service".to_string(), service.addr.clone()];
    Stack::start(
        &resources,
        vec![Pod::new("a", &[("app", "pool")], "served")],
        Options {
            controller_args: service_flag.clone(),
            bootstrap_args: service_flag,
            gateway_manifest: manifest,
            ..Options::default()
        },
    )
}

#[test]
fn two_envoys_share_one_budget_in_redis() {
    let redis = RedisServer::start();
    let service = RateLimitService::start();
    let limit = "{inputTokensPerUnit: 30, unit: hour}";
    let a = gateway(&redis, &service, limit, "");
    let b = gateway(&redis, &service, limit, "");
    // 30 tokens an hour, 5 a request: six requests in all, whichever gateway they reach.
    let statuses: Vec<u16> = (0..8)
        .map(|i| five_tokens(if i % 2 == 0 { &a } else { &b }).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429]);
    // The 429 is the one local mode sends: Kthena's message, OpenAI's shape, the SDKs' headers.
    let r = five_tokens(&b);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"]["message"], "input token rate limit exceeded");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("30"));
    assert!(r.header("retry-after").is_some());
    // The service's note to the filter does not reach the client.
    assert_eq!(r.header("x-modelroute-rate-limited"), None);
    // Kthena's key, so Kthena routers on this Redis share the budget.
    let tokens: f64 = redis
        .cli(&["HGET", "kthena:ratelimit:pool:input", "tokens"])
        .parse()
        .unwrap();
    assert!(tokens < 5.0, "{tokens}");
    // Counted and logged as a rate limit by the gateway that refused.
    let labels = [("model", "pool"), ("limit_type", "input_tokens")];
    assert!(b.series_sum("kthena_router_rate_limit_exceeded_total", &labels, 2.0) >= 2.0);
    let log = b.access_log(5);
    let refused = log
        .iter()
        .filter(|r| r["error_type"] == "rate_limit")
        .count();
    assert!(refused >= 2, "{log:?}");
    // Only one pod answered six requests in all.
    assert_eq!(
        a.pod_requests("a").len() + b.pod_requests("a").len(),
        6,
        "a refused request must not reach the engine"
    );
}

#[test]
fn the_gateway_manifest_enforces_global_budgets_from_its_configmap() {
    // deploy/envoy-gateway.yaml discovers the rate-limit filter from the ConfigMap, which
    // carries it (and the service's cluster) when the controller has --rate-limit-service.
    let redis = RedisServer::start();
    let service = RateLimitService::start();
    let limit = "{inputTokensPerUnit: 10, unit: hour}";
    let s = gateway_of(&redis, &service, limit, "", true);
    let statuses: Vec<u16> = (0..3).map(|_| five_tokens(&s).status).collect();
    assert_eq!(statuses, [200, 200, 429]);
    assert!(redis
        .cli(&["HGET", "kthena:ratelimit:pool:input", "tokens"])
        .parse::<f64>()
        .is_ok_and(|t| t < 5.0));
    assert_eq!(s.pod_requests("a").len(), 2);
    assert!(s.stat("cluster.modelroute_ratelimit.upstream_rq_total") >= 3);
    // Envoy's filter counts its verdicts under the routed cluster (what the idle filter's
    // test looks for to prove it made no call).
    let total = |name: &str| s.stats(name).iter().map(|(_, n)| n).sum::<u64>();
    assert!(total("ratelimit.ok") >= 2, "{:?}", s.stats("ratelimit."));
    assert!(total("ratelimit.over_limit") >= 1);
}

#[test]
fn answers_are_debited_when_the_stream_is_done_into_deficit() {
    let redis = RedisServer::start();
    let service = RateLimitService::start();
    // The mock answers 6 tokens: a budget of 10 a minute is in deficit after two answers.
    let s = gateway(
        &redis,
        &service,
        "{outputTokensPerUnit: 10, unit: minute}",
        "",
    );
    assert_eq!(five_tokens(&s).status, 200);
    assert_eq!(five_tokens(&s).status, 200);
    wait_until(Duration::from_secs(5), "both answers debited", || {
        redis
            .cli(&["HGET", "kthena:ratelimit:pool:output", "tokens"])
            .parse::<f64>()
            .is_ok_and(|t| t < 0.0)
    });
    let r = five_tokens(&s);
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("output token rate limit exceeded"));
}

#[test]
fn redis_away_lets_requests_through_by_default_and_refuses_them_when_the_route_says_deny() {
    let redis = RedisServer::start();
    let port = redis.port;
    let service = RateLimitService::start();
    let limit = "{inputTokensPerUnit: 10, unit: hour}";
    let open = gateway(&redis, &service, limit, "");
    let deny = "modelroute.io/rate-limit-on-redis-failure: deny";
    let closed = gateway(&redis, &service, limit, deny);
    // Both share the budget of 10: two requests, then refusals.
    assert_eq!(five_tokens(&open).status, 200);
    assert_eq!(five_tokens(&closed).status, 200);
    assert_eq!(five_tokens(&open).status, 429);
    drop(redis);
    // Redis gone: the default keeps serving (unlimited); `deny` refuses, as Kthena does.
    assert_eq!(five_tokens(&open).status, 200);
    let r = five_tokens(&closed);
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    // Redis back (empty: a full budget): both limit again at once.
    let _redis = RedisServer::start_on(port);
    assert_eq!(five_tokens(&closed).status, 200);
    assert_eq!(five_tokens(&open).status, 200);
    assert_eq!(five_tokens(&open).status, 429);
    assert_eq!(five_tokens(&closed).status, 429);
}

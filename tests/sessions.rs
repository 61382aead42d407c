//! Sessions end to end in a real Envoy (two workers): Kthena's session-affinity score, a
//! ModelRoute's sessionSticky, and sticky sessions shared by several Envoys through the
//! gateways' store (modelroute-ratelimit and a real Redis).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::pool::*;
use support::*;

/// The pool's resources with `sticky` (a `sessionSticky:` block) on its ModelRoute.
fn sticky_resources(sticky: &str) -> String {
    resources().replace(
        "  modelName: \"pool\"\n",
        &format!("  modelName: \"pool\"\n{sticky}"),
    )
}

#[test]
fn a_sessions_requests_stay_on_its_pod_while_load_sends_the_rest_elsewhere() {
    // Kthena's session-affinity with its arguments: the session named by X-Conversation.
    let sched = scheduler(&[], &[("session-affinity", 10), ("least-request", 1)]).replace(
        "  plugins:\n",
        "  - name: session-affinity\n    args:\n      headerName: X-Conversation\n      ttl: 1h\n  plugins:\n",
    );
    let s = start(pods(2), sched);
    let send = |session: Option<&str>, i: usize| {
        let body =
            serde_json::json!({"model": "pool", "prompt": format!("hello {i}"), "max_tokens": 4});
        let headers: Vec<(&str, &str)> =
            session.map(|v| ("x-conversation", v)).into_iter().collect();
        let r = s.post("/v1/completions", &body.to_string(), &headers);
        assert_eq!(r.status, 200, "{}", r.text());
        r.pod()
    };
    let home = send(Some("alice"), 0);
    let other = if home == "pod-0" { "pod-1" } else { "pod-0" };
    // The session's pod now runs three requests of another gateway: least-request avoids it.
    s.hold_metrics(&home, r#"{"running": 3}"#);
    s.wait_for_scrapes(3);
    for i in 1..=20 {
        assert_eq!(
            send(Some("alice"), i),
            home,
            "request {i} of the session moved"
        );
    }
    let mut counts = HashMap::new();
    for i in 0..20 {
        *counts.entry(send(None, i)).or_insert(0) += 1;
        // A session no request has named before is placed by load like any other.
        *counts
            .entry(send(Some(&format!("new-{i}")), i))
            .or_insert(0) += 1;
    }
    assert!(share(&counts, other) >= 0.9, "{counts:?}");
}

#[test]
fn a_sticky_routes_sessions_stay_on_their_pods_until_a_filter_drops_one() {
    // Kthena's ModelRoute spec.sessionSticky: the session from a header, a query parameter
    // or a cookie, whichever comes first.
    let sticky = "  sessionSticky:\n    sessionAffinitySeconds: 3600\n    sources:\n    - {type: Header, name: X-Session-ID}\n    - {type: Query, name: session}\n    - {type: Cookie, name: sid}\n";
    let opts = options(scheduler(&["least-request"], &[("least-request", 1)]));
    let s = Stack::start(&sticky_resources(sticky), pods(2), opts);
    let send = |path: &str, headers: &[(&str, &str)], i: usize| {
        let body =
            serde_json::json!({"model": "pool", "prompt": format!("hello {i}"), "max_tokens": 4});
        let r = s.post(path, &body.to_string(), headers);
        assert_eq!(r.status, 200, "{}", r.text());
        r.pod()
    };
    let alice = [("x-session-id", "alice")];
    let home = send("/v1/completions", &alice, 0);
    let other = if home == "pod-0" { "pod-1" } else { "pod-0" };
    // The session's pod now runs three requests of another gateway: least-request avoids it,
    // but not for the session, however it is named.
    s.hold_metrics(&home, r#"{"running": 3}"#);
    s.wait_for_scrapes(3);
    for i in 1..=10 {
        assert_eq!(send("/v1/completions", &alice, i), home, "request {i}");
        let by_query = send("/v1/completions?x=1&session=alice", &[], i);
        assert_eq!(by_query, home, "query, request {i}");
        let by_cookie = send("/v1/completions", &[("cookie", "a=b; sid=alice")], i);
        assert_eq!(by_cookie, home, "cookie, request {i}");
    }
    let mut counts = HashMap::new();
    for i in 0..10 {
        *counts.entry(send("/v1/completions", &[], i)).or_insert(0) += 1;
        let new = format!("new-{i}");
        *counts
            .entry(send("/v1/completions", &[("x-session-id", &new)], i))
            .or_insert(0) += 1;
    }
    assert!(share(&counts, other) >= 0.9, "placed by load: {counts:?}");
    // Past maxWaitingRequests the filter drops the pod: the session moves, and stays where it
    // went once the queue is gone.
    let moved = "wasmcustom.modelroute.session.moved";
    assert_eq!(s.stat(moved), 0);
    s.hold_metrics(&home, r#"{"running": 3, "waiting": 20}"#);
    s.wait_for_scrapes(3);
    assert_eq!(send("/v1/completions", &alice, 20), other);
    assert_eq!(s.stat(moved), 1, "the failover is counted");
    s.hold_metrics(&home, r#"{"running": null, "waiting": null}"#);
    s.hold_metrics(other, r#"{"running": 3}"#);
    s.wait_for_scrapes(3);
    for i in 21..=30 {
        assert_eq!(send("/v1/completions", &alice, i), other, "request {i}");
    }
    assert_eq!(s.stat(moved), 1);
}

/// Session alice's request `i` through gateway `s`: the pod that served it.
fn alice(s: &Stack, i: usize) -> String {
    let body =
        serde_json::json!({"model": "pool", "prompt": format!("hello {i}"), "max_tokens": 4});
    let r = s.post(
        "/v1/completions",
        &body.to_string(),
        &[("x-session-id", "alice")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.pod()
}

/// The seed's resources with the pool's route sticky (the session in `X-Session-ID`, bound
/// for 30 s), and the store's gateway options picking by least-request (filter and score).
struct StickyStore {
    redis: test_support::RedisServer,
    service: test_support::RateLimitService,
    resources: String,
}

impl StickyStore {
    fn new() -> StickyStore {
        let sticky = "  sessionSticky:\n    sources:\n    - {type: Header, name: X-Session-ID}\n    sessionAffinitySeconds: 30\n";
        StickyStore {
            redis: test_support::RedisServer::start(),
            service: test_support::RateLimitService::start(),
            resources: sticky_resources(sticky),
        }
    }

    fn options(&self) -> Options {
        let least_request = scheduler(&["least-request"], &[("least-request", 1)]);
        shared_store_options(&self.service, &self.redis, least_request)
    }

    /// The session's key in Redis (the only one).
    fn key(&self) -> String {
        self.redis
            .cli(&["--scan", "--pattern", "modelroute:session:*"])
    }
}

#[test]
fn two_gateways_keep_a_sticky_session_on_one_pod_through_the_shared_store() {
    let store = StickyStore::new();
    let (redis, send) = (&store.redis, alice);
    let a = Stack::start(&store.resources, pods(2), store.options());
    let b = a.another_gateway(store.options());
    let home = send(&a, 0);
    let other = if home == "pod-0" { "pod-1" } else { "pod-0" };
    // The session's pod runs three requests no gateway sent: gateway B, meeting the session
    // first, would place it elsewhere by load; it follows A's binding from the store.
    a.hold_metrics(&home, r#"{"running": 3}"#);
    a.wait_for_scrapes(3);
    b.wait_for_scrapes(3);
    for i in 1..=6 {
        assert_eq!(send(&b, i), home, "gateway B, request {i}");
    }
    // B's claims renewed the binding in Redis for the route's 30 s, not the placements' 600.
    let key = store.key();
    let ttl: u64 = redis.cli(&["TTL", &key]).parse().unwrap_or(u64::MAX);
    assert!(ttl <= 30, "{key}: {ttl} s");
    // A's filter drops the pod (20 waiting): the session moves on A, and B follows the move
    // once its own binding is a second old, though the pod is back.
    a.hold_metrics(&home, r#"{"running": 3, "waiting": 20}"#);
    a.wait_for_scrapes(3);
    assert_eq!(send(&a, 7), other);
    a.hold_metrics(&home, r#"{"running": null, "waiting": null}"#);
    a.hold_metrics(other, r#"{"running": 3}"#);
    a.wait_for_scrapes(3);
    b.wait_for_scrapes(3);
    std::thread::sleep(Duration::from_millis(1100));
    for i in 8..=12 {
        assert_eq!(send(&b, i), other, "gateway B after the move, request {i}");
        assert_eq!(send(&a, i), other, "gateway A after the move, request {i}");
    }
}

#[test]
fn a_gateway_moving_a_sticky_session_replaces_only_the_binding_it_saw() {
    let store = StickyStore::new();
    let redis = &store.redis;
    let a = Stack::start(&store.resources, pods(3), store.options());
    // pod-2 runs three requests no gateway sent (A's least-request avoids it).
    let moved = "pod-2";
    a.hold_metrics(moved, r#"{"running": 3}"#);
    a.wait_for_scrapes(2);
    // The session is free: A's claim binds it where A sends it.
    let home = alice(&a, 0);
    let key = store.key();
    assert_eq!(redis.cli(&["GET", &key]), a.pod_addr(&home));
    let busy = if home == "pod-0" { "pod-1" } else { "pod-0" };
    // Another gateway moves the session to pod-2; A's filter is about to drop its pod (the
    // pod's next answer reports 20 waiting, in-band, asked at most every 50 ms).
    a.hold_metrics(&home, r#"{"running": 3, "waiting": 20}"#);
    redis.cli(&["SET", &key, &a.pod_addr(moved), "EX", "30"]);
    std::thread::sleep(Duration::from_millis(60));
    // Within the second A confirmed its binding in, A does not ask the store: the session
    // goes home once more (unless a scrape told A first), then A moves it by its own view,
    // and its write replaces only the pod A saw bound: the other gateway's binding stays.
    let first = alice(&a, 1);
    assert!(first == home || first == busy, "{first}");
    assert_eq!(alice(&a, 2), busy);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(redis.cli(&["GET", &key]), a.pod_addr(moved));
    // Once its binding is a second old, A claims the session again and follows the store.
    std::thread::sleep(Duration::from_millis(1100));
    for i in 3..=6 {
        assert_eq!(alice(&a, i), moved, "request {i}");
    }
}

#[test]
fn a_sticky_session_follows_the_pod_that_answered_when_its_own_died() {
    let sticky = "  sessionSticky:\n    sources:\n    - {type: Header, name: X-Session-ID}\n";
    let mut opts = options(scheduler(&["least-request"], &[("least-request", 1)]));
    // Scrapes a second apart: the death is most likely noticed after the next request.
    opts.controller_args = [
        "--metrics-interval-ms",
        "1000",
        "--metrics-stale-ms",
        "3000",
    ]
    .map(String::from)
    .to_vec();
    let s = Stack::start(&sticky_resources(sticky), pods(3), opts);
    let home = alice(&s, 0);
    let others: Vec<String> = (0..3)
        .map(|i| format!("pod-{i}"))
        .filter(|p| *p != home)
        .collect();
    let (fallback, third) = (&others[0], &others[1]);
    // After the session's pod, the ranking puts `fallback` (idle) before `third` (busy).
    s.hold_metrics(third, r#"{"running": 3}"#);
    s.wait_for_scrapes(2);
    // The session's pod dies: Envoy tries it, then the next pod of the ranking, which
    // answers, and the session follows that pod (as Kthena binds a session to the pod that
    // handled its request). (Should the collector notice the death first, the session is
    // placed anew on the same pod.) Envoy first sees its pooled connections to the pod close
    // (a request sent on one as it closes is not retried).
    s.kill_pod(&home);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(alice(&s, 1), *fallback);
    // The load turns; once the dead pod is marked down, the session stays where it went.
    s.hold_metrics(third, r#"{"running": null}"#);
    s.hold_metrics(fallback, r#"{"running": 3}"#);
    s.wait_for_scrapes(3);
    for i in 2..=6 {
        assert_eq!(alice(&s, i), *fallback, "request {i}");
    }
}

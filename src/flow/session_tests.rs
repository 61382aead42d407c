//! Fake-host tests of session bindings through the whole request flow: a session's requests
//! follow its binding through either worker, against the load (session-affinity, and a
//! route's sessionSticky).
use super::workers::{four_pods, Workers};
use filter_config::{
    FilterConfig, Plugin, Scheduler, SessionAffinity, SessionKeyKind, SessionKeySource,
    WeightedPlugin,
};

/// Four pods picked by session-affinity (`weight`) and least-request (1).
fn config(weight: u32, header: Option<&str>) -> FilterConfig {
    four_pods(Scheduler {
        filters: vec![],
        scores: [(Plugin::SessionAffinity, weight), (Plugin::LeastRequest, 1)]
            .into_iter()
            .map(|(name, weight)| WeightedPlugin { name, weight })
            .collect(),
        session_affinity: header.map(|h| SessionAffinity {
            header: h.to_string(),
            ..SessionAffinity::default()
        }),
        ..Scheduler::default()
    })
}

#[test]
fn a_sessions_requests_stay_on_its_pod_through_either_worker_while_it_is_busy() {
    for (weight, sticks) in [(10, true), (0, false)] {
        let mut w = Workers::new(config(weight, None));
        let alice = [("x-session-id", "alice")];
        // Left in flight: least-request alone would send the next request elsewhere.
        let home = w.send(0, "hello", &alice, false);
        for worker in [1, 0, 1] {
            let pod = w.send(worker, "and then?", &alice, false);
            assert_eq!(pod == home, sticks, "weight {weight}: {pod} vs {home}");
        }
        if sticks {
            // Another session, or none, is placed by load: away from the busy pod.
            assert_ne!(w.route(1, "hi", &[("x-session-id", "bob")]), home);
            assert_ne!(w.route(0, "hi", &[]), home);
        }
    }
}

#[test]
fn the_session_header_is_configurable() {
    let mut w = Workers::new(config(10, Some("x-conversation")));
    let home = w.send(0, "hello", &[("x-conversation", "c-1")], false);
    assert_eq!(w.send(1, "more", &[("x-conversation", "c-1")], false), home);
    // The default header means nothing now.
    let home = w.send(0, "hello", &[("x-session-id", "s-1")], false);
    assert_ne!(w.send(1, "more", &[("x-session-id", "s-1")], false), home);
}

#[test]
fn a_session_header_that_is_not_a_lower_case_name_is_refused_with_the_configuration() {
    let err = crate::router::Router::compile(config(10, Some("X-Conversation")), 1).unwrap_err();
    assert!(err.0.contains("session_affinity.header"), "{err:?}");
}

#[test]
fn a_sticky_routes_sessions_follow_their_query_parameter_through_either_worker() {
    let least_request = Scheduler {
        filters: vec![],
        scores: vec![WeightedPlugin {
            name: Plugin::LeastRequest,
            weight: 1,
        }],
        ..Scheduler::default()
    };
    let mut cfg = four_pods(least_request);
    cfg.routes[0] = cfg.routes[0].clone().with_session_sticky(
        vec![SessionKeySource::new(SessionKeyKind::Query, "session")],
        60_000,
    );
    let mut w = Workers::new(cfg);
    w.path = "/v1/completions?session=s-1";
    let home = w.send(0, "hello", &[], false);
    for worker in [1, 0, 1] {
        assert_eq!(w.send(worker, "and then?", &[], false), home);
    }
    // Another session is placed by load, away from the busy pod.
    w.path = "/v1/completions?session=s-2";
    assert_ne!(w.send(1, "hi", &[], false), home);
}

#[test]
fn a_sticky_session_expires_after_its_ttl_with_round_robin_too() {
    // No scheduler plugins: round robin, the session pinned while its binding lives.
    let mut cfg = four_pods(Scheduler {
        filters: vec![],
        scores: vec![],
        ..Scheduler::default()
    });
    cfg.routes[0] = cfg.routes[0].clone().with_session_sticky(
        vec![SessionKeySource::new(
            SessionKeyKind::Header,
            "x-session-id",
        )],
        1_000,
    );
    let mut w = Workers::new(cfg);
    let alice = [("x-session-id", "alice")];
    w.now_ms = 10_000;
    let home = w.route(0, "hello", &alice);
    w.now_ms = 10_500;
    assert_ne!(w.route(0, "hi", &[]), home, "the rotation goes on");
    assert_eq!(w.route(1, "more", &alice), home);
    // Past the TTL after its last request: placed by the rotation again.
    w.now_ms = 12_000;
    assert_ne!(w.route(0, "later", &alice), home);
}

//! A route's `sessionSticky`: a session's requests go to its bound pod against the load
//! while the pod passes the filters, and are rebound where they go otherwise.
use std::cell::RefCell;
use std::collections::HashMap;

use super::*;
use crate::metrics::PodStats;
use crate::router::SharedSession;
use filter_config::{
    Match, Plugin, Role, Route as CRoute, Rule as CRule, Scheduler, Server as CServer,
    SessionKeyKind, SessionKeySource, WeightedPlugin,
};

const PODS: [&str; 4] = [
    "10.0.0.2:8000",
    "10.0.0.3:8000",
    "10.0.0.4:8000",
    "10.0.0.5:8000",
];
const TTL_MS: u64 = 60_000;

/// Least-request filtering and scoring, or (`scheduler` false) round robin.
fn config(pods: &[&str], sticky: bool, scheduler: bool) -> FilterConfig {
    let mut route = CRoute::fixture(
        "chat",
        Some("chat"),
        &[],
        vec![CRule::fixture(
            "default",
            Match::default(),
            &[("pool", 100)],
        )],
    );
    if sticky {
        let sources = vec![
            SessionKeySource::new(SessionKeyKind::Header, "x-session-id"),
            SessionKeySource::new(SessionKeyKind::Query, "session"),
        ];
        route = route.with_session_sticky(sources, TTL_MS);
    }
    let scheduler = match scheduler {
        true => Scheduler {
            filters: vec![Plugin::LeastRequest],
            scores: vec![WeightedPlugin {
                name: Plugin::LeastRequest,
                weight: 1,
            }],
            ..Scheduler::default()
        },
        false => Scheduler {
            filters: vec![],
            scores: vec![],
            ..Scheduler::default()
        },
    };
    FilterConfig::fixture(vec![route], vec![CServer::fixture("pool", "m", pods)])
        .with_settings(|s| s.scheduler = scheduler)
}

/// One router, the workers' shared data, the requests each pod has in flight, and where the
/// gateways' store stands for its requests.
struct Gateway {
    router: Router,
    shared: RefCell<HashMap<String, Vec<u8>>>,
    in_flight: HashMap<String, u32>,
    store: SharedSession<'static>,
    prompt: Vec<u8>,
}

impl Gateway {
    fn new(cfg: FilterConfig) -> Self {
        Gateway {
            router: Router::compile(cfg, 1).unwrap(),
            shared: RefCell::default(),
            in_flight: HashMap::new(),
            store: SharedSession::Off,
            prompt: Vec::new(),
        }
    }

    /// The pod a request with `headers` and `query` goes to at `now_ms`; it stays in flight.
    fn send(&mut self, headers: &[(&str, &str)], query: &str, now_ms: u64) -> String {
        let d = self.decide(headers, query, now_ms).unwrap();
        d.endpoints.split(',').next().unwrap().to_string()
    }

    /// The decision for that request; a decided one's bindings are written, its pod counted.
    fn decide(
        &mut self,
        headers: &[(&str, &str)],
        query: &str,
        now_ms: u64,
    ) -> Result<Decision, RouteError> {
        let pods = self.router.servers[0].endpoints.clone();
        let counts = |_: &str, n: usize| {
            (0..n)
                .map(|i| {
                    pods.get(i)
                        .and_then(|p| self.in_flight.get(p))
                        .copied()
                        .unwrap_or(0)
                })
                .collect()
        };
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        };
        let d = self.router.decide(&Request {
            model: "chat",
            path: "/v1/completions",
            query,
            header: &header,
            prompt: &self.prompt,
            in_flight: &counts,
            load_reports: &no_load_reports,
            shared_data: &|k: &str| self.shared.borrow().get(k).cloned(),
            shared: SharedPlacement::Off,
            session_store: self.store,
            target: None,
            now_ms,
        })?;
        for (k, v) in &d.session_bindings {
            self.shared.borrow_mut().insert(k.clone(), v.clone());
        }
        let pod = d.endpoints.split(',').next().unwrap().to_string();
        *self.in_flight.entry(pod).or_default() += 1;
        Ok(d)
    }
}

const ALICE: [(&str, &str); 1] = [("x-session-id", "alice")];

#[test]
fn a_session_stays_on_its_pod_against_the_load_only_when_its_route_is_sticky() {
    for sticky in [true, false] {
        let mut g = Gateway::new(config(&PODS, sticky, true));
        let home = g.send(&ALICE, "", 0);
        // Every request stays in flight: least-request alone spreads them over the pods.
        let pods: std::collections::HashSet<String> =
            (1..12).map(|t| g.send(&ALICE, "", t)).collect();
        match sticky {
            true => assert_eq!(pods, [home.clone()].into(), "sticky"),
            false => assert_eq!(pods.len(), 4, "the header steers nothing: {pods:?}"),
        }
        assert_eq!(g.shared.borrow().len(), usize::from(sticky));
    }
}

#[test]
fn a_session_moves_when_its_pod_is_filtered_or_down_and_stays_where_it_went() {
    let mut g = Gateway::new(config(&PODS, true, true));
    let mut bound = g.send(&ALICE, "", 0);
    let queued = PodStats {
        up: true,
        waiting: 20.0,
        ..Default::default()
    };
    let down = PodStats {
        up: false,
        ..Default::default()
    };
    // Each pass 2 s after the last: the binding's renewal is due, and renewed, each time.
    for (pass, stats) in [(1, queued), (2, down)] {
        let t = pass * 2_000;
        assert_eq!(g.send(&ALICE, "", t), bound);
        g.router.set_stats([(bound.clone(), stats)].into());
        let moved = g.send(&ALICE, "", t + 1);
        assert_ne!(moved, bound);
        // Rebound: with the pod back (and lighter than the new one), the session stays put.
        g.router.set_stats(HashMap::new());
        g.in_flight.clear();
        g.in_flight.insert(moved.clone(), 5);
        assert_eq!(g.send(&ALICE, "", t + 2), moved);
        bound = moved;
    }
    assert_eq!(g.send(&ALICE, "", 10_000), bound);
}

#[test]
fn sessions_are_named_by_the_first_source_that_yields_a_key_and_expire_after_the_ttl() {
    let mut g = Gateway::new(config(&PODS, true, true));
    let by_query = g.send(&[], "a=1&session=q-1", 0);
    for t in 1..4 {
        assert_eq!(g.send(&[], "session=q-1", t), by_query);
    }
    // The header comes first: a request naming both is session "alice", bound anew.
    let alice = g.send(&ALICE, "session=q-1", 4);
    assert_ne!(alice, by_query, "placed by load, away from the busy pod");
    assert_eq!(g.send(&ALICE, "", 5), alice);
    // Past the TTL after its last request, the session is placed by load again.
    g.in_flight.insert(alice.clone(), 50);
    assert_ne!(g.send(&ALICE, "", 5 + TTL_MS), alice);
}

#[test]
fn a_binding_survives_other_pods_joining_and_leaving() {
    let mut g = Gateway::new(config(&PODS, true, true));
    let home = g.send(&ALICE, "", 0);
    // A new pod list: two pods gone, one new, the bound pod at another index.
    let mut pods: Vec<&str> = vec!["10.0.0.9:8000", &home];
    pods.extend(PODS.iter().filter(|p| **p != home).take(1));
    let shared = g.shared.take();
    let mut g = Gateway::new(config(&pods, true, true));
    g.shared = RefCell::new(shared);
    g.in_flight.insert(home.clone(), 50);
    assert_eq!(g.send(&ALICE, "", 1), home);
}

#[test]
fn round_robin_pins_a_session_and_the_rotation_goes_on() {
    let mut g = Gateway::new(config(&PODS, true, false));
    let home = g.send(&ALICE, "", 0);
    let others: Vec<String> = (1..4).map(|t| g.send(&[], "", t)).collect();
    assert!(
        !others.contains(&home),
        "the rotation went on: {home} then {others:?}"
    );
    for t in 4..8 {
        assert_eq!(g.send(&ALICE, "", t), home);
    }
}

#[test]
fn pd_servers_schedule_without_stickiness() {
    let route = CRoute::fixture(
        "pd",
        Some("chat"),
        &[],
        vec![CRule::fixture("default", Match::default(), &[("pd", 100)])],
    )
    .with_session_sticky(
        vec![SessionKeySource::new(
            SessionKeyKind::Header,
            "x-session-id",
        )],
        TTL_MS,
    );
    let pods = [
        ("10.0.0.3:8000", Some("g0"), Some(Role::Prefill)),
        ("10.0.0.4:8000", Some("g0"), Some(Role::Decode)),
    ];
    let pd = CServer::fixture("pd", "m", &[]).with_pd("group", None, &pods);
    let mut g = Gateway::new(FilterConfig::fixture(vec![route], vec![pd]));
    g.send(&ALICE, "", 0);
    assert!(g.shared.borrow().is_empty());
}

#[test]
fn a_sticky_header_that_is_not_a_lower_case_name_is_refused_with_the_configuration() {
    let mut cfg = config(&PODS, true, true);
    cfg.routes[0].session_sticky = Some(filter_config::SessionSticky {
        sources: vec![SessionKeySource::new(SessionKeyKind::Header, "X-Session")],
        ttl_ms: TTL_MS,
    });
    let err = Router::compile(cfg, 1).unwrap_err();
    assert!(err.0.contains("session_sticky header"), "{err:?}");
}

#[test]
fn with_the_gateways_store_a_session_this_envoy_has_not_confirmed_lately_is_claimed_first() {
    let mut g = Gateway::new(config(&PODS, true, true));
    g.store = SharedSession::Unasked;
    for (pod, n) in [(PODS[0], 5), (PODS[2], 4), (PODS[3], 4)] {
        g.in_flight.insert(pod.to_string(), n);
    }
    // The store is claimed for the pod this Envoy would pick (pod 1: least loaded), before
    // the pick counts.
    let Err(RouteError::SessionUnknown(claim, _)) = g.decide(&ALICE, "", 0) else {
        panic!("the store is claimed first");
    };
    assert!(
        claim.key.starts_with("modelroute:session:default/chat:"),
        "{claim:?}"
    );
    assert_eq!(claim.ttl_s, 60, "the route's sessionAffinitySeconds");
    assert_eq!(
        (claim.pod.as_str(), claim.expect.as_str()),
        (PODS[1], PODS[1])
    );
    // Another gateway had bound the session to a busy pod: followed (the claim renewed it
    // in the store: nothing to write).
    g.in_flight.insert(PODS[3].to_string(), 50);
    g.store = SharedSession::Answered(Some(PODS[3]));
    let d = g.decide(&ALICE, "", 0).unwrap();
    assert!(d.endpoints.starts_with(PODS[3]), "{}", d.endpoints);
    assert_eq!(d.session_store_write, None);
    assert!(!d.session_moved);
    // Confirmed here within a second: not claimed again, nothing written.
    g.store = SharedSession::Unasked;
    let d = g.decide(&ALICE, "", crate::session::RENEW_MS - 1).unwrap();
    assert!(d.endpoints.starts_with(PODS[3]));
    assert_eq!(d.session_store_write, None);
    // Past it: claimed for the pod this Envoy's binding names, though others are idler.
    let Err(RouteError::SessionUnknown(again, _)) = g.decide(&ALICE, "", crate::session::RENEW_MS)
    else {
        panic!("claimed again");
    };
    assert_eq!(
        (again.pod.as_str(), again.expect.as_str()),
        (PODS[3], PODS[3])
    );
    // The store knows nothing: this Envoy's binding holds, and is written there (only if
    // nothing is bound there meanwhile).
    g.store = SharedSession::Answered(None);
    let d = g.decide(&ALICE, "", crate::session::RENEW_MS).unwrap();
    assert!(d.endpoints.starts_with(PODS[3]));
    let write = d.session_store_write.unwrap();
    assert_eq!((write.pod.as_str(), write.expect.as_str()), (PODS[3], ""));
    assert_eq!((write.key.as_str(), write.ttl_s), (claim.key.as_str(), 60));
    // Confirmed, but the filter drops the pod: the session moves, and the move is written,
    // replacing only the pod this Envoy saw bound (another gateway's move meanwhile stays).
    g.store = SharedSession::Unasked;
    let queued = PodStats {
        up: true,
        waiting: 20.0,
        ..Default::default()
    };
    g.router.set_stats([(PODS[3].to_string(), queued)].into());
    let d = g.decide(&ALICE, "", crate::session::RENEW_MS + 1).unwrap();
    let moved = d.endpoints.split(',').next().unwrap().to_string();
    assert_ne!(moved, PODS[3]);
    assert!(d.session_moved, "counted as a failover");
    let write = d.session_store_write.unwrap();
    assert_eq!((write.pod, write.expect.as_str()), (moved, PODS[3]));
    // A pod the store names that is not one of this server's (it left): placed by load, and
    // written replacing that one (an empty expectation would never replace it).
    let mut fresh = Gateway::new(config(&PODS, true, true));
    fresh.in_flight.insert(PODS[3].to_string(), 50);
    fresh.store = SharedSession::Answered(Some("10.9.9.9:8000"));
    let d = fresh.decide(&ALICE, "", 0).unwrap();
    assert!(!d.endpoints.starts_with(PODS[3]));
    assert!(d
        .session_store_write
        .is_some_and(|w| w.key == claim.key && w.expect == "10.9.9.9:8000"));
}

#[test]
fn round_robin_gives_new_sessions_claimed_at_once_one_turn_each() {
    // Two new sessions claimed before either answer is back take one turn each; decided
    // again with the store's answers they take none more.
    let mut g = Gateway::new(config(&PODS, true, false));
    g.store = SharedSession::Unasked;
    let bob = [("x-session-id", "bob")];
    let Err(RouteError::SessionUnknown(alice, _)) = g.decide(&ALICE, "", 0) else {
        panic!("the store is claimed first");
    };
    let Err(RouteError::SessionUnknown(bob_claim, _)) = g.decide(&bob, "", 0) else {
        panic!("the store is claimed first");
    };
    assert_ne!(alice.pod, bob_claim.pod, "one turn each");
    for (headers, claim) in [(&ALICE, &alice), (&bob, &bob_claim)] {
        let answer: &'static str = claim.pod.clone().leak();
        g.store = SharedSession::Answered(Some(answer));
        let d = g.decide(headers, "", 0).unwrap();
        assert!(d.endpoints.starts_with(&claim.pod));
    }
    g.store = SharedSession::Off;
    let rotation: Vec<String> = (1..=4).map(|t| g.send(&[], "", t)).collect();
    assert_eq!(
        rotation
            .iter()
            .filter(|p| **p == alice.pod || **p == bob_claim.pod)
            .count(),
        2,
        "the rotation goes on past both: {rotation:?}"
    );
    assert!(!rotation[..2].contains(&alice.pod) && !rotation[..2].contains(&bob_claim.pod));
}

#[test]
fn a_claimed_pick_is_not_learnt_by_the_prefix_index_unless_the_store_grants_it() {
    // Prefix affinity: the pod a prompt went to is learnt. A claim for pod 0 that the store
    // answers with pod 2 (another gateway's binding) leaves only pod 2 knowing the prompt.
    let cfg =
        config(&PODS, true, true).with_settings(|s| s.scheduler = Scheduler::cache_affinity());
    let mut g = Gateway::new(cfg);
    g.prompt = "Answer as a pirate would, in three sentences at most. "
        .repeat(20)
        .into_bytes();
    g.store = SharedSession::Unasked;
    for pod in &PODS[1..] {
        g.in_flight.insert(pod.to_string(), 5);
    }
    let Err(RouteError::SessionUnknown(claim, _)) = g.decide(&ALICE, "", 0) else {
        panic!("the store is claimed first");
    };
    assert_eq!(claim.pod, PODS[0]);
    g.store = SharedSession::Answered(Some(PODS[2]));
    assert_eq!(g.send(&ALICE, "", 0), PODS[2]);
    // The same prompt without a session: pod 2 alone holds it, though pod 0 is idler.
    g.store = SharedSession::Off;
    g.in_flight = [(PODS[2].to_string(), 1)].into();
    assert_eq!(g.send(&[], "", 1), PODS[2]);
}

//! Fake-host tests of sticky sessions' bindings shared by gateways: routers stand for
//! Envoys in front of the same pods, with the store's calls answered by hand (or by a model
//! of the store's script).
use super::fake::FakeHost;
use super::shared_placement_tests::{body, gateway, none, pod, start, take_call, take_read, PODS};
use super::*;
use crate::in_flight::InFlight;
use filter_config::placement_store::PATH as STORE_PATH;
use filter_config::{FilterConfig, Match, Route, Rule, Server};

/// The first call the request made: a claim of its session in the store (bind it to the
/// pod in the body unless another is bound); its token and the pod claimed for.
fn take_claim(h: &mut FakeHost) -> (u32, String) {
    use filter_config::placement_store::{SESSION_EXPECT_HEADER, SESSION_PATH};
    let expect = h.calls.first().and_then(|(_, _, headers, _, _)| {
        let e = headers.iter().find(|(k, _)| k == SESSION_EXPECT_HEADER)?;
        Some(e.1.clone())
    });
    let (token, body) = take_call(h, SESSION_PATH);
    let pod = String::from_utf8(body).unwrap();
    assert_eq!(
        expect.as_deref(),
        Some(pod.as_str()),
        "a claim expects its own pod"
    );
    (token, pod)
}

/// A sticky route's session source: the `x-session-id` header.
fn session_header() -> [filter_config::SessionKeySource; 1] {
    [filter_config::SessionKeySource::new(
        filter_config::SessionKeyKind::Header,
        "x-session-id",
    )]
}

/// A gateway with a sticky route (the session in `x-session-id`), least-request picking and
/// the store.
fn sticky_gateway() -> Router {
    let route = Route::fixture(
        "chat",
        Some("chat"),
        &[],
        vec![Rule::fixture("default", Match::default(), &[("ds", 100)])],
    )
    .with_session_sticky(session_header().to_vec(), 60_000);
    let least_request = filter_config::Scheduler {
        filters: vec![],
        scores: vec![filter_config::WeightedPlugin {
            name: filter_config::Plugin::LeastRequest,
            weight: 1,
        }],
        ..filter_config::Scheduler::default()
    };
    let cfg = FilterConfig::fixture(vec![route], vec![Server::fixture("ds", "m", &PODS)])
        .with_settings(|s| {
            s.scheduler = least_request;
            s.shared_placements = gateway(1).settings.shared_placements.clone();
        });
    Router::compile(cfg, 1).unwrap()
}

/// What the store answers a claim: the pod claimed for (the session was free), or another.
#[derive(Clone, Copy)]
enum Store<'a> {
    Free,
    Bound(&'a str),
    /// Not a 200 (Redis did not answer).
    Failed,
}

/// Session alice's request through `gateway` with its shared data `shared` and `busy`
/// requests in flight on each pod. With `store`, the session is claimed there first, and
/// the store answers as it says; without, no call may be made before the request goes on.
/// Returns the host after the request went on.
fn sticky_send(
    gateway: &mut Router,
    shared: &mut std::collections::HashMap<String, (Vec<u8>, u32)>,
    busy: [u32; 4],
    store: Option<Store<'_>>,
) -> FakeHost {
    let body = r#"{"model":"chat","prompt":"hello"}"#;
    let mut h = FakeHost::post("/v1/completions", body, &[("x-session-id", "alice")]);
    h.shared = std::mem::take(shared);
    let (mut f, mut in_flight, action) = start(gateway, &mut h, body, busy);
    if let Some(store) = store {
        assert_eq!(action, Action::Pause, "the store is claimed first");
        let (token, claimed) = take_claim(&mut h);
        let (status, bound) = match store {
            Store::Free => (Some(200), claimed),
            Store::Bound(pod) => (Some(200), pod.to_string()),
            Store::Failed => (Some(503), String::new()),
        };
        h.call_answer = Some((status, bound.clone().into_bytes()));
        let n = bound.len();
        assert!(f.on_store_answer(Some(gateway), &mut h, &mut in_flight, token, n));
        assert_eq!(h.resumed, 1);
    } else {
        assert_eq!(action, Action::Continue);
    }
    assert_eq!(h.reply, None);
    *shared = std::mem::take(&mut h.shared);
    h
}

#[test]
fn gateways_share_a_sticky_sessions_binding_through_the_store() {
    let (mut a, mut b) = (sticky_gateway(), sticky_gateway());
    let (mut shared_a, mut shared_b) = (Default::default(), Default::default());
    // Gateway A: the session is free; A's claim for the pod it picks binds it, nothing more
    // is written.
    let h = sticky_send(&mut a, &mut shared_a, [0, 5, 5, 5], Some(Store::Free));
    assert_eq!((pod(&h).as_str(), h.calls.len()), (PODS[0], 0));
    // Within a second A neither asks nor writes; the session stays against the load.
    let h = sticky_send(&mut a, &mut shared_a, [9, 0, 0, 0], None);
    assert_eq!((pod(&h).as_str(), h.calls.len()), (PODS[0], 0));
    // Gateway B, whose view sends new requests elsewhere, follows A's binding.
    let h = sticky_send(
        &mut b,
        &mut shared_b,
        [9, 0, 0, 0],
        Some(Store::Bound(PODS[0])),
    );
    assert_eq!((pod(&h).as_str(), h.calls.len()), (PODS[0], 0));
    // No answer from the store (an error status): a third gateway places it by its own view.
    let mut c = sticky_gateway();
    let mut shared_c = Default::default();
    let h = sticky_send(&mut c, &mut shared_c, [9, 0, 0, 0], Some(Store::Failed));
    assert_ne!(pod(&h), PODS[0]);
    assert!(
        h.calls.is_empty(),
        "nothing written over what the store may hold"
    );
}

/// The store's sessions as `modelroute-ratelimit`'s script keeps them (tested against Redis
/// in `ratelimit/src/sessions.rs`): a call with a pod sets it if the session is unbound or
/// bound to the expected pod; every call answers the pod bound after it.
fn store_answers(bound: &mut Option<String>, call: &(Vec<(String, String)>, Vec<u8>)) -> Vec<u8> {
    use filter_config::placement_store::SESSION_EXPECT_HEADER;
    let (headers, body) = call;
    let expect = headers.iter().find(|(k, _)| k == SESSION_EXPECT_HEADER);
    let pod = String::from_utf8(body.clone()).unwrap();
    let replaces = match expect {
        None => true,
        Some((_, e)) => bound.as_ref().is_none_or(|b| b == e),
    };
    if !pod.is_empty() && replaces {
        *bound = Some(pod);
    }
    bound.clone().unwrap_or_default().into_bytes()
}

#[test]
fn two_gateways_meeting_a_new_session_at_once_send_it_to_one_pod() {
    // A and B each get a request of the new session before either has heard of it; their
    // views differ (each has its own requests in flight), so each would pick its own pod.
    let (mut a, mut b) = (sticky_gateway(), sticky_gateway());
    let body = r#"{"model":"chat","prompt":"hello"}"#;
    let request = || FakeHost::post("/v1/completions", body, &[("x-session-id", "alice")]);
    let (mut ha, mut hb) = (request(), request());
    let (mut fa, mut ia, action_a) = start(&mut a, &mut ha, body, [0, 5, 5, 5]);
    let (mut fb, mut ib, action_b) = start(&mut b, &mut hb, body, [5, 0, 5, 5]);
    assert_eq!((action_a, action_b), (Action::Pause, Action::Pause));
    // Both calls reach the store before either answer is back: A's first, then B's.
    let mut bound = None;
    let mut store = |h: &mut FakeHost| {
        let (token, _, headers, body, _) = h.calls.remove(0);
        (token, store_answers(&mut bound, &(headers, body)))
    };
    let (answer_a, answer_b) = (store(&mut ha), store(&mut hb));
    for (h, f, g, i, (token, answer)) in [
        (&mut ha, &mut fa, &mut a, &mut ia, answer_a),
        (&mut hb, &mut fb, &mut b, &mut ib, answer_b),
    ] {
        let n = answer.len();
        h.call_answer = Some((Some(200), answer));
        assert!(f.on_store_answer(Some(g), h, i, token, n));
    }
    // Then what each wrote after routing (not awaited).
    for h in [&mut ha, &mut hb] {
        while !h.calls.is_empty() {
            store(h);
        }
    }
    assert_eq!((ha.resumed, hb.resumed), (1, 1));
    assert_eq!(pod(&ha), PODS[0], "A's own pick");
    assert_eq!(pod(&hb), PODS[0], "B follows A's claim");
    assert_eq!(bound.as_deref(), Some(PODS[0]));
}

#[test]
fn a_sticky_session_follows_the_pod_that_answered_when_envoy_tried_another() {
    use filter_config::placement_store::SESSION_EXPECT_HEADER;
    let mut g = sticky_gateway();
    let mut shared = Default::default();
    let h = sticky_send(&mut g, &mut shared, [0, 5, 5, 5], Some(Store::Free));
    assert_eq!(pod(&h), PODS[0]);
    // The session's next requests go to pod 0, which refuses the connection; Envoy tries the
    // next pod of the ranking, pod 2. Its 503 binds nothing; its answer moves the session.
    for (status, moved) in [(503, false), (200, true)] {
        let body = r#"{"model":"chat","prompt":"hello"}"#;
        let mut h = FakeHost::post("/v1/completions", body, &[("x-session-id", "alice")]);
        h.shared = std::mem::take(&mut shared);
        let (mut f, _in_flight, action) = start(&mut g, &mut h, body, [0, 5, 5, 5]);
        assert_eq!((action, pod(&h).as_str()), (Action::Continue, PODS[0]));
        assert!(f.follows_session());
        h.upstream = Some(PODS[2].to_string());
        f.on_session_answered(&mut h, Some(&g), Some(status));
        let writes: Vec<(String, String)> = h
            .calls
            .iter()
            .map(|(_, _, headers, body, _)| {
                let expect = headers.iter().find(|(k, _)| k == SESSION_EXPECT_HEADER);
                let pod = String::from_utf8(body.clone()).unwrap();
                (pod, expect.map(|e| e.1.clone()).unwrap_or_default())
            })
            .collect();
        match moved {
            false => assert!(writes.is_empty(), "{writes:?}"),
            true => assert_eq!(writes, [(PODS[2].to_string(), PODS[0].to_string())]),
        }
        let counted = h.counters.contains(&crate::host::Counter::SessionMoved);
        assert_eq!(counted, moved, "{:?}", h.counters);
        shared = std::mem::take(&mut h.shared);
    }
    let h = sticky_send(&mut g, &mut shared, [0, 5, 5, 5], None);
    assert_eq!(
        pod(&h),
        PODS[2],
        "the session follows the pod that answered"
    );
}

#[test]
fn new_sessions_claimed_at_once_are_proposed_apart_and_counted_once() {
    // A new session's request is counted in flight on the pod it claims while it waits, so
    // a second new session claimed meanwhile is proposed elsewhere; decided again on the
    // same pod, it is not counted twice.
    let mut g = sticky_gateway();
    let body = r#"{"model":"chat","prompt":"hello"}"#;
    let key = g.server(0).map(|s| s.in_flight_key.clone()).unwrap();
    let counts = |h: &FakeHost| crate::in_flight::read_counts(h, &key, PODS.len());
    let session = |name: &str| FakeHost::post("/v1/completions", body, &[("x-session-id", name)]);
    let mut ha = session("alice");
    let (mut fa, mut ia, action) = start(&mut g, &mut ha, body, [0, 0, 5, 5]);
    assert_eq!(action, Action::Pause);
    let (token_a, claimed_a) = take_claim(&mut ha);
    let a = PODS.iter().position(|p| *p == claimed_a).unwrap();
    assert_eq!(counts(&ha)[a], 1, "counted on the pod claimed");
    // Bob's session arrives while alice's claim waits (the same shared data).
    let mut hb = session("bob");
    hb.shared = ha.shared.clone();
    let (mut fb, mut ib) = (Flow::new(), InFlight::default());
    fb.on_request_headers(Some(&g), &mut hb, false);
    let action = fb.on_request_body(Some(&mut g), &mut hb, &mut ib, body.len(), true);
    assert_eq!(action, Action::Pause);
    let (token_b, claimed_b) = take_claim(&mut hb);
    assert_ne!(claimed_a, claimed_b, "proposed apart");
    // Both granted: each goes where it claimed, counted once.
    ha.shared = hb.shared.clone();
    ha.call_answer = Some((Some(200), claimed_a.clone().into_bytes()));
    assert!(fa.on_store_answer(Some(&mut g), &mut ha, &mut ia, token_a, claimed_a.len()));
    assert_eq!(pod(&ha), claimed_a);
    hb.shared = ha.shared.clone();
    hb.call_answer = Some((Some(200), claimed_b.clone().into_bytes()));
    assert!(fb.on_store_answer(Some(&mut g), &mut hb, &mut ib, token_b, claimed_b.len()));
    assert_eq!(pod(&hb), claimed_b);
    let b = PODS.iter().position(|p| *p == claimed_b).unwrap();
    let after = counts(&hb);
    assert_eq!((after[a], after[b]), (1, 1), "{after:?}");
    // Carol's claim is answered with another gateway's pod: her count moves there.
    let mut hc = session("carol");
    hc.shared = hb.shared.clone();
    let (mut fc, mut ic) = (Flow::new(), InFlight::default());
    fc.on_request_headers(Some(&g), &mut hc, false);
    fc.on_request_body(Some(&mut g), &mut hc, &mut ic, body.len(), true);
    let (token_c, claimed_c) = take_claim(&mut hc);
    let c = PODS.iter().position(|p| *p == claimed_c).unwrap();
    assert_eq!(counts(&hc)[c], after[c] + 1);
    let elsewhere = if c == 3 { 2 } else { 3 };
    hc.call_answer = Some((Some(200), PODS[elsewhere].as_bytes().to_vec()));
    assert!(fc.on_store_answer(
        Some(&mut g),
        &mut hc,
        &mut ic,
        token_c,
        PODS[elsewhere].len()
    ));
    assert_eq!(pod(&hc), PODS[elsewhere]);
    let moved = counts(&hc);
    assert_eq!(
        (moved[c], moved[elsewhere]),
        (after[c], after[elsewhere] + 1),
        "{moved:?}"
    );
}

#[test]
fn a_weighted_target_is_chosen_once_per_request_whatever_the_store_is_asked() {
    // Two ModelServers 50/50 behind a sticky route: every request names a new session, so
    // each asks the store and is decided twice.
    let route = Route::fixture(
        "chat",
        Some("chat"),
        &[],
        vec![Rule::fixture(
            "default",
            Match::default(),
            &[("a", 50), ("b", 50)],
        )],
    )
    .with_session_sticky(session_header().to_vec(), 60_000);
    let servers = vec![
        Server::fixture("a", "m", &PODS[..2]),
        Server::fixture("b", "m", &PODS[2..]),
    ];
    let mut g = Router::compile(
        FilterConfig::fixture(vec![route], servers).with_settings(|s| {
            s.shared_placements = gateway(1).settings.shared_placements.clone();
        }),
        1,
    )
    .unwrap();
    let body = r#"{"model":"chat","prompt":"hello"}"#;
    let mut on_a = 0;
    for i in 0..8 {
        let session = format!("s-{i}");
        let mut h = FakeHost::post("/v1/completions", body, &[("x-session-id", &session)]);
        let mut in_flight = InFlight::default();
        let mut f = Flow::new();
        f.on_request_headers(Some(&g), &mut h, false);
        let action = f.on_request_body(Some(&mut g), &mut h, &mut in_flight, body.len(), true);
        assert_eq!(action, Action::Pause);
        let (token, _) = take_claim(&mut h);
        h.call_answer = Some((Some(200), Vec::new()));
        assert!(f.on_store_answer(Some(&mut g), &mut h, &mut in_flight, token, 0));
        on_a += usize::from(PODS[..2].contains(&pod(&h).as_str()));
    }
    assert_eq!(on_a, 4, "the 50/50 split holds");
}

#[test]
fn a_store_answer_longer_than_any_the_store_gives_is_not_read() {
    let mut g = sticky_gateway();
    let mut shared = Default::default();
    let long = format!("{}{}", PODS[0], " ".repeat(100_000));
    let h = sticky_send(&mut g, &mut shared, [9, 0, 0, 0], Some(Store::Bound(&long)));
    assert!(
        h.call_body_reads.borrow().is_empty(),
        "{:?}",
        h.call_body_reads
    );
    assert_ne!(pod(&h), PODS[0], "no answer: placed by this gateway's view");
}

#[test]
fn a_new_prompt_and_a_sticky_session_ask_the_store_in_turn_and_the_request_goes_on_once() {
    // The cache-affinity gateway with a sticky route: a new session with a new prompt.
    let mut g = gateway(1);
    let mut cfg = FilterConfig::fixture(
        vec![Route::fixture(
            "simple",
            Some("deepseek-simple"),
            &[],
            vec![Rule::fixture("default", Match::default(), &[("ds", 100)])],
        )
        .with_session_sticky(session_header().to_vec(), 60_000)],
        vec![Server::fixture("ds", "m", &PODS).with_timeout_ms(10_000)],
    );
    cfg.settings = g.settings.clone();
    g = Router::compile(cfg, 1).unwrap();
    let b = body(&"Speak like a sailor. ".repeat(20), "ahoy");
    let mut h = FakeHost::post("/v1/chat/completions", &b, &[("x-session-id", "alice")]);
    let (mut f, mut in_flight, action) = start(&mut g, &mut h, &b, [0, 0, 0, 0]);
    assert_eq!(action, Action::Pause);
    // The prompt's placement first (no gateway placed it), then the session's claim for
    // where the prompt goes; the placement is not asked again.
    let token = take_read(&mut h);
    let n = none().len();
    h.call_answer = Some((Some(200), none()));
    assert!(f.on_store_answer(Some(&mut g), &mut h, &mut in_flight, token, n));
    assert_eq!(h.resumed, 0, "still waiting: the session is claimed next");
    let (token, claimed) = take_claim(&mut h);
    assert!(h.calls.is_empty(), "{:?}", h.calls);
    h.call_answer = Some((Some(200), claimed.clone().into_bytes()));
    let n = claimed.len();
    assert!(f.on_store_answer(Some(&mut g), &mut h, &mut in_flight, token, n));
    assert_eq!((h.resumed, h.reply.as_ref()), (1, None));
    assert_eq!(pod(&h), claimed);
    // The placement record is written for the pod it went to; the claim bound the session.
    let writes: Vec<String> = h
        .calls
        .iter()
        .map(|(_, _, headers, _, _)| {
            let path = headers.iter().find(|(k, _)| k == ":path").unwrap();
            path.1.clone()
        })
        .collect();
    assert_eq!(writes, [STORE_PATH]);
}

#[test]
fn a_session_read_renews_the_binding_in_the_store_for_the_routes_ttl() {
    // The route binds sessions for 60 s; placements live 600 s in the store. A read renews
    // the binding there: for 60 s, else a session idle past its TTL would be followed again.
    let mut g = sticky_gateway();
    let body = r#"{"model":"chat","prompt":"hello"}"#;
    let mut h = FakeHost::post("/v1/completions", body, &[("x-session-id", "alice")]);
    let (_f, _in_flight, action) = start(&mut g, &mut h, body, [0, 0, 0, 0]);
    assert_eq!(action, Action::Pause);
    let (_, _, headers, _, _) = &h.calls[0];
    let ttl = headers
        .iter()
        .find(|(k, _)| k == filter_config::placement_store::TTL_HEADER);
    assert_eq!(ttl.map(|(_, v)| v.as_str()), Some("60"));
}

//! Fake-host tests of placements shared by gateways: two routers stand for two Envoys in
//! front of the same pods, with the store's calls answered by hand.
use super::fake::FakeHost;
use super::*;
use crate::in_flight::InFlight;
use filter_config::placement_store::{Answer, KEY_HEADER, PATH as STORE_PATH};
use filter_config::{FilterConfig, Match, Route, Rule, Server};

pub(super) const PODS: [&str; 4] = [
    "127.0.0.2:8000",
    "127.0.0.3:8000",
    "127.0.0.4:8000",
    "127.0.0.5:8000",
];

/// A gateway: the tuned profile (prefix-cache 3, least-request 1) and the store.
pub(super) fn gateway(seed: u64) -> Router {
    let cfg = FilterConfig::fixture(
        vec![Route::fixture(
            "simple",
            Some("deepseek-simple"),
            &[],
            vec![Rule::fixture("default", Match::default(), &[("ds", 100)])],
        )],
        vec![Server::fixture("ds", "m", &PODS).with_timeout_ms(10_000)],
    )
    .with_settings(|s| {
        s.scheduler = filter_config::Scheduler::cache_affinity();
        s.shared_placements = Some(filter_config::SharedPlacements {
            cluster: "modelroute_ratelimit".into(),
            redis: "127.0.0.1:6379".into(),
            timeout_ms: 20,
            ttl_s: 600,
        });
    });
    Router::compile(cfg, seed).unwrap()
}

/// The store's answer: no record, nothing placed anywhere.
pub(super) fn none() -> Vec<u8> {
    Answer::default().encode()
}

/// The store's answer: `record`, another gateway's.
fn following(record: Vec<u8>) -> Vec<u8> {
    Answer {
        record,
        placed_blocks: vec![0, 0, 0, 1],
    }
    .encode()
}

pub(super) fn body(system: &str, user: &str) -> String {
    format!(
        r#"{{"model":"deepseek-simple","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{user}"}}]}}"#
    )
}

/// The pod a routed request was sent to.
pub(super) fn pod(h: &FakeHost) -> String {
    let endpoints = h.get("x-gateway-destination-endpoint").unwrap_or_default();
    endpoints.split(',').next().unwrap_or_default().to_string()
}

/// Starts `body`'s request through `gateway` on `h`, with `busy` requests in flight on each
/// pod (this gateway's counts): the flow, its in-flight counts and what the body returned.
pub(super) fn start(
    gateway: &mut Router,
    h: &mut FakeHost,
    body: &str,
    busy: [u32; 4],
) -> (Flow, InFlight, Action) {
    let counts: Vec<u8> = busy.iter().flat_map(|c| c.to_le_bytes()).collect();
    let key = gateway.server(0).map(|s| s.in_flight_key.clone()).unwrap();
    h.shared.insert(key, (counts, 1));
    let mut in_flight = InFlight::default();
    let mut f = Flow::new();
    f.on_request_headers(Some(gateway), h, false);
    let action = f.on_request_body(Some(gateway), h, &mut in_flight, body.len(), true);
    (f, in_flight, action)
}

/// The first call the request made: a read of the store of placements; its token.
pub(super) fn take_read(h: &mut FakeHost) -> u32 {
    let (token, body) = take_call(h, STORE_PATH);
    assert!(body.is_empty(), "the first call reads");
    token
}

/// The first call the request made, to the store at `path`: its token and body.
pub(super) fn take_call(h: &mut FakeHost, path: &str) -> (u32, Vec<u8>) {
    let (token, cluster, headers, body, _) = h.calls.remove(0);
    assert_eq!(cluster, "modelroute_ratelimit");
    assert!(headers.contains(&(":path".to_string(), path.to_string())));
    assert!(headers.iter().any(|(k, _)| k == KEY_HEADER));
    (token, body)
}

/// Sends `body` through `gateway` with `busy` requests in flight on each pod (this
/// gateway's counts); the store answers `answer` (status, record) to its read. Returns the
/// host after the request went on, and the record the gateway wrote to the store, if any.
fn send(
    gateway: &mut Router,
    body: &str,
    busy: [u32; 4],
    answer: (Option<u32>, Vec<u8>),
) -> (FakeHost, Option<Vec<u8>>) {
    let mut h = FakeHost::post("/v1/chat/completions", body, &[]);
    let (mut f, mut in_flight, action) = start(gateway, &mut h, body, busy);
    assert_eq!(action, Action::Pause, "a new prompt waits for the store");
    assert_eq!(h.get("x-gateway-destination-endpoint"), None);
    let token = take_read(&mut h);
    let size = answer.1.len();
    h.call_answer = Some(answer);
    assert!(f.on_store_answer(Some(gateway), &mut h, &mut in_flight, token, size));
    assert_eq!(h.resumed, 1);
    assert_eq!(h.reply, None);
    let written = h.calls.pop().map(|(_, _, _, record, _)| record);
    (h, written)
}

#[test]
fn a_second_gateway_follows_the_first_gateways_placement_of_a_new_prompt() {
    let system = "You are a careful assistant who answers briefly. ".repeat(12);
    // Gateway A: pods 0-2 busy, so it places the new prompt on pod 3, and writes it.
    let mut a = gateway(1);
    let (h, record) = send(
        &mut a,
        &body(&system, "hello"),
        [3, 3, 3, 0],
        (Some(200), none()),
    );
    assert_eq!(pod(&h), PODS[3]);
    let record = record.expect("the placement is written to the store");
    // Gateway B, idle everywhere but on pod 3: on its own it would not pick pod 3...
    let mut b = gateway(2);
    let (h, _) = send(
        &mut b,
        &body(&system, "good morning"),
        [0, 0, 0, 2],
        (Some(200), none()),
    );
    assert_ne!(pod(&h), PODS[3]);
    // ...with A's record from the store it does, and learns it: the next turn stays, with
    // no store call (the prompt is no longer new to it).
    let mut b = gateway(2);
    let (h, written) = send(
        &mut b,
        &body(&system, "good morning"),
        [0, 0, 0, 2],
        (Some(200), following(record)),
    );
    assert_eq!(pod(&h), PODS[3]);
    assert_eq!(written, None, "a placement followed is not written again");
    let (action, h) = send_at_once(&mut b, &body(&system, "good morning, again"), false);
    assert_eq!(action, Action::Continue);
    assert!(h.calls.is_empty());
    assert_eq!(pod(&h), PODS[3]);
}

/// Sends `body` through `gateway` and returns what the body hook answered, the store's call
/// refused when `refuse_calls`.
fn send_at_once(gateway: &mut Router, body: &str, refuse_calls: bool) -> (Action, FakeHost) {
    let mut h = FakeHost::post("/v1/chat/completions", body, &[]);
    h.refuse_dispatch = refuse_calls;
    let mut f = Flow::new();
    f.on_request_headers(Some(gateway), &mut h, false);
    let n = body.len();
    let action = f.on_request_body(Some(gateway), &mut h, &mut InFlight::default(), n, true);
    (action, h)
}

#[test]
fn an_answer_after_the_request_ended_routes_nothing() {
    let mut g = gateway(1);
    let b = body(&"Speak like a sailor. ".repeat(20), "ahoy");
    let mut h = FakeHost::post("/v1/chat/completions", &b, &[]);
    let mut in_flight = InFlight::default();
    let mut f = Flow::new();
    f.on_request_headers(Some(&g), &mut h, false);
    let action = f.on_request_body(Some(&mut g), &mut h, &mut in_flight, b.len(), true);
    assert_eq!(action, Action::Pause);
    let (token, ..) = h.calls.remove(0);
    // The client went away while the store was asked.
    f.on_done(&mut h, &mut in_flight);
    h.call_answer = Some((Some(200), none()));
    let n = none().len();
    assert!(!f.on_store_answer(Some(&mut g), &mut h, &mut in_flight, token, n));
    assert_eq!((h.resumed, h.calls.len()), (0, 0));
    assert_eq!(h.get("x-gateway-destination-endpoint"), None);
}

#[test]
fn without_an_answer_in_time_the_gateway_places_on_its_own() {
    let system = "Answer in the voice of a pirate, every time. ".repeat(12);
    for answer in [(None, vec![]), (Some(503), b"no healthy upstream".to_vec())] {
        let mut g = gateway(1);
        let (h, written) = send(&mut g, &body(&system, "ahoy"), [3, 3, 3, 0], answer);
        assert_eq!(pod(&h), PODS[3]);
        assert!(
            written.is_some(),
            "its own placement is offered to the store"
        );
    }
    // A store call the host refuses: no pause at all.
    let (action, h) = send_at_once(&mut gateway(1), &body(&system, "ahoy"), true);
    assert_eq!(action, Action::Continue);
    assert!(!pod(&h).is_empty());
}

#[test]
fn a_prompt_placed_anew_goes_to_the_pod_every_gateway_has_placed_least_on() {
    // This gateway's own index holds nothing, so on its own it breaks the tie by hash; the
    // store says pods 0, 1 and 3 already hold prompts other gateways placed.
    for (k, system) in [
        "Translate everything into Latin. ",
        "Only answer with haiku. ",
    ]
    .iter()
    .enumerate()
    {
        let mut g = gateway(k as u64);
        let placed = Answer {
            record: vec![],
            placed_blocks: vec![1, 1, 0, 1],
        };
        let (h, written) = send(
            &mut g,
            &body(&system.repeat(12), "hi"),
            [0, 0, 0, 0],
            (Some(200), placed.encode()),
        );
        assert_eq!(pod(&h), PODS[2]);
        assert!(written.is_some());
    }
}

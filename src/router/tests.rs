use super::*;
use filter_config::{
    HeaderMatch, Match, Route as CRoute, Rule as CRule, Server as CServer, StringMatch,
};

fn server(name: &str, model: &str, pods: &[&str]) -> CServer {
    CServer::fixture(name, model, pods).with_timeout_ms(10_000)
}

/// The seed's ModelServers and ModelRoutes (scenarios 1-4).
fn seed() -> FilterConfig {
    // Round-robin picking (no scheduler plugins): these tests pin routing and rotation.
    FilterConfig::fixture(
        vec![
            CRoute::fixture(
                "deepseek-simple",
                Some("deepseek-simple"),
                &[],
                vec![CRule::fixture(
                    "default",
                    Match::default(),
                    &[("deepseek-r1-1-5b", 100)],
                )],
            ),
            CRoute::fixture(
                "deepseek-lora",
                None,
                &["lora-A", "lora-B"],
                vec![CRule::fixture(
                    "lora-route",
                    Match::default(),
                    &[("deepseek-r1-1-5b", 100)],
                )],
            ),
            CRoute::fixture(
                "deepseek-subset",
                Some("deepseek-subset"),
                &[],
                vec![CRule::fixture(
                    "deepseek-r1-route",
                    Match::default(),
                    &[("deepseek-r1-1-5b-v1", 70), ("deepseek-r1-1-5b-v2", 30)],
                )],
            ),
            CRoute::fixture(
                "deepseek-multi-models",
                Some("deepseek-multi-models"),
                &[],
                vec![
                    CRule::fixture(
                        "premium",
                        Match {
                            headers: vec![HeaderMatch {
                                name: "user-type".into(),
                                value: StringMatch::Exact("premium".into()),
                            }],
                            ..Match::default()
                        },
                        &[("deepseek-r1-7b", 100)],
                    ),
                    CRule::fixture("default", Match::default(), &[("deepseek-r1-1-5b", 100)]),
                ],
            ),
        ],
        vec![
            server(
                "deepseek-r1-1-5b",
                "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
                &["127.0.0.11:8000", "127.0.0.12:8000", "127.0.0.13:8000"],
            ),
            server(
                "deepseek-r1-7b",
                "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                &["127.0.0.21:8000"],
            ),
            server(
                "deepseek-r1-1-5b-v1",
                "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B-v1",
                &["127.0.0.31:8000"],
            ),
            server(
                "deepseek-r1-1-5b-v2",
                "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B-v2",
                &["127.0.0.32:8000"],
            ),
        ],
    )
}

fn no_headers(_: &str) -> Option<String> {
    None
}

fn decide(
    r: &mut Router,
    model: &str,
    headers: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Decision), RouteError> {
    let d = r.decide(&Request {
        model,
        path: "/v1/completions",
        query: "",
        header: headers,
        prompt: b"",
        in_flight: &no_in_flight,
        load_reports: &no_load_reports,
        shared_data: &no_shared_data,
        shared: SharedPlacement::Off,
        session_store: SharedSession::Off,
        target: None,
        now_ms: 0,
    })?;
    Ok((r.server(d.server).unwrap().name.clone(), d))
}

#[test]
fn simple_model_routes_to_its_server_with_rewrite_target() {
    let mut r = Router::compile(seed(), 1).unwrap();
    let (server, d) = decide(&mut r, "deepseek-simple", &no_headers).unwrap();
    assert_eq!(server, "default/deepseek-r1-1-5b");
    assert!(!d.lora);
    assert_eq!(
        r.server(d.server).unwrap().model.as_deref(),
        Some("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    );
}

#[test]
fn lora_adapter_routes_and_is_marked_lora() {
    let mut r = Router::compile(seed(), 1).unwrap();
    let (server, d) = decide(&mut r, "lora-B", &no_headers).unwrap();
    assert_eq!(server, "default/deepseek-r1-1-5b");
    assert!(d.lora);
}

#[test]
fn base_model_routes_win_over_lora_routes_without_fallback() {
    let mut c = seed();
    // A base route named "lora-A" whose only rule never matches: no fallback to the LoRA route.
    c.routes.push(CRoute::fixture(
        "shadow",
        Some("lora-A"),
        &[],
        vec![CRule::fixture(
            "never",
            Match {
                body_model: Some("other".into()),
                ..Match::default()
            },
            &[("deepseek-r1-7b", 1)],
        )],
    ));
    let mut r = Router::compile(c, 1).unwrap();
    assert_eq!(
        decide(&mut r, "lora-A", &no_headers).unwrap_err(),
        RouteError::NoRuleMatched
    );
}

#[test]
fn oldest_route_with_a_matching_rule_wins_and_non_matching_routes_are_skipped() {
    let mut c = seed();
    c.routes.insert(
        0,
        CRoute::fixture(
            "older-premium-only",
            Some("deepseek-simple"),
            &[],
            vec![CRule::fixture(
                "p",
                Match {
                    headers: vec![HeaderMatch {
                        name: "user-type".into(),
                        value: StringMatch::Exact("premium".into()),
                    }],
                    ..Match::default()
                },
                &[("deepseek-r1-7b", 1)],
            )],
        ),
    );
    let mut r = Router::compile(c, 1).unwrap();
    let premium = |n: &str| (n == "user-type").then(|| "premium".to_string());
    assert_eq!(
        decide(&mut r, "deepseek-simple", &premium).unwrap().0,
        "default/deepseek-r1-7b"
    );
    assert_eq!(
        decide(&mut r, "deepseek-simple", &no_headers).unwrap().0,
        "default/deepseek-r1-1-5b"
    );
}

#[test]
fn header_rule_first_then_default_rule() {
    let mut r = Router::compile(seed(), 1).unwrap();
    let premium = |n: &str| (n == "user-type").then(|| "premium".to_string());
    let basic = |n: &str| (n == "user-type").then(|| "basic".to_string());
    assert_eq!(
        decide(&mut r, "deepseek-multi-models", &premium).unwrap().0,
        "default/deepseek-r1-7b"
    );
    assert_eq!(
        decide(&mut r, "deepseek-multi-models", &basic).unwrap().0,
        "default/deepseek-r1-1-5b"
    );
    assert_eq!(
        decide(&mut r, "deepseek-multi-models", &no_headers)
            .unwrap()
            .0,
        "default/deepseek-r1-1-5b"
    );
}

#[test]
fn missing_header_compares_as_empty_string() {
    let mut c = seed();
    c.routes[0].rules.insert(
        0,
        CRule::fixture(
            "empty",
            Match {
                headers: vec![HeaderMatch {
                    name: "x-tier".into(),
                    value: StringMatch::Exact(String::new()),
                }],
                ..Match::default()
            },
            &[("deepseek-r1-7b", 1)],
        ),
    );
    let mut r = Router::compile(c, 1).unwrap();
    assert_eq!(
        decide(&mut r, "deepseek-simple", &no_headers).unwrap().0,
        "default/deepseek-r1-7b"
    );
}

#[test]
fn regex_is_unanchored_and_uri_and_body_model_are_anded() {
    let mut c = seed();
    c.routes[0].rules.insert(
        0,
        CRule::fixture(
            "chat-only",
            Match {
                headers: vec![HeaderMatch {
                    name: "x-team".into(),
                    value: StringMatch::Regex("ml".into()),
                }],
                uri: Some(StringMatch::Prefix("/v1/chat".into())),
                body_model: Some("deepseek-simple".into()),
            },
            &[("deepseek-r1-7b", 1)],
        ),
    );
    let mut r = Router::compile(c, 1).unwrap();
    let team = |n: &str| (n == "x-team").then(|| "team-ml-infra".to_string());
    let chat = Request {
        model: "deepseek-simple",
        path: "/v1/chat/completions",
        query: "",
        header: &team,
        prompt: b"",
        in_flight: &no_in_flight,
        load_reports: &no_load_reports,
        shared_data: &no_shared_data,
        shared: SharedPlacement::Off,
        session_store: SharedSession::Off,
        target: None,
        now_ms: 0,
    };
    let d = r.decide(&chat).unwrap();
    assert_eq!(r.server(d.server).unwrap().name, "default/deepseek-r1-7b");
    let completions = Request {
        model: "deepseek-simple",
        path: "/v1/completions",
        query: "",
        header: &team,
        prompt: b"",
        in_flight: &no_in_flight,
        load_reports: &no_load_reports,
        shared_data: &no_shared_data,
        shared: SharedPlacement::Off,
        session_store: SharedSession::Off,
        target: None,
        now_ms: 0,
    };
    let d = r.decide(&completions).unwrap();
    assert_eq!(r.server(d.server).unwrap().name, "default/deepseek-r1-1-5b");
}

#[test]
fn unknown_model_missing_server_and_empty_server_are_distinct_errors() {
    let mut c = seed();
    c.routes.push(CRoute::fixture(
        "ghost",
        Some("ghost"),
        &[],
        vec![CRule::fixture("r", Match::default(), &[("nope", 1)])],
    ));
    c.servers[1].endpoints.clear();
    let mut r = Router::compile(c, 1).unwrap();
    assert_eq!(
        decide(&mut r, "nobody", &no_headers).unwrap_err(),
        RouteError::ModelNotFound
    );
    assert_eq!(
        decide(&mut r, "ghost", &no_headers).unwrap_err(),
        RouteError::ServerNotFound("default/nope".into())
    );
    let premium = |n: &str| (n == "user-type").then(|| "premium".to_string());
    assert_eq!(
        decide(&mut r, "deepseek-multi-models", &premium).unwrap_err(),
        RouteError::NoReadyEndpoints("default/deepseek-r1-7b".into())
    );
}

#[test]
fn seventy_thirty_split_over_one_hundred_requests() {
    let mut r = Router::compile(seed(), 1).unwrap();
    let mut v1 = 0;
    for _ in 0..100 {
        if decide(&mut r, "deepseek-subset", &no_headers)
            .unwrap()
            .0
            .ends_with("-v1")
        {
            v1 += 1;
        }
    }
    assert_eq!(v1, 70);
}

#[test]
fn pods_rotate_and_fallbacks_follow_in_order() {
    let mut r = Router::compile(seed(), 1).unwrap();
    let eps: Vec<String> = (0..4)
        .map(|_| {
            decide(&mut r, "deepseek-simple", &no_headers)
                .unwrap()
                .1
                .endpoints
        })
        .collect();
    assert_eq!(eps[0], "127.0.0.11:8000,127.0.0.12:8000,127.0.0.13:8000");
    assert_eq!(eps[1], "127.0.0.12:8000,127.0.0.13:8000,127.0.0.11:8000");
    assert_eq!(eps[2], "127.0.0.13:8000,127.0.0.11:8000,127.0.0.12:8000");
    assert_eq!(eps[3], eps[0]);
    let mut c = seed();
    c.settings.endpoint_fallbacks = 0;
    let mut r = Router::compile(c, 1).unwrap();
    assert_eq!(
        decide(&mut r, "deepseek-simple", &no_headers)
            .unwrap()
            .1
            .endpoints,
        "127.0.0.11:8000"
    );
    // The largest count the schema allows lists every pod (32-bit `usize` on wasm32 must not
    // wrap `u32::MAX + 1` to an empty list).
    let mut c = seed();
    c.settings.endpoint_fallbacks = u32::MAX;
    let mut r = Router::compile(c, 1).unwrap();
    let eps = decide(&mut r, "deepseek-simple", &no_headers)
        .unwrap()
        .1
        .endpoints;
    assert_eq!(eps.split(',').count(), 3, "{eps}");
}

#[test]
fn property_never_picks_a_pod_outside_the_chosen_server() {
    let mut r = Router::compile(seed(), 7).unwrap();
    let members: HashMap<String, Vec<String>> = seed()
        .servers
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.endpoints.iter().map(|e| e.address.clone()).collect(),
            )
        })
        .collect();
    let models = [
        "deepseek-simple",
        "lora-A",
        "deepseek-subset",
        "deepseek-multi-models",
    ];
    let mut rng = Rng::new(3);
    for _ in 0..2000 {
        let m = models[rng.below(4) as usize];
        let premium = rng.below(2) == 0;
        let h = move |n: &str| (premium && n == "user-type").then(|| "premium".to_string());
        let (server, d) = decide(&mut r, m, &h).unwrap();
        for ep in d.endpoints.split(',') {
            assert!(
                members[&server].iter().any(|a| a == ep),
                "{ep} not in {server}"
            );
        }
    }
}

#[test]
fn invalid_configs_are_rejected_with_a_reason() {
    let mut c = seed();
    c.version = 99;
    assert!(Router::compile(c, 0)
        .unwrap_err()
        .0
        .contains("schema version 99"));
    let mut c = seed();
    c.routes[0].rules[0].matches.uri = Some(StringMatch::Regex("(".into()));
    assert!(Router::compile(c, 0)
        .unwrap_err()
        .0
        .contains("invalid regex"));
    let mut c = seed();
    c.routes[2].rules[0]
        .targets
        .iter_mut()
        .for_each(|t| t.weight = 0);
    assert!(Router::compile(c, 0)
        .unwrap_err()
        .0
        .contains("positive weight"));
    let mut c = seed();
    c.servers.push(c.servers[0].clone());
    assert!(Router::compile(c, 0)
        .unwrap_err()
        .0
        .contains("listed twice"));
    let mut c = seed();
    c.settings.cluster_header = "X-Bad Header".into();
    assert!(Router::compile(c, 0).is_err());
    assert!(Router::from_json(b"{not json", 0).is_err());
}

#[test]
fn models_list_names_every_route_model_and_adapter_once() {
    let mut c = seed();
    c.routes.push(CRoute::fixture(
        "dup",
        Some("deepseek-simple"),
        &[],
        vec![CRule::fixture(
            "r",
            Match::default(),
            &[("deepseek-r1-7b", 1)],
        )],
    ));
    let r = Router::compile(c, 0).unwrap();
    let v: serde_json::Value = serde_json::from_str(r.models_body()).unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "deepseek-simple",
            "lora-A",
            "lora-B",
            "deepseek-subset",
            "deepseek-multi-models"
        ]
    );
    assert_eq!(v["object"], "list");
}

#[test]
fn a_pod_is_scraped_once_with_the_in_flight_count_of_each_server_that_counts_it() {
    use filter_config::Role;
    let pods = ["10.0.0.1:8000", "10.0.0.2:8000"];
    let a = server("a", "m", &pods);
    // Another cluster listing one of a's pods: its own counts.
    let b = server("b", "m", &pods[..1]);
    // a's cluster and pod list under another name: a's counts, not a second slot.
    let c = CServer {
        cluster: a.cluster.clone(),
        ..server("c", "m", &pods)
    };
    // A PD server (prefill pod 10.0.0.3): its prefill legs are side calls, never counted in
    // flight.
    let pd = || {
        server("pd", "m", &[]).with_pd(
            "group",
            None,
            &[
                ("10.0.0.3:8000", Some("g0"), Some(Role::Prefill)),
                ("10.0.0.4:8000", Some("g0"), Some(Role::Decode)),
            ],
        )
    };
    let r = Router::compile(FilterConfig::fixture(vec![], vec![a, b, c, pd()]), 1).unwrap();
    let targets = r.scrape_targets();
    let slots: Vec<(&str, usize)> = targets
        .iter()
        .map(|t| (t.address.as_str(), t.in_flight_slots.len()))
        .collect();
    assert_eq!(
        slots,
        [
            ("10.0.0.1:8000", 2),
            ("10.0.0.2:8000", 1),
            ("10.0.0.3:8000", 0),
            ("10.0.0.4:8000", 1)
        ]
    );
    // The prefill pod also listed as a plain pod by another server, before or after the PD
    // server: still no slot, since its prefill legs are never counted.
    let plain = || server("plain", "m", &["10.0.0.3:8000"]);
    for servers in [vec![plain(), pd()], vec![pd(), plain()]] {
        let r = Router::compile(FilterConfig::fixture(vec![], servers), 1).unwrap();
        let prefill = r
            .scrape_targets()
            .into_iter()
            .find(|t| t.address == "10.0.0.3:8000")
            .unwrap();
        assert!(prefill.in_flight_slots.is_empty());
    }
}

/// A PD server of `pods` (address, group, role) picked by session-affinity (`weight`) and
/// random, least-request filtering.
fn pd_sessions(pods: &[(&str, Option<&str>, Option<filter_config::Role>)], weight: u32) -> Router {
    use filter_config::{Plugin, Scheduler, WeightedPlugin};
    let route = CRoute::fixture(
        "pd",
        Some("pd"),
        &[],
        vec![CRule::fixture("default", Match::default(), &[("pd", 100)])],
    );
    let pd = server("pd", "m", &[]).with_pd("group", None, pods);
    let cfg = FilterConfig::fixture(vec![route], vec![pd]).with_settings(|s| {
        s.scheduler = Scheduler {
            filters: vec![Plugin::LeastRequest],
            scores: [(Plugin::SessionAffinity, weight), (Plugin::Random, 1)]
                .into_iter()
                .map(|(name, weight)| WeightedPlugin { name, weight })
                .collect(),
            ..Scheduler::default()
        }
    });
    Router::compile(cfg, 1).unwrap()
}

/// Session `s-1`'s request at `now_ms`, its bindings kept in `store`: (prefill, decode).
fn pd_session_pick(
    r: &mut Router,
    store: &std::cell::RefCell<HashMap<String, Vec<u8>>>,
    now_ms: u64,
) -> (String, String) {
    let d = r
        .decide(&Request {
            model: "pd",
            path: "/v1/completions",
            query: "",
            header: &|h: &str| (h == "x-session-id").then(|| "s-1".to_string()),
            prompt: b"",
            in_flight: &no_in_flight,
            load_reports: &no_load_reports,
            shared_data: &|k: &str| store.borrow().get(k).cloned(),
            shared: SharedPlacement::Off,
            session_store: SharedSession::Off,
            target: None,
            now_ms,
        })
        .unwrap();
    for (k, v) in d.session_bindings {
        store.borrow_mut().insert(k, v);
    }
    let pair = d.pairs.first().unwrap();
    (pair.prefill.clone(), pair.decode.clone())
}

#[test]
fn a_pd_sessions_prefill_and_decode_pods_are_bound_apart_and_followed() {
    use filter_config::Role;
    let pods = [
        ("10.0.0.3:8000", Some("g0"), Some(Role::Prefill)),
        ("10.0.0.5:8000", Some("g0"), Some(Role::Prefill)),
        ("10.0.0.4:8000", Some("g0"), Some(Role::Decode)),
        ("10.0.0.6:8000", Some("g0"), Some(Role::Decode)),
    ];
    for (weight, sticks) in [(10, true), (0, false)] {
        let mut r = pd_sessions(&pods, weight);
        let store = std::cell::RefCell::new(HashMap::new());
        let pairs: std::collections::HashSet<_> = (0..24)
            .map(|now_ms| pd_session_pick(&mut r, &store, now_ms))
            .collect();
        // Both pods bound (two slots), or nothing written without the plugin.
        assert_eq!(store.borrow().len(), if sticks { 2 } else { 0 });
        assert_eq!(pairs.len() == 1, sticks, "weight {weight}: {pairs:?}");
    }
}

#[test]
fn a_pd_session_is_bound_to_the_decode_pod_it_went_to_when_its_own_group_had_no_prefill_left() {
    use filter_config::Role;
    let pods = [
        ("10.0.0.10:8000", Some("g0"), Some(Role::Prefill)),
        ("10.0.0.11:8000", Some("g0"), Some(Role::Decode)),
        ("10.0.0.20:8000", Some("g1"), Some(Role::Prefill)),
        ("10.0.0.21:8000", Some("g1"), Some(Role::Decode)),
    ];
    let mut r = pd_sessions(&pods, 10);
    let store = std::cell::RefCell::new(HashMap::new());
    let (_, home) = pd_session_pick(&mut r, &store, 0);
    let (prefill, group) = if home == "10.0.0.11:8000" {
        ("10.0.0.10:8000", "g0")
    } else {
        ("10.0.0.20:8000", "g1")
    };
    // The home group's prefill pod queues past maxWaitingRequests: the bound decode pod still
    // ranks first, but pairing skips it and the request goes to the other group.
    let queued = crate::metrics::PodStats {
        up: true,
        waiting: 20.0,
        ..Default::default()
    };
    r.set_stats([(prefill.to_string(), queued)].into_iter().collect());
    let (_, moved) = pd_session_pick(&mut r, &store, 1);
    assert_ne!(moved, home, "{group}");
    // The binding followed the request: with the queue gone the session stays where it went.
    r.set_stats(HashMap::new());
    for now_ms in 2..10 {
        assert_eq!(pd_session_pick(&mut r, &store, now_ms).1, moved, "{group}");
    }
}

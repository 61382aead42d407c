//! Fake-host tests of prefix affinity with bounded load (`boundedLoad`) through the whole
//! request flow, with two workers whose prefix indexes keep in step through shared data.
use super::fake::FakeHost;
use super::*;
use crate::in_flight::InFlight;
use filter_config::{FilterConfig, Match, Route, Rule, Scheduler, Server};

/// One ModelServer of four pods, picked by the cache-affinity profile with `boundedLoad`.
fn config(bounded_load: f64) -> FilterConfig {
    let pods = [
        "127.0.0.2:8000",
        "127.0.0.3:8000",
        "127.0.0.4:8000",
        "127.0.0.5:8000",
    ];
    FilterConfig::fixture(
        vec![Route::fixture(
            "chat",
            Some("chat"),
            &[],
            vec![Rule::fixture("default", Match::default(), &[("pool", 100)])],
        )],
        vec![Server::fixture("pool", "m", &pods)],
    )
    .with_settings(|s| {
        s.scheduler = Scheduler {
            prefix_bounded_load: bounded_load,
            ..Scheduler::cache_affinity()
        }
    })
}

/// Two workers sharing one store: routes completions and keeps their indexes in step as the
/// root tick would after every request.
struct Workers {
    routers: [Router; 2],
    in_flight: [InFlight; 2],
    shared: std::collections::HashMap<String, (Vec<u8>, u32)>,
}

impl Workers {
    fn new(bounded_load: f64) -> Self {
        let cfg = config(bounded_load);
        Workers {
            routers: [
                Router::compile(cfg.clone(), 1).unwrap(),
                Router::compile(cfg, 2).unwrap(),
            ],
            in_flight: [InFlight::default(), InFlight::default()],
            shared: Default::default(),
        }
    }

    /// The pod `worker` sends `prompt` to.
    fn route(&mut self, worker: usize, prompt: &str) -> String {
        let body = serde_json::json!({"model": "chat", "prompt": prompt}).to_string();
        let mut h = FakeHost::post("/v1/completions", &body, &[]);
        h.shared = std::mem::take(&mut self.shared);
        let r = &mut self.routers[worker];
        let mut f = Flow::new();
        f.on_request_headers(Some(r), &mut h, false);
        f.on_request_body(
            Some(r),
            &mut h,
            &mut self.in_flight[worker],
            body.len(),
            true,
        );
        assert_eq!(h.reply, None);
        f.on_done(&mut h, &mut self.in_flight[worker]);
        for r in &mut self.routers {
            r.sync_prefixes(&mut h);
        }
        self.shared = std::mem::take(&mut h.shared);
        let endpoints = h.get("x-gateway-destination-endpoint").unwrap();
        endpoints.split(',').next().unwrap().to_string()
    }
}

#[test]
fn a_popular_prompts_new_conversations_spread_and_each_next_turn_stays_through_either_worker() {
    let system = "You are the support assistant of a bicycle shop; answer precisely. ".repeat(30);
    let opening = |i: usize| {
        format!("{system}Customer {i} asks: which saddle suits a long tour on gravel roads?")
    };
    for (bound, spreads) in [(0.0, false), (1.5, true)] {
        let mut w = Workers::new(bound);
        let home: Vec<String> = (0..40).map(|i| w.route(i % 2, &opening(i))).collect();
        let mut counts = std::collections::HashMap::new();
        for p in &home {
            *counts.entry(p.clone()).or_insert(0) += 1;
        }
        let top = counts.values().copied().max().unwrap_or(0);
        assert_eq!(
            counts.len() >= 2 && top <= 24,
            spreads,
            "bound {bound}: {counts:?}"
        );
        // Each next turn through the other worker than its opening.
        for (i, pod) in home.iter().enumerate() {
            let next = format!(
                "{} The assistant says: a leather one. Customer {i} asks: and when it rains?",
                opening(i)
            );
            assert_eq!(
                &w.route((i + 1) % 2, &next),
                pod,
                "bound {bound}: conversation {i} moved"
            );
        }
    }
}

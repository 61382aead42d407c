//! Two Envoy workers sharing one shared-data store, for flow tests of what workers must
//! agree on (prefix indexes kept in step, session bindings).
use super::fake::FakeHost;
use super::*;
use crate::in_flight::InFlight;
use filter_config::{FilterConfig, Match, Route, Rule, Scheduler, Server};

/// Model `chat`: one ModelServer of four pods (127.0.0.2-5), picked by `scheduler`.
pub fn four_pods(scheduler: Scheduler) -> FilterConfig {
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
    .with_settings(|s| s.scheduler = scheduler)
}

/// Routes completions through either worker and keeps their indexes in step as the root
/// tick would after every request.
pub struct Workers {
    routers: [Router; 2],
    in_flight: [InFlight; 2],
    shared: std::collections::HashMap<String, (Vec<u8>, u32)>,
    /// The request path, query included.
    pub path: &'static str,
    /// The hosts' clock.
    pub now_ms: u64,
}

impl Workers {
    pub fn new(cfg: FilterConfig) -> Self {
        Workers {
            routers: [
                Router::compile(cfg.clone(), 1).unwrap(),
                Router::compile(cfg, 2).unwrap(),
            ],
            in_flight: [InFlight::default(), InFlight::default()],
            shared: Default::default(),
            path: "/v1/completions",
            now_ms: 0,
        }
    }

    /// The pod `worker` sends `prompt` (with request `headers`) to; the request finishes.
    pub fn route(&mut self, worker: usize, prompt: &str, headers: &[(&str, &str)]) -> String {
        self.send(worker, prompt, headers, true)
    }

    /// The same, with the request left in flight when `finish` is false.
    pub fn send(
        &mut self,
        worker: usize,
        prompt: &str,
        headers: &[(&str, &str)],
        finish: bool,
    ) -> String {
        let body = serde_json::json!({"model": "chat", "prompt": prompt}).to_string();
        let mut h = FakeHost::post(self.path, &body, headers);
        h.now = self.now_ms;
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
        if finish {
            f.on_done(&mut h, &mut self.in_flight[worker]);
        }
        for r in &mut self.routers {
            r.sync_prefixes(&mut h);
        }
        self.shared = std::mem::take(&mut h.shared);
        let endpoints = h.get("x-gateway-destination-endpoint").unwrap();
        endpoints.split(',').next().unwrap().to_string()
    }
}

//! The scheduling tests' pool: pods of one model behind the seed's `pool` route, Kthena router
//! configurations naming the plugins under test, and the gateways' shared store.

use std::collections::HashMap;

use super::*;

pub const MODEL: &str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B";

pub fn resources() -> String {
    pool_resources(MODEL, &["lora-A"])
}

/// Kthena router configuration with the given filter and score plugins.
pub fn scheduler(filters: &[&str], scores: &[(&str, u32)]) -> String {
    let mut y = String::from("scheduler:\n  pluginConfig:\n  - name: least-request\n    args:\n      maxWaitingRequests: 10\n  plugins:\n    Filter:\n      enabled:\n");
    for f in filters {
        y += &format!("        - {f}\n");
    }
    y += "    Score:\n      enabled:\n";
    for (s, w) in scores {
        y += &format!("        - name: {s}\n          weight: {w}\n");
    }
    y
}

pub fn pods(n: usize) -> Vec<Pod> {
    (0..n)
        .map(|i| Pod::new(&format!("pod-{i}"), &[("app", "pool")], MODEL))
        .collect()
}

/// A gateway picking with `sched`, its collector scraping every 200 ms.
pub fn options(sched: String) -> Options {
    Options {
        controller_args: ["--metrics-interval-ms", "200", "--metrics-stale-ms", "3000"]
            .map(String::from)
            .to_vec(),
        scheduler: Some(sched),
        ..Options::default()
    }
}

pub fn start(pods: Vec<Pod>, sched: String) -> Stack {
    Stack::start(&resources(), pods, options(sched))
}

pub fn share(counts: &HashMap<String, usize>, pod: &str) -> f64 {
    let total: usize = counts.values().sum();
    *counts.get(pod).unwrap_or(&0) as f64 / total as f64
}

/// A gateway of [`options`] with the rate-limit service and the gateways' shared store in
/// `redis`.
pub fn shared_store_options(
    service: &test_support::RateLimitService,
    redis: &test_support::RedisServer,
    sched: String,
) -> Options {
    let service_flag = ["--rate-limit-service".to_string(), service.addr.clone()];
    let mut opts = options(sched);
    opts.controller_args.extend(service_flag.clone());
    opts.controller_args
        .extend(["--shared-placements-redis".to_string(), redis.addr()]);
    opts.bootstrap_args = service_flag.to_vec();
    opts
}

//! Load- and cache-aware pod picking end to end in a real Envoy (two workers), mirroring
//! Kthena's scheduler plugin e2e: each test configures the plugin under test with Kthena's
//! router configuration YAML, steers the mock engines' metrics, and counts where requests
//! land. Metrics reach the filter through its own collector (scrapes every 200 ms).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::pool::*;
use support::*;

/// Sends `n` requests for `model` with `prompt` and counts the serving pods.
fn spread(
    s: &Stack,
    n: usize,
    model: &str,
    prompt: impl Fn(usize) -> String,
) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for i in 0..n {
        let body =
            serde_json::json!({"model": model, "prompt": prompt(i), "max_tokens": 4}).to_string();
        let r = s.post("/v1/completions", &body, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        *out.entry(r.pod()).or_insert(0) += 1;
    }
    out
}

#[test]
fn requests_sharing_a_long_prefix_go_to_one_pod() {
    let s = start(
        pods(3),
        scheduler(&["least-request"], &[("prefix-cache", 1)]),
    );
    let system =
        "You are a meticulous assistant for a travel company. Answer with facts only. ".repeat(30);
    let counts = spread(&s, 40, "pool", |i| {
        format!("{system}Question {i}: what is the capital of country {i}?")
    });
    let top = counts.values().max().copied().unwrap_or(0);
    assert!(top as f64 >= 0.9 * 40.0, "{counts:?}");
    // Kthena's prefix-cache metrics: every request's match ratio, most of them near 1 (the
    // shared system prompt), and the entries the workers' indexes hold.
    let ratio = "kthena_router_prefix_cache_match_ratio";
    s.series_sum(&format!("{ratio}_count"), &[("model", "pool")], 40.0);
    let high = s.series_sum(
        &format!("{ratio}_bucket"),
        &[("model", "pool"), ("le", "0.5")],
        0.0,
    );
    let all = s.series_sum(&format!("{ratio}_count"), &[("model", "pool")], 40.0);
    assert!(
        all - high >= 30.0,
        "{high} of {all} matched at most half their blocks"
    );
    assert!(s.series_sum("kthena_router_prefix_cache_entries", &[], 1.0) >= 1.0);
    assert!(s
        .prometheus()
        .contains("kthena_router_prefix_cache_evictions_total{} 0"));
    // Unrelated prompts still spread over the pods.
    let other = spread(&s, 30, "pool", |i| {
        format!("unrelated prompt number {i} {}", "x".repeat(i * 7))
    });
    assert!(other.len() >= 2, "{other:?}");
}

#[test]
fn the_cache_affinity_profile_spreads_a_popular_prompts_new_conversations_once_its_pod_queues() {
    // The shipped profile: prefix affinity with boundedLoad 1.5. Conversations that open
    // with one system prompt go where it is cached while no engine queues; once the pods
    // report a queue, no pod takes much more than its share of the new ones (with
    // prefix-cache alone all forty would go to one pod, as in the test above), and every
    // conversation's next turn still goes back to the pod that holds it.
    let s = start(pods(4), cache_affinity_profile());
    s.wait_for_scrapes(2);
    let system = "You are the support assistant of a bicycle shop; answer precisely. ".repeat(30);
    let opening = |i: usize| {
        format!("{system}Customer {i} asks: which saddle suits a long tour on gravel roads?")
    };
    let pod_for = |prompt: String| {
        let body = serde_json::json!({"model": "pool", "prompt": prompt, "max_tokens": 2});
        let r = s.post("/v1/completions", &body.to_string(), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        r.pod()
    };
    let tally = |pods: &[String]| {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for p in pods {
            *counts.entry(p.clone()).or_insert(0) += 1;
        }
        counts
    };
    let calm: Vec<String> = (0..10).map(|i| pod_for(opening(i))).collect();
    assert_eq!(
        tally(&calm).len(),
        1,
        "no queue, cache first: {:?}",
        tally(&calm)
    );
    for i in 0..4 {
        s.hold_metrics(&format!("pod-{i}"), r#"{"waiting": 1}"#);
    }
    s.wait_for_scrapes(3);
    let busy: Vec<String> = (10..50).map(|i| pod_for(opening(i))).collect();
    let counts = tally(&busy);
    let top = counts.values().max().copied().unwrap_or(0);
    assert!(counts.len() >= 2 && top <= 24, "{counts:?}");
    // A next turn follows its answer: by then the two workers' indexes are in step (their
    // journal syncs every 25 ms; these openings took about a millisecond each).
    std::thread::sleep(Duration::from_millis(200));
    for (i, pod) in calm.iter().chain(&busy).enumerate() {
        let next = format!(
            "{} The assistant says: a leather one. Customer {i} asks: and when it rains?",
            opening(i)
        );
        assert_eq!(
            &pod_for(next),
            pod,
            "conversation {i} moved; openings {counts:?}"
        );
    }
}

/// The scheduler profile the README recommends.
fn cache_affinity_profile() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/scheduler/cache-affinity.yaml"
    ))
    .unwrap()
}

#[test]
fn the_cache_affinity_profile_keeps_new_prompts_off_a_pod_that_decodes_slowly() {
    // podSpeed: pod-0's engine takes twice the others' time per output token (an older GPU).
    // Prompts no pod holds go to the two fast pods; without podSpeed they spread over all
    // three, as distinct prefixes do.
    let s = start(pods(3), cache_affinity_profile());
    s.hold_metrics("pod-0", r#"{"tpot_seconds": 0.02}"#);
    for pod in ["pod-1", "pod-2"] {
        s.hold_metrics(pod, r#"{"tpot_seconds": 0.01}"#);
    }
    // A pod's speed counts once its engine timed 16 tokens (the mock's held value: one a
    // scrape).
    s.wait_for_scrapes(10);
    let counts = spread(&s, 30, "pool", |i| {
        format!(
            "question {i}, asked by nobody before: {}",
            "why? ".repeat(20 + i)
        )
    });
    assert!(
        !counts.contains_key("pod-0") && counts.len() == 2,
        "{counts:?}"
    );
}

#[test]
fn a_pod_with_a_long_queue_is_filtered_out() {
    let s = start(
        pods(2),
        scheduler(
            &["least-request"],
            &[("least-request", 1), ("gpu-usage", 1)],
        ),
    );
    s.hold_metrics("pod-0", r#"{"waiting": 20}"#);
    s.wait_for_scrapes(3);
    let counts = spread(&s, 40, "pool", |i| format!("hello {i}"));
    assert!(share(&counts, "pod-1") >= 0.9, "{counts:?}");
}

#[test]
fn least_request_counts_the_requests_other_gateways_keep_at_a_pod() {
    // pod-0's engine runs 3 requests this Envoy never sent (another gateway's); this Envoy's
    // requests, one at a time, are never in flight together. Counting only its own, both
    // pods look idle and the requests split; counting what the engine reports beyond them,
    // pod-1 is the less loaded.
    let s = start(pods(2), scheduler(&[], &[("least-request", 1)]));
    s.hold_metrics("pod-0", r#"{"running": 3}"#);
    s.wait_for_scrapes(3);
    let counts = spread(&s, 40, "pool", |i| format!("hello {i}"));
    assert!(share(&counts, "pod-1") >= 0.9, "{counts:?}");
}

#[test]
fn gpu_usage_avoids_the_pod_with_a_full_kv_cache() {
    let s = start(pods(2), scheduler(&[], &[("gpu-usage", 1)]));
    s.hold_metrics("pod-1", r#"{"kv_cache_usage": 0.95}"#);
    s.hold_metrics("pod-0", r#"{"kv_cache_usage": 0.05}"#);
    s.wait_for_scrapes(3);
    let counts = spread(&s, 40, "pool", |i| format!("hello {i}"));
    assert!(share(&counts, "pod-0") >= 0.9, "{counts:?}");
}

#[test]
fn least_latency_avoids_the_slow_pod() {
    let s = start(pods(2), scheduler(&[], &[("least-latency", 1)]));
    s.hold_metrics("pod-0", r#"{"ttft_seconds": 2.5, "tpot_seconds": 0.2}"#);
    s.hold_metrics("pod-1", r#"{"ttft_seconds": 0.05, "tpot_seconds": 0.01}"#);
    s.wait_for_scrapes(3);
    let counts = spread(&s, 40, "pool", |i| format!("hello {i}"));
    assert!(share(&counts, "pod-1") >= 0.9, "{counts:?}");
}

#[test]
fn no_lora_request_reaches_a_pod_without_the_adapter() {
    let mut p = pods(3);
    p[1] = p[1].clone().lora(&["lora-A"]);
    let s = start(p, scheduler(&["lora-affinity"], &[("random", 1)]));
    s.wait_for_scrapes(2);
    let counts = spread(&s, 30, "lora-A", |i| format!("hello {i}"));
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        vec!["pod-1"],
        "{counts:?}"
    );
    // Base-model requests are not restricted.
    let base = spread(&s, 30, "pool", |i| format!("hello {i}"));
    assert!(base.len() >= 2, "{base:?}");
}

#[test]
fn random_spreads_near_uniformly() {
    let s = start(pods(4), scheduler(&[], &[("random", 1)]));
    let counts = spread(&s, 200, "pool", |i| format!("hello {i}"));
    for i in 0..4 {
        let n = counts.get(&format!("pod-{i}")).copied().unwrap_or(0);
        assert!((25..=75).contains(&n), "{counts:?}");
    }
}

#[test]
fn a_pod_killed_under_load_is_skipped_without_client_errors() {
    let s = Arc::new(start(
        pods(3),
        scheduler(&["least-request"], &[("least-request", 1), ("random", 1)]),
    ));
    s.wait_for_scrapes(1);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    // (start time, ok) of every request.
    let log: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::new(Mutex::new(Vec::new()));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (s, stop, sent, log) = (s.clone(), stop.clone(), sent.clone(), log.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = s.try_request(
                        "POST",
                        "/v1/completions",
                        &[("content-type", "application/json")],
                        br#"{"model":"pool","prompt":"hi","max_tokens":2}"#,
                    );
                    sent.fetch_add(1, Ordering::Relaxed);
                    log.lock()
                        .unwrap()
                        .push((t, matches!(r, Ok(ref r) if r.status == 200)));
                }
            })
        })
        .collect();
    wait_until(Duration::from_secs(10), "traffic", || {
        sent.load(Ordering::Relaxed) > 30
    });
    s.kill_pod("pod-2");
    let killed = Instant::now();
    let mark = sent.load(Ordering::Relaxed);
    // Long enough for the collector to notice (scrapes every 200 ms) and for many requests.
    wait_until(Duration::from_secs(15), "traffic after the kill", || {
        killed.elapsed() > Duration::from_millis(1500) && sent.load(Ordering::Relaxed) > mark + 150
    });
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let log = log.lock().unwrap();
    // Requests already running on the pod when it died may fail (an engine had them; they
    // are not retried blindly): at most one per client thread. Every later request succeeds.
    let grace = killed + Duration::from_millis(100);
    let late_failures = log.iter().filter(|(t, ok)| *t > grace && !ok).count();
    let early_failures = log.iter().filter(|(t, ok)| *t <= grace && !ok).count();
    assert_eq!(
        late_failures, 0,
        "requests started after the pod died failed"
    );
    assert!(
        early_failures <= 3,
        "{early_failures} in-flight requests failed"
    );
    assert!(log.iter().filter(|(t, _)| *t > grace).count() >= 100);
    assert!(
        s.stat("wasmcustom.modelroute.metrics.scrape_failed") > 0,
        "the dead pod was noticed"
    );
}

/// Connections each Envoy worker has accepted so far.
fn connections_per_worker(s: &Stack) -> [u64; 2] {
    let mut out = [0; 2];
    for (name, v) in s.stats(r"worker_[01]\.downstream_cx_total$") {
        if name.starts_with("listener.") {
            out[usize::from(name.contains("worker_1."))] += v;
        }
    }
    out
}

#[test]
fn a_new_system_prompts_first_requests_on_both_workers_meet_on_one_pod() {
    // Each Envoy worker keeps its own prefix index, in step with the other's every 25 ms. A
    // new system prompt's first conversations, spread over both workers within that time,
    // still go to one pod (placement records), where each worker alone would have sent its
    // first one to the pod with fewer requests in flight and cached the prompt on two.
    let s = Arc::new(start(
        pods(3),
        scheduler(&[], &[("prefix-cache", 3), ("least-request", 1)]),
    ));
    for attempt in 0..5 {
        let system = format!(
            "Attempt {attempt}. You are the support assistant of a bicycle shop; be precise. "
        )
        .repeat(30);
        let before = connections_per_worker(&s);
        // A few ms apart (well within a tick), each held by its pod for 300 ms.
        let sent: Vec<_> = (0..8)
            .map(|i| {
                let (s, system) = (s.clone(), system.clone());
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(3 * i));
                    let body = serde_json::json!({
                        "model": "pool",
                        "messages": [
                            {"role": "system", "content": system},
                            {"role": "user", "content": format!("question {i}")},
                        ],
                        "max_tokens": 2,
                    });
                    let r = s.post(
                        "/v1/chat/completions",
                        &body.to_string(),
                        &[("x-mock-delay-ms", "300")],
                    );
                    assert_eq!(r.status, 200, "{}", r.text());
                    r.pod()
                })
            })
            .collect();
        let pods: Vec<String> = sent.into_iter().map(|t| t.join().unwrap()).collect();
        let after = connections_per_worker(&s);
        if after[0] == before[0] || after[1] == before[1] {
            continue; // the kernel gave every connection to one worker: nothing was shown
        }
        assert!(
            pods.iter().all(|p| *p == pods[0]),
            "{pods:?}, connections per worker {before:?} -> {after:?}"
        );
        return;
    }
    panic!("five rounds of 8 connections never reached both workers");
}

#[test]
fn two_gateways_agree_on_a_new_system_prompts_pod_through_the_shared_store() {
    let redis = test_support::RedisServer::start();
    let service = test_support::RateLimitService::start();
    let opts = || {
        shared_store_options(
            &service,
            &redis,
            scheduler(&[], &[("prefix-cache", 3), ("least-request", 1)]),
        )
    };
    let a = Stack::start(&resources(), pods(4), opts());
    let b = a.another_gateway(opts());
    let chat = |s: &Stack, system: &str, user: &str| {
        let body = serde_json::json!({"model": "pool", "max_tokens": 2, "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": user}]});
        let r = s.post("/v1/chat/completions", &body.to_string(), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        r.pod()
    };
    // Gateway B alone has placed three prompts, one a pod: for a prompt new to every gateway,
    // the tie-break (the pod the gateways placed least on) prefers the fourth. (A pause after each, so
    // both of its workers' indexes hold it.)
    let warm: std::collections::HashSet<String> = (0..3)
        .map(|i| {
            let pod = chat(
                &b,
                &format!("warm-up prompt {i}, answer in verse. ").repeat(30),
                "hi",
            );
            std::thread::sleep(Duration::from_millis(150));
            pod
        })
        .collect();
    assert_eq!(warm.len(), 3, "{warm:?}");
    let bs_own = (0..4)
        .map(|i| format!("pod-{i}"))
        .find(|p| !warm.contains(p))
        .unwrap();
    // A new system prompt that gateway A places elsewhere: B meets it next and follows A's
    // placement from the store, not its own preference.
    let (system, on_a) = (0..20)
        .map(|k| format!("System prompt {k}: you are terse and exact. ").repeat(30))
        .map(|system| {
            let pod = chat(&a, &system, "hello");
            (system, pod)
        })
        .find(|(_, pod)| *pod != bs_own)
        .expect("a prompt A places away from B's preference");
    assert_eq!(chat(&b, &system, "good morning"), on_a);
    assert_eq!(
        chat(&b, &system, "and good night"),
        on_a,
        "B has learned it"
    );
    // A prompt no gateway has placed goes to a pod the gateways placed the fewest prompt
    // blocks on (the store counts them), not by what one gateway's index holds.
    let placed_key = redis.cli(&["KEYS", "modelroute:placed-blocks:*"]);
    let placed = redis.cli(&["HGETALL", placed_key.trim()]);
    let words: Vec<&str> = placed.split_whitespace().collect();
    let mut count = [0u32; 4];
    for pair in words.chunks_exact(2) {
        count[pair[0].parse::<usize>().unwrap()] = pair[1].parse().unwrap();
    }
    let fewest = *count.iter().min().unwrap();
    let fresh = "A prompt only B has seen, about gardening. ".repeat(30);
    let pod = chat(&b, &fresh, "hi");
    let index: usize = pod.trim_start_matches("pod-").parse().unwrap();
    assert_eq!(count[index], fewest, "{pod} holds {count:?}");
    let keys = redis.cli(&["KEYS", "modelroute:placed:*"]);
    assert!(keys.lines().count() >= 5, "{keys}");
}

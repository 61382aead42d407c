//! Unit tests of the collector: the lease, answers folded into stats, scraping on schedule.
use super::*;
use crate::flow::fake::FakeHost;

#[test]
fn lease_is_taken_when_free_or_expired_and_renewed_only_by_its_owner() {
    let mine = take_lease(None, 7, 1000, 3000).unwrap();
    assert_eq!(
        take_lease(Some(&mine), 8, 2000, 3000),
        None,
        "held by 7 until 4000"
    );
    assert!(take_lease(Some(&mine), 7, 2000, 3000).is_some(), "renewal");
    assert!(take_lease(Some(&mine), 8, 4001, 3000).is_some(), "expired");
    assert!(
        take_lease(Some(b"junk"), 8, 0, 3000).is_some(),
        "unreadable value"
    );
}

#[test]
fn answers_become_stats_and_failures_mark_the_pod_down() {
    let t = Target {
        cluster: "c".into(),
        address: "127.0.0.2:8000".into(),
        engine: Engine::Vllm,
        load_slot: None,
        in_flight_slots: Vec::new(),
    };
    let mut c = Collector::new(vec![t], 1, 1000, "x-gateway-destination-endpoint");
    c.on_answer(
        0,
        Kind::Metrics,
        Some(200),
        b"vllm:num_requests_waiting 3\nvllm:kv_cache_usage_perc 0.5\n",
        10,
    );
    c.on_answer(
        0,
        Kind::Models,
        Some(200),
        br#"{"data":[{"id":"m"},{"id":"lora-A"}]}"#,
        10,
    );
    let s = c.stats("127.0.0.2:8000").unwrap();
    assert!(s.up);
    assert_eq!((s.waiting, s.kv, s.at_ms), (3.0, 0.5, 10));
    assert_eq!(
        s.models.as_deref(),
        Some(&["m".to_string(), "lora-A".to_string()][..])
    );
    c.on_answer(
        0,
        Kind::Metrics,
        Some(503),
        b"upstream connect error or disconnect/reset before headers",
        20,
    );
    assert!(!c.stats("127.0.0.2:8000").unwrap().up);
    c.on_answer(0, Kind::Metrics, None, b"", 30);
    assert_eq!(c.snapshot().len(), 1);
    // An engine error keeps the last stats.
    c.on_answer(
        0,
        Kind::Metrics,
        Some(200),
        b"vllm:num_requests_waiting 1\n",
        40,
    );
    c.on_answer(0, Kind::Metrics, Some(500), b"oops", 50);
    assert_eq!(c.stats("127.0.0.2:8000").unwrap().at_ms, 40);
}

#[test]
fn a_scrape_counts_what_the_pod_reported_beyond_this_envoys_requests_as_other_gateways() {
    let mut c = Collector::new(pods(2), 1, 1000, "x-pod");
    let mut host = FakeHost {
        now: 5,
        ..Default::default()
    };
    // This Envoy has 3 requests in flight to pod 0, none to pod 1.
    let counts: Vec<u8> = [3u32, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    host.shared
        .insert("modelroute.inflight.s".into(), (counts, 1));
    ticks(&mut c, &mut host, 0, 1000);
    let body = |running: u32, waiting: u32| {
        format!("vllm:num_requests_running {running}\nvllm:num_requests_waiting {waiting}\n")
    };
    for (token, _, headers, ..) in std::mem::take(&mut host.calls) {
        let pod = headers
            .iter()
            .find(|(k, _)| k == "x-pod")
            .unwrap()
            .1
            .clone();
        let path = headers
            .iter()
            .find(|(k, _)| k == ":path")
            .unwrap()
            .1
            .clone();
        let answer = match (path.as_str(), pod.as_str()) {
            ("/v1/models", _) => MODELS.to_vec(),
            (_, "127.0.0.2:8000") => body(4, 1).into_bytes(), // 3 ours, 2 someone else's
            _ => body(1, 0).into_bytes(),                     // 1 someone else's
        };
        host.call_answer = Some((Some(200), answer.clone()));
        c.on_call_response(&mut host, token, answer.len());
    }
    assert_eq!(c.stats("127.0.0.2:8000").unwrap().others, 2.0);
    assert_eq!(c.stats("127.0.0.3:8000").unwrap().others, 1.0);
    // A pod this Envoy does not count requests to (a PD prefill pod): its load is not
    // taken for other gateways'.
    c.targets[1].in_flight_slots.clear();
    assert!(c.on_answer(1, Kind::Metrics, Some(200), body(1, 0).as_bytes(), 6));
    c.count_others_at(&host, 1, 6);
    assert_eq!(c.stats("127.0.0.3:8000").unwrap().others, 0.0);
    // With only this Envoy's requests at the pod (the report lags: fewer than ours), none.
    let mut s = c.stats("127.0.0.2:8000").unwrap().clone();
    s.update(&parse_prometheus(&body(2, 0), Engine::Vllm), 6);
    s.count_others(3);
    assert_eq!(s.others, 0.0);
}

#[test]
fn each_scrape_answer_subtracts_the_in_flight_count_of_its_own_moment() {
    let mut c = Collector::new(pods(2), 1, 1000, "x-pod");
    let mut host = FakeHost::default();
    let set_counts = |host: &mut FakeHost, counts: [u32; 2]| {
        let bytes: Vec<u8> = counts.iter().flat_map(|v| v.to_le_bytes()).collect();
        host.shared
            .insert("modelroute.inflight.s".into(), (bytes, 1));
    };
    let report = b"vllm:num_requests_running 4\n";
    set_counts(&mut host, [0, 0]);
    assert!(c.on_answer(0, Kind::Metrics, Some(200), report, 5));
    c.count_others_at(&host, 0, 5);
    // This Envoy sent 4 requests to pod 1 since; pod 1's scrape answers a millisecond on.
    set_counts(&mut host, [0, 4]);
    assert!(c.on_answer(1, Kind::Metrics, Some(200), report, 6));
    c.count_others_at(&host, 1, 6);
    assert_eq!(c.stats("127.0.0.2:8000").unwrap().others, 4.0);
    assert_eq!(
        c.stats("127.0.0.3:8000").unwrap().others,
        0.0,
        "the 4 running at pod 1 are this Envoy's, read when its scrape answered"
    );
}

fn pods(n: usize) -> Vec<Target> {
    (0..n)
        .map(|i| Target {
            cluster: "modelserver|default|s".into(),
            address: format!("127.0.0.{}:8000", i + 2),
            engine: Engine::Vllm,
            load_slot: Some(("modelroute.load.s".into(), n, i)),
            in_flight_slots: vec![("modelroute.inflight.s".into(), n, i)],
        })
        .collect()
}

/// The pods' paths and addresses of the calls sent so far, sorted.
fn scraped(host: &FakeHost) -> Vec<String> {
    let mut out: Vec<String> = host
        .calls
        .iter()
        .map(|(_, _, h, _, _)| {
            let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            format!("{} {}", get(":path").unwrap(), get("x-pod").unwrap())
        })
        .collect();
    out.sort();
    out
}

/// Answers every call sent so far with `body` (200), then forgets them.
fn answer_all(c: &mut Collector, host: &mut FakeHost, body: &[u8]) {
    for (token, ..) in std::mem::take(&mut host.calls) {
        host.call_answer = Some((Some(200), body.to_vec()));
        c.on_call_response(host, token, body.len());
    }
}

/// Ticks every 100 ms from `from` to `to` (both included).
fn ticks(c: &mut Collector, host: &mut FakeHost, from: u64, to: u64) {
    for now in (from..=to).step_by(100) {
        host.now = now;
        c.tick(host, now);
    }
}

const MODELS: &[u8] = br#"{"data":[{"id":"m"}]}"#;

#[test]
fn a_pod_that_reported_in_band_within_the_interval_is_not_scraped() {
    use crate::load_report::{record, LoadReport};
    let mut host = FakeHost::default();
    let mut c = Collector::new(pods(2), 7, 1000, "x-pod");
    // Models unknown yet: scraped whatever it reports.
    let busy = LoadReport {
        kv: Some(0.5),
        waiting: Some(4.0),
    };
    assert!(record(&mut host, "modelroute.load.s", 2, 0, busy, 1));
    ticks(&mut c, &mut host, 0, 900);
    assert_eq!(scraped(&host).len(), 4);
    answer_all(&mut c, &mut host, MODELS);
    // Pod 0 keeps reporting: only pod 1 (idle, no reports) is scraped in the next interval.
    assert!(record(&mut host, "modelroute.load.s", 2, 0, busy, 1_400));
    ticks(&mut c, &mut host, 1000, 1900);
    // (Its models are known now: only its load.)
    assert_eq!(scraped(&host), ["/metrics 127.0.0.3:8000"]);
    assert_eq!(
        host.counters
            .iter()
            .filter(|c| **c == Counter::ScrapeSkipped)
            .count(),
        1
    );
    answer_all(&mut c, &mut host, MODELS);
    // Reports stopped (the pod went quiet or away): scraped again, so it can be marked down.
    ticks(&mut c, &mut host, 2000, 2900);
    assert_eq!(
        scraped(&host),
        ["/metrics 127.0.0.2:8000", "/metrics 127.0.0.3:8000"]
    );
    // Models again with every MODELS_EVERY-th scrape of a pod.
    let mut models = 0;
    for interval in 3..3 + u64::from(MODELS_EVERY) {
        answer_all(&mut c, &mut host, MODELS);
        ticks(&mut c, &mut host, interval * 1000, interval * 1000 + 900);
        models += scraped(&host)
            .iter()
            .filter(|s| s.starts_with("/v1/models"))
            .count();
    }
    assert_eq!(models, 2, "once per pod in {MODELS_EVERY} intervals");
}

#[test]
fn with_pod_speed_a_pod_reporting_in_band_is_still_scraped_for_its_latencies() {
    use crate::load_report::{record, LoadReport};
    let busy = LoadReport {
        kv: Some(0.5),
        waiting: Some(4.0),
    };
    // Scrapes of pod 0, which reports in-band all the time, over ten intervals.
    let scrapes = |latencies_at_most: Option<u64>| {
        let mut host = FakeHost::default();
        let c = Collector::new(pods(2), 7, 1000, "x-pod");
        let mut c = match latencies_at_most {
            Some(ms) => c.with_latencies_at_most(ms),
            None => c,
        };
        let mut n = 0;
        for interval in 0..10 {
            let at = interval * 1000;
            assert!(record(&mut host, "modelroute.load.s", 2, 0, busy, at));
            ticks(&mut c, &mut host, at, at + 900);
            n += scraped(&host)
                .iter()
                .filter(|s| *s == "/metrics 127.0.0.2:8000")
                .count();
            answer_all(&mut c, &mut host, MODELS);
        }
        n
    };
    // Without: only the first scrape (its models unknown until then).
    assert_eq!(scrapes(None), 1);
    // Latencies at most 2.5 s old: the first, then every third interval (only the latencies).
    assert_eq!(scrapes(Some(2500)), 4);
}

#[test]
fn a_busy_pods_latencies_scrape_moves_its_speed_not_its_load() {
    use crate::load_report::{record, LoadReport};
    let busy = LoadReport {
        kv: Some(0.5),
        waiting: Some(4.0),
    };
    let mut host = FakeHost::default();
    let mut c = Collector::new(pods(1), 7, 1000, "x-pod").with_latencies_at_most(2500);
    let metrics = |running: u32, tpot_sum: f64, tpot_count: u32| {
        format!(
            "vllm:num_requests_running {running}\n\
             vllm:time_per_output_token_seconds_sum {tpot_sum}\n\
             vllm:time_per_output_token_seconds_count {tpot_count}\n"
        )
    };
    // Answers each call: /metrics with `body`, /v1/models with the models.
    let answer = |c: &mut Collector, host: &mut FakeHost, body: &str| {
        for (token, _, headers, ..) in std::mem::take(&mut host.calls) {
            let models = headers
                .iter()
                .any(|(k, v)| k == ":path" && v == "/v1/models");
            let body = if models { MODELS } else { body.as_bytes() };
            host.call_answer = Some((Some(200), body.to_vec()));
            c.on_call_response(host, token, body.len());
        }
    };
    // The first scrape, everything: 3 running, 10 ms a token.
    ticks(&mut c, &mut host, 0, 900);
    answer(&mut c, &mut host, &metrics(3, 1.0, 100));
    let first = c.stats["127.0.0.2:8000"].clone();
    assert_eq!((first.running, first.lifetime_tpot(0.0)), (3.0, 0.01));
    // Reporting in-band since: later scrapes read its latencies only.
    let mut latencies = 0;
    for interval in 1..5 {
        let at = interval * 1000;
        assert!(record(&mut host, "modelroute.load.s", 1, 0, busy, at));
        ticks(&mut c, &mut host, at, at + 900);
        latencies += host.calls.len();
        answer(&mut c, &mut host, &metrics(9, 3.0, 200));
    }
    assert_eq!(latencies, 1);
    let now = c.stats["127.0.0.2:8000"].clone();
    assert_eq!((now.running, now.scraped_ms), (3.0, first.scraped_ms));
    assert_eq!(now.lifetime_tpot(0.0), 0.015);
    // A refresh that fails (timed out behind the busy engine) marks nothing: the reports
    // say the pod is up.
    let mut failed = 0;
    for interval in 5..9 {
        let at = interval * 1000;
        assert!(record(&mut host, "modelroute.load.s", 1, 0, busy, at));
        ticks(&mut c, &mut host, at, at + 900);
        for (token, ..) in std::mem::take(&mut host.calls) {
            host.call_answer = Some((None, Vec::new()));
            c.on_call_response(&mut host, token, 0);
            failed += 1;
        }
    }
    assert_eq!(failed, 1);
    assert_eq!(c.stats["127.0.0.2:8000"], now);
}

#[test]
fn one_vm_collects_and_pins_each_scrape_to_its_pod() {
    let mut host = FakeHost::default();
    let mut a = Collector::new(pods(2), 7, 1000, "x-pod");
    let mut b = Collector::new(pods(2), 8, 1000, "x-pod");
    assert!(a.tick(&mut host, 0));
    assert!(!b.tick(&mut host, 500), "the lease is a's until 3000");
    ticks(&mut a, &mut host, 100, 900);
    assert_eq!(
        scraped(&host),
        [
            "/metrics 127.0.0.2:8000",
            "/metrics 127.0.0.3:8000",
            "/v1/models 127.0.0.2:8000",
            "/v1/models 127.0.0.3:8000"
        ]
    );
    assert!(a.tick(&mut host, 1000), "renewal");
    assert!(b.tick(&mut host, 4001), "a stopped renewing: b takes over");
}

#[test]
fn scrapes_are_spread_over_the_interval_bounded_and_never_pile_up() {
    let mut host = FakeHost::default();
    let mut c = Collector::new(pods(200), 7, 1000, "x-pod");
    // Each pod at its own offset in the interval: every pod once per interval, no tick
    // sending them all.
    let mut per_tick = vec![];
    let mut seen = std::collections::HashSet::new();
    for now in (0..=1000).step_by(100) {
        c.tick(&mut host, now);
        per_tick.push(host.calls.len());
        seen.extend(scraped(&host));
        answer_all(&mut c, &mut host, b"");
    }
    assert_eq!(
        seen.len(),
        400,
        "every pod's two scrapes within the interval"
    );
    // Only the pods scraped at 0 are due again at 1000.
    assert_eq!(
        per_tick.iter().sum::<usize>(),
        400 + per_tick[0],
        "{per_tick:?}"
    );
    assert!(per_tick.iter().all(|n| *n <= 100), "{per_tick:?}");
    // Slow pods (nothing answers): at most MAX_CALLS in flight, and a pod still waiting for
    // its answer is not scraped again, however many intervals pass.
    let mut slow = Collector::new(pods(200), 7, 1000, "x-pod");
    let mut host = FakeHost::default();
    ticks(&mut slow, &mut host, 0, 5000);
    assert_eq!(host.calls.len(), MAX_CALLS);
    // Once they answer, the passes go on where the budget stopped them: the pods not
    // served yet are all served within the next two ticks.
    let mut served: std::collections::HashSet<String> = scraped(&host).into_iter().collect();
    assert_eq!(served.len(), MAX_CALLS);
    for now in [5100, 5200] {
        answer_all(&mut slow, &mut host, b"");
        ticks(&mut slow, &mut host, now, now);
        served.extend(scraped(&host));
    }
    assert_eq!(served.len(), 400);
}

#[test]
fn answers_reach_every_vm_through_the_published_snapshot() {
    let mut host = FakeHost::default();
    let mut c = Collector::new(pods(2), 7, 1000, "x-pod");
    ticks(&mut c, &mut host, 0, 900);
    let token = |path: &str, pod: &str| {
        host.calls
            .iter()
            .find(|(_, _, h, _, _)| {
                h.iter().any(|(k, v)| k == ":path" && v == path)
                    && h.iter().any(|(k, v)| k == "x-pod" && v == pod)
            })
            .unwrap()
            .0
    };
    let (metrics_a, metrics_b) = (
        token("/metrics", "127.0.0.2:8000"),
        token("/metrics", "127.0.0.3:8000"),
    );
    host.now = 950;
    host.call_answer = Some((Some(200), b"vllm:num_requests_waiting 4\n".to_vec()));
    c.on_call_response(&mut host, metrics_a, 28);
    host.call_answer = Some((None, vec![]));
    c.on_call_response(&mut host, metrics_b, 0);
    c.on_call_response(&mut host, 999, 0);
    assert_eq!(host.counters, [Counter::ScrapeOk, Counter::ScrapeFailed]);

    let mut seen = None;
    assert_eq!(read_snapshot(&host, &mut seen).map(|s| s.len()), Some(0));
    assert_eq!(
        read_snapshot(&host, &mut seen),
        None,
        "unchanged: not decoded again"
    );
    c.tick(&mut host, 1000);
    let snapshot = read_snapshot(&host, &mut seen).expect("the next interval publishes");
    assert_eq!(snapshot["127.0.0.2:8000"].waiting, 4.0);
    assert!(snapshot["127.0.0.2:8000"].up);
    assert!(!snapshot["127.0.0.3:8000"].up);
}

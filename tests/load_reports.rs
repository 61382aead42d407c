//! In-band load reports (ORCA) in a real Envoy: the filter asks the vLLM pods it picks for
//! `endpoint-load-metrics`, a report steers the very next pick (whichever worker takes it),
//! the header never reaches the client, and a pod reporting in-band is not scraped while an
//! idle one still is.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::{Duration, Instant};

use support::*;

const MODEL: &str = "served";

/// Two vLLM pods behind Kthena's least-request filter (at most 10 waiting), metrics collected
/// every `interval_ms`.
fn start(interval_ms: u64) -> Stack {
    let sched = "scheduler:\n  pluginConfig:\n  - name: least-request\n    args:\n      maxWaitingRequests: 10\n  plugins:\n    Filter:\n      enabled:\n        - least-request\n    Score:\n      enabled:\n        - name: least-request\n          weight: 1\n";
    let interval = interval_ms.to_string();
    let stale = (interval_ms * 10).to_string();
    let opts = Options {
        controller_args: vec![
            "--metrics-interval-ms".into(),
            interval,
            "--metrics-stale-ms".into(),
            stale,
        ],
        scheduler: Some(sched.into()),
        ..Options::default()
    };
    let pods = (0..2)
        .map(|i| Pod::new(&format!("pod-{i}"), &[("app", "pool")], MODEL))
        .collect();
    Stack::start(&pool_resources(MODEL, &[]), pods, opts)
}

fn complete(s: &Stack) -> Response {
    let r = s.post(
        "/v1/completions",
        r#"{"model":"pool","prompt":"hello","max_tokens":4}"#,
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("endpoint-load-metrics"),
        None,
        "the report is the router's"
    );
    r
}

/// `GET /metrics` a mock pod has answered so far.
fn scrapes(s: &Stack, pod: &str) -> u64 {
    let r = test_support::http(&s.pod_addr(pod), "GET", "/mock/metrics", &[], b"").unwrap();
    r.json()["scrapes"].as_u64().unwrap()
}

#[test]
fn a_pods_report_steers_the_next_pick() {
    // Scrapes are a minute apart: only in-band reports can tell the router anything new.
    let s = start(60_000);
    s.hold_metrics("pod-0", r#"{"waiting": 50}"#);
    // Until pod-0 has answered once, the router knows nothing of its queue.
    let deadline = Instant::now() + Duration::from_secs(20);
    while complete(&s).pod() != "pod-0" {
        assert!(Instant::now() < deadline, "pod-0 never picked");
    }
    // Its answer carried 50 waiting: from the next request on, least-request filters it out,
    // on both of Envoy's workers.
    for _ in 0..20 {
        assert_eq!(complete(&s).pod(), "pod-1");
    }
    // The pod was asked in vLLM's way.
    let asked = s.pod_requests("pod-0");
    let last = asked.last().unwrap();
    assert_eq!(
        last["headers"]["endpoint-load-metrics-format"], "TEXT",
        "{last}"
    );
}

#[test]
fn a_pod_reporting_in_band_is_not_scraped_and_an_idle_one_is() {
    let s = start(200);
    // pod-1's queue is long (as its scrapes say): every request goes to pod-0, which reports
    // with each answer.
    s.hold_metrics("pod-1", r#"{"waiting": 50}"#);
    // Until a scrape taken after the hold has reached the workers, pod-1 may still be picked:
    // wait for two more scrapes of it, then for the snapshot to be published (next interval)
    // and read by every worker (theirs).
    let held_at = scrapes(&s, "pod-1");
    wait_until(
        Duration::from_secs(10),
        "pod-1 scraped after the hold",
        || scrapes(&s, "pod-1") >= held_at + 2,
    );
    std::thread::sleep(Duration::from_millis(600));
    let before = (scrapes(&s, "pod-0"), scrapes(&s, "pod-1"));
    let skipped = s.stat("wasmcustom.modelroute.metrics.scrape_skipped_in_band");
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(complete(&s).pod(), "pod-0");
    }
    let busy = scrapes(&s, "pod-0") - before.0;
    let idle = scrapes(&s, "pod-1") - before.1;
    // About ten rounds in 2 s: the idle pod is scraped in each, the busy one in none (one at
    // most, where the window began between its reports).
    assert!(idle >= 5, "idle pod scraped {idle} times");
    assert!(busy <= 1, "busy pod scraped {busy} times");
    assert!(s.stat("wasmcustom.modelroute.metrics.scrape_skipped_in_band") >= skipped + 5);
}

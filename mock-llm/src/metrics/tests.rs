use super::*;

fn served(engine: EngineKind) -> Served {
    Served {
        model: "llama".into(),
        aliases: vec![],
        lora: vec![],
        engine,
    }
}

/// One parsed sample line: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parse Prometheus text back (the subset we emit), checking comment lines are well formed.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("# ") {
            assert!(
                c.starts_with("HELP ") || c.starts_with("TYPE "),
                "bad comment {line:?}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse::<f64>().expect("number"),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), vec![]),
            Some((n, rest)) => {
                let inner = rest.strip_suffix('}').expect("closing brace");
                let labels = inner
                    .split(',')
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').expect("label =");
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .expect("quoted label");
                        (k.to_string(), v.to_string())
                    })
                    .collect();
                (n.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn value(samples: &[Sample], name: &str) -> f64 {
    let found: Vec<&Sample> = samples.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "{name}: {found:?}");
    assert_eq!(
        found[0].labels,
        vec![("model_name".to_string(), "llama".to_string())]
    );
    found[0].value
}

/// A histogram's (buckets (le, cumulative), sum, count), checking its shape.
fn histogram(samples: &[Sample], name: &str) -> (Vec<(f64, f64)>, f64, f64) {
    let bucket_name = format!("{name}_bucket");
    let buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == bucket_name)
        .map(|s| {
            assert_eq!(s.labels[0], ("model_name".into(), "llama".into()));
            assert_eq!(s.labels[1].0, "le");
            let le = match s.labels[1].1.as_str() {
                "+Inf" => f64::INFINITY,
                v => v.parse::<f64>().expect("le"),
            };
            (le, s.value)
        })
        .collect();
    assert!(buckets.len() >= 2, "{name}: no buckets");
    for w in buckets.windows(2) {
        assert!(w[0].0 < w[1].0, "{name}: le not ascending {w:?}");
        assert!(w[0].1 <= w[1].1, "{name}: counts not cumulative {w:?}");
    }
    let (last_le, last_n) = *buckets.last().expect("buckets");
    assert_eq!(last_le, f64::INFINITY, "{name}: no +Inf bucket");
    let sum = value(samples, &format!("{name}_sum"));
    let count = value(samples, &format!("{name}_count"));
    assert_eq!(last_n, count, "{name}: +Inf bucket != count");
    (buckets, sum, count)
}

#[test]
fn histogram_buckets_are_cumulative_with_inf_sum_and_count() {
    let mut h = Histogram::new(&[0.1, 1.0]);
    for v in [0.05, 0.1, 0.5, 3.0, -1.0, f64::NAN] {
        h.observe(v);
    }
    assert_eq!(
        h.cumulative(),
        vec![("0.1".into(), 2), ("1.0".into(), 3), ("+Inf".into(), 4)]
    );
    assert_eq!(h.count(), 4);
    assert!((h.sum() - 3.65).abs() < 1e-12);
}

#[test]
fn vllm_exposition_parses_back_with_gauges_and_three_histograms() {
    let mut m = Metrics::new(EngineKind::Vllm, None);
    for ttft in [0.003, 0.2, 0.3, 12.0] {
        m.observe_ttft(ttft);
    }
    m.observe_tpot(0.0);
    m.observe_tpot(0.05);
    let live = Live {
        running: 16,
        waiting: 3,
        success_total: 4,
        kv_usage: None,
    };
    let s = parse(&m.scrape(&served(EngineKind::Vllm), live));
    assert_eq!(value(&s, "vllm:num_requests_running"), 16.0);
    assert_eq!(value(&s, "vllm:num_requests_waiting"), 3.0);
    assert_eq!(value(&s, "vllm:kv_cache_usage_perc"), 0.25);
    assert_eq!(value(&s, "vllm:gpu_cache_usage_perc"), 0.25);
    assert_eq!(value(&s, "vllm:request_success_total"), 4.0);

    let (buckets, sum, count) = histogram(&s, "vllm:time_to_first_token_seconds");
    assert_eq!(count, 4.0);
    assert!((sum - 12.503).abs() < 1e-9, "{sum}");
    let at = |le: f64| buckets.iter().find(|b| b.0 == le).expect("bucket").1;
    assert_eq!(at(0.001), 0.0);
    assert_eq!(at(0.005), 1.0);
    assert_eq!(at(0.25), 2.0);
    assert_eq!(at(0.5), 3.0);
    assert_eq!(at(10.0), 3.0);
    assert_eq!(at(20.0), 4.0);

    let itl = histogram(&s, "vllm:inter_token_latency_seconds");
    let tpot = histogram(&s, "vllm:time_per_output_token_seconds");
    assert_eq!(itl, tpot);
    assert_eq!((itl.1, itl.2), (0.05, 2.0));
    assert!(s.iter().all(|x| x.name.starts_with("vllm:")));
}

#[test]
fn sglang_exposition_uses_sglang_names() {
    let mut m = Metrics::new(EngineKind::Sglang, None);
    m.observe_ttft(0.5);
    let live = Live {
        running: 100,
        waiting: 7,
        success_total: 0,
        kv_usage: None,
    };
    let text = m.scrape(&served(EngineKind::Sglang), live);
    let s = parse(&text);
    assert_eq!(value(&s, "sglang:num_running_reqs"), 100.0);
    assert_eq!(value(&s, "sglang:num_queue_reqs"), 7.0);
    assert_eq!(value(&s, "sglang:token_usage"), 1.0);
    assert!(text.contains("sglang:token_usage{model_name=\"llama\"} 1.0\n"));
    let (_, sum, count) = histogram(&s, "sglang:time_to_first_token_seconds");
    assert_eq!((sum, count), (0.5, 1.0));
    let (_, sum, count) = histogram(&s, "sglang:inter_token_latency_seconds");
    assert_eq!((sum, count), (0.0, 0.0));
    assert!(!text.contains("vllm:"));
}

#[test]
fn held_gauges_replace_derived_ones_until_released() {
    let mut m = Metrics::new(EngineKind::Vllm, Some(4));
    let live = Live {
        running: 2,
        waiting: 1,
        success_total: 0,
        kv_usage: None,
    };
    let e = m.effective(live);
    assert_eq!((e.running, e.waiting, e.kv_cache_usage), (2, 1, 2.0 / 64.0));
    assert!(e.held.is_empty());
    assert_eq!(e.max_running, Some(4));

    m.apply(parse_update(br#"{"running": 9, "waiting": 20, "kv_cache_usage": 0.9}"#).unwrap());
    let e = m.effective(live);
    assert_eq!((e.running, e.waiting, e.kv_cache_usage), (9, 20, 0.9));
    assert_eq!(e.held, vec!["running", "waiting", "kv_cache_usage"]);
    let s = parse(&m.scrape(&served(EngineKind::Vllm), live));
    assert_eq!(value(&s, "vllm:num_requests_running"), 9.0);
    assert_eq!(value(&s, "vllm:num_requests_waiting"), 20.0);
    assert_eq!(value(&s, "vllm:kv_cache_usage_perc"), 0.9);
    assert_eq!(value(&s, "vllm:gpu_cache_usage_perc"), 0.9);

    // An absent field stays held; null releases it.
    m.apply(parse_update(br#"{"waiting": null, "kv_cache_usage": null}"#).unwrap());
    let e = m.effective(live);
    assert_eq!((e.running, e.waiting, e.kv_cache_usage), (9, 1, 2.0 / 64.0));
    assert_eq!(e.held, vec!["running"]);
    m.release_all();
    assert_eq!(m.holds(), Holds::default());
    assert_eq!(m.effective(live).running, 2);
}

#[test]
fn derived_latencies_are_the_mean_of_real_observations() {
    let mut m = Metrics::new(EngineKind::Vllm, None);
    let e = m.effective(Live::default());
    assert_eq!((e.ttft_seconds, e.tpot_seconds), (0.0, 0.0));
    m.observe_ttft(0.2);
    m.observe_ttft(0.4);
    m.observe_tpot(0.01);
    let e = m.effective(Live::default());
    assert!((e.ttft_seconds - 0.3).abs() < 1e-12);
    assert!((e.tpot_seconds - 0.01).abs() < 1e-12);
}

#[test]
fn a_held_latency_adds_one_observation_per_scrape() {
    let served = served(EngineKind::Vllm);
    let mut m = Metrics::new(EngineKind::Vllm, None);
    m.observe_ttft(0.01);
    m.apply(parse_update(br#"{"ttft_seconds": 2.5, "tpot_seconds": 0.125}"#).unwrap());
    let live = Live::default();
    let first = parse(&m.scrape(&served, live));
    // Real answers while held stay out of the histogram.
    m.observe_ttft(0.01);
    m.observe_tpot(0.3);
    let second = parse(&m.scrape(&served, live));
    for (name, held) in [
        ("vllm:time_to_first_token_seconds", 2.5),
        ("vllm:inter_token_latency_seconds", 0.125),
        ("vllm:time_per_output_token_seconds", 0.125),
    ] {
        let (b1, s1, c1) = histogram(&first, name);
        let (b2, s2, c2) = histogram(&second, name);
        assert_eq!(c2 - c1, 1.0, "{name}");
        assert!(((s2 - s1) - held).abs() < 1e-9, "{name}: {s1} -> {s2}");
        // Exactly the (cumulative) buckets with le >= the held value grew, by one.
        for (x, y) in b1.iter().zip(&b2) {
            assert_eq!(x.0, y.0);
            let grew = if x.0 >= held { 1.0 } else { 0.0 };
            assert_eq!(y.1 - x.1, grew, "{name} le={}", x.0);
        }
    }
    // The all-time mean converges to the held value.
    for _ in 0..1000 {
        m.scrape(&served, live);
    }
    let s = parse(&m.scrape(&served, live));
    let (_, sum, count) = histogram(&s, "vllm:time_to_first_token_seconds");
    assert!((sum / count - 2.5).abs() < 0.01, "{}", sum / count);
    let e = m.effective(live);
    assert_eq!((e.ttft_seconds, e.tpot_seconds), (2.5, 0.125));

    // Released: scrapes add nothing, real answers count again.
    m.apply(parse_update(br#"{"ttft_seconds": null, "tpot_seconds": null}"#).unwrap());
    let a = parse(&m.scrape(&served, live));
    let b = parse(&m.scrape(&served, live));
    assert_eq!(
        histogram(&a, "vllm:time_to_first_token_seconds"),
        histogram(&b, "vllm:time_to_first_token_seconds")
    );
    m.observe_ttft(0.7);
    let c = parse(&m.scrape(&served, live));
    let (_, s1, c1) = histogram(&b, "vllm:time_to_first_token_seconds");
    let (_, s2, c2) = histogram(&c, "vllm:time_to_first_token_seconds");
    assert_eq!(c2 - c1, 1.0);
    assert!(((s2 - s1) - 0.7).abs() < 1e-9);
    // Derived again: the mean of the real answers (0.01, 0.01, 0.7).
    assert!((m.effective(live).ttft_seconds - 0.24).abs() < 1e-9);
}

#[test]
fn hold_updates_are_validated() {
    assert_eq!(parse_update(b"{}"), Ok(HoldUpdate::default()));
    assert_eq!(
        parse_update(br#"{"running": 3, "waiting": null, "ttft_seconds": 0, "tpot_seconds": 0.5}"#),
        Ok(HoldUpdate {
            running: Some(Some(3)),
            waiting: Some(None),
            kv_cache_usage: None,
            ttft_seconds: Some(Some(0.0)),
            tpot_seconds: Some(Some(0.5)),
        })
    );
    assert_eq!(
        parse_update(br#"{"kv_cache_usage": 1}"#).map(|u| u.kv_cache_usage),
        Ok(Some(Some(1.0)))
    );
    for bad in [
        "",
        "nope",
        "{\"running\": 1",
        "[]",
        "null",
        "3",
        r#"{"running": -1}"#,
        r#"{"running": 1.5}"#,
        r#"{"running": "3"}"#,
        r#"{"waiting": true}"#,
        r#"{"kv_cache_usage": 1.5}"#,
        r#"{"kv_cache_usage": -0.1}"#,
        r#"{"kv_cache_usage": "0.5"}"#,
        r#"{"ttft_seconds": -1}"#,
        r#"{"tpot_seconds": "fast"}"#,
        r#"{"tpot_seconds": {}}"#,
        r#"{"kv": 0.5}"#,
    ] {
        assert!(parse_update(bad.as_bytes()).is_err(), "{bad:?} accepted");
    }
    let e = parse_update(br#"{"wating": 1}"#).unwrap_err();
    assert!(e.contains("wating") && e.contains("waiting"), "{e}");
}

#[test]
fn the_in_band_load_report_is_vllms() {
    let mut m = Metrics::new(EngineKind::Vllm, None);
    let e = m.effective(Live {
        running: 16,
        waiting: 2,
        success_total: 0,
        kv_usage: None,
    });
    assert_eq!(
        load_report("TEXT", &e).as_deref(),
        Some("TEXT named_metrics.kv_cache_usage_perc=0.25, named_metrics.num_requests_waiting=2.0")
    );
    assert_eq!(
        load_report("json", &e).as_deref(),
        Some(
            r#"JSON {"named_metrics": {"kv_cache_usage_perc": 0.25, "num_requests_waiting": 2.0}}"#
        )
    );
    assert_eq!(load_report("yaml", &e), None);
    m.apply(parse_update(br#"{"kv_cache_usage": 0.9}"#).unwrap());
    let e = m.effective(Live::default());
    assert!(load_report("TEXT", &e)
        .unwrap()
        .contains("kv_cache_usage_perc=0.9,"));
}

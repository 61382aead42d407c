//! Criterion benches of the filter's hot paths (native build of the pure core):
//! pod picking at 8/64/512 pods (Kthena's default plugins; the cache-affinity profile with and
//! without boundedLoad, and with podSpeed too, for a new conversation), prefix hashing of
//! 1 KB / 100 KB prompts, chat prompt rendering, body scanning, the model rewrite, the full
//! routing decision, route lookup among 1,000 routes and parsing a 10,000-pod / 1,000-route
//! configuration. Results: bench/MICRO.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use filter_config::{FilterConfig, Route, Rule, Scheduler, Server, Settings};
use modelroute::metrics::{PodStats, Snapshot};
use modelroute::prefix::{block_hashes, PrefixIndex};
use modelroute::rewrite::splice_string;
use modelroute::rng::Rng;
use modelroute::router::{
    no_in_flight, no_load_reports, no_shared_data, Request, Router, SharedPlacement, SharedSession,
};
use modelroute::scan::{scan, Model};
use modelroute::scheduler::{rank, Ask, Candidate, RecentPicks};

fn stats(i: usize) -> PodStats {
    PodStats {
        up: true,
        running: (i % 7) as f64,
        waiting: (i % 3) as f64,
        kv: (i % 10) as f64 / 10.0,
        ttft: 0.1 + (i % 5) as f64 / 10.0,
        tpot: 0.01 + (i % 4) as f64 / 100.0,
        // Engines' means since start: every fourth pod decodes twice as slowly (podSpeed).
        totals: [50.0, 1000.0, if i % 4 == 3 { 20.0 } else { 10.0 }, 1000.0],
        ..Default::default()
    }
}

fn prompt(len: usize) -> Vec<u8> {
    "You are a helpful assistant. Answer the question about the document below. "
        .bytes()
        .cycle()
        .take(len)
        .collect()
}

fn pick(c: &mut Criterion) {
    let cfg = Scheduler::default();
    let affinity = Scheduler::cache_affinity();
    let mut g = c.benchmark_group("pick");
    for n in [8usize, 64, 512] {
        let all: Vec<PodStats> = (0..n).map(stats).collect();
        let candidates: Vec<Candidate<'_>> = all
            .iter()
            .enumerate()
            .map(|(i, s)| Candidate {
                id: i as u32,
                stats: Some(s),
                in_flight: (i % 4) as u32,
            })
            .collect();
        let hashes = block_hashes("m", &prompt(4096), 64, 128);
        let mut idx = PrefixIndex::new(50_000);
        for i in 0..n as u32 {
            idx.insert(
                &block_hashes("m", format!("warm {i}").as_bytes(), 64, 128),
                i,
            );
        }
        idx.insert(&hashes, 3);
        let mut rng = Rng::new(1);
        g.bench_with_input(BenchmarkId::new("default-plugins", n), &n, |b, _| {
            b.iter(|| {
                rank(
                    &cfg,
                    black_box(&candidates),
                    &Ask {
                        lora: None,
                        hashes: &hashes,
                        placed: None,
                        recent: None,
                        session_pod: None,
                        pinned: None,
                    },
                    Some(&idx),
                    &mut rng,
                    3,
                )
            })
        });
        // The cache-affinity profile with boundedLoad: a new conversation after a system
        // prompt every pod has seen (a new branch, placed under the bound).
        let bounded = Scheduler {
            prefix_bounded_load: 1.5,
            ..affinity.clone()
        };
        // And podSpeed, the profile as shipped.
        let speed = Scheduler {
            prefix_pod_speed: true,
            ..bounded.clone()
        };
        let opening = block_hashes(
            "m",
            &[prompt(4096), b"a new question".to_vec()].concat(),
            64,
            128,
        );
        idx.note_successors(&hashes, hashes.len());
        idx.note_successors(&opening, opening.len());
        let mut recent = RecentPicks::default();
        for i in 0..n as u32 {
            recent.record(i, i as u64);
        }
        for (name, cfg) in [
            ("cache-affinity", &affinity),
            ("cache-affinity-bounded", &bounded),
            ("cache-affinity-bounded-speed", &speed),
        ] {
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    rank(
                        cfg,
                        black_box(&candidates),
                        &Ask {
                            lora: None,
                            hashes: &opening,
                            placed: None,
                            recent: Some(recent.at(n as u64)),
                            session_pod: None,
                            pinned: None,
                        },
                        Some(&idx),
                        &mut rng,
                        3,
                    )
                })
            });
        }
    }
    g.finish();
}

fn prefix_hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("prefix-hash");
    for (name, len, max_blocks) in [
        ("1KB", 1024usize, 128usize),
        ("100KB-default-128-blocks", 100 * 1024, 128),
        ("100KB-all-blocks", 100 * 1024, 1 << 20),
    ] {
        let p = prompt(len);
        g.throughput(Throughput::Bytes(len.min(max_blocks * 64) as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                block_hashes(
                    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
                    black_box(&p),
                    64,
                    max_blocks,
                )
            })
        });
    }
    g.finish();
}

fn chat_prompt(c: &mut Criterion) {
    let content = String::from_utf8(prompt(100 * 1024)).unwrap();
    let body = serde_json::json!({"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]}).to_string();
    let mut g = c.benchmark_group("prompt");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("render-chat-100KB", |b| {
        b.iter(|| {
            let s = scan(body.as_bytes()).unwrap();
            modelroute::prompt::prompt_text(black_box(body.as_bytes()), &s, 128 * 64).len()
        })
    });
    g.finish();
}

fn scanning(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan");
    for len in [1024usize, 16 * 1024, 200 * 1024, 1024 * 1024] {
        let content = String::from_utf8(prompt(len)).unwrap();
        let body = serde_json::json!({"model": "deepseek-simple", "messages": [{"role": "user", "content": content}], "stream": true}).to_string();
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(len), &body, |b, body| {
            b.iter(|| scan(black_box(body.as_bytes())).map(|s| s.members.len()))
        });
    }
    g.finish();
}

fn decide(c: &mut Criterion) {
    let n = 512;
    let addresses: Vec<String> = (0..n)
        .map(|i| format!("10.0.{}.{}:8000", i / 250, i % 250))
        .collect();
    let pods: Vec<&str> = addresses.iter().map(String::as_str).collect();
    // Kthena's default plugins (not the fixture's round robin): the cost being measured.
    let cfg = FilterConfig::fixture(
        vec![Route::fixture(
            "r",
            Some("m"),
            &[],
            vec![Rule::fixture("r", Default::default(), &[("s", 1)])],
        )],
        vec![Server::fixture("s", "real", &pods)],
    )
    .with_settings(|s| *s = Settings::default());
    let mut router = Router::compile(cfg, 1).unwrap();
    let snap: Snapshot = (0..n)
        .map(|i| (format!("10.0.{}.{}:8000", i / 250, i % 250), stats(i)))
        .collect();
    router.set_stats(snap);
    let p = prompt(2048);
    let header = |_: &str| None;
    c.bench_function("decide/512-pods-default-plugins", |b| {
        b.iter(|| {
            router
                .decide(&Request {
                    model: "m",
                    path: "/v1/completions",
                    query: "",
                    header: &header,
                    prompt: &p,
                    in_flight: &no_in_flight,
                    load_reports: &no_load_reports,
                    shared_data: &no_shared_data,
                    shared: SharedPlacement::Off,
                    session_store: SharedSession::Off,
                    target: None,
                    now_ms: 0,
                })
                .map(|d| d.endpoints.len())
        })
    });
}

fn rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("rewrite");
    for len in [1024usize, 200 * 1024] {
        let content = String::from_utf8(prompt(len)).unwrap();
        let body = serde_json::json!({"model": "deepseek-simple", "messages": [{"role": "user", "content": content}]}).to_string();
        let span = match scan(body.as_bytes()).unwrap().model {
            Some(Model::Str { span, .. }) => span,
            _ => unreachable!(),
        };
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(len), &body, |b, body| {
            b.iter(|| {
                splice_string(
                    black_box(body.as_bytes()),
                    span.clone(),
                    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
                )
            })
        });
    }
    g.finish();
}

/// `servers` ModelServers of `pods` pods each and `routes` ModelRoutes (`model-0000`, ...)
/// spread over them; scheduler off unless `scheduled`.
fn big_config(servers: usize, pods: usize, routes: usize, scheduled: bool) -> FilterConfig {
    let routes = (0..routes)
        .map(|r| {
            let server = format!("server-{}", r % servers);
            Route::fixture(
                &format!("route-{r:04}"),
                Some(&format!("model-{r:04}")),
                &[&format!("lora-{r:04}")],
                vec![Rule::fixture(
                    "default",
                    Default::default(),
                    &[(&server, 1)],
                )],
            )
        })
        .collect();
    let servers = (0..servers)
        .map(|s| {
            let addresses: Vec<String> = (0..pods)
                .map(|i| {
                    let n = s * pods + i;
                    format!("10.{}.{}.{}:8000", n / 65536, (n / 256) % 256, n % 256)
                })
                .collect();
            let addresses: Vec<&str> = addresses.iter().map(String::as_str).collect();
            Server::fixture(
                &format!("server-{s}"),
                &format!("org/model-{s}"),
                &addresses,
            )
            .with_timeout_ms(60_000)
        })
        .collect();
    FilterConfig::fixture(routes, servers).with_settings(|s| {
        if scheduled {
            *s = Settings::default();
        }
    })
}

fn config_parse(c: &mut Criterion) {
    let json = serde_json::to_vec(&big_config(100, 100, 1000, true)).unwrap();
    eprintln!(
        "10,000-pod / 1,000-route configuration: {} bytes of JSON",
        json.len()
    );
    let mut g = c.benchmark_group("config");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(json.len() as u64));
    g.bench_function("parse+compile/10000-pods-1000-routes", |b| {
        b.iter(|| Router::from_json(black_box(&json), 1).map(|r| r.scheduling()))
    });
    g.finish();
}

fn route_lookup(c: &mut Criterion) {
    let mut router = Router::compile(big_config(100, 4, 1000, false), 1).unwrap();
    let header = |_: &str| None;
    let mut g = c.benchmark_group("lookup");
    for model in ["model-0000", "model-0999", "lora-0500"] {
        g.bench_with_input(
            BenchmarkId::new("1000-routes", model),
            &model,
            |b, model| {
                b.iter(|| {
                    router
                        .decide(&Request {
                            model: black_box(model),
                            path: "/v1/chat/completions",
                            query: "",
                            header: &header,
                            prompt: &[],
                            in_flight: &no_in_flight,
                            load_reports: &no_load_reports,
                            shared_data: &no_shared_data,
                            shared: SharedPlacement::Off,
                            session_store: SharedSession::Off,
                            target: None,
                            now_ms: 0,
                        })
                        .map(|d| d.server)
                })
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = pick, prefix_hashing, chat_prompt, scanning, rewrite, decide, route_lookup, config_parse
}
criterion_main!(benches);

//! Filter memory in a real Envoy: every VM reports its linear memory (a high-water mark, wasm
//! memory never shrinks) as `modelroute.vm.<n>.memory_bytes`; under sustained load with large
//! bodies and ever-new prompts it must level off, not grow with the number of requests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use support::*;

const MODEL: &str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B";

fn resources() -> String {
    pool_resources(MODEL, &[])
}

/// Kthena's default plugins with a small prefix index, so it fills within the test.
const SCHEDULER: &str = r#"scheduler:
  pluginConfig:
  - name: prefix-cache
    args:
      blockSizeToHash: 64
      maxBlocksToMatch: 128
      maxHashCacheSize: 4000
  plugins:
    Filter:
      enabled: [least-request]
    Score:
      enabled:
      - { name: least-request, weight: 1 }
      - { name: gpu-usage, weight: 1 }
      - { name: least-latency, weight: 1 }
      - { name: prefix-cache, weight: 1 }
"#;

/// Per-VM memory gauges, sorted by name.
fn memory(s: &Stack) -> Vec<(String, u64)> {
    let mut m = s.stats(r"modelroute\.vm\..*\.memory_bytes");
    m.sort();
    m
}

/// `n` requests from 4 client threads: prompts unique to `round`, every 50th one 1 MB.
fn load(s: &Stack, round: usize, n: usize) {
    std::thread::scope(|scope| {
        for t in 0..4 {
            scope.spawn(move || {
                for i in (t..n).step_by(4) {
                    let big = i % 50 == 0;
                    let text = if big {
                        format!("round {round} request {i} ")
                            + &"a long document line. ".repeat(1024 * 1024 / 22)
                    } else {
                        format!("round {round} request {i}: ")
                            + &"tell me about the weather. ".repeat(36)
                    };
                    let body = serde_json::json!({
                        "model": "pool",
                        "messages": [{"role": "user", "content": text}],
                        "max_tokens": 4
                    })
                    .to_string();
                    let r = s.post("/v1/chat/completions", &body, &[]);
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            });
        }
    });
}

#[test]
fn vm_memory_levels_off_under_sustained_load() {
    let opts = Options {
        controller_args: ["--metrics-interval-ms", "200"].map(String::from).to_vec(),
        scheduler: Some(SCHEDULER.into()),
        ..Options::default()
    };
    let pods = (0..3)
        .map(|i| Pod::new(&format!("pod-{i}"), &[("app", "pool")], MODEL))
        .collect();
    let s = Stack::start(&resources(), pods, opts);
    let settle = || std::thread::sleep(Duration::from_millis(1500));

    settle();
    let idle = memory(&s);
    assert!(
        idle.len() >= 2,
        "one gauge per worker VM at least: {idle:?}"
    );
    assert!(idle.iter().all(|(_, b)| *b > 0), "{idle:?}");

    // Warm-up, two rounds: every worker sees 1 MB bodies, and the prefix index fills past its
    // capacity and evicts (each ~1 KB prompt is 16 blocks: 24,000 blocks a round for 4,000
    // slots per worker). The allocator settles within them (measured: in the first two).
    load(&s, 0, 1500);
    load(&s, 1, 1500);
    settle();
    let warm = memory(&s);
    let peak = warm.iter().map(|(_, b)| *b).max().unwrap_or(0);
    assert!(
        peak >= idle.iter().map(|(_, b)| *b).max().unwrap_or(0) + 1024 * 1024,
        "a 1 MB body is held in some VM: {idle:?} -> {warm:?}"
    );

    // The same load twice more: nothing may grow any further.
    for round in 2..4 {
        load(&s, round, 1500);
        settle();
        let now = memory(&s);
        assert_eq!(
            now, warm,
            "memory grew after round {round}: idle {idle:?}, warm {warm:?}"
        );
    }
}

/// A body of `members` tiny top-level members, ~8 bytes each, plus a chat prompt.
fn many_members_body(members: usize) -> String {
    let mut b = String::from(
        r#"{"model":"pool","max_tokens":4,"messages":[{"role":"user","content":"hi"}]"#,
    );
    for i in 0..members {
        b += &format!(",\"{}\":0", i % 1000);
    }
    b.push('}');
    b
}

#[test]
fn a_pathological_body_does_not_inflate_a_vm() {
    // Linear memory never shrinks: whatever one request allocates, its VM keeps. A body of
    // ~800,000 top-level members must cost what a plain body of the same size costs.
    let pods = (0..2)
        .map(|i| Pod::new(&format!("pod-{i}"), &[("app", "pool")], MODEL))
        .collect();
    let s = Stack::start(&resources(), pods, Options::default());
    let shaped = many_members_body(800_000);
    let plain = serde_json::json!({
        "model": "pool",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "x".repeat(shaped.len() - 80)}]
    })
    .to_string();
    assert!(shaped.len() > 6_000_000 && plain.len() >= shaped.len() - 100);
    let send = |body: &str| {
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..2 {
                        let r = s.post("/v1/chat/completions", body, &[]);
                        assert_eq!(r.status, 200, "{}", r.text());
                    }
                });
            }
        });
        std::thread::sleep(Duration::from_millis(1500));
        memory(&s).iter().map(|(_, b)| *b).max().unwrap_or(0)
    };
    let warm = send(&plain);
    let after = send(&shaped);
    assert!(
        after <= warm + 4 * 1024 * 1024,
        "VM memory went from {warm} bytes after plain bodies to {after} after member-heavy ones"
    );
}

//! Fake-host tests of prefix affinity with bounded load (`boundedLoad`) through the whole
//! request flow, with two workers whose prefix indexes keep in step through shared data.
use super::workers::{four_pods, Workers};
use filter_config::{FilterConfig, Scheduler};

/// Four pods picked by the cache-affinity profile with `boundedLoad`.
fn config(bounded_load: f64) -> FilterConfig {
    four_pods(Scheduler {
        prefix_bounded_load: bounded_load,
        ..Scheduler::cache_affinity()
    })
}

#[test]
fn a_popular_prompts_new_conversations_spread_and_each_next_turn_stays_through_either_worker() {
    let system = "You are the support assistant of a bicycle shop; answer precisely. ".repeat(30);
    let opening = |i: usize| {
        format!("{system}Customer {i} asks: which saddle suits a long tour on gravel roads?")
    };
    for (bound, spreads) in [(0.0, false), (1.5, true)] {
        let mut w = Workers::new(config(bound));
        let home: Vec<String> = (0..40).map(|i| w.route(i % 2, &opening(i), &[])).collect();
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
                &w.route((i + 1) % 2, &next, &[]),
                pod,
                "bound {bound}: conversation {i} moved"
            );
        }
    }
}

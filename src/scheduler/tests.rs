use super::*;
use crate::prefix::block_hashes;
use filter_config::WeightedPlugin;

fn only(scores: &[(Plugin, u32)], filters: &[Plugin]) -> Scheduler {
    Scheduler {
        filters: filters.to_vec(),
        scores: scores
            .iter()
            .map(|(name, weight)| WeightedPlugin {
                name: *name,
                weight: *weight,
            })
            .collect(),
        ..Scheduler::default()
    }
}

fn stats(running: f64, waiting: f64, kv: f64, ttft: f64, tpot: f64) -> PodStats {
    PodStats {
        up: true,
        running,
        waiting,
        kv,
        ttft,
        tpot,
        ..Default::default()
    }
}

/// `n` pods without stats or requests in flight, ids 0..n.
fn idle_pods(n: u32) -> Vec<Candidate<'static>> {
    (0..n)
        .map(|id| Candidate {
            id,
            stats: None,
            in_flight: 0,
        })
        .collect()
}

/// One pod per stats, ids 0..n, none with requests in flight.
fn pods_with<'a>(stats: &[&'a PodStats]) -> Vec<Candidate<'a>> {
    (0..)
        .zip(stats)
        .map(|(id, s)| Candidate {
            id,
            stats: Some(*s),
            in_flight: 0,
        })
        .collect()
}

const NO_ASK: Ask<'static> = Ask {
    lora: None,
    hashes: &[],
    placed: None,
    recent: None,
    session_pod: None,
    pinned: None,
};

/// What the scheduler is asked for a prompt with these block hashes, and nothing else.
fn ask(hashes: &[u64]) -> Ask<'_> {
    Ask { hashes, ..NO_ASK }
}

fn first(cfg: &Scheduler, c: &[Candidate<'_>], ask: &Ask<'_>, prefix: Option<&PrefixIndex>) -> u32 {
    rank(cfg, c, ask, prefix, &mut Rng::new(1), 5).unwrap()[0]
}

#[test]
fn least_request_filter_drops_pods_with_long_queues() {
    let (busy, idle) = (
        stats(0.0, 12.0, 0.0, 0.0, 0.0),
        stats(0.0, 0.0, 0.0, 0.0, 0.0),
    );
    let c = [
        Candidate {
            id: 0,
            stats: Some(&busy),
            in_flight: 0,
        },
        Candidate {
            id: 1,
            stats: Some(&idle),
            in_flight: 0,
        },
    ];
    let cfg = only(&[(Plugin::Random, 1)], &[Plugin::LeastRequest]);
    for seed in 0..50 {
        assert_eq!(
            rank(&cfg, &c, &NO_ASK, None, &mut Rng::new(seed), 5).unwrap(),
            vec![1]
        );
    }
    let all_busy = [Candidate {
        id: 0,
        stats: Some(&busy),
        in_flight: 0,
    }];
    assert_eq!(
        rank(&cfg, &all_busy, &NO_ASK, None, &mut Rng::new(0), 5),
        Err(Unschedulable::Filtered(Plugin::LeastRequest))
    );
}

#[test]
fn least_request_score_prefers_fewer_in_flight_and_penalises_queueing() {
    let s = stats(2.0, 0.0, 0.0, 0.0, 0.0);
    let c = [
        Candidate {
            id: 0,
            stats: Some(&s),
            in_flight: 4,
        }, // 2 queued at the engine
        Candidate {
            id: 1,
            stats: Some(&s),
            in_flight: 2,
        },
    ];
    let cfg = only(&[(Plugin::LeastRequest, 1)], &[]);
    assert_eq!(first(&cfg, &c, &NO_ASK, None), 1);
}

#[test]
fn least_request_counts_what_other_gateways_sent_to_a_pod() {
    // This router has nothing in flight anywhere, but the engine of pod 0 last reported 4
    // running and 3 waiting beyond this router's requests: another gateway's. Left at this
    // router's own count, both pods look idle and the tie goes to pod 0.
    let (theirs, quiet) = (
        PodStats {
            others: 7.0,
            ..stats(4.0, 3.0, 0.0, 0.0, 0.0)
        },
        stats(0.0, 0.0, 0.0, 0.0, 0.0),
    );
    let c = pods_with(&[&theirs, &quiet]);
    let cfg = only(&[(Plugin::LeastRequest, 1)], &[]);
    assert_eq!(first(&cfg, &c, &NO_ASK, None), 1);
    // A prompt no pod has seen, with prefix-cache: the tie-break counts them too.
    let h = block_hashes("m", b"a prompt no pod has seen", 64, 128);
    let ask = ask(&h);
    let cfg = only(&[(Plugin::PrefixCache, 1)], &[]);
    assert_eq!(first(&cfg, &c, &ask, Some(&PrefixIndex::new(100))), 1);
}

#[test]
fn gpu_usage_avoids_a_full_kv_cache() {
    let (full, free) = (
        stats(0.0, 0.0, 0.95, 0.0, 0.0),
        stats(0.0, 0.0, 0.10, 0.0, 0.0),
    );
    let c = [
        Candidate {
            id: 0,
            stats: Some(&full),
            in_flight: 0,
        },
        Candidate {
            id: 1,
            stats: Some(&free),
            in_flight: 0,
        },
    ];
    assert_eq!(
        first(&only(&[(Plugin::GpuUsage, 1)], &[]), &c, &NO_ASK, None),
        1
    );
}

#[test]
fn least_latency_avoids_a_slow_pod_and_is_neutral_before_measurements() {
    let (slow, fast, unknown) = (
        stats(0.0, 0.0, 0.0, 2.0, 0.2),
        stats(0.0, 0.0, 0.0, 0.1, 0.01),
        PodStats {
            up: true,
            ..Default::default()
        },
    );
    let c = pods_with(&[&slow, &fast, &unknown]);
    let cfg = only(&[(Plugin::LeastLatency, 1)], &[]);
    assert_eq!(
        rank(&cfg, &c, &NO_ASK, None, &mut Rng::new(3), 3).unwrap(),
        vec![1, 2, 0]
    );
}

#[test]
fn prefix_cache_prefers_the_pod_that_served_the_prefix() {
    let mut idx = PrefixIndex::new(1000);
    let system = "You are a helpful assistant that answers about cities. ".repeat(8);
    idx.insert(
        &block_hashes("m", format!("{system}Paris?").as_bytes(), 64, 128),
        1,
    );
    let hashes = block_hashes("m", format!("{system}Rome?").as_bytes(), 64, 128);
    let c = idle_pods(3);
    let cfg = only(&[(Plugin::PrefixCache, 1)], &[]);
    assert_eq!(first(&cfg, &c, &ask(&hashes), Some(&idx)), 1);
}

#[test]
fn lora_affinity_keeps_only_pods_serving_the_adapter() {
    let with = PodStats {
        up: true,
        models: Some(vec!["base".into(), "lora-A".into()]),
        ..Default::default()
    };
    let without = PodStats {
        up: true,
        models: Some(vec!["base".into()]),
        ..Default::default()
    };
    let c = [
        Candidate {
            id: 0,
            stats: Some(&without),
            in_flight: 0,
        },
        Candidate {
            id: 1,
            stats: Some(&with),
            in_flight: 0,
        },
        Candidate {
            id: 2,
            stats: None,
            in_flight: 0,
        },
    ];
    let cfg = only(&[(Plugin::Random, 1)], &[Plugin::LoraAffinity]);
    for seed in 0..30 {
        let r = rank(
            &cfg,
            &c,
            &Ask {
                lora: Some("lora-A"),
                ..NO_ASK
            },
            None,
            &mut Rng::new(seed),
            5,
        )
        .unwrap();
        assert_eq!(r, vec![1]);
    }
    // A base-model request is not filtered.
    assert_eq!(
        rank(&cfg, &c, &NO_ASK, None, &mut Rng::new(0), 5)
            .unwrap()
            .len(),
        3
    );
    let cfg = only(&[(Plugin::Random, 1)], &[Plugin::LoraAffinity]);
    let none = [Candidate {
        id: 0,
        stats: Some(&without),
        in_flight: 0,
    }];
    assert!(rank(
        &cfg,
        &none,
        &Ask {
            lora: Some("lora-A"),
            ..NO_ASK
        },
        None,
        &mut Rng::new(0),
        5
    )
    .is_err());
}

#[test]
fn down_pods_are_skipped_unless_all_are_down() {
    let down = PodStats {
        up: false,
        ..Default::default()
    };
    let up = stats(0.0, 0.0, 0.0, 0.0, 0.0);
    let c = [
        Candidate {
            id: 0,
            stats: Some(&down),
            in_flight: 0,
        },
        Candidate {
            id: 1,
            stats: Some(&up),
            in_flight: 0,
        },
    ];
    let cfg = only(&[(Plugin::Random, 1)], &[]);
    assert_eq!(
        rank(&cfg, &c, &NO_ASK, None, &mut Rng::new(0), 5).unwrap(),
        vec![1]
    );
    let all_down = [Candidate {
        id: 0,
        stats: Some(&down),
        in_flight: 0,
    }];
    assert_eq!(
        rank(&cfg, &all_down, &NO_ASK, None, &mut Rng::new(0), 5).unwrap(),
        vec![0]
    );
}

#[test]
fn weights_combine_scores_and_ranking_lists_every_pod_once() {
    // Pod 0: full KV but fast; pod 1: free KV but slow. gpu-usage weight 3 wins.
    let (a, b) = (
        stats(0.0, 0.0, 0.9, 0.1, 0.01),
        stats(0.0, 0.0, 0.1, 1.0, 0.1),
    );
    let c = [
        Candidate {
            id: 0,
            stats: Some(&a),
            in_flight: 0,
        },
        Candidate {
            id: 1,
            stats: Some(&b),
            in_flight: 0,
        },
    ];
    assert_eq!(
        first(
            &only(&[(Plugin::GpuUsage, 3), (Plugin::LeastLatency, 1)], &[]),
            &c,
            &NO_ASK,
            None
        ),
        1
    );
    assert_eq!(
        first(
            &only(&[(Plugin::GpuUsage, 1), (Plugin::LeastLatency, 3)], &[]),
            &c,
            &NO_ASK,
            None
        ),
        0
    );
    let r = rank(
        &Scheduler::default(),
        &c,
        &NO_ASK,
        None,
        &mut Rng::new(0),
        5,
    )
    .unwrap();
    let mut sorted = r.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 1]);
}

#[test]
fn property_random_spreads_near_uniformly() {
    let c = idle_pods(4);
    let cfg = only(&[(Plugin::Random, 1)], &[]);
    let mut rng = Rng::new(9);
    let mut counts = [0usize; 4];
    for _ in 0..8000 {
        counts[rank(&cfg, &c, &NO_ASK, None, &mut rng, 1).unwrap()[0] as usize] += 1;
    }
    for n in counts {
        assert!((1800..2200).contains(&n), "{counts:?}");
    }
}

#[test]
fn equal_pods_share_the_load() {
    let c = idle_pods(2);
    let mut rng = Rng::new(4);
    let mut counts = [0usize; 2];
    for _ in 0..1000 {
        counts[rank(&Scheduler::default(), &c, &NO_ASK, None, &mut rng, 1).unwrap()[0] as usize] +=
            1;
    }
    assert!(counts.iter().all(|n| *n > 400), "{counts:?}");
}

#[test]
fn a_new_prefix_goes_to_the_same_pod_from_every_worker() {
    // Two workers with empty indexes agree on the pod for a prefix neither has seen.
    let c = idle_pods(8);
    let cfg = only(&[(Plugin::PrefixCache, 1)], &[]);
    let mut picks = std::collections::HashSet::new();
    for seed in 0..20 {
        let h = block_hashes(
            "m",
            b"a long shared system prompt, then a question",
            16,
            128,
        );
        let (a, b) = (PrefixIndex::new(100), PrefixIndex::new(100));
        let pa = rank(&cfg, &c, &ask(&h), Some(&a), &mut Rng::new(seed), 1).unwrap();
        let pb = rank(&cfg, &c, &ask(&h), Some(&b), &mut Rng::new(seed + 100), 1).unwrap();
        assert_eq!(pa, pb);
        picks.insert(pa[0]);
    }
    assert_eq!(picks.len(), 1);
    // Different prefixes spread over the pods.
    let spread: std::collections::HashSet<u32> = (0..64)
        .map(|i| {
            let h = block_hashes("m", format!("prompt {i}").as_bytes(), 16, 128);
            rank(
                &cfg,
                &c,
                &ask(&h),
                Some(&PrefixIndex::new(10)),
                &mut Rng::new(0),
                1,
            )
            .unwrap()[0]
        })
        .collect();
    assert!(spread.len() >= 6, "{spread:?}");
}

#[test]
fn new_prefixes_go_to_the_least_busy_then_the_least_cached_pod_not_where_a_hash_sends_them() {
    // Four system prompts arriving one after the other on idle pods: each goes to a pod that
    // holds none yet (by hash alone, four prompts on four pods meet on one 9 times in 10:
    // measured as one pod with twice the mean load, bench/QUALITY.md).
    let cfg = only(&[(Plugin::PrefixCache, 1)], &[]);
    let idle = idle_pods(4);
    let mut index = PrefixIndex::new(10_000);
    let mut used = std::collections::HashSet::new();
    for i in 0..4 {
        let h = block_hashes(
            "m",
            format!("system prompt {i}: ").repeat(20).as_bytes(),
            64,
            128,
        );
        let ask = ask(&h);
        let pod = first(&cfg, &idle, &ask, Some(&index));
        assert!(used.insert(pod), "prompt {i} joined pod {pod}: {used:?}");
        index.insert(&h, pod);
        // The next turn of the same conversation stays with its pod.
        assert_eq!(first(&cfg, &idle, &ask, Some(&index)), pod);
    }
    // Busy pods are passed over first: a prompt no pod has seen goes to the one with the fewest
    // requests in flight, even if it holds the most.
    let mut busy = idle_pods(4);
    for c in busy.iter_mut().filter(|c| c.id != 2) {
        c.in_flight = 3;
    }
    index.insert(&block_hashes("m", &b"x".repeat(64 * 40), 64, 128), 2);
    let h = block_hashes("m", b"a prompt no pod has seen", 64, 128);
    let ask = ask(&h);
    assert_eq!(first(&cfg, &busy, &ask, Some(&index)), 2);
}

/// prefix-cache 3 and least-request 1 (the cache-affinity profile), with `boundedLoad`.
fn affinity(bounded_load: f64) -> Scheduler {
    Scheduler {
        prefix_bounded_load: bounded_load,
        ..Scheduler::cache_affinity()
    }
}

/// An index that has seen two conversations open with `system` on pod 0 (so the system
/// prompt's last block branches) and holds the system prompt on the `replicas` too.
fn system_prompt_on(system: &str, replicas: &[u32]) -> PrefixIndex {
    let mut index = PrefixIndex::new(10_000);
    for (user, pod) in [(
        "user a: hello there, a first question about trains in the Alps",
        0,
    )]
    .into_iter()
    .chain([(
        "user b: good morning, a question about ferries between islands",
        0,
    )])
    .chain(replicas.iter().map(|p| {
        (
            "user c: a question of my own, about night buses across Europe",
            *p,
        )
    })) {
        let text = format!("{system}{user}");
        let h = block_hashes("m", text.as_bytes(), 64, 128);
        index.insert(&h, pod);
        index.note_successors(&h, text.len() / 64);
    }
    index
}

#[test]
fn bounded_load_sends_a_new_conversation_off_a_pod_over_its_share_to_one_that_holds_its_prompt_too()
{
    let system = "You answer travel questions, briefly and with facts only. ".repeat(8);
    let first_turn = block_hashes(
        "m",
        format!("{system}user d: a new conversation, about cycling routes in spring").as_bytes(),
        64,
        128,
    );
    // Pod 0 took 10 of the last 13 picks: over 1.5 x the mean share.
    let mut recent = RecentPicks::default();
    for (pod, picks) in [(0, 10), (1, 1), (2, 1), (3, 1)] {
        for _ in 0..picks {
            recent.record(pod, 0);
        }
    }
    let pods = idle_pods(4);
    let new_turn = Ask {
        recent: Some(recent.at(0)),
        ..ask(&first_turn)
    };
    let alone = system_prompt_on(&system, &[]);
    assert_eq!(
        first(&affinity(0.0), &pods, &new_turn, Some(&alone)),
        0,
        "without the bound: where the prompt is"
    );
    assert_ne!(first(&affinity(1.5), &pods, &new_turn, Some(&alone)), 0);
    // A pod that holds the system prompt too is preferred to one that would prefill it.
    let replicated = system_prompt_on(&system, &[2]);
    assert_eq!(
        first(&affinity(1.5), &pods, &new_turn, Some(&replicated)),
        2
    );
    // Within its share pod 0 keeps the new conversation (where it is cached, fewer held on 2
    // only breaking a tie of equal matches).
    let mut even = RecentPicks::default();
    for pod in 0..4 {
        even.record(pod, 0);
    }
    let within = Ask {
        recent: Some(even.at(0)),
        ..ask(&first_turn)
    };
    assert_eq!(first(&affinity(1.5), &pods, &within, Some(&alone)), 0);
    // So does a pod over its share whose engine queues nothing: every request still gets a
    // place in its batch, and moving would only cost the prefill of the system prompt. (The
    // idle pods above have no stats: unknown counts as queueing.)
    let (no_queue, queue) = (
        stats(2.0, 0.0, 0.0, 0.0, 0.0),
        stats(4.0, 1.0, 0.0, 0.0, 0.0),
    );
    let calm = pods_with(&[&no_queue, &no_queue, &no_queue, &no_queue]);
    let queueing = pods_with(&[&queue, &no_queue, &no_queue, &no_queue]);
    assert_eq!(first(&affinity(1.5), &calm, &new_turn, Some(&alone)), 0);
    assert_ne!(first(&affinity(1.5), &queueing, &new_turn, Some(&alone)), 0);
}

#[test]
fn bounded_load_keeps_a_conversations_next_turn_on_its_pod_however_busy() {
    let system = "You answer travel questions, briefly and with facts only. ".repeat(8);
    let mut index = system_prompt_on(&system, &[2]);
    // User a's conversation lives on pod 0; its next turn adds a short answer and question.
    let opened = format!("{system}user a: hello there, a first question about trains in the Alps");
    let next = format!("{opened}\nassistant: sure.\nuser a: and a second one?");
    let h = block_hashes("m", next.as_bytes(), 64, 128);
    index.insert(&block_hashes("m", opened.as_bytes(), 64, 128), 0);
    let mut recent = RecentPicks::default();
    for _ in 0..10 {
        recent.record(0, 0);
    }
    let mut busy = idle_pods(4);
    busy[0].in_flight = 8;
    let turn = Ask {
        recent: Some(recent.at(0)),
        ..ask(&h)
    };
    // Without the bound, a few blocks of history weigh less than the load: the turn moves to
    // pod 2 (which holds the system prompt) and leaves its history behind.
    assert_eq!(first(&affinity(0.0), &busy, &turn, Some(&index)), 2);
    assert_eq!(first(&affinity(1.5), &busy, &turn, Some(&index)), 0);
}

#[test]
fn recent_picks_fade_with_time_and_keep_their_ratios_when_rescaled() {
    let mut r = RecentPicks::default();
    for _ in 0..10 {
        r.record(0, 0);
    }
    // Five time constants later one pick outweighs the ten (e^5 ~ 148).
    r.record(1, 5 * RECENT_PICKS_MS as u64);
    let now = r.at(5 * RECENT_PICKS_MS as u64);
    assert!(now.of(1) > 10.0 * now.of(0), "{} {}", now.of(1), now.of(0));
    let ratio = now.of(1) / now.of(0);
    // A minute on, the weights are scaled back: the ratios stand, a new pick weighs 1.
    let later = 60_000;
    r.record(2, later);
    let v = r.at(later);
    assert_eq!((v.of(2), v.one), (1.0, 1.0));
    assert!((v.of(1) / v.of(0) - ratio).abs() < 1e-9 * ratio);
    assert_eq!(v.of(7), 0.0, "a pod never picked");
    // A server idle for a day: e^(age) would overflow; every weight stays finite, the old
    // picks have faded to nothing, and the bound still lets pods through.
    let next_day = later + 86_400_000;
    let idle = r.at(next_day);
    assert!(idle.one.is_finite() && idle.one > 1e20);
    r.record(3, next_day);
    let v = r.at(next_day);
    assert_eq!(
        (v.of(0), v.of(1), v.of(2), v.of(3), v.one),
        (0.0, 0.0, 0.0, 1.0, 1.0)
    );
}

#[test]
fn session_affinity_scores_the_bound_pod_over_a_lighter_one() {
    let cfg = only(
        &[(Plugin::SessionAffinity, 10), (Plugin::LeastRequest, 1)],
        &[],
    );
    let mut pods = idle_pods(3);
    pods[2].in_flight = 3;
    let bound = Ask {
        session_pod: Some(2),
        ..NO_ASK
    };
    assert_eq!(first(&cfg, &pods, &bound, None), 2);
    // Without a binding (or bound to a pod no longer a candidate) load decides.
    assert_ne!(first(&cfg, &pods, &NO_ASK, None), 2);
    let gone = Ask {
        session_pod: Some(7),
        ..NO_ASK
    };
    assert_ne!(first(&cfg, &pods, &gone, None), 2);
    // A weight that does not outweigh the load score lets the session move, as in Kthena.
    let weak = only(
        &[(Plugin::SessionAffinity, 1), (Plugin::LeastRequest, 10)],
        &[],
    );
    assert_ne!(first(&weak, &pods, &bound, None), 2);
}

#[test]
fn a_sticky_sessions_pod_leads_the_ranking_even_where_bounded_load_leaves_it_out() {
    let system = "You answer travel questions, briefly and with facts only. ".repeat(8);
    let first_turn = block_hashes("m", format!("{system}user d: hello").as_bytes(), 64, 128);
    // Pod 0 holds the prompt and took every recent pick: the bound leaves it out.
    let mut recent = RecentPicks::default();
    for _ in 0..10 {
        recent.record(0, 0);
    }
    let index = system_prompt_on(&system, &[]);
    let pods = idle_pods(4);
    let unpinned = Ask {
        recent: Some(recent.at(0)),
        ..ask(&first_turn)
    };
    assert_ne!(first(&affinity(1.5), &pods, &unpinned, Some(&index)), 0);
    let pinned = Ask {
        pinned: Some(0),
        ..unpinned
    };
    let ranked = rank(
        &affinity(1.5),
        &pods,
        &pinned,
        Some(&index),
        &mut Rng::new(1),
        3,
    )
    .unwrap();
    assert_eq!(ranked[0], 0);
    assert_eq!(ranked.len(), 3, "then the retry order: {ranked:?}");
    assert!(!ranked[1..].contains(&0));
}

mod speed;

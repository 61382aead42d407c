//! prefix-cache's `podSpeed`: pods of mixed speed (their engines' time per output token).

use super::*;

/// The cache-affinity profile (`boundedLoad` as given) with `podSpeed`.
fn speed_aware(bounded_load: f64) -> Scheduler {
    Scheduler {
        prefix_pod_speed: true,
        ..affinity(bounded_load)
    }
}

/// Engine stats of a pod with `waiting` requests queued (four running), whose engine has
/// decoded a token every `tpot` seconds on average since it started (its histograms' totals:
/// 1,000 requests of 16 tokens). The last interval's mean is the same 10 ms for every pod: a pod's speed is not
/// judged by one interval, in which its load moves the time as much as its hardware does.
fn decoding(tpot: f64, waiting: f64) -> PodStats {
    PodStats {
        totals: [50.0, 1000.0, tpot * 16_000.0, 16_000.0],
        ..stats(4.0, waiting, 0.0, 0.0, 0.01)
    }
}

/// A pod with room in its batch (none waiting), decoding a token every `tpot` seconds.
fn with_room(tpot: f64) -> PodStats {
    decoding(tpot, 0.0)
}

/// A long prompt no pod has seen.
fn new_long_prompt() -> Vec<u64> {
    let text = "a long question nobody asked before ".repeat(40);
    block_hashes("m", text.as_bytes(), 64, 128)
}

#[test]
fn a_prompt_no_pod_holds_goes_to_a_fast_pod_though_a_slow_one_is_idler() {
    let (fast, slow) = (with_room(0.004), with_room(0.008));
    let mut pods = pods_with(&[&fast, &slow]);
    pods[0].in_flight = 1;
    let (h, index) = (new_long_prompt(), PrefixIndex::new(1000));
    // Without: least-request sends it to the idle pod, which takes twice as long to prefill it.
    assert_eq!(first(&affinity(0.0), &pods, &ask(&h), Some(&index)), 1);
    assert_eq!(first(&speed_aware(0.0), &pods, &ask(&h), Some(&index)), 0);
}

#[test]
fn a_pod_timed_on_a_few_requests_counts_as_fast_as_any() {
    let fast = with_room(0.004);
    let barely_timed = PodStats {
        // 15 tokens timed: too few.
        totals: [0.05, 1.0, 0.008 * 15.0, 15.0],
        ..with_room(0.008)
    };
    let mut pods = pods_with(&[&fast, &barely_timed]);
    pods[0].in_flight = 1;
    let (h, index) = (new_long_prompt(), PrefixIndex::new(1000));
    assert_eq!(first(&speed_aware(0.0), &pods, &ask(&h), Some(&index)), 1);
}

#[test]
fn a_slow_pod_with_room_is_as_fast_as_any_when_the_fast_pods_queue() {
    let queueing = decoding(0.004, 2.0);
    let slow = with_room(0.008);
    let pods = pods_with(&[&queueing, &queueing, &slow]);
    let (h, index) = (new_long_prompt(), PrefixIndex::new(1000));
    assert_eq!(first(&speed_aware(0.0), &pods, &ask(&h), Some(&index)), 2);
}

#[test]
fn a_slow_pod_keeps_a_prompt_it_holds_most_of_and_loses_one_it_holds_little_of() {
    let (fast, slow) = (with_room(0.004), with_room(0.008));
    let pods = pods_with(&[&fast, &slow]);
    let history = "an earlier turn of this conversation, with its answer. ".repeat(12);
    let mut index = PrefixIndex::new(1000);
    index.insert(&block_hashes("m", history.as_bytes(), 64, 128), 1);
    let cfg = speed_aware(0.0);
    // Held for the most part: prefilling the rest twice as slowly beats prefilling it all.
    let most = block_hashes(
        "m",
        format!("{history}and the next question?").as_bytes(),
        64,
        128,
    );
    assert_eq!(first(&cfg, &pods, &ask(&most), Some(&index)), 1);
    // A third held: the fast pod prefills it all sooner.
    let little = format!(
        "{}{}",
        &history[..history.len() / 3],
        "x".repeat(history.len())
    );
    let little = block_hashes("m", little.as_bytes(), 64, 128);
    assert_eq!(first(&cfg, &pods, &ask(&little), Some(&index)), 0);
    // Without podSpeed, any share held wins.
    assert_eq!(first(&affinity(0.0), &pods, &ask(&little), Some(&index)), 1);
}

#[test]
fn pods_within_a_quarter_of_the_fastest_rank_exactly_as_without_pod_speed() {
    let speeds = [0.004, 0.0045, 0.0049, 0.004];
    let stats: Vec<PodStats> = speeds.iter().map(|t| with_room(*t)).collect();
    let refs: Vec<&PodStats> = stats.iter().collect();
    let mut index = PrefixIndex::new(10_000);
    let prompts: Vec<Vec<u64>> = (0..12)
        .map(|i| {
            let text = format!("prompt family {} ", i % 3).repeat(30) + &format!("turn {i}");
            block_hashes("m", text.as_bytes(), 64, 128)
        })
        .collect();
    for (i, h) in prompts.iter().enumerate() {
        let mut pods = pods_with(&refs);
        for (n, c) in pods.iter_mut().enumerate() {
            c.in_flight = ((i + n) % 3) as u32;
        }
        let rank_with =
            |cfg: &Scheduler| rank(cfg, &pods, &ask(h), Some(&index), &mut Rng::new(1), 4);
        let without = rank_with(&affinity(0.0)).unwrap();
        assert_eq!(rank_with(&speed_aware(0.0)).unwrap(), without, "prompt {i}");
        index.insert(h, without[0]);
    }
}

#[test]
fn bounded_load_gives_a_slow_pod_a_share_in_proportion_to_its_speed() {
    let system = "You answer travel questions, briefly and with facts only. ".repeat(8);
    let index = system_prompt_on(&system, &[3]);
    let new_conversation = block_hashes(
        "m",
        format!("{system}user d: a new conversation, about cycling routes in spring").as_bytes(),
        64,
        128,
    );
    // Pods 0-2 decode twice as fast as pod 3, which reports a queue; of the last picks pod 3
    // took 1.5x the mean share (under 1.5x plus one pick; over its share at half the speed).
    let (fast, slow) = (with_room(0.004), decoding(0.008, 1.0));
    let pods = pods_with(&[&fast, &fast, &fast, &slow]);
    let mut recent = RecentPicks::default();
    for (pod, picks) in [(0, 3), (1, 1), (2, 1), (3, 3)] {
        for _ in 0..picks {
            recent.record(pod, 0);
        }
    }
    let a = Ask {
        recent: Some(recent.at(0)),
        ..ask(&new_conversation)
    };
    let ranked = |cfg: &Scheduler| rank(cfg, &pods, &a, Some(&index), &mut Rng::new(1), 4).unwrap();
    assert!(ranked(&affinity(1.5)).contains(&3));
    assert!(!ranked(&speed_aware(1.5)).contains(&3));
}

//! Pod picking with Kthena's scheduler plugins: filters drop pods, scores (0..100 each) are
//! summed by weight, and the ranked list becomes the endpoint header (chosen pod first, then
//! the retry order). Pure: stats, in-flight counts, prompt hashes and randomness are passed in.
//!
//! Filters: `least-request` (engine-reported waiting < maxWaitingRequests), `lora-affinity`
//! (for a LoRA request, pods whose `/v1/models` lists the adapter). Scores: `least-request`
//! (load + 100 x max(load - running, 0), least loaded = 100; load: this router's requests in
//! flight plus what the engine last reported beyond them, i.e. other gateways'), `gpu-usage`
//! ((1 - KV usage) x 100), `least-latency` (min-max normalised TTFT and TPOT mixed by
//! TTFTTPOTWeightFactor; pods not measured yet get 50), `prefix-cache` (share of the prompt's
//! leading blocks the pod has served), `random`, `session-affinity` (100 for the pod the
//! request's session is bound to, [`crate::session`]). Pods whose last scrape failed are skipped
//! unless every pod is down; stale stats count as unknown.
//!
//! Beyond Kthena, prefix-cache's `boundedLoad` (affinity with bounded load, after
//! consistent hashing with bounded loads and Preble's exploit/explore): before scoring, a
//! prompt that continues one line of prompts (a conversation's next turn: the longest match
//! ends inside what only it has sent) keeps only the pods holding most of it, so a
//! conversation never moves for load; a prompt that starts something new (its longest match
//! ends where earlier prompts went separate ways, as after a shared system prompt, or no pod
//! has seen it) keeps only the pods whose share of the server's recent picks
//! ([`RecentPicks`]) is at most `boundedLoad` times the mean, or whose engine reports no queue
//! (balance buys nothing while every request gets a place in the batch). A popular system prompt thus
//! spreads its new conversations to a second pod (which then holds it too) once its pod takes
//! more than its share, instead of queueing every conversation on one pod; a prompt nobody
//! shares still goes where it is cached.
//!
//! Also beyond Kthena, prefix-cache's `podSpeed`, for fleets of mixed hardware: a pod's
//! slowness is its engine's mean time per output token (since it started) over the fastest
//! pod's among those that would take the request at once (no queue reported), 1 within
//! [`SAME_SPEED`] or when not measured ([`slowness`]). prefix-cache then scores the prefill
//! time a pod would save, not only the blocks it holds: 100 x (matched - (slowness - 1) x
//! unmatched), in shares of the prompt, so a prompt nobody holds goes to a fast pod, and a
//! pod twice as slow must hold over half of a prompt to beat a fast pod holding none of it.
//! `boundedLoad`'s share follows each pod's speed (a pod half as fast, half the share). With
//! equal pods, nothing changes.

use filter_config::{Plugin, Scheduler};

use crate::metrics::PodStats;
use crate::prefix::PrefixIndex;
use crate::rng::Rng;

/// One pod the scheduler may pick.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The pod's index in its ModelServer's endpoint list.
    pub id: u32,
    /// Fresh engine stats, if any.
    pub stats: Option<&'a PodStats>,
    /// Requests this router has sent to the pod and not seen finish (all workers).
    pub in_flight: u32,
}

impl Candidate<'_> {
    /// Requests at the pod: this router's in flight, plus those the engine last reported
    /// beyond them (other gateways'; none with one gateway).
    fn load(&self) -> f64 {
        f64::from(self.in_flight) + self.stats.map_or(0.0, |s| s.others)
    }

    /// Whether the pod's engine reported requests waiting for a place in its batch (or its
    /// stats are unknown): only then does balance buy anything.
    fn queues(&self) -> bool {
        self.stats.is_none_or(|s| s.waiting > 0.0)
    }
}

/// What the scheduler needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The LoRA adapter requested, when the request is a LoRA request.
    pub lora: Option<&'a str>,
    /// Chained block hashes of the prompt (empty: prefix-cache scores 0).
    pub hashes: &'a [u64],
    /// Prompt blocks every gateway has placed on each pod (by pod id, missing: none),
    /// from the shared placement store; None: unknown, ties then count the blocks this
    /// router's index holds.
    pub placed: Option<&'a [u32]>,
    /// The server's recent picks, for `boundedLoad` (None: no bound).
    pub recent: Option<Recent<'a>>,
    /// session-affinity: the pod the request's session is bound to ([`crate::session`]).
    pub session_pod: Option<u32>,
    /// A route's sessionSticky: the pod the request's session is bound to, ranked first
    /// whenever it passes the filters ([`crate::session`]).
    pub pinned: Option<u32>,
}

/// How long a pick counts in a pod's recent share: its weight decays by e every this many
/// milliseconds. Seconds: a popular prompt's conversations (a turn every second or so)
/// keep its pod's share up, a burst's jitter does not.
pub const RECENT_PICKS_MS: f64 = 2000.0;

/// Picks of one server's pods over the last seconds, each weighted by how recent it is. The
/// weights grow with time (e^(t / [`RECENT_PICKS_MS`])) instead of the old ones decaying, so
/// a pick touches one pod, and shares compare without any decay applied; all are scaled
/// back down once in a while.
#[derive(Debug, Clone, Default)]
pub struct RecentPicks {
    /// By pod id; a pod not yet picked may be missing.
    weights: Vec<f64>,
    /// When a pick weighed 1.
    epoch_ms: u64,
}

/// Time constants after which the weights are scaled back so that a pick weighs 1 again
/// (e^28, about a minute at 2 s): far from where f64 overflows (e^709).
const RESCALE_AFTER: f64 = 28.0;

impl RecentPicks {
    /// The exponent of a pick made at `now_ms`.
    fn age(&self, now_ms: u64) -> f64 {
        now_ms.saturating_sub(self.epoch_ms) as f64 / RECENT_PICKS_MS
    }

    /// The server's pick at `now_ms` went to pod `id` (ids are bounded by the pod list).
    pub fn record(&mut self, id: u32, now_ms: u64) {
        let age = self.age(now_ms);
        if self.weights.is_empty() || age > RESCALE_AFTER {
            // Rescaled before adding, so no weight is ever infinite (a server idle for half an
            // hour would make e^age overflow): the old picks shrink by e^-age, to 0 if long ago.
            let shrink = (-age).exp();
            for slot in &mut self.weights {
                *slot *= shrink;
            }
            self.epoch_ms = now_ms;
        }
        let w = self.age(now_ms).exp();
        let i = id as usize;
        if self.weights.len() <= i {
            self.weights.resize(i + 1, 0.0);
        }
        if let Some(slot) = self.weights.get_mut(i) {
            *slot += w;
        }
    }

    /// The shares as the scheduler compares them at `now_ms`.
    pub fn at(&self, now_ms: u64) -> Recent<'_> {
        Recent {
            weights: &self.weights,
            // Long idle: every recorded pick has faded, and a pick now outweighs them all
            // (capped so the bound stays finite).
            one: self.age(now_ms).min(RESCALE_AFTER * 2.0).exp(),
        }
    }
}

/// [`RecentPicks`] seen at one moment: the pods' weights and what one pick now weighs.
#[derive(Debug, Clone, Copy)]
pub struct Recent<'a> {
    weights: &'a [f64],
    one: f64,
}

impl Recent<'_> {
    fn of(&self, id: u32) -> f64 {
        self.weights.get(id as usize).copied().unwrap_or(0.0)
    }
}

/// Why no pod could be picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unschedulable {
    /// Every pod was dropped by this filter.
    Filtered(Plugin),
}

/// True when picking needs engine stats or scoring at all (otherwise round-robin suffices).
pub fn is_active(cfg: &Scheduler) -> bool {
    !cfg.filters.is_empty() || cfg.scores.iter().any(|s| s.weight > 0)
}

/// Ranks the candidates; returns pod ids, best first, at most `take`.
pub fn rank(
    cfg: &Scheduler,
    candidates: &[Candidate<'_>],
    ask: &Ask<'_>,
    prefix: Option<&PrefixIndex>,
    rng: &mut Rng,
    take: usize,
) -> Result<Vec<u32>, Unschedulable> {
    let mut pods: Vec<Candidate<'_>> = candidates.to_vec();
    // Pods known to be down are skipped while any other pod remains.
    if pods.iter().any(|c| c.stats.is_none_or(|s| s.up)) {
        pods.retain(|c| c.stats.is_none_or(|s| s.up));
    }
    for f in &cfg.filters {
        match f {
            Plugin::LeastRequest => {
                let max = f64::from(cfg.max_waiting_requests);
                pods.retain(|c| c.stats.is_none_or(|s| s.waiting < max));
            }
            Plugin::LoraAffinity => {
                if let Some(adapter) = ask.lora {
                    pods.retain(|c| {
                        c.stats
                            .and_then(|s| s.models.as_ref())
                            .is_some_and(|m| m.iter().any(|x| x == adapter))
                    });
                }
            }
            _ => {}
        }
        if pods.is_empty() {
            return Err(Unschedulable::Filtered(*f));
        }
    }

    // sessionSticky: the bound pod is picked if the filters kept it (Kthena: else rebound).
    let pinned = ask.pinned.filter(|p| pods.iter().any(|c| c.id == *p));

    let prefix_on = cfg.scores_with(Plugin::PrefixCache);
    // Leading blocks of the prompt each pod has served, by position in `pods`.
    let mut matched = match prefix {
        Some(idx) if prefix_on && !ask.hashes.is_empty() => {
            let ids: Vec<u32> = pods.iter().map(|c| c.id).collect();
            idx.matches(ask.hashes, &ids)
        }
        _ => Vec::new(),
    };
    // podSpeed: each pod's slowness, by position in `pods` (all 1 without).
    let mut slow = match prefix_on && cfg.prefix_pod_speed {
        true => slowness(&pods),
        false => vec![1.0; pods.len()],
    };
    if let Some(idx) = prefix.filter(|_| cfg.prefix_bounded_load > 0.0 && !matched.is_empty()) {
        let in_step = (&mut matched, &mut slow);
        bound_load(cfg.prefix_bounded_load, &mut pods, in_step, ask, idx);
    }

    let mut total = vec![0.0f64; pods.len()];
    for s in cfg.scores.iter().filter(|s| s.weight > 0) {
        let w = f64::from(s.weight);
        let scores = score(s.name, cfg, &pods, ask, (&matched, &slow), rng);
        for (t, v) in total.iter_mut().zip(scores) {
            *t += w * v;
        }
    }
    // Best first. Ties (above all: a prompt no pod has seen) with prefix-cache on: the pod
    // with the least load (requests in flight from every worker, and other gateways'), then
    // the one the index knows to hold the fewest blocks (SGLang's smallest tree), so distinct
    // prefixes spread over the pods instead of meeting on one; then rendezvous hashing of the
    // prompt's first block. Without prefix-cache, at random, so equal pods share the load.
    let affinity = ask.hashes.first().filter(|_| prefix_on).copied();
    let mut order: Vec<(f64, (u32, u32, u64), u32)> = pods
        .iter()
        .zip(&total)
        .map(|(c, t)| {
            let tie = match affinity {
                Some(h) => (
                    c.load().round() as u32,
                    match ask.placed {
                        Some(placed) => placed.get(c.id as usize).copied().unwrap_or(0),
                        None => prefix.map_or(0, |idx| idx.held(c.id)),
                    },
                    crate::prefix::hash(h, &c.id.to_le_bytes()),
                ),
                None => (0, 0, rng.next_u64()),
            };
            (*t, tie, c.id)
        })
        .collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    // A pinned pod leads even where boundedLoad left it out: the session, not the
    // prompt, decides.
    let rest = order
        .into_iter()
        .map(|(_, _, id)| id)
        .filter(|id| Some(*id) != pinned);
    Ok(pinned.into_iter().chain(rest).take(take.max(1)).collect())
}

/// `boundedLoad`: keeps the pods a prompt may go to (see the module header); `matched`
/// (leading blocks served) and `slow` (slowness), by position in `pods`, are kept in step.
/// Never leaves none: the best-matched pods, and the pods at or below their share, remain.
fn bound_load(
    factor: f64,
    pods: &mut Vec<Candidate<'_>>,
    (matched, slow): (&mut Vec<usize>, &mut Vec<f64>),
    ask: &Ask<'_>,
    idx: &PrefixIndex,
) {
    let best = matched.iter().copied().max().unwrap_or(0);
    let keep: Vec<bool> = if !idx.starts_branch(ask.hashes, best) {
        matched.iter().map(|m| *m == best).collect()
    } else if let Some(recent) = ask.recent {
        let mean = pods.iter().map(|c| recent.of(c.id)).sum::<f64>() / pods.len().max(1) as f64;
        // One pick's worth of slack: a pod is not over its share for its very first pick.
        // A pod whose engine queues nothing keeps its share whatever it is: below its batch
        // limit a request waits for nobody, and balancing would only cost cache misses.
        // podSpeed: a pod's share in proportion to its speed (1 / slowness) over the mean.
        let speed = slow.iter().map(|s| 1.0 / s).sum::<f64>() / slow.len().max(1) as f64;
        pods.iter()
            .zip(slow.iter())
            .map(|(c, s)| {
                recent.of(c.id) <= factor * mean / (s * speed) + recent.one || !c.queues()
            })
            .collect()
    } else {
        return;
    };
    keep_in_step(pods, &keep);
    keep_in_step(matched, &keep);
    keep_in_step(slow, &keep);
}

/// Keeps the items whose flag (by position) is set.
fn keep_in_step<T>(items: &mut Vec<T>, keep: &[bool]) {
    let mut flags = keep.iter();
    items.retain(|_| flags.next().copied().unwrap_or(true));
}

/// Pods within this factor of the fastest pod's time per output token count as fast as it
/// (`podSpeed`): noise in the measure, and an engine's time growing with its batch, change no
/// pick, and equal pods rank exactly as without.
pub const SAME_SPEED: f64 = 1.25;
/// How old a pod's speed may get (`podSpeed`): a pod that reports its load in-band is not
/// scraped, so its latencies are read alone this often ([`crate::collector::Kind::Latencies`]);
/// a speed changes slowly, and every gateway reads it.
pub const SPEED_MAX_AGE_MS: u64 = 30_000;
/// Times per output token a pod's engine must have observed before its speed counts
/// (`podSpeed`): engines time every token, so this is a cold pod's first request or two. (A
/// gate of 16 *requests* delayed the speed past where a burst had placed prompts on the slow
/// pod: bench/QUALITY.md, item 9.)
pub const SPEED_SAMPLES: f64 = 16.0;
/// No pod counts slower than this (`podSpeed`): a pod reporting absurd times still gets
/// scores of a sane size.
pub const MAX_SLOWNESS: f64 = 8.0;

/// `podSpeed`: per pod, its engine's mean time per output token since it started
/// ([`PodStats::lifetime_tpot`], after [`SPEED_SAMPLES`]) over the fastest pod's among those
/// that report no queue (all pods when every one does): a fast pod that queues is no faster for the next request
/// than a slower one with room. 1 for pods not measured and within [`SAME_SPEED`]; at most
/// [`MAX_SLOWNESS`].
fn slowness(pods: &[Candidate<'_>]) -> Vec<f64> {
    let tpot = |c: &Candidate<'_>| c.stats.map_or(0.0, |s| s.lifetime_tpot(SPEED_SAMPLES));
    let fastest = |room_only: bool| {
        pods.iter()
            .filter(|c| !(room_only && c.queues()))
            .map(tpot)
            .filter(|t| *t > 0.0)
            .fold(f64::INFINITY, f64::min)
    };
    let fastest = match fastest(true) {
        t if t.is_finite() => t,
        _ => fastest(false),
    };
    pods.iter()
        .map(|c| match tpot(c) / fastest {
            r if r >= SAME_SPEED => r.min(MAX_SLOWNESS),
            _ => 1.0,
        })
        .collect()
}

fn score(
    plugin: Plugin,
    cfg: &Scheduler,
    pods: &[Candidate<'_>],
    ask: &Ask<'_>,
    (matched, slow): (&[usize], &[f64]),
    rng: &mut Rng,
) -> Vec<f64> {
    match plugin {
        Plugin::LeastRequest => {
            let base: Vec<f64> = pods
                .iter()
                .map(|c| {
                    let flight = c.load();
                    let running = c.stats.map_or(0.0, |s| s.running);
                    flight + 100.0 * (flight - running).max(0.0)
                })
                .collect();
            let max = base.iter().copied().fold(0.0, f64::max);
            base.iter()
                .map(|b| {
                    if max > 0.0 {
                        (max - b) / max * 100.0
                    } else {
                        100.0
                    }
                })
                .collect()
        }
        Plugin::GpuUsage => pods
            .iter()
            .map(|c| (1.0 - c.stats.map_or(0.0, |s| s.kv)) * 100.0)
            .collect(),
        Plugin::LeastLatency => {
            fn measured<'a>(c: &Candidate<'a>) -> Option<&'a PodStats> {
                c.stats.filter(|s| s.ttft > 0.0 && s.tpot > 0.0)
            }
            let (mut t_min, mut t_max, mut p_min, mut p_max) = (f64::MAX, 0.0f64, f64::MAX, 0.0f64);
            for s in pods.iter().filter_map(measured) {
                t_min = t_min.min(s.ttft);
                t_max = t_max.max(s.ttft);
                p_min = p_min.min(s.tpot);
                p_max = p_max.max(s.tpot);
            }
            let a = cfg.ttft_tpot_weight_factor;
            pods.iter()
                .map(|c| match measured(c) {
                    None => 50.0,
                    Some(s) => {
                        let t = if t_max > t_min {
                            100.0 * (t_max - s.ttft) / (t_max - t_min)
                        } else {
                            100.0
                        };
                        let p = if p_max > p_min {
                            100.0 * (p_max - s.tpot) / (p_max - p_min)
                        } else {
                            100.0
                        };
                        t * a + p * (1.0 - a)
                    }
                })
                .collect()
        }
        Plugin::PrefixCache if !matched.is_empty() => {
            let n = ask.hashes.len() as f64;
            matched
                .iter()
                .zip(slow)
                .map(|(m, s)| {
                    // podSpeed: less the extra time the pod takes for what it lacks.
                    let share = *m as f64 / n;
                    100.0 * (share - (s - 1.0) * (1.0 - share))
                })
                .collect()
        }
        Plugin::PrefixCache => vec![0.0; pods.len()],
        Plugin::Random => pods.iter().map(|_| rng.below(101) as f64).collect(),
        Plugin::SessionAffinity => pods
            .iter()
            .map(|c| {
                if ask.session_pod == Some(c.id) {
                    100.0
                } else {
                    0.0
                }
            })
            .collect(),
        Plugin::LoraAffinity => vec![0.0; pods.len()],
    }
}

#[cfg(test)]
mod tests;

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
//! leading blocks the pod has served), `random`. Pods whose last scrape failed are skipped
//! unless every pod is down; stale stats count as unknown.

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

    let mut total = vec![0.0f64; pods.len()];
    for s in cfg.scores.iter().filter(|s| s.weight > 0) {
        let w = f64::from(s.weight);
        let scores = score(s.name, cfg, &pods, ask, prefix, rng);
        for (t, v) in total.iter_mut().zip(scores) {
            *t += w * v;
        }
    }
    // Best first. Ties (above all: a prompt no pod has seen) with prefix-cache on: the pod
    // with the least load (requests in flight from every worker, and other gateways'), then
    // the one the index knows to hold the fewest blocks (SGLang's smallest tree), so distinct
    // prefixes spread over the pods instead of meeting on one; then rendezvous hashing of the
    // prompt's first block. Without prefix-cache, at random, so equal pods share the load.
    let prefix_on = cfg
        .scores
        .iter()
        .any(|s| s.name == Plugin::PrefixCache && s.weight > 0);
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
    Ok(order
        .into_iter()
        .take(take.max(1))
        .map(|(_, _, id)| id)
        .collect())
}

fn score(
    plugin: Plugin,
    cfg: &Scheduler,
    pods: &[Candidate<'_>],
    ask: &Ask<'_>,
    prefix: Option<&PrefixIndex>,
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
        Plugin::PrefixCache => match prefix {
            Some(idx) if !ask.hashes.is_empty() => {
                let ids: Vec<u32> = pods.iter().map(|c| c.id).collect();
                let n = ask.hashes.len() as f64;
                idx.matches(ask.hashes, &ids)
                    .into_iter()
                    .map(|m| m as f64 / n * 100.0)
                    .collect()
            }
            _ => vec![0.0; pods.len()],
        },
        Plugin::Random => pods.iter().map(|_| rng.below(101) as f64).collect(),
        Plugin::LoraAffinity => vec![0.0; pods.len()],
    }
}

#[cfg(test)]
mod tests;

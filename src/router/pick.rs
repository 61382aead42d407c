//! Pod choice for a routed request, one sequence for plain and PD servers: without the
//! scheduler, round robin (pods, or PD pairs spread over groups); with it, the candidates (every
//! pod, or the decode pods of groups that still have a prefill pod up) are ranked by Kthena's
//! plugins, the best one remembers the prompt in the server's prefix index (with prefix-cache's
//! `boundedLoad` also where it branches, and the pick in the server's recent picks; with
//! session-affinity the session's binding; a route's sessionSticky pins its session's pod,
//! `router/sticky.rs`), and the ranking
//! becomes the endpoint list (chosen pod first, then the retry order) or, for PD, decode pods
//! each paired with the best prefill pod of their group. Pure: stats, in-flight counts, the
//! prompt and randomness come in through [`Request`] and the router.

use super::{
    Decision, Group, Pair, PdServer, Request, RouteError, Router, Server, SharedPlacement, Target,
};
use crate::metrics::Snapshot;
use crate::prefix::{block_hashes, PrefixIndex};
use crate::prefix_sync;
use crate::rng::Rng;
use crate::scheduler::{self, Ask, Candidate, Unschedulable};

use super::sticky::StickySession;
use crate::session::{Binding, Role};
use filter_config::Plugin;

impl Router {
    /// The pods of `target.server` for `req`: how many follow the chosen one comes from
    /// `endpoint_fallbacks` (plain) or `trafficPolicy.retry` (PD: one pair per attempt).
    pub(super) fn pick(
        &mut self,
        target: Target,
        req: &Request<'_>,
    ) -> Result<Decision, RouteError> {
        // Counts from the configuration saturate: on wasm32 `usize` is 32 bits, and
        // `u32::MAX + 1` would wrap to an empty endpoint list.
        let fallbacks = self.settings.endpoint_fallbacks as usize;
        let server = self
            .servers
            .get_mut(target.server)
            .ok_or(RouteError::Internal("a target names no server"))?;
        if server.endpoints.is_empty() {
            return Err(RouteError::NoReadyEndpoints(server.name.clone()));
        }
        let wanted = match &server.pd {
            Some(_) => (server.retry_attempts.unwrap_or(1) as usize).saturating_add(1),
            None => fallbacks.saturating_add(1),
        };
        // The route's sessionSticky (plain servers; Kthena bypasses it for PD): the pod the
        // session is bound to, picked while it passes the filters.
        let sticky = self
            .routes
            .get(target.route)
            .and_then(|route| StickySession::of(route, server, req));
        let pinned = sticky.as_ref().and_then(|s| s.pinned);
        if !self.scheduling {
            let first = server.round_robin_first(pinned);
            if let Some(claim) = sticky.as_ref().and_then(|s| s.claim(server, Some(first))) {
                // The claim takes the turn: new sessions claimed at once go round too.
                server.take_turn(first);
                return Err(RouteError::SessionUnknown(claim, target));
            }
            let (endpoints, pairs) = match server.pd.as_mut() {
                Some(pd) => {
                    let pairs = pd.pick_pairs(wanted, &server.endpoints);
                    (first_decode(&pairs, &server.name)?, pairs)
                }
                None => (server.round_robin(wanted, pinned), Vec::new()),
            };
            let mut d = decision(target, endpoints, pairs, None, None, None);
            if let Some(s) = sticky {
                s.rebind(server, &mut d, req.now_ms);
            }
            return Ok(d);
        }

        if let Some(key) = &server.load_key {
            apply_load_reports(
                &mut self.stats,
                &server.endpoints,
                (req.load_reports)(key, server.endpoints.len()),
                self.settings.scheduler.metrics_stale_ms,
            );
        }
        let cfg = &self.settings.scheduler;
        let hashes = prompt_hashes(server.prefix.as_ref(), req, cfg);
        let bounded = cfg.prefix_bounded_load > 0.0;
        let placement = match read_placement_record(server, &hashes, req, bounded) {
            Err(shared_keys) => return Err(RouteError::PlacementUnknown(shared_keys, target)),
            Ok(placement) => placement,
        };
        // session-affinity: the session the request names, read once for both PD roles.
        let session_name = match cfg.scores_with(Plugin::SessionAffinity) {
            true => (req.header)(cfg.session_header()),
            false => None,
        };
        let read_session = |role| {
            Binding::read(
                &server.cluster,
                role,
                session_name.as_deref()?.as_bytes(),
                req.shared_data,
            )
        };
        let session = read_session(Role::Pod);
        let prefill_session = server.pd.as_ref().and_then(|_| read_session(Role::Prefill));
        let bound_pod = |s: &Option<Binding>| {
            s.as_ref()?
                .pod(&server.pod_ids, req.now_ms, cfg.session_ttl_ms())
        };
        let ask = Ask {
            lora: target.lora.then_some(req.model),
            hashes: &hashes,
            placed: match (&placement, req.shared) {
                (Some(p), SharedPlacement::Answered { placed, .. }) if p.answered => placed,
                _ => None,
            },
            recent: bounded.then(|| server.recent.at(req.now_ms)),
            session_pod: bound_pod(&session),
            pinned,
        };
        let prefill_ask = Ask {
            session_pod: bound_pod(&prefill_session),
            pinned: None,
            ..ask
        };
        let (ranked, pairs) = {
            let view = PodView::new(
                &server.endpoints,
                &self.stats,
                &server.in_flight_key,
                req,
                cfg,
            );
            let candidates = match &server.pd {
                Some(pd) => pd.decode_candidates(&view, &server.name)?,
                None => (0..server.endpoints.len())
                    .map(|i| view.candidate(i))
                    .collect(),
            };
            let prefix = server.prefix.as_ref();
            let ranked = scheduler::rank(cfg, &candidates, &ask, prefix, &mut self.rng, wanted)
                .map_err(|Unschedulable::Filtered(p)| {
                    RouteError::AllFiltered(server.name.clone(), p)
                })?;
            let pairs = match &server.pd {
                Some(pd) => {
                    pd.pair_with_prefills(&ranked, &view, cfg, &prefill_ask, prefix, &mut self.rng)
                }
                None => Vec::new(),
            };
            (ranked, pairs)
        };
        // The store's claim comes before anything is learnt from the ranking: the request
        // is decided again with the store's answer.
        let best = ranked.first().map(|i| *i as usize);
        if let Some(claim) = sticky.as_ref().and_then(|s| s.claim(server, best)) {
            return Err(RouteError::SessionUnknown(claim, target));
        }
        if let Some(best) = ranked.first().filter(|_| bounded) {
            server.recent.record(*best, req.now_ms);
        }
        let mut prefix_match = None;
        let mut placement_record = None;
        let mut shared_keys = None;
        if let (Some(index), Some(best)) = (server.prefix.as_mut(), ranked.first()) {
            if !hashes.is_empty() {
                prefix_match = Some((index.match_ratio(&hashes, *best) * 1000.0).round() as u16);
            }
            index.insert(&hashes, *best);
            if bounded {
                let whole = req.prompt.len() / (cfg.prefix_block_size.max(1) as usize);
                index.note_successors(&hashes, whole);
            }
            if let Some(p) = placement {
                let record =
                    prefix_sync::encode_placement(&hashes, *best, server.pod_list, req.now_ms);
                placement_record = Some((p.key, record));
                shared_keys = p.shared_keys;
            }
        }
        // Bound where the request goes: for PD the first pair's pods (a ranked decode pod
        // whose group had no prefill pod left is skipped in pairing).
        let (chosen, chosen_prefill) = match pairs.first() {
            Some(p) => (
                server.endpoint_index(&p.decode),
                server.endpoint_index(&p.prefill),
            ),
            None => (ranked.first().map(|i| *i as usize), None),
        };
        let session_bindings: Vec<(String, Vec<u8>)> =
            [session.zip(chosen), prefill_session.zip(chosen_prefill)]
                .into_iter()
                .flatten()
                .filter_map(|(s, pod)| s.rebind(*server.pod_ids.get(pod)?, req.now_ms))
                .collect();
        let pod_index = ranked.first().map(|i| *i as usize);
        let endpoints = match &server.pd {
            Some(_) => first_decode(&pairs, &server.name)?,
            None => join_addresses(&server.endpoints, ranked.iter().map(|i| *i as usize)),
        };
        let mut d = decision(
            target,
            endpoints,
            pairs,
            pod_index,
            prefix_match,
            placement_record,
        );
        d.shared_keys = shared_keys;
        d.session_bindings = session_bindings;
        if let Some(s) = sticky {
            s.rebind(server, &mut d, req.now_ms);
        }
        Ok(d)
    }
}

/// A new prompt no record answered for: the key of this worker's own record, its keys in the
/// gateways' store, and whether the store's answer was for it.
struct NewPlacement {
    key: String,
    /// None without a store.
    shared_keys: Option<prefix_sync::SharedKeys>,
    answered: bool,
}

/// Placement records ([`prefix_sync`]) for a new prompt: the record another worker published
/// a moment ago for it is learned, as if the journal had brought it, so both workers' picks
/// agree. Returns the key to publish this worker's own record under when no record answered;
/// None for a prompt the index mostly knows, or one a record answered.
///
/// With the gateways' shared store ([`SharedPlacement`]): when no local record answers, the
/// store's (another gateway's placement, kept as long as the store keeps it) is learned the
/// same way; not asked yet, `Err` with the store's key, and nothing is placed.
///
/// With `bounded` (prefix-cache's `boundedLoad`), a prompt starting a new branch
/// ([`prefix_sync::new_branch_known_blocks`]) counts as new too: it may be placed away from
/// the pods holding what it shares.
fn read_placement_record(
    server: &mut Server,
    hashes: &[u64],
    req: &Request<'_>,
    bounded: bool,
) -> Result<Option<NewPlacement>, prefix_sync::SharedKeys> {
    let Some(index) = server.prefix.as_mut() else {
        return Ok(None);
    };
    let Some((known, block)) = prefix_sync::new_prompt_known_blocks(index, hashes)
        .or_else(|| {
            bounded
                .then(|| prefix_sync::new_branch_known_blocks(index, hashes))
                .flatten()
        })
        .and_then(|known| Some((known, *hashes.get(known)?)))
    else {
        return Ok(None);
    };
    let key = prefix_sync::placement_key(&server.cluster, block);
    // The store's keys only when there is a store: two strings per new prompt otherwise.
    let shared_keys = (req.shared != SharedPlacement::Off)
        .then(|| prefix_sync::shared_placement_keys(&server.cluster, server.pod_list, block));
    let pods = (server.pod_list, server.endpoints.len());
    let local = (req.shared_data)(&key)
        .and_then(|record| prefix_sync::decode_placement(&record, hashes, known, pods, req.now_ms));
    let answered = matches!((req.shared, &shared_keys),
        (SharedPlacement::Answered { asked: Some(asked), .. }, Some(keys)) if asked == keys);
    let placed = match (local, req.shared) {
        (Some(placed), _) => Some(placed),
        (None, SharedPlacement::Unasked) => {
            if let Some(keys) = shared_keys {
                return Err(keys);
            }
            None
        }
        (
            None,
            SharedPlacement::Answered {
                record: Some(record),
                ..
            },
        ) if answered => {
            prefix_sync::decode_placement_within(record, hashes, known, pods, req.now_ms, u64::MAX)
        }
        (None, _) => None,
    };
    Ok(match placed {
        Some((pod, placed)) => {
            index.insert_shared(placed.into_iter().map(|h| (h, pod)));
            None
        }
        None => Some(NewPlacement {
            key,
            shared_keys,
            answered,
        }),
    })
}

fn decision(
    target: Target,
    endpoints: String,
    pairs: Vec<Pair>,
    pod_index: Option<usize>,
    prefix_match: Option<u16>,
    placement_record: Option<(String, Vec<u8>)>,
) -> Decision {
    Decision {
        route: target.route,
        server: target.server,
        lora: target.lora,
        endpoints,
        pairs,
        pod_index,
        prefix_match,
        placement_record,
        shared_keys: None,
        session_store_write: None,
        session_bindings: Vec::new(),
        session_follow: None,
        session_moved: false,
    }
}

/// A PD request's endpoint header: the first pair's decode pod alone (a decode that follows a
/// prefill is never retried blindly elsewhere).
fn first_decode(pairs: &[Pair], server: &str) -> Result<String, RouteError> {
    pairs
        .first()
        .map(|p| p.decode.clone())
        .ok_or_else(|| RouteError::NoPdPair(server.to_string()))
}

/// `ip:port,ip:port,...` of the pods at `indices`, in that order.
pub(super) fn join_addresses(endpoints: &[String], indices: impl Iterator<Item = usize>) -> String {
    let mut out = String::with_capacity(endpoints.len().min(8) * 22);
    for (k, i) in indices.enumerate() {
        if k > 0 {
            out.push(',');
        }
        out.push_str(endpoints.get(i).map(String::as_str).unwrap_or(""));
    }
    out
}

impl Server {
    /// The index of the pod at `address`, if it is one of this server's.
    pub fn endpoint_index(&self, address: &str) -> Option<usize> {
        self.endpoints.iter().position(|a| a == address)
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }
}

impl PdServer {
    /// The decode pods to rank: those of groups that still have a prefill pod up (all of
    /// them if no group has).
    fn decode_candidates<'a>(
        &self,
        view: &PodView<'a>,
        server: &str,
    ) -> Result<Vec<Candidate<'a>>, RouteError> {
        let prefill_up = |g: &Group| {
            g.prefill
                .iter()
                .any(|i| view.candidate(*i).stats.is_none_or(|s| s.up))
        };
        let all: Vec<(Candidate<'a>, bool)> = self
            .groups
            .iter()
            .flat_map(|g| {
                let up = prefill_up(g);
                g.decode.iter().map(move |d| (view.candidate(*d), up))
            })
            .collect();
        if all.is_empty() {
            return Err(RouteError::NoPdPair(server.to_string()));
        }
        let usable: Vec<Candidate<'a>> =
            all.iter().filter(|(_, up)| *up).map(|(c, _)| *c).collect();
        Ok(if usable.is_empty() {
            all.into_iter().map(|(c, _)| c).collect()
        } else {
            usable
        })
    }

    /// Each ranked decode pod with the best-ranked prefill pod of its own group.
    fn pair_with_prefills(
        &self,
        ranked_decodes: &[u32],
        view: &PodView<'_>,
        cfg: &filter_config::Scheduler,
        ask: &Ask<'_>,
        prefix: Option<&PrefixIndex>,
        rng: &mut Rng,
    ) -> Vec<Pair> {
        let mut pairs = Vec::with_capacity(ranked_decodes.len());
        for d in ranked_decodes {
            let Some(g) = self
                .groups
                .iter()
                .find(|g| g.decode.contains(&(*d as usize)))
            else {
                continue;
            };
            let prefills: Vec<Candidate<'_>> =
                g.prefill.iter().map(|i| view.candidate(*i)).collect();
            let Ok(best) = scheduler::rank(cfg, &prefills, ask, prefix, rng, 1) else {
                continue;
            };
            if let Some(p) = best.first() {
                pairs.push(Pair {
                    group: g.name.clone(),
                    prefill: view.address(*p as usize),
                    decode: view.address(*d as usize),
                });
            }
        }
        pairs
    }

    /// Up to `n` distinct pairs, spreading load: successive requests start at successive
    /// groups, and within a group rotate through its prefill and decode pods. Retry pairs come
    /// from the following groups first.
    fn pick_pairs(&mut self, n: usize, endpoints: &[String]) -> Vec<Pair> {
        let g = self.groups.len();
        if g == 0 {
            return Vec::new();
        }
        let capacity: usize = self
            .groups
            .iter()
            .map(|x| x.prefill.len().max(x.decode.len()))
            .sum();
        let start = self.next_group % g;
        self.next_group = (start + 1) % g;
        let mut out = Vec::with_capacity(n.min(capacity));
        for k in 0..n.min(capacity) {
            let Some(grp) = self.groups.get((start + k) % g) else {
                break;
            };
            let round = grp.next + k / g;
            let (Some(p), Some(d)) = (
                grp.prefill.get(round % grp.prefill.len().max(1)),
                grp.decode.get(round % grp.decode.len().max(1)),
            ) else {
                break;
            };
            let addr = |i: &usize| endpoints.get(*i).cloned().unwrap_or_default();
            out.push(Pair {
                group: grp.name.clone(),
                prefill: addr(p),
                decode: addr(d),
            });
        }
        if let Some(grp) = self.groups.get_mut(start) {
            grp.next = grp.next.wrapping_add(1);
        }
        out
    }
}

/// What the scheduler sees of a server's pods for one request: fresh stats and in-flight
/// counts (read once per request), by endpoint index.
struct PodView<'a> {
    endpoints: &'a [String],
    stats: &'a Snapshot,
    counts: Vec<u32>,
    now_ms: u64,
    stale_ms: u64,
}

impl<'a> PodView<'a> {
    fn new(
        endpoints: &'a [String],
        stats: &'a Snapshot,
        in_flight_key: &str,
        req: &Request<'_>,
        cfg: &filter_config::Scheduler,
    ) -> Self {
        let counts = (req.in_flight)(in_flight_key, endpoints.len());
        PodView {
            endpoints,
            stats,
            counts,
            now_ms: req.now_ms,
            stale_ms: cfg.metrics_stale_ms,
        }
    }

    fn address(&self, i: usize) -> String {
        self.endpoints.get(i).cloned().unwrap_or_default()
    }

    fn candidate(&self, i: usize) -> Candidate<'a> {
        let stats = self
            .endpoints
            .get(i)
            .and_then(|a| self.stats.get(a))
            .filter(|s| self.now_ms.saturating_sub(s.at_ms) <= self.stale_ms);
        Candidate {
            id: i as u32,
            stats,
            in_flight: self.counts.get(i).copied().unwrap_or(0),
        }
    }
}

/// Folds in-band reports newer than the stats into them (this worker's copy of the snapshot;
/// the next snapshot replaces it and the reports are folded in again): KV usage and queue
/// from the report, the rest from the last scrape; a pod that reported is up. A pod that keeps
/// reporting is not scraped, so its last scrape ages: once that is older than `stale_ms`, its
/// TTFT and TPOT count as not measured (least-latency's neutral score) rather than frozen at
/// what they were, and other gateways' load as none; vLLM's report does not carry them.
fn apply_load_reports(
    stats: &mut Snapshot,
    endpoints: &[String],
    reports: Vec<Option<crate::load_report::Reported>>,
    stale_ms: u64,
) {
    for (address, reported) in endpoints.iter().zip(reports) {
        let Some(reported) = reported else {
            continue;
        };
        let s = stats.entry(address.clone()).or_default();
        if s.at_ms >= reported.at_ms {
            continue;
        }
        if reported.at_ms.saturating_sub(s.scraped_ms) > stale_ms {
            s.ttft = 0.0;
            s.tpot = 0.0;
            s.others = 0.0;
        }
        s.kv = reported.report.kv.unwrap_or(s.kv);
        s.waiting = reported.report.waiting.unwrap_or(s.waiting);
        s.up = true;
        s.at_ms = reported.at_ms;
    }
}

/// Chained block hashes of the request's prompt, when the server scores prefixes.
fn prompt_hashes(
    prefix: Option<&PrefixIndex>,
    req: &Request<'_>,
    cfg: &filter_config::Scheduler,
) -> Vec<u64> {
    match prefix {
        Some(_) if !req.prompt.is_empty() => block_hashes(
            req.model,
            req.prompt,
            cfg.prefix_block_size as usize,
            cfg.prefix_max_blocks as usize,
        ),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_report::{LoadReport, Reported};
    use crate::metrics::PodStats;

    #[test]
    fn a_pod_that_keeps_reporting_loses_its_frozen_latencies_and_others_load_once_its_scrape_is_stale(
    ) {
        let pod = "10.0.0.1:8000".to_string();
        let mut stats = Snapshot::new();
        let mut scraped = PodStats::default();
        scraped.update(
            &crate::metrics::EngineGauges {
                running: 3.0,
                ttft: (2.0, 10.0),
                tpot: (0.5, 100.0),
                ..Default::default()
            },
            1_000,
        );
        scraped.count_others(1); // 3 running, 1 of them this Envoy's
        stats.insert(pod.clone(), scraped);
        let report = |at_ms, waiting| {
            vec![Some(Reported {
                at_ms,
                report: LoadReport {
                    kv: Some(0.5),
                    waiting: Some(waiting),
                },
            })]
        };
        let endpoints = [pod.clone()];
        // Within the stale window of the scrape: the report's queue, the scrape's latencies.
        apply_load_reports(&mut stats, &endpoints, report(4_000, 2.0), 5_000);
        let s = &stats[&pod];
        assert_eq!(
            (s.waiting, s.ttft, s.at_ms, s.others),
            (2.0, 0.2, 4_000, 2.0)
        );
        // Reports keep coming, no scrape: past the window the latencies are unknown, not old.
        apply_load_reports(&mut stats, &endpoints, report(7_000, 1.0), 5_000);
        let s = &stats[&pod];
        assert_eq!(
            (s.waiting, s.ttft, s.tpot, s.at_ms, s.others),
            (1.0, 0.0, 0.0, 7_000, 0.0)
        );
        assert_eq!(s.running, 3.0);
    }
}

//! Engine-metrics collection for the scheduler, without every worker scraping every pod.
//!
//! Every VM ticks at the metrics interval. One of them holds a lease in shared data
//! (`owner id + expiry`, taken and renewed by compare-and-swap) and is the collector: each tick
//! it publishes what it gathered as one compact snapshot, then scrapes `GET /metrics` and
//! `GET /v1/models` of every pod with side calls pinned by the endpoint header. Every VM reads
//! the snapshot once per tick into its router; requests never touch shared data for stats. A
//! collector that goes away (reload, crash) stops renewing, and another VM takes over when the
//! lease expires. Written against the [`Host`] trait (shared data, side calls, clock,
//! counters), so the whole round runs under a fake host in tests; the glue only calls
//! [`Collector::round`], [`Collector::on_call_response`] and [`read_snapshot`] from the root
//! context.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use filter_config::Engine;

use crate::host::{Counter, Host};

use crate::metrics::{decode, encode, parse_models, parse_prometheus, Snapshot};

pub const LEASE_KEY: &str = "modelroute.collector";
pub const SNAPSHOT_KEY: &str = "modelroute.metrics";

/// The lease value to write if this VM (`me`) should collect now, given the current value:
/// when nobody holds it, it expired, or `me` holds it (renewal).
pub fn take_lease(current: Option<&[u8]>, me: u64, now_ms: u64, ttl_ms: u64) -> Option<Vec<u8>> {
    let held = current.and_then(|b| {
        let owner = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let until = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
        Some((owner, until))
    });
    match held {
        Some((owner, until)) if owner != me && until > now_ms => None,
        _ => {
            let mut v = me.to_le_bytes().to_vec();
            v.extend_from_slice(&(now_ms + ttl_ms).to_le_bytes());
            Some(v)
        }
    }
}

/// What a side call fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Metrics,
    Models,
    /// `/metrics` of a pod whose load comes in-band, read for its latency histograms only
    /// (prefix-cache's `podSpeed`): its load and the scrape's age stay the reports'.
    Latencies,
}

/// One pod to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub cluster: String,
    pub address: String,
    pub engine: Engine,
    /// Where its in-band load reports are shared (load key, pods, its index), for engines
    /// that send them.
    pub load_slot: Option<(String, usize, usize)>,
    /// Where this Envoy counts its requests in flight to the pod (in-flight key, pods, its
    /// index): one slot per server that lists the pod and counts them (none: other gateways'
    /// load is not estimated for it).
    pub in_flight_slots: Vec<(String, usize, usize)>,
}

/// Scrape calls in flight at most: pods slower than the interval (or a fleet of thousands)
/// never pile calls up in Envoy. Each answer frees a place for the pod due next.
pub const MAX_CALLS: usize = 256;
/// `/v1/models` is scraped with every this many `/metrics` of a pod (and until known): the
/// models a pod serves change far less often than its load, and it halves the calls.
pub const MODELS_EVERY: u8 = 10;

/// The collecting VM's state.
#[derive(Debug, Default)]
pub struct Collector {
    pub targets: Vec<Target>,
    stats: Snapshot,
    /// This VM's identity in the lease.
    me: u64,
    interval_ms: u64,
    /// The header that pins a scrape to its pod (the configured endpoint header).
    endpoint_header: String,
    /// Scrape calls in flight: token -> (target, what).
    calls: HashMap<u32, (usize, Kind)>,
    /// Every target by when its next scrape is due (host ms), earliest first: placed at its
    /// offset in the first interval, then one interval after each scrape (or skip).
    due: BinaryHeap<Reverse<(u64, usize)>>,
    placed: bool,
    /// Per target, its calls in flight (a pod is not scraped again before its last scrape
    /// answered or timed out), and its scrapes since its models were last fetched.
    pending: Vec<u8>,
    since_models: Vec<u8>,
    /// Whether this VM holds the lease, and when it next renews it and publishes.
    collecting: bool,
    next_publish_ms: u64,
    /// This Envoy's in-flight counts by in-flight key, as last read (host ms, counts): one
    /// entry per server.
    own_counts: HashMap<String, (u64, Vec<u32>)>,
    /// With prefix-cache's `podSpeed`: a pod that reports its load in-band is still scraped
    /// for its latencies ([`Kind::Latencies`]) once its last scrape is this old, as only a
    /// scrape gives its engine's time per output token.
    latencies_max_age_ms: Option<u64>,
    /// Per target, when its latencies were last asked for alone (host ms).
    latencies_asked_ms: Vec<u64>,
}

impl Collector {
    pub fn new(targets: Vec<Target>, me: u64, interval_ms: u64, endpoint_header: &str) -> Self {
        let n = targets.len();
        Collector {
            targets,
            stats: Snapshot::new(),
            me,
            interval_ms: interval_ms.max(1),
            endpoint_header: endpoint_header.to_string(),
            calls: HashMap::new(),
            due: BinaryHeap::with_capacity(n),
            placed: false,
            pending: vec![0; n],
            since_models: vec![0; n],
            collecting: false,
            next_publish_ms: 0,
            own_counts: HashMap::new(),
            latencies_max_age_ms: None,
            latencies_asked_ms: vec![0; n],
        }
    }

    /// Keeps every pod's latencies at most `ms` old, busy pods included (see the field).
    pub fn with_latencies_at_most(mut self, ms: u64) -> Self {
        self.latencies_max_age_ms = Some(ms);
        self
    }

    /// Run by every VM on each root tick. Once per interval: take or renew the lease, and if
    /// this VM holds it, publish what it gathered. Then, if it collects, scrape `/metrics` and
    /// `/v1/models` of the pods that are due, with side calls pinned to each pod: every pod
    /// once per interval, at its own offset in the interval (a hash of its address, so a
    /// fleet's scrapes are spread evenly), at most [`MAX_CALLS`] in flight. Returns whether
    /// this VM collects.
    pub fn tick(&mut self, host: &mut dyn Host, now_ms: u64) -> bool {
        if now_ms >= self.next_publish_ms {
            self.next_publish_ms = now_ms + self.interval_ms;
            let (current, cas) = host.shared_get(LEASE_KEY);
            let lease = take_lease(current.as_deref(), self.me, now_ms, 3 * self.interval_ms);
            self.collecting = lease.is_some_and(|l| host.shared_set(LEASE_KEY, &l, cas));
            if self.collecting {
                host.shared_put(SNAPSHOT_KEY, &encode(&self.snapshot()));
            }
        }
        if self.collecting {
            self.scrape_due(host, now_ms);
        }
        self.collecting
    }

    /// Scrapes the pods that are due, earliest first, while the call budget allows.
    fn scrape_due(&mut self, host: &mut dyn Host, now_ms: u64) {
        if !self.placed {
            self.placed = true;
            for (i, t) in self.targets.iter().enumerate() {
                let offset = crate::prefix::hash(0, t.address.as_bytes()) % self.interval_ms;
                self.due.push(Reverse((now_ms + offset, i)));
            }
        }
        let timeout = self.interval_ms.max(100);
        // A pod that reported its load in-band within the interval is busy and its reports
        // are fresher than a scrape: it is not scraped (its models, once known, need no
        // refresh either). One read per server's reports, only when such a pod is due.
        let mut reports: HashMap<String, Vec<Option<crate::load_report::Reported>>> =
            HashMap::new();
        while self.calls.len() + 2 <= MAX_CALLS {
            let Some(&Reverse((at, i))) = self.due.peek() else {
                return;
            };
            if at > now_ms {
                return;
            }
            self.due.pop();
            self.due.push(Reverse((now_ms + self.interval_ms, i)));
            let (Some(t), Some(&pending)) = (self.targets.get(i), self.pending.get(i)) else {
                continue;
            };
            if pending > 0 {
                continue;
            }
            if let Some((key, count, idx)) = &t.load_slot {
                let of_server = reports
                    .entry(key.clone())
                    .or_insert_with(|| crate::load_report::read(&*host, key, *count));
                let fresh = of_server
                    .get(*idx)
                    .copied()
                    .flatten()
                    .is_some_and(|r| now_ms.saturating_sub(r.at_ms) < self.interval_ms);
                let known = self.stats.get(&t.address);
                let models_known = known.is_some_and(|s| s.models.is_some());
                let asked = self.latencies_asked_ms.get(i).copied().unwrap_or(0);
                let latencies_due = self.latencies_max_age_ms.is_some_and(|age| {
                    let read = known.map_or(0, |s| s.scraped_ms).max(asked);
                    now_ms.saturating_sub(read) >= age
                });
                if fresh && models_known {
                    if latencies_due {
                        if let Some(at) = self.latencies_asked_ms.get_mut(i) {
                            *at = now_ms;
                        }
                        self.dispatch(host, i, &[(Kind::Latencies, "/metrics")], timeout);
                    } else {
                        host.count(Counter::ScrapeSkipped);
                    }
                    continue;
                }
            }
            let models_known = self
                .stats
                .get(&t.address)
                .is_some_and(|s| s.models.is_some());
            let since = self.since_models.get(i).copied().unwrap_or(0);
            let with_models = !models_known || since + 1 >= MODELS_EVERY;
            if let Some(s) = self.since_models.get_mut(i) {
                *s = if with_models { 0 } else { since + 1 };
            }
            let kinds: &[(Kind, &str)] = if with_models {
                &[(Kind::Metrics, "/metrics"), (Kind::Models, "/v1/models")]
            } else {
                &[(Kind::Metrics, "/metrics")]
            };
            self.dispatch(host, i, kinds, timeout);
        }
    }

    /// Sends target `i` a side call per (kind, path), pinned to the pod.
    fn dispatch(&mut self, host: &mut dyn Host, i: usize, kinds: &[(Kind, &str)], timeout: u64) {
        let Some(t) = self.targets.get(i) else {
            return;
        };
        for &(kind, path) in kinds {
            let headers = [
                (":method", "GET"),
                (":path", path),
                (":authority", "modelroute-collector"),
                (self.endpoint_header.as_str(), t.address.as_str()),
            ];
            if let Some(token) = host.dispatch(&t.cluster, &headers, b"", timeout) {
                self.calls.insert(token, (i, kind));
                if let Some(p) = self.pending.get_mut(i) {
                    *p += 1;
                }
            }
        }
    }

    /// A scrape answered or failed (the root context's `on_http_call_response`;
    /// `body_size` is the answer's). Other calls are ignored.
    pub fn on_call_response(&mut self, host: &mut dyn Host, token: u32, body_size: usize) {
        let Some((target, kind)) = self.calls.remove(&token) else {
            return;
        };
        if let Some(p) = self.pending.get_mut(target) {
            *p = p.saturating_sub(1);
        }
        let status = host.call_status();
        let body = host.call_body(body_size).unwrap_or_default();
        host.count(if matches!(status, Some(200..=299)) {
            Counter::ScrapeOk
        } else {
            Counter::ScrapeFailed
        });
        let now = host.now_ms();
        if self.on_answer(target, kind, status, &body, now) && kind == Kind::Metrics {
            self.count_others_at(host, target, now);
        }
        if self.collecting {
            // The answer freed a place: the pod due next need not wait for the tick.
            self.scrape_due(host, now);
        }
    }

    /// A scrape answered: `status` None (or Envoy's own 503) means the pod was unreachable.
    /// True when the answer was folded into the pod's stats.
    pub fn on_answer(
        &mut self,
        target: usize,
        kind: Kind,
        status: Option<u32>,
        body: &[u8],
        now_ms: u64,
    ) -> bool {
        let Some(t) = self.targets.get(target) else {
            return false;
        };
        if kind == Kind::Latencies && !matches!(status, Some(200..=299)) {
            // The pod's in-band reports say whether it is up: a refresh that failed (or
            // timed out behind a busy engine) marks nothing.
            return false;
        }
        let entry = self.stats.entry(t.address.clone()).or_default();
        let unreachable = status.is_none()
            || (status == Some(503)
                && (body.starts_with(b"upstream connect error")
                    || body.starts_with(b"no healthy upstream")));
        if unreachable {
            entry.up = false;
            entry.at_ms = now_ms;
            return false;
        }
        if !matches!(status, Some(200..=299)) {
            return false;
        }
        match kind {
            Kind::Metrics => {
                let text = String::from_utf8_lossy(body);
                entry.update(&parse_prometheus(&text, t.engine), now_ms);
            }
            Kind::Models => {
                if let Some(m) = parse_models(body) {
                    entry.models = Some(m);
                }
            }
            Kind::Latencies => {
                let text = String::from_utf8_lossy(body);
                entry.fold_latencies(&parse_prometheus(&text, t.engine));
            }
        }
        true
    }

    /// The pod's scrape just answered: what it reported beyond this Envoy's own requests in
    /// flight to it is other gateways' load ([`crate::metrics::PodStats::others`]). Workers
    /// write some releases late (`in_flight`), so the count read may be high (rarely low):
    /// other gateways' load is rather under- than overestimated.
    fn count_others_at(&mut self, host: &dyn Host, target: usize, now_ms: u64) {
        // A pod no server counts requests to (a PD prefill pod) has no share to subtract,
        // and its whole load is not other gateways'.
        let Some(t) = self
            .targets
            .get(target)
            .filter(|t| !t.in_flight_slots.is_empty())
        else {
            return;
        };
        let mut own = 0u32;
        for (key, n, idx) in &t.in_flight_slots {
            let (read_at, counts) = self
                .own_counts
                .entry(key.clone())
                .or_insert_with(|| (0, Vec::new()));
            // Read fresh for each answer (answers handled within the same millisecond share
            // one read): an older read would miss requests sent since and take them for
            // another gateway's. A read copies the server's whole value, 4 bytes a pod.
            if counts.len() != *n || *read_at != now_ms {
                *counts = crate::in_flight::read_counts(host, key, *n);
                *read_at = now_ms;
            }
            own = own.saturating_add(counts.get(*idx).copied().unwrap_or(0));
        }
        if let Some(s) = self.stats.get_mut(&t.address) {
            s.count_others(own);
        }
    }

    /// The snapshot to publish (only pods still scraped).
    pub fn snapshot(&self) -> Snapshot {
        self.targets
            .iter()
            .filter_map(|t| {
                self.stats
                    .get(&t.address)
                    .map(|s| (t.address.clone(), s.clone()))
            })
            .collect()
    }

    #[cfg(test)]
    fn stats(&self, address: &str) -> Option<&crate::metrics::PodStats> {
        self.stats.get(address)
    }
}

/// Every VM, each metrics interval: the collector's latest snapshot, if it changed since the
/// one read last (`seen`: its CAS). A snapshot that does not decode is skipped, and the VM
/// keeps the stats it has.
pub fn read_snapshot(host: &dyn Host, seen: &mut Option<u32>) -> Option<Snapshot> {
    let (bytes, cas) = host.shared_get(SNAPSHOT_KEY);
    if cas.is_none() || cas == *seen {
        return None;
    }
    *seen = cas;
    bytes.as_deref().and_then(decode)
}

#[cfg(test)]
mod tests;

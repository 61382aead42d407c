//! Engine-metrics collection for the scheduler, without every worker scraping every pod.
//!
//! Every VM ticks at the metrics interval. One of them holds a lease in shared data
//! (`owner id + expiry`, taken and renewed by compare-and-swap) and is the collector: each tick
//! it publishes what it gathered as one compact snapshot, then scrapes `GET /metrics` and
//! `GET /v1/models` of every pod with side calls pinned by the endpoint header. Every VM reads
//! the snapshot once per tick into its router; requests never touch shared data for stats. A
//! collector that goes away (reload, crash) stops renewing, and another VM takes over when the
//! lease expires. Pure: the glue passes in clock, shared-data values and call answers.

use filter_config::Engine;

use crate::metrics::{parse_models, parse_prometheus, PodStats, Snapshot};

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
}

/// One pod to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub cluster: String,
    pub address: String,
    pub engine: Engine,
}

/// The collecting VM's state.
#[derive(Debug, Default)]
pub struct Collector {
    pub targets: Vec<Target>,
    stats: Snapshot,
}

impl Collector {
    pub fn new(targets: Vec<Target>) -> Self {
        Collector {
            targets,
            stats: Snapshot::new(),
        }
    }

    /// A scrape answered: `status` None (or Envoy's own 503) means the pod was unreachable.
    pub fn on_answer(
        &mut self,
        target: usize,
        kind: Kind,
        status: Option<u32>,
        body: &[u8],
        now_ms: u64,
    ) {
        let Some(t) = self.targets.get(target) else {
            return;
        };
        let entry = self.stats.entry(t.address.clone()).or_default();
        let unreachable = status.is_none()
            || (status == Some(503)
                && (body.starts_with(b"upstream connect error")
                    || body.starts_with(b"no healthy upstream")));
        if unreachable {
            entry.up = false;
            entry.at_ms = now_ms;
            return;
        }
        if !matches!(status, Some(200..=299)) {
            return;
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

    pub fn stats(&self, address: &str) -> Option<&PodStats> {
        self.stats.get(address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_is_taken_when_free_or_expired_and_renewed_only_by_its_owner() {
        let mine = take_lease(None, 7, 1000, 3000).unwrap();
        assert_eq!(
            take_lease(Some(&mine), 8, 2000, 3000),
            None,
            "held by 7 until 4000"
        );
        assert!(take_lease(Some(&mine), 7, 2000, 3000).is_some(), "renewal");
        assert!(take_lease(Some(&mine), 8, 4001, 3000).is_some(), "expired");
        assert!(
            take_lease(Some(b"junk"), 8, 0, 3000).is_some(),
            "unreadable value"
        );
    }

    #[test]
    fn answers_become_stats_and_failures_mark_the_pod_down() {
        let t = Target {
            cluster: "c".into(),
            address: "127.0.0.2:8000".into(),
            engine: Engine::Vllm,
        };
        let mut c = Collector::new(vec![t]);
        c.on_answer(
            0,
            Kind::Metrics,
            Some(200),
            b"vllm:num_requests_waiting 3\nvllm:kv_cache_usage_perc 0.5\n",
            10,
        );
        c.on_answer(
            0,
            Kind::Models,
            Some(200),
            br#"{"data":[{"id":"m"},{"id":"lora-A"}]}"#,
            10,
        );
        let s = c.stats("127.0.0.2:8000").unwrap();
        assert!(s.up);
        assert_eq!((s.waiting, s.kv, s.at_ms), (3.0, 0.5, 10));
        assert_eq!(
            s.models.as_deref(),
            Some(&["m".to_string(), "lora-A".to_string()][..])
        );
        c.on_answer(
            0,
            Kind::Metrics,
            Some(503),
            b"upstream connect error or disconnect/reset before headers",
            20,
        );
        assert!(!c.stats("127.0.0.2:8000").unwrap().up);
        c.on_answer(0, Kind::Metrics, None, b"", 30);
        assert_eq!(c.snapshot().len(), 1);
        // An engine error keeps the last stats.
        c.on_answer(
            0,
            Kind::Metrics,
            Some(200),
            b"vllm:num_requests_waiting 1\n",
            40,
        );
        c.on_answer(0, Kind::Metrics, Some(500), b"oops", 50);
        assert_eq!(c.stats("127.0.0.2:8000").unwrap().at_ms, 40);
    }
}

//! Kthena's counters and gauges, added up inside the VM and written to Envoy's stats on the root
//! context's tick: a request costs a few map updates, not a host call per metric, and a gauge
//! raised and lowered within one tick costs no host call at all.
//!
//! Labels travel in the stat name the way Istio encodes them (`label=.=value;.;` before the
//! metric's name), and Envoy's tag extraction (`stats_tags` in the shipped bootstraps, the
//! regexes Istio generates for `extraStatTags`) turns them into Prometheus labels; Envoy's
//! Prometheus output drops wasm's `wasmcustom` namespace, so the series read as Kthena's.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Envoy's kinds of stat the tally feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// Distinct stats one VM tallies at most; names are bounded by the configuration (models,
/// routes, servers, status codes), the cap only guards against a bug minting names.
pub const MAX_METRICS: usize = 4096;

/// Pending changes, by stat name.
#[derive(Debug, Default)]
pub struct Tally {
    counters: HashMap<String, i64, NameHash>,
    gauges: HashMap<String, i64, NameHash>,
}

/// The tally's names are a few hundred bytes and made by the filter from bounded labels, not
/// by clients: a word-at-a-time hash ([`crate::prefix::hash`]) instead of SipHash, which
/// costs several times more per byte on every request's three lookups.
type NameHash = BuildHasherDefault<NameHasher>;

#[derive(Debug, Default)]
struct NameHasher(u64);

impl Hasher for NameHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = crate::prefix::hash(self.0, bytes);
    }
}

impl Tally {
    /// Adds `delta` to the stat `name` (written out on the next [`Tally::flush`]).
    pub fn add(&mut self, kind: MetricKind, name: &str, delta: i64) {
        let map = match kind {
            MetricKind::Counter => &mut self.counters,
            MetricKind::Gauge => &mut self.gauges,
        };
        if let Some(v) = map.get_mut(name) {
            *v += delta;
        } else if map.len() < MAX_METRICS {
            map.insert(name.to_string(), delta);
        }
    }

    /// Hands every stat touched since the last flush to `write` with its net change (0 for a
    /// gauge that came back where it was: the stat still exists for the scrape) and forgets
    /// them.
    pub fn flush(&mut self, mut write: impl FnMut(MetricKind, &str, i64)) {
        for (kind, map) in [
            (MetricKind::Counter, &mut self.counters),
            (MetricKind::Gauge, &mut self.gauges),
        ] {
            for (name, delta) in map.drain() {
                write(kind, &name, delta);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counters.is_empty() && self.gauges.is_empty()
    }
}

/// What a VM last reported of its prefix indexes (Kthena's `prefix_cache_entries` gauge and
/// `prefix_cache_evictions_total` counter are sums over every worker's indexes): turns the
/// VM's totals into the changes to add.
#[derive(Debug, Default)]
pub struct PrefixReport {
    entries: u64,
    evicted: u64,
}

impl PrefixReport {
    /// The VM's indexes hold `entries` and have evicted `evicted` since they were made.
    pub fn report(&mut self, entries: u64, evicted: u64, tally: &mut Tally) {
        use filter_config::vm_metrics::{PREFIX_ENTRIES, PREFIX_EVICTIONS};
        let change = entries as i64 - self.entries as i64;
        tally.add(MetricKind::Gauge, PREFIX_ENTRIES, change);
        tally.add(
            MetricKind::Counter,
            PREFIX_EVICTIONS,
            evicted.saturating_sub(self.evicted) as i64,
        );
        (self.entries, self.evicted) = (entries, evicted);
    }

    /// New indexes (a configuration replaced the router): what the old ones held is gone.
    pub fn restart(&mut self, tally: &mut Tally) {
        self.report(0, 0, tally);
        self.evicted = 0;
    }
}

/// The stat name carrying `labels` for `metric`: `l1=.=v1;.;l2=.=v2;.;metric`. A `;` in a value
/// becomes `_`, so no value can end its label early or forge another.
pub fn metric_name(metric: &str, labels: &[(&str, &str)]) -> String {
    let len = labels
        .iter()
        .map(|(k, v)| k.len() + v.len() + 6)
        .sum::<usize>()
        + metric.len();
    let mut out = String::with_capacity(len);
    for (k, v) in labels {
        out.push_str(k);
        out.push_str("=.=");
        if v.contains(';') {
            out.push_str(&v.replace(';', "_"));
        } else {
            out.push_str(v);
        }
        out.push_str(";.;");
    }
    out.push_str(metric);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_add_up_until_flushed() {
        let mut t = Tally::default();
        t.add(MetricKind::Counter, "a", 1);
        t.add(MetricKind::Counter, "a", 2);
        t.add(MetricKind::Gauge, "g", 1);
        t.add(MetricKind::Gauge, "g", -1);
        let mut seen = vec![];
        t.flush(|k, n, d| seen.push((k, n.to_string(), d)));
        seen.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            seen,
            vec![
                (MetricKind::Counter, "a".to_string(), 3),
                (MetricKind::Gauge, "g".to_string(), 0)
            ]
        );
        assert!(t.is_empty());
    }

    #[test]
    fn names_carry_labels_that_cannot_be_forged() {
        assert_eq!(
            metric_name("m_total", &[("model", "x"), ("path", "/v1/completions")]),
            "model=.=x;.;path=.=/v1/completions;.;m_total"
        );
        assert_eq!(
            metric_name("m", &[("model", "a;.;path=.=b")]),
            "model=.=a_._path=.=b;.;m"
        );
    }

    #[test]
    fn prefix_totals_become_changes() {
        use filter_config::vm_metrics::{PREFIX_ENTRIES, PREFIX_EVICTIONS};
        let mut t = Tally::default();
        let mut r = PrefixReport::default();
        let mut seen = std::collections::BTreeMap::new();
        let mut drain = |t: &mut Tally| {
            t.flush(|_, n, d| *seen.entry(n.to_string()).or_insert(0) += d);
        };
        r.report(100, 0, &mut t);
        r.report(80, 30, &mut t);
        drain(&mut t);
        r.restart(&mut t);
        r.report(5, 2, &mut t);
        drain(&mut t);
        assert_eq!(seen[PREFIX_ENTRIES], 5);
        assert_eq!(seen[PREFIX_EVICTIONS], 32);
    }

    #[test]
    fn the_map_is_bounded() {
        let mut t = Tally::default();
        for i in 0..MAX_METRICS + 10 {
            t.add(MetricKind::Counter, &i.to_string(), 1);
        }
        let mut n = 0;
        t.flush(|_, _, _| n += 1);
        assert_eq!(n, MAX_METRICS);
    }
}

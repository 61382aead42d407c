//! In-band load reports (ORCA): a vLLM pod asked with `endpoint-load-metrics-format: TEXT`
//! answers its non-streaming completions with a response header
//! `endpoint-load-metrics: TEXT named_metrics.kv_cache_usage_perc=0.4, named_metrics.num_requests_waiting=2.0`
//! (or `JSON {"named_metrics": {"kv_cache_usage_perc": 0.4, ...}}`, Triton's form too). The
//! filter asks for it on the requests it routes to vLLM pods, reads it here, removes it, and
//! shares it with every worker ([`record`], [`read`]); the collector does not scrape a pod
//! that reported within the interval. Parsing borrows the header and allocates nothing.

use crate::host::Host;

/// The request header that asks for a report, and its value.
pub const FORMAT_HEADER: &str = "endpoint-load-metrics-format";
pub const FORMAT: &str = "TEXT";
/// The response header that carries it.
pub const REPORT_HEADER: &str = "endpoint-load-metrics";

/// A pod is asked again once its last report is this old: a busy pod reports about 20 times
/// a second (each costs the router a header each way and a shared-data write, ~8 us of Envoy
/// CPU: bench/LOAD_SIGNALS.md), an idle one with every request.
pub const ASK_INTERVAL_MS: u64 = 50;

/// Whether to ask the pod whose last report is `last` (None: never reported) at `now_ms`.
pub fn due(last: Option<Reported>, now_ms: u64) -> bool {
    last.is_none_or(|r| now_ms.saturating_sub(r.at_ms) >= ASK_INTERVAL_MS)
}

/// Longest header read; longer ones are ignored (vLLM's is under 100 bytes).
const MAX_HEADER: usize = 4096;
/// Largest value believed (an absurd queue length is an error, not load).
const MAX_VALUE: f64 = 1e9;

/// What a report says; absent metrics are None.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadReport {
    /// KV-cache usage, 0..1.
    pub kv: Option<f64>,
    pub waiting: Option<f64>,
}

impl LoadReport {
    pub fn is_empty(&self) -> bool {
        self.kv.is_none() && self.waiting.is_none()
    }

    fn set(&mut self, name: &str, value: f64) {
        if !value.is_finite() || !(0.0..=MAX_VALUE).contains(&value) {
            return;
        }
        match name {
            "kv_cache_usage_perc" | "kv_cache_utilization" | "gpu_cache_usage_perc" => {
                self.kv = Some(value.min(1.0))
            }
            "num_requests_waiting" => self.waiting = Some(value),
            _ => {}
        }
    }
}

/// Reads a report header value; None if it is not one (or says nothing we use).
pub fn parse(header: &str) -> Option<LoadReport> {
    if header.len() > MAX_HEADER {
        return None;
    }
    let (format, body) = header.trim().split_once(' ')?;
    let mut r = LoadReport::default();
    if format.eq_ignore_ascii_case("TEXT") {
        for pair in body.split(',') {
            let Some((name, value)) = pair.trim().split_once('=') else {
                continue;
            };
            let Some(name) = name.trim().strip_prefix("named_metrics.") else {
                continue;
            };
            if let Ok(v) = value.trim().parse::<f64>() {
                r.set(name, v);
            }
        }
    } else if format.eq_ignore_ascii_case("JSON") {
        json_named_metrics(body, &mut r)?;
    } else {
        return None;
    }
    (!r.is_empty()).then_some(r)
}

/// The numbers of the `named_metrics` object of a JSON report: `"name": number` pairs, up to
/// its closing brace. Anything it does not understand ends the scan (what was read stays).
fn json_named_metrics(body: &str, r: &mut LoadReport) -> Option<()> {
    let at = body.find("\"named_metrics\"")?;
    let rest = body.get(at + "\"named_metrics\"".len()..)?.trim_start();
    let mut rest = rest.strip_prefix(':')?.trim_start().strip_prefix('{')?;
    loop {
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        let Some(after_quote) = rest.strip_prefix('"') else {
            return Some(());
        };
        let end = after_quote.find('"')?;
        let name = after_quote.get(..end)?;
        let after = after_quote.get(end + 1..)?.trim_start().strip_prefix(':')?;
        let after = after.trim_start();
        let len = after
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
            .unwrap_or(after.len());
        if let Ok(v) = after.get(..len)?.parse::<f64>() {
            r.set(name, v);
        }
        rest = after.get(len..)?;
    }
}

/// A report as shared: when it arrived (host clock, ms) and what it said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reported {
    pub at_ms: u64,
    pub report: LoadReport,
}

/// Bytes per pod in the shared value: arrival (u64), KV usage and waiting (f32, negative:
/// not reported).
const SLOT: usize = 16;
/// Compare-and-swap attempts before a report is dropped (other workers kept writing).
const MAX_TRIES: usize = 8;

/// The shared-data key of a server's reports, beside its in-flight counts (`in_flight_key`
/// names the pod list, so slots by position never mix two lists).
pub fn key_of(in_flight_key: &str) -> String {
    in_flight_key.replacen(".inflight.", ".load.", 1)
}

/// The latest report of each of the `n` pods under `key` (None: never reported).
pub fn read(host: &dyn Host, key: &str, n: usize) -> Vec<Option<Reported>> {
    let (bytes, _) = host.shared_get(key);
    let bytes = bytes.unwrap_or_default();
    (0..n).map(|i| decode(&bytes, i)).collect()
}

/// Stores pod `idx`'s report (of `n` pods under `key`), received at `now_ms`, for every
/// worker. False if it could not be stored.
pub fn record(
    host: &mut dyn Host,
    key: &str,
    n: usize,
    idx: usize,
    r: LoadReport,
    now_ms: u64,
) -> bool {
    if idx >= n {
        return false;
    }
    for _ in 0..MAX_TRIES {
        let (bytes, cas) = host.shared_get(key);
        let mut value = bytes.unwrap_or_default();
        value.resize(n * SLOT, 0);
        let slot = encode(now_ms, r);
        if let Some(dst) = value.get_mut(idx * SLOT..(idx + 1) * SLOT) {
            dst.copy_from_slice(&slot);
        }
        if host.shared_set(key, &value, cas) {
            return true;
        }
    }
    false
}

fn encode(at_ms: u64, r: LoadReport) -> [u8; SLOT] {
    let mut out = [0u8; SLOT];
    let at = at_ms.to_le_bytes();
    let kv = (r.kv.unwrap_or(-1.0) as f32).to_le_bytes();
    let waiting = (r.waiting.unwrap_or(-1.0) as f32).to_le_bytes();
    for (o, b) in out.iter_mut().zip(at.iter().chain(&kv).chain(&waiting)) {
        *o = *b;
    }
    out
}

fn decode(bytes: &[u8], i: usize) -> Option<Reported> {
    let slot = bytes.get(i * SLOT..(i + 1) * SLOT)?;
    let at_ms = u64::from_le_bytes(slot.get(..8)?.try_into().ok()?);
    if at_ms == 0 {
        return None;
    }
    let f = |range: std::ops::Range<usize>| -> Option<Option<f64>> {
        let v = f32::from_le_bytes(slot.get(range)?.try_into().ok()?);
        Some((v >= 0.0).then_some(f64::from(v)))
    };
    Some(Reported {
        at_ms,
        report: LoadReport {
            kv: f(8..12)?,
            waiting: f(12..16)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(kv: Option<f64>, waiting: Option<f64>) -> Option<LoadReport> {
        Some(LoadReport { kv, waiting })
    }

    #[test]
    fn vllms_text_and_json_forms() {
        assert_eq!(
            parse("TEXT named_metrics.kv_cache_usage_perc=0.4, named_metrics.num_requests_waiting=2.0"),
            report(Some(0.4), Some(2.0))
        );
        assert_eq!(
            parse(
                r#"JSON {"named_metrics": {"kv_cache_usage_perc": 0.25, "num_requests_waiting": 3.0}}"#
            ),
            report(Some(0.25), Some(3.0))
        );
        // Python's float repr, Triton's other fields and names, lower-case format.
        assert_eq!(
            parse("text cpu_utilization=0.3, named_metrics.kv_cache_utilization=1e-05, eps=1"),
            report(Some(1e-05), None)
        );
        assert_eq!(
            parse(
                r#"JSON {"cpu_utilization": 0.3, "named_metrics": {"custom": 1, "num_requests_waiting": 7}}"#
            ),
            report(None, Some(7.0))
        );
    }

    #[test]
    fn missing_fields_garbage_and_huge_values_are_not_load() {
        for bad in [
            "",
            "TEXT",
            "TEXT ",
            "YAML named_metrics.kv_cache_usage_perc=0.4",
            "TEXT named_metrics.other=1",
            "TEXT kv_cache_usage_perc=0.4",
            "TEXT named_metrics.kv_cache_usage_perc=nan, named_metrics.num_requests_waiting=inf",
            "TEXT named_metrics.num_requests_waiting=-1, named_metrics.kv_cache_usage_perc=x",
            "TEXT named_metrics.num_requests_waiting=1e300",
            "JSON {\"named_metrics\": {\"kv_cache_usage_perc\": \"0.4\"}}",
            "JSON {\"named_metrics\": [1, 2]}",
            "JSON {\"named_metrics\": {\"kv_cache_usage_perc\"",
            "JSON {",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        // Usage above 1 is read as full; a long header is not read at all.
        assert_eq!(
            parse("TEXT named_metrics.kv_cache_usage_perc=3"),
            report(Some(1.0), None)
        );
        let long = format!(
            "TEXT named_metrics.num_requests_waiting=1,{}",
            " ".repeat(5000)
        );
        assert_eq!(parse(&long), None);
    }

    #[test]
    fn a_pod_is_asked_again_once_its_report_is_a_moment_old() {
        let at = |at_ms| {
            Some(Reported {
                at_ms,
                report: LoadReport::default(),
            })
        };
        assert!(due(None, 0));
        assert!(!due(at(1_000), 1_000 + ASK_INTERVAL_MS - 1));
        assert!(due(at(1_000), 1_000 + ASK_INTERVAL_MS));
        assert!(!due(at(2_000), 1_000), "a clock behind the report");
    }

    #[test]
    fn reports_are_shared_by_pod_position() {
        let mut h = crate::flow::fake::FakeHost::request("GET", "/");
        let key = key_of("modelroute.inflight.00ff");
        assert_eq!(key, "modelroute.load.00ff");
        assert_eq!(read(&h, &key, 3), vec![None, None, None]);
        let r = LoadReport {
            kv: Some(0.5),
            waiting: None,
        };
        assert!(record(&mut h, &key, 3, 1, r, 1_000));
        assert!(!record(&mut h, &key, 3, 3, r, 1_000), "no such pod");
        assert_eq!(
            read(&h, &key, 3),
            vec![
                None,
                Some(Reported {
                    at_ms: 1_000,
                    report: r
                }),
                None
            ]
        );
        // A shorter or garbled value reads as no reports, never as a panic.
        h.shared.insert(key.clone(), (vec![1, 2, 3], 9));
        assert_eq!(read(&h, &key, 3), vec![None, None, None]);
    }

    #[test]
    fn any_bytes_never_panic() {
        let pieces = [
            "TEXT ",
            "JSON ",
            "{",
            "}",
            "\"named_metrics\"",
            ":",
            ",",
            "=",
            "1e",
            "\"",
            "é",
            "named_metrics.",
            "0.5",
        ];
        let mut s = String::new();
        for i in 0..2000usize {
            s.push_str(
                pieces
                    .get((i * 7 + i / 3) % pieces.len())
                    .copied()
                    .unwrap_or(""),
            );
            let _ = parse(&s);
            if s.len() > 300 {
                s.clear();
            }
        }
    }
}

//! The in-band load report parser (`load_report::parse`, vLLM's `endpoint-load-metrics`
//! response header, TEXT or JSON) against what a report may say.
//!
//! Asserts: any string parses without a panic; what it reads is a usable load (KV usage in
//! 0..=1, a finite queue length >= 0), never NaN or infinite; a report rendered the way vLLM
//! renders it from the input's two numbers reads back as those numbers (in range).
//! Why: the header comes from an engine, and one bad value would steer every pick.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelroute::load_report::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(r) = parse(s) {
        assert!(r.kv.is_none_or(|kv| (0.0..=1.0).contains(&kv)), "{r:?}");
        assert!(r.waiting.is_none_or(|w| w.is_finite() && w >= 0.0), "{r:?}");
    }
    if let (Some(a), Some(b)) = (data.first(), data.get(1)) {
        let kv = f64::from(*a) / 255.0;
        let waiting = f64::from(*b);
        let text = format!("TEXT named_metrics.kv_cache_usage_perc={kv:?}, named_metrics.num_requests_waiting={waiting:?}");
        let json = format!(r#"JSON {{"named_metrics": {{"kv_cache_usage_perc": {kv:?}, "num_requests_waiting": {waiting:?}}}}}"#);
        for h in [text, json] {
            let r = parse(&h).unwrap_or_else(|| panic!("{h}"));
            assert_eq!((r.kv, r.waiting), (Some(kv), Some(waiting)), "{h}");
        }
    }
});

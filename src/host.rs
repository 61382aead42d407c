//! What the filter needs from its host (Envoy through proxy-wasm, or a recording fake in
//! tests): the [`Host`] trait, the [`Action`] a callback returns, and the [`Counter`]s it
//! reports. The request flow, the in-flight counts and the metrics collector are written
//! against it; only `glue` implements it for real.

use crate::headers::Headers;
pub use crate::tally::MetricKind;

/// What the host should do after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// The host operations the flow needs. Implementations must never panic.
pub trait Host {
    /// Every request header (`:method`, `:path` included), in one host call.
    fn request_headers(&self) -> Headers;
    fn set_header(&mut self, name: &str, value: &str);
    fn remove_header(&mut self, name: &str);
    /// `len` bytes of the buffered request body from `start`.
    fn body(&self, start: usize, len: usize) -> Option<Vec<u8>>;
    /// Replaces the first `old_len` bytes of the buffered body (all of it) with `body`.
    fn replace_body(&mut self, old_len: usize, body: &[u8]);
    /// Answers the request locally.
    fn respond(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]);
    /// Sends a side request (a prefill leg) to `cluster`; the call's token, or None if the
    /// host refused it.
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Option<u32>;
    /// While a side call's answer is delivered: its `:status` (None on a transport failure).
    fn call_status(&self) -> Option<u32>;
    /// While a side call's answer is delivered: `len` bytes of its body.
    fn call_body(&self, len: usize) -> Option<Vec<u8>>;
    /// Lets a request paused in the body phase continue upstream.
    fn resume(&mut self);
    /// Milliseconds on the host's clock.
    fn now_ms(&self) -> u64;
    /// `ip:port` of the upstream host that answered the request (response hooks).
    fn upstream_address(&self) -> Option<String>;
    /// Increments a counter.
    fn count(&mut self, counter: Counter);
    /// The current piece of the response body (`len` bytes).
    fn response_body(&self, len: usize) -> Option<Vec<u8>>;
    /// Replaces the current piece of the response body (`old_len` bytes) with `body`.
    fn replace_response_body(&mut self, old_len: usize, body: &[u8]);
    /// Publishes a per-request value as filter state (`wasm.<name>`) for Envoy's loggers.
    fn publish(&mut self, name: &str, value: &str);
    /// Adds `delta` to the counter or gauge `name` (one stat across workers). Envoy sees the
    /// change on the VM's next tick ([`crate::tally`]), not at once.
    fn add_to_metric(&mut self, kind: MetricKind, name: &str, delta: i64);
    /// Shared data (all workers): the value under `key` and its CAS token.
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Stores `value` under `key` if nobody wrote it since it was read: `cas` is the token
    /// [`Host::shared_get`] returned, `None` when the key was absent (then it is written only
    /// if still absent). False on a lost race: read again and retry.
    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
    /// Stores `value` under `key` whatever is there: for hints where the last writer wins.
    fn shared_put(&mut self, key: &str, value: &[u8]);
}

/// Counters the flow reports (exposed by Envoy as `wasmcustom.<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    PrefillOk,
    PrefillFailed,
    PrefillUnreachable,
    PrefillTimeout,
    PdRetry,
    PdExhausted,
    KvParamsMissing,
    DecodeOk,
    DecodeFailed,
    /// Engine-metrics scrapes (collector VM) that answered 2xx / did not.
    ScrapeOk,
    ScrapeFailed,
    /// Scrapes not made: the pod reported its load in-band within the interval.
    ScrapeSkipped,
    /// A sticky session moved off its pod: the filters dropped it, or another pod answered
    /// (Kthena logs these failovers).
    SessionMoved,
}

impl Counter {
    pub const ALL: [Counter; 13] = [
        Counter::PrefillOk,
        Counter::PrefillFailed,
        Counter::PrefillUnreachable,
        Counter::PrefillTimeout,
        Counter::PdRetry,
        Counter::PdExhausted,
        Counter::KvParamsMissing,
        Counter::DecodeOk,
        Counter::DecodeFailed,
        Counter::ScrapeOk,
        Counter::ScrapeFailed,
        Counter::ScrapeSkipped,
        Counter::SessionMoved,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::PrefillOk => "modelroute.pd.prefill_ok",
            Counter::PrefillFailed => "modelroute.pd.prefill_failed",
            Counter::PrefillUnreachable => "modelroute.pd.prefill_unreachable",
            Counter::PrefillTimeout => "modelroute.pd.prefill_timeout",
            Counter::PdRetry => "modelroute.pd.retry",
            Counter::PdExhausted => "modelroute.pd.exhausted",
            Counter::KvParamsMissing => "modelroute.pd.kv_params_missing",
            Counter::DecodeOk => "modelroute.pd.decode_ok",
            Counter::DecodeFailed => "modelroute.pd.decode_failed",
            Counter::ScrapeOk => "modelroute.metrics.scrape_ok",
            Counter::ScrapeFailed => "modelroute.metrics.scrape_failed",
            Counter::ScrapeSkipped => "modelroute.metrics.scrape_skipped_in_band",
            Counter::SessionMoved => "modelroute.session.moved",
        }
    }
}

//! modelroute: Kthena-compatible LLM inference routing inside Envoy.
//!
//! Pure core (native-testable) first, the proxy-wasm glue last:
//! - [`headers`]: the request headers, read with one host call.
//! - [`scan`]: single-pass JSON scanner for request bodies (the keys the router reads, unescaped).
//! - [`rewrite`]: byte-splicing rewrites of the scanned body.
//! - [`prompt`]: the prompt text prefix hashing reads, without a DOM.
//! - [`router`]: the compiled configuration and routing decisions.
//! - [`weights`]: weighted target choice.
//! - [`scheduler`]: Kthena's filter and score plugins: which pod.
//! - [`prefix`]: prompt block hashes and the per-server prefix index.
//! - [`metrics`]: engine metrics parsing and the per-pod snapshot the VMs share.
//! - [`collector`]: which VM scrapes the pods (a lease in shared data) and what it scrapes.
//! - [`rate_limit`]: Kthena's token rate limits, buckets shared by every worker.
//! - [`in_flight`]: per-pod in-flight counts shared by every worker (shared data, CAS).
//! - [`usage`]: token usage read from responses as they pass.
//! - [`accounting`]: what a request cost (tokens, timings), published for Envoy's loggers.
//! - [`tally`]: Kthena's counters and gauges, added up in the VM, written out on the tick.
//! - [`errors`]: OpenAI-style local replies.
//! - [`pd`]: prefill/decode protocols and leg bodies.
//! - [`host`]: what the filter needs from Envoy: the [`host::Host`] trait, actions, counters.
//! - [`flow`]: the per-request state machine, written against [`host::Host`].
//! - [`rng`]: injected randomness.
//! - `glue` (wasm32 only): adapts proxy-wasm's contexts to [`flow::Flow`]; nothing else calls
//!   proxy-wasm.
pub mod accounting;
pub mod collector;
pub mod errors;
pub mod flow;
pub mod headers;
pub mod host;
pub mod in_flight;
pub mod load_report;
pub mod metrics;
pub mod pd;
pub mod prefix;
pub mod prefix_sync;
pub mod prompt;
pub mod rate_limit;
pub mod rewrite;
pub mod rng;
pub mod router;
pub mod scan;
pub mod scheduler;
pub mod session;
pub mod tally;
pub mod usage;
pub mod weights;

#[cfg(target_arch = "wasm32")]
mod glue;

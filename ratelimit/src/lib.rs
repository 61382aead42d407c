//! `modelroute-ratelimit`: the rate-limit service Envoy's rate-limit filter calls for Kthena's
//! global token budgets (`ModelRoute.spec.rateLimit.global`), kept in Redis.
//!
//! Stateless: every budget arrives in the request's descriptors (the filter publishes it,
//! see [`filter_config::global_rate_limit`]), Redis holds the buckets, so any number of
//! replicas serve any number of gateways. The gRPC method is served over HTTP/2 by hyper;
//! the protocol messages are in [`proto`], the buckets in [`limiter`], Redis in [`redis`].

pub mod limiter;
pub mod placements;
pub mod proto;
pub mod redis;
mod server;
pub mod sessions;

pub use server::{serve, Services};

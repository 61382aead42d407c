//! Envoy's rate-limit filter and the cluster of `modelroute-ratelimit`, for the global token
//! budgets (`spec.rateLimit.global`; the contract is [`filter_config::global_rate_limit`]).
//!
//! The filter goes right after ours. Ours decides the model only once it has the body, and
//! Envoy runs the next filter's request-headers hook only when ours lets the request go on,
//! so the budget it published is there when the rate-limit filter builds its descriptors:
//! [`global_rate_limit::ADMIT`] before routing (hits: the input estimate) and
//! [`global_rate_limit::DEBIT`] when the stream is done (hits: the completion tokens). A
//! request without a global budget publishes nothing, yields no descriptor and is not sent to
//! the service.

use filter_config::global_rate_limit;
use serde_json::{json, Value};

/// The service's cluster.
pub const CLUSTER: &str = "modelroute_ratelimit";
/// The filter's name, and the name of its ECDS resource in the ConfigMap target.
pub const FILTER_NAME: &str = "envoy.filters.http.ratelimit";
/// The type URL of the filter's configuration (an ECDS `type_urls` entry).
pub const RATE_LIMIT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit";
/// The rate-limit filter waits this long for the service; past it the request goes on (fail
/// open, counted by Envoy as `ratelimit.failure_mode_allowed`). The service bounds its Redis
/// calls (50 ms by default) below this, so a budget's own failure mode answers first.
pub const TIMEOUT: &str = "0.1s";

/// The rate-limit filter (an `http_filters` entry).
pub fn filter() -> Value {
    json!({ "name": FILTER_NAME, "typed_config": filter_config() })
}

/// The filter's `typed_config` (with `@type`): the two descriptors over our filter state.
fn filter_config() -> Value {
    // A descriptor entry from the filter state `published`; absent, the whole descriptor is
    // skipped (no call is made for a request without any).
    let entry = |key: &str, published: &str| {
        json!({
            "extension": {
                "name": "envoy.rate_limit_descriptors.expr",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.rate_limit_descriptors.expr.v3.Descriptor",
                    "descriptor_key": key,
                    "text": format!("filter_state['wasm.{published}']"),
                    "skip_if_error": true,
                },
            },
        })
    };
    let hits =
        |published: &str| json!({ "format": format!("%FILTER_STATE(wasm.{published}:PLAIN)%") });
    let admit = json!({
        "actions": [entry(global_rate_limit::ADMIT, global_rate_limit::BUDGET)],
        "hits_addend": hits(global_rate_limit::ADMIT_HITS),
    });
    // Only when the filter published tokens to debit: refused requests, budgets without an
    // output limit and empty answers make no call.
    let debit = json!({
        "actions": [
            entry(global_rate_limit::DEBIT, global_rate_limit::BUDGET),
            entry("tokens", global_rate_limit::DEBIT_HITS),
        ],
        "hits_addend": hits(global_rate_limit::DEBIT_HITS),
        "apply_on_stream_done": true,
    });
    let mut config = idle_filter_config();
    if let Some(obj) = config.as_object_mut() {
        obj.insert("timeout".into(), json!(TIMEOUT));
        obj.insert("failure_mode_deny".into(), json!(false));
        obj.insert("rate_limits".into(), json!([admit, debit]));
    }
    config
}

/// The filter without descriptors: it never calls the service (whose cluster need not
/// exist; the gateway manifest's e2e checks that it makes no call). What the ConfigMap target ships when no
/// service is given, so the gateway's bootstrap can always name the filter.
fn idle_filter_config() -> Value {
    json!({
        "@type": RATE_LIMIT_TYPE,
        "domain": "modelroute",
        "rate_limit_service": {
            "transport_api_version": "V3",
            "grpc_service": { "envoy_grpc": { "cluster_name": CLUSTER } },
        },
    })
}

/// The ECDS resource (a `TypedExtensionConfig`) the gateway's bootstrap discovers the filter
/// by: with a service, the filter of [`filter`]; without, [`idle_filter_config`].
pub fn extension_config(service: Option<&str>) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": FILTER_NAME,
        "typed_config": match service {
            Some(_) => filter_config(),
            None => idle_filter_config(),
        },
    })
}

/// The service's cluster: `host:port` (a name is resolved by DNS), HTTP/2.
pub fn cluster(service: &str) -> Value {
    let (host, port) = service.rsplit_once(':').unwrap_or((service, "8081"));
    let port: u16 = port.parse().unwrap_or(8081);
    json!({
        "name": CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "0.25s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} },
            },
        },
        "load_assignment": {
            "cluster_name": CLUSTER,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": host, "port_value": port },
            } } }] }],
        },
    })
}

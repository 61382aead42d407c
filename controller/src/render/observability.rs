//! What operators see: Kthena's Prometheus metrics and Kthena's access log, made by Envoy's own
//! access loggers from the values the filter publishes per request
//! ([`filter_config::published`]). Rendered into the standalone bootstrap
//! ([`bootstrap`]), the gateway Deployment's bootstrap and the Istio EnvoyFilter.
//!
//! Metrics come from Envoy's stats access logger under the scope `wasmcustom`: Envoy's
//! Prometheus output drops that namespace (the wasm extension registers it), so the series are
//! named exactly as Kthena names them, with its labels. Histograms use the unit `Percent`,
//! which Envoy records scaled by a million and prints unscaled: the only way an Envoy
//! histogram holds fractional values, here seconds. Each stat is only recorded when its value
//! exists (a tag rule drops it otherwise), since the logger logs an error per missing one.

use serde_json::{json, Value};

use filter_config::{published, vm_metrics};

/// Where Kthena's access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogOutput {
    Off,
    Stdout,
    Stderr,
    File(String),
}

impl AccessLogOutput {
    /// `off`, `stdout`, `stderr` or a file path (as Kthena's `ACCESS_LOG_OUTPUT`).
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "" => return Err("expected off, stdout, stderr or a file path".into()),
            "off" => AccessLogOutput::Off,
            "stdout" => AccessLogOutput::Stdout,
            "stderr" => AccessLogOutput::Stderr,
            path => AccessLogOutput::File(path.to_string()),
        })
    }
}

/// Kthena's two formats (`ACCESS_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessLogFormat {
    Text,
    Json,
}

/// The access log's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    pub output: AccessLogOutput,
    pub format: AccessLogFormat,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog {
            output: AccessLogOutput::Stdout,
            format: AccessLogFormat::Text,
        }
    }
}

/// Kthena's buckets for request durations, seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];
/// Buckets for the prefix-cache match ratio (0..1).
pub const RATIO_BUCKETS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// Buckets for time per output token, seconds.
pub const TPOT_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
];

/// The Envoy stats scope whose prefix Envoy's Prometheus output strips (wasm's namespace).
const SCOPE: &str = "wasmcustom";

fn fs(name: &str) -> String {
    format!("%FILTER_STATE(wasm.{name}:PLAIN)%")
}

fn tag(name: &str, format: &str) -> Value {
    json!({"name": name, "value_format": format})
}

/// Kthena's labels of a routed request (`model_route` ... `upstream_model`).
fn target_tags() -> Vec<Value> {
    vec![
        tag("model_route", &fs(published::ROUTE)),
        tag("backend_type", &fs(published::BACKEND_TYPE)),
        tag("backend_name", &fs(published::SERVER)),
        tag("upstream_model", &fs(published::UPSTREAM_MODEL)),
    ]
}

fn tags(head: &[(&str, &str)], with_target: bool) -> Vec<Value> {
    let mut v: Vec<Value> = head.iter().map(|(n, f)| tag(n, f)).collect();
    if with_target {
        v.extend(target_tags());
    }
    v
}

/// A histogram of the published value `value`, recorded only for requests that published
/// it: its first tag reads the value and drops the stat when there is none (the logger logs
/// an error per missing value) and itself otherwise, so it is never a label. A tag rule, not
/// a CEL filter per histogram: no expression is evaluated per request.
fn histogram(name: &str, tags: Vec<Value>, value: &str) -> Value {
    let transform = |action: &str| {
        json!({"name": action, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.matching.actions.transform_stat.v3.TransformStat",
            action: {},
        }})
    };
    let gate = json!({
        "name": "published",
        "value_format": fs(value),
        "rules": {
            "matcher_list": {"matchers": [{
                "predicate": {"single_predicate": {
                    "input": {"name": "tag_value", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.stats.v3.StatTagValueInput",
                    }},
                    "value_match": {"exact": ""},
                }},
                "on_match": {"action": transform("drop_stat")},
            }]},
            "on_no_match": {"action": transform("drop_tag")},
        },
    });
    let mut all = vec![gate];
    all.extend(tags);
    json!({"stat": {"name": name, "tags": all}, "unit": "Percent", "value_format": fs(value)})
}

/// The stats access logger that makes Kthena's histograms (the filter keeps the counters and
/// gauges itself: [`filter_config::vm_metrics`]): one logger, each histogram recorded when
/// its value was published.
pub fn metrics_loggers() -> Vec<Value> {
    let model = ("model", fs(published::MODEL));
    let path = ("path", fs(published::PATH));
    let status = ("status_code", "%RESPONSE_CODE%".to_string());
    let t = |pairs: &[&(&str, String)], with_target: bool| {
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(n, f)| (*n, f.as_str())).collect();
        tags(&refs, with_target)
    };
    let server = ("model_server", fs(published::SERVER));
    let per_server = || t(&[&model, &server], false);
    let pd_leg = || t(&[&model, &path, &status], false);
    let histograms = vec![
        histogram(
            "kthena_router_request_duration_seconds",
            t(&[&model, &path, &status], true),
            published::DURATION,
        ),
        histogram(
            "kthena_router_time_to_first_token_seconds",
            per_server(),
            published::TTFT,
        ),
        histogram(
            "kthena_router_time_per_output_token_seconds",
            per_server(),
            published::TPOT,
        ),
        histogram(
            "kthena_router_prefix_cache_match_ratio",
            t(&[&model], false),
            published::PREFIX_MATCH,
        ),
        histogram(
            "kthena_router_request_prefill_duration_seconds",
            pd_leg(),
            published::PREFILL_DURATION,
        ),
        histogram(
            "kthena_router_request_decode_duration_seconds",
            pd_leg(),
            published::DECODE_DURATION,
        ),
    ];
    vec![json!({
        "name": "envoy.access_loggers.stats",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stats.v3.Config",
            "stats_scope": {"prefix": SCOPE},
            "histograms": histograms,
        },
    })]
}

/// Kthena's access log fields, in its order: (JSON name, Envoy format).
fn fields() -> Vec<(&'static str, String)> {
    vec![
        ("timestamp", "%START_TIME(%Y-%m-%dT%H:%M:%S.%9fZ)%".into()),
        ("method", "%REQ(:METHOD)%".into()),
        ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%".into()),
        ("protocol", "%PROTOCOL%".into()),
        ("status_code", "%RESPONSE_CODE%".into()),
        ("error_type", fs(published::ERROR_TYPE)),
        ("error_message", fs(published::ERROR_MESSAGE)),
        ("model_name", fs(published::MODEL)),
        ("model_route", fs(published::ROUTE)),
        ("model_server", fs(published::SERVER)),
        ("selected_pod", "%UPSTREAM_HOST%".into()),
        ("prefill_pod", fs(published::PREFILL_POD)),
        ("request_id", "%REQ(X-REQUEST-ID)%".into()),
        ("backend_type", fs(published::BACKEND_TYPE)),
        ("backend_name", fs(published::SERVER)),
        ("upstream_model", fs(published::UPSTREAM_MODEL)),
        ("upstream_status_code", "%RESPONSE_CODE%".into()),
        (
            "upstream_attempts",
            "%UPSTREAM_REQUEST_ATTEMPT_COUNT%".into(),
        ),
        ("error_origin", "%RESPONSE_CODE_DETAILS%".into()),
        ("input_tokens", fs(published::INPUT_TOKENS)),
        ("output_tokens", fs(published::OUTPUT_TOKENS)),
        ("duration_total", "%DURATION%".into()),
        (
            "duration_request_processing",
            "%COMMON_DURATION(DS_RX_BEG:DS_RX_END:ms)%".into(),
        ),
        (
            "duration_upstream_processing",
            "%COMMON_DURATION(US_TX_BEG:US_RX_BEG:ms)%".into(),
        ),
        (
            "duration_response_processing",
            "%COMMON_DURATION(US_RX_BEG:DS_TX_END:ms)%".into(),
        ),
        ("ttft", fs(published::TTFT)),
    ]
}

/// Kthena's text line: `[time] "METHOD /path PROTO" status error=type:msg key=value ...
/// tokens=in/out timings=total(req+upstream+resp)ms`.
fn text_format() -> String {
    let f: std::collections::BTreeMap<&str, String> = fields().into_iter().collect();
    let kv = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("{n}={}", f[n]))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "[{}] \"{} {} {}\" {} error={}:{} {} tokens={}/{} timings={}ms({}+{}+{}) ttft={}\n",
        f["timestamp"],
        f["method"],
        f["path"],
        f["protocol"],
        f["status_code"],
        f["error_type"],
        f["error_message"],
        kv(&[
            "model_name",
            "model_route",
            "model_server",
            "selected_pod",
            "prefill_pod",
            "request_id",
            "backend_type",
            "backend_name",
            "upstream_model",
            "upstream_status_code",
            "upstream_attempts",
            "error_origin",
        ]),
        f["input_tokens"],
        f["output_tokens"],
        f["duration_total"],
        f["duration_request_processing"],
        f["duration_upstream_processing"],
        f["duration_response_processing"],
        f["ttft"],
    )
}

/// Kthena's access log (only `/v1/` paths, as Kthena), or None when off.
pub fn access_log(log: &AccessLog) -> Option<Value> {
    let log_format = match log.format {
        AccessLogFormat::Text => json!({"text_format_source": {"inline_string": text_format()}}),
        AccessLogFormat::Json => {
            let obj: serde_json::Map<String, Value> = fields()
                .into_iter()
                .map(|(k, v)| (k.to_string(), Value::String(v)))
                .collect();
            json!({"json_format": obj})
        }
    };
    let path = match &log.output {
        AccessLogOutput::Off => return None,
        AccessLogOutput::Stdout => "/dev/stdout".to_string(),
        AccessLogOutput::Stderr => "/dev/stderr".to_string(),
        AccessLogOutput::File(p) => p.clone(),
    };
    Some(json!({
        "name": "envoy.access_loggers.file",
        "filter": {"header_filter": {"header": {
            "name": ":path",
            "string_match": {"prefix": "/v1/"},
        }}},
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": log_format,
        },
    }))
}

/// Every access logger of the HTTP connection manager: the metrics, then the access log.
pub fn access_loggers(log: &AccessLog) -> Vec<Value> {
    let mut v = metrics_loggers();
    v.extend(access_log(log));
    v
}

/// The labels of the filter's own counters and gauges, as Envoy tag extractors over their
/// names (`label=.=value;.;...;.;<metric>`, Istio's encoding): what makes them Prometheus
/// labels. A label starts after `wasmcustom.` or a `;.;`, so `model` is never read out of
/// `upstream_model` (Istio's own `extraStatTags` regexes are not anchored this way).
pub fn label_tags() -> Vec<Value> {
    vm_metrics::LABELS
        .iter()
        .map(|label| json!({"tag_name": label, "regex": format!("[.;]({label}=\\.=(.*?);\\.;)")}))
        .collect()
}

/// The bootstrap's `stats_config`: Kthena's histogram buckets and the gauges' labels.
pub fn bootstrap_stats_config() -> Value {
    let buckets = |prefix: &str, b: &[f64]| json!({"match": {"prefix": format!("{SCOPE}.{prefix}")}, "buckets": b});
    json!({
        "stats_tags": label_tags(),
        "histogram_bucket_settings": [
            buckets("kthena_router_time_per_output_token_seconds", &TPOT_BUCKETS),
            buckets("kthena_router_prefix_cache_match_ratio", &RATIO_BUCKETS),
            buckets("kthena_router_", &DURATION_BUCKETS),
        ],
    })
}

/// The standalone bootstrap (`envoy/envoy.yaml`) with its placeholders filled.
pub fn bootstrap(
    listen_port: u16,
    admin_port: u16,
    config_dir: &str,
    log: &AccessLog,
    rate_limit_service: Option<&str>,
) -> String {
    let (rate_limit_filter, rate_limit_clusters) = match rate_limit_service {
        Some(service) => (
            format!("- {}", super::rate_limit::filter()),
            Value::Array(vec![super::rate_limit::cluster(service)]),
        ),
        None => (String::new(), Value::Array(vec![])),
    };
    BOOTSTRAP_TEMPLATE
        .replace("@RATE_LIMIT_FILTER@", &rate_limit_filter)
        .replace("@RATE_LIMIT_CLUSTERS@", &rate_limit_clusters.to_string())
        .replace("@LISTEN_PORT@", &listen_port.to_string())
        .replace("@ADMIN_PORT@", &admin_port.to_string())
        .replace("@CONFIG_DIR@", config_dir)
        .replace(
            "@ACCESS_LOG@",
            &Value::Array(access_loggers(log)).to_string(),
        )
        .replace("@STATS_CONFIG@", &bootstrap_stats_config().to_string())
}

/// The shipped standalone bootstrap, with `@...@` placeholders.
pub const BOOTSTRAP_TEMPLATE: &str = include_str!("../../../envoy/envoy.yaml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_published_value_a_logger_reads_exists() {
        let all = Value::Array(access_loggers(&AccessLog::default())).to_string();
        let mut rest = all.as_str();
        while let Some(at) = rest.find("wasm.") {
            rest = &rest[at + 5..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
                .collect();
            let name = name.trim_end_matches('.');
            assert!(
                [
                    published::MODEL,
                    published::PATH,
                    published::ROUTE,
                    published::SERVER,
                    published::BACKEND_TYPE,
                    published::UPSTREAM_MODEL,
                    published::ERROR_TYPE,
                    published::ERROR_MESSAGE,
                    published::INPUT_TOKENS,
                    published::OUTPUT_TOKENS,
                    published::DURATION,
                    published::TTFT,
                    published::TPOT,
                    published::PREFILL_POD,
                    published::PREFILL_DURATION,
                    published::DECODE_DURATION,
                    published::PREFIX_MATCH,
                ]
                .contains(&name),
                "{name} is not published by the filter"
            );
        }
    }

    #[test]
    fn outputs_parse_as_kthenas() {
        assert_eq!(AccessLogOutput::parse("off"), Ok(AccessLogOutput::Off));
        assert_eq!(
            AccessLogOutput::parse("/var/log/a.log"),
            Ok(AccessLogOutput::File("/var/log/a.log".into()))
        );
        assert!(AccessLogOutput::parse("").is_err());
        let off = AccessLog {
            output: AccessLogOutput::Off,
            ..Default::default()
        };
        assert_eq!(access_loggers(&off).len(), metrics_loggers().len());
    }

    #[test]
    fn the_bootstrap_has_no_placeholder_left() {
        let b = bootstrap(1, 2, "/x", &AccessLog::default(), None);
        for p in [
            "@LISTEN_PORT@",
            "@ADMIN_PORT@",
            "@CONFIG_DIR@",
            "@ACCESS_LOG@",
            "@STATS_CONFIG@",
        ] {
            assert!(!b.contains(p), "{p}");
        }
    }
}

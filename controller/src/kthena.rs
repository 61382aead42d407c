//! Kthena resource types (`networking.serving.volcano.sh/v1alpha1` ModelRoute, ModelServer)
//! and the slice of Kubernetes `ObjectMeta` we read.
//!
//! Plain serde types, tolerant of missing fields (validation reports what is required) and of
//! unknown fields (the loader warns about those in `spec`). Numbers that users can get wrong in
//! range (weights, ports, attempts) are `i64` so validation, not serde, reports them.
//! No I/O and no validation here.

use std::collections::BTreeMap;

use serde::Deserialize;

/// API group of Kthena's routing resources.
pub const API_GROUP: &str = "networking.serving.volcano.sh";
/// The one version we read.
pub const API_VERSION: &str = "networking.serving.volcano.sh/v1alpha1";

/// The parts of Kubernetes `metadata` we use; everything else is ignored silently.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: Option<String>,
    pub creation_timestamp: Option<String>,
    pub resource_version: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Values read as text, so an unquoted `8998` still reaches validation.
    #[serde(deserialize_with = "annotation_map")]
    pub annotations: BTreeMap<String, String>,
    pub deletion_timestamp: Option<String>,
}

impl ObjectMeta {
    /// Kubernetes' default namespace when none is given.
    pub fn namespace(&self) -> &str {
        match self.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => ns,
            _ => "default",
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace(), self.name)
    }
}

/// ModelServer annotation: the SGLang prefill pods' disaggregation bootstrap port (decimal
/// 1..65535), sent to both legs as `bootstrap_port`. Absent: the filter's default (8998).
pub const SGLANG_BOOTSTRAP_PORT_ANNOTATION: &str = "modelroute.io/sglang-bootstrap-port";
/// On a ModelRoute with `spec.rateLimit`: apply the budgets per value of this request header
/// (a client id a JWT filter or API gateway sets), not per model. Kthena ignores it.
pub const RATE_LIMIT_CLIENT_HEADER_ANNOTATION: &str = "modelroute.io/rate-limit-client-header";
/// How many clients get budgets of their own (more share them, by hash); default 4096.
pub const RATE_LIMIT_CLIENTS_ANNOTATION: &str = "modelroute.io/rate-limit-clients";
pub const DEFAULT_RATE_LIMIT_CLIENTS: u32 = 4096;
/// On a ModelRoute with `spec.rateLimit.global`: what requests get while its Redis cannot be
/// reached, `allow` (default: the gateway keeps serving, unlimited) or `deny` (429, as
/// Kthena does once it has connected).
pub const RATE_LIMIT_REDIS_FAILURE_ANNOTATION: &str = "modelroute.io/rate-limit-on-redis-failure";

/// The field path of annotation `key` in messages: `metadata.annotations[key]`.
pub fn annotation_path(key: &str) -> String {
    format!("metadata.annotations[{key}]")
}

/// A port annotation value: plain decimal digits, 1..65535; anything else is `None`.
pub fn parse_port_annotation(value: &str) -> Option<u16> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u16>().ok().filter(|p| *p != 0)
}

/// A Kthena object read from a file: where it came from, its metadata, its spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Object<S> {
    /// The file as the user named it (used in every message about the object).
    pub file: String,
    /// Position among all objects of all inputs (the tie-breaker of route order).
    pub order: usize,
    pub meta: ObjectMeta,
    pub spec: S,
}

// ---------------------------------------------------------------- ModelRoute

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ModelRouteSpec {
    pub model_name: Option<String>,
    pub lora_adapters: Vec<String>,
    /// Gateway API parent references: only meaningful in Kthena's Gateway mode; ignored.
    pub parent_refs: Option<serde_json::Value>,
    pub rules: Vec<RouteRule>,
    /// Token rate limits of requests for `modelName`.
    pub rate_limit: Option<RateLimitSpec>,
    /// Session stickiness (Kthena's session-sticky proposal); absent or null: off.
    pub session_sticky: Option<SessionStickySpec>,
}

/// `spec.sessionSticky`: where a request's session key comes from (the first source that
/// yields one), and how long a session stays bound to its pod after its last request.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SessionStickySpec {
    /// Seconds (Kthena's default 600, at least 1).
    pub session_affinity_seconds: Option<i64>,
    pub sources: Vec<SessionKeySourceSpec>,
}

/// One `spec.sessionSticky.sources` entry: `type` Header, Query, Cookie or JWTClaim.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct SessionKeySourceSpec {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
}

/// Whether `name` is a header name the filter can be configured with: letters, digits and
/// `-` (Envoy refuses `_` in header names by default).
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Most `spec.sessionSticky.sources` Kthena's CRD admits.
pub const MAX_SESSION_KEY_SOURCES: usize = 16;

/// `spec.rateLimit`: tokens per unit of time, per Envoy unless `global` names a Redis.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitSpec {
    pub input_tokens_per_unit: Option<u64>,
    pub output_tokens_per_unit: Option<u64>,
    /// second (default) | minute | hour | day | month (30 days).
    pub unit: Option<String>,
    pub global: Option<serde_json::Value>,
}

impl RateLimitSpec {
    /// The unit in seconds, None if it is not one of Kthena's.
    pub fn unit_seconds(&self) -> Option<u64> {
        Some(match self.unit.as_deref().unwrap_or("second") {
            "second" => 1,
            "minute" => 60,
            "hour" => 3_600,
            "day" => 86_400,
            "month" => 30 * 86_400,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteRule {
    pub name: String,
    pub model_match: Option<ModelMatch>,
    pub target_models: Vec<TargetModel>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ModelMatch {
    /// Header name -> condition. A `BTreeMap` so output order is stable.
    pub headers: BTreeMap<String, StringMatch>,
    pub uri: Option<StringMatch>,
    pub body: Option<BodyMatch>,
}

/// Kthena's StringMatch: any subset of the three may be set (precedence is resolved in compile).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct BodyMatch {
    pub model: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TargetModel {
    pub model_server_name: Option<String>,
    pub external_model_provider_name: Option<String>,
    /// Relative weight; absent means [`DEFAULT_WEIGHT`].
    pub weight: Option<i64>,
}

/// Kthena's default target weight.
pub const DEFAULT_WEIGHT: i64 = 100;

impl TargetModel {
    pub fn weight(&self) -> i64 {
        self.weight.unwrap_or(DEFAULT_WEIGHT)
    }
}

// ---------------------------------------------------------------- ModelServer

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ModelServerSpec {
    pub model: Option<String>,
    pub inference_engine: Option<String>,
    pub workload_selector: Option<WorkloadSelector>,
    pub workload_port: Option<WorkloadPort>,
    pub traffic_policy: Option<TrafficPolicy>,
    pub kv_connector: Option<KvConnector>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadSelector {
    pub match_labels: BTreeMap<String, String>,
    pub pd_group: Option<PdGroup>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PdGroup {
    pub group_key: String,
    pub prefill_labels: BTreeMap<String, String>,
    pub decode_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct WorkloadPort {
    pub port: i64,
    pub protocol: Option<String>,
}

impl WorkloadPort {
    /// `protocol: https` (case-insensitive); the default is http.
    pub fn is_https(&self) -> bool {
        self.protocol
            .as_deref()
            .is_some_and(|p| p.eq_ignore_ascii_case("https"))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct TrafficPolicy {
    /// Go duration string (`10s`, `1m30s`).
    #[serde(deserialize_with = "scalar_text")]
    pub timeout: Option<String>,
    pub retry: Option<RetryPolicy>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryPolicy {
    pub attempts: Option<i64>,
    #[serde(deserialize_with = "scalar_text")]
    pub retry_interval: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct KvConnector {
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// Accepted `kvConnector.type` values (lower-case).
pub const KV_CONNECTORS: [&str; 4] = ["http", "lmcache", "nixl", "mooncake"];

/// A scalar read as text, so `timeout: 10` reaches validation (which says the unit is missing)
/// instead of failing as a type error.
fn scalar_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
            Ok(Some(v.to_string()))
        }
        Some(other) => Err(D::Error::custom(format!(
            "expected a duration string, got {other}"
        ))),
    }
}

/// `metadata.annotations` with every value taken as text (Kubernetes requires strings, but a
/// hand-written `port: 8998` should reach validation, not make the metadata unreadable).
fn annotation_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = Option::<BTreeMap<String, serde_json::Value>>::deserialize(d)?.unwrap_or_default();
    Ok(raw
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            serde_json::Value::Null => (k, String::new()),
            other => (k, other.to_string()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_annotation_is_plain_decimal_1_to_65535() {
        assert_eq!(parse_port_annotation("8998"), Some(8998));
        assert_eq!(parse_port_annotation("1"), Some(1));
        assert_eq!(parse_port_annotation("65535"), Some(65535));
        for bad in [
            "",
            "0",
            "65536",
            "-1",
            "+8998",
            " 8998",
            "8998 ",
            "0x1f",
            "8998.0",
            "abc",
            "99999999999999999999",
        ] {
            assert_eq!(parse_port_annotation(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn annotation_scalars_are_read_as_text() {
        let meta: ObjectMeta = serde_json::from_value(serde_json::json!({
            "name": "s",
            "annotations": {"a": "x", "modelroute.io/sglang-bootstrap-port": 8998, "b": true}
        }))
        .unwrap();
        assert_eq!(
            meta.annotations["modelroute.io/sglang-bootstrap-port"],
            "8998"
        );
        assert_eq!(meta.annotations["b"], "true");
        assert_eq!(meta.annotations["a"], "x");
    }
}

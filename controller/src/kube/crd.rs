//! CustomResourceDefinitions for ModelRoute and ModelServer, for clusters without Kthena: Rust
//! types mirroring Kthena's `networking.serving.volcano.sh/v1alpha1` schema, turned into CRDs by
//! kube's `CustomResource` derive and schemars. `deploy/crds/` holds the rendered manifests; a
//! golden test keeps them equal to [`manifests`].
//!
//! Only the schema lives here: the controller reads objects through [`crate::kthena`], which is
//! deliberately more tolerant (Kthena's own CRDs may be installed instead of these).

use std::collections::BTreeMap;

use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn any_objects(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// What the controller writes into `status` (see [`super::status`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<StatusCondition>,
}

/// `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusCondition {
    #[serde(rename = "type")]
    pub kind: String,
    /// True, False or Unknown.
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub last_transition_time: String,
}

// ---------------------------------------------------------------- ModelRoute

/// Routes requests for a model name (or LoRA adapter names) to ModelServers by ordered rules.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[kube(
    group = "networking.serving.volcano.sh",
    version = "v1alpha1",
    kind = "ModelRoute",
    namespaced,
    status = "ObjectStatus",
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.modelName"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ModelRouteSpec {
    /// Model name requests carry in `model`; this or `loraAdapters` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// LoRA adapter names routed by this route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub lora_adapters: Vec<String>,
    /// Gateway API parent references (Kthena's Gateway mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_objects")]
    pub parent_refs: Option<Vec<serde_json::Value>>,
    /// Ordered rules; the first that matches wins.
    #[schemars(length(min = 1, max = 16))]
    pub rules: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Session stickiness (Kthena's session-sticky proposal); absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_sticky: Option<SessionSticky>,
}

/// Where a request's session key comes from (the first source that yields one) and how long
/// a session stays bound to its pod after its last request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionSticky {
    /// Seconds; 600 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub session_affinity_seconds: Option<i32>,
    #[schemars(length(min = 1, max = 16))]
    pub sources: Vec<SessionKeySource>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema)]
pub struct SessionKeySource {
    #[serde(rename = "type")]
    pub kind: SessionKeySourceType,
    /// Header name, query key, cookie name or JWT claim name.
    #[schemars(length(min = 1))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SessionKeySourceType {
    Header,
    Query,
    Cookie,
    #[serde(rename = "JWTClaim")]
    JwtClaim,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_match: Option<ModelMatch>,
    #[schemars(length(min = 1, max = 16))]
    pub target_models: Vec<TargetModel>,
}

/// All conditions are ANDed; absent matches everything.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelMatch {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyMatch>,
}

/// exact > prefix > regex when several are set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
pub struct BodyMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Exactly one of `modelServerName` / `externalModelProviderName`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetModel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_model_provider_name: Option<String>,
    /// Relative weight (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub weight: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub input_tokens_per_unit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub output_tokens_per_unit: Option<u32>,
    /// second | minute | hour | day | month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalRateLimit>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
pub struct GlobalRateLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
pub struct RedisConfig {
    pub address: String,
}

// ---------------------------------------------------------------- ModelServer

/// A model served by the pods `workloadSelector` selects, on `workloadPort`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[kube(
    group = "networking.serving.volcano.sh",
    version = "v1alpha1",
    kind = "ModelServer",
    namespaced,
    status = "ObjectStatus",
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.model"}"#,
    printcolumn = r#"{"name":"Engine","type":"string","jsonPath":".spec.inferenceEngine"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ModelServerSpec {
    /// The served model name (requests are rewritten to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub model: Option<String>,
    /// vLLM | SGLang.
    pub inference_engine: String,
    pub workload_selector: WorkloadSelector,
    pub workload_port: WorkloadPort,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_connector: Option<KvConnector>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pd_group: Option<PdGroup>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PdGroup {
    pub group_key: String,
    pub prefill_labels: BTreeMap<String, String>,
    pub decode_labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
pub struct WorkloadPort {
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
    /// http (default) | https.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
pub struct TrafficPolicy {
    /// Go duration (`10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Go duration (default 100ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_interval: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
pub struct KvConnector {
    /// http | lmcache | nixl | mooncake.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// `(file name under deploy/crds/, YAML)` for each CRD.
pub fn manifests() -> Vec<(&'static str, String)> {
    let yaml = |crd| {
        let mut text = String::from(
            "# Generated by `modelroute-controller kube --print-crds`; do not edit.\n",
        );
        text.push_str(&serde_saphyr::to_string(&crd).unwrap_or_default());
        text
    };
    vec![
        ("modelroutes.yaml", yaml(ModelRoute::crd())),
        ("modelservers.yaml", yaml(ModelServer::crd())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_have_the_names_kthena_uses() {
        let crd = ModelRoute::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("modelroutes.networking.serving.volcano.sh")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        let crd = ModelServer::crd();
        assert_eq!(crd.spec.names.plural, "modelservers");
        assert!(crd.spec.versions[0]
            .subresources
            .as_ref()
            .unwrap()
            .status
            .is_some());
    }

    #[test]
    fn seed_example_fits_the_schema_types() {
        let spec: ModelServerSpec = serde_json::from_value(serde_json::json!({
            "model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
            "inferenceEngine": "vLLM",
            "workloadSelector": {"matchLabels": {"app": "deepseek-r1-1-5b"}},
            "workloadPort": {"port": 8000},
            "trafficPolicy": {"timeout": "10s"}
        }))
        .unwrap();
        assert_eq!(spec.workload_port.port, 8000);
    }
}

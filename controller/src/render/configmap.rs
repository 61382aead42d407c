//! The Envoy files as one Kubernetes `v1` ConfigMap, for an Envoy Deployment that mounts it
//! (deploy/envoy-gateway.yaml). A ConfigMap volume is flat, so every file sits in the mount
//! directory: `ecds.json`, `cds.json`, `rds.json`, `eds-<cluster>.json` per ModelServer,
//! `filter-config.json` and `ecds-ratelimit.json` (Envoy's rate-limit filter, for global
//! budgets; with `--rate-limit-service` its cluster is in `cds.json`); the paths inside cds.json / ecds.json name the mount directory, which
//! is also every `watched_directory` (the kubelet swaps the `..data` symlink of the mount root
//! atomically: one rename, one reload of a consistent set of files). Built from
//! [`super::envoy::render_with`]; produces JSON values, never writes.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use super::envoy::{self, EdsLayout};
use super::rate_limit;
use crate::compile::Compiled;
use crate::filter_config_json;

/// Data keys.
pub const ECDS_KEY: &str = "ecds.json";
pub const CDS_KEY: &str = "cds.json";
pub const RDS_KEY: &str = "rds.json";
pub const FILTER_CONFIG_KEY: &str = crate::FILTER_CONFIG_FILE;
/// Envoy's rate-limit filter, always present (idle without `--rate-limit-service`) so the
/// gateway's bootstrap can always discover it.
pub const RATE_LIMIT_ECDS_KEY: &str = "ecds-ratelimit.json";
/// Prefix of the per-cluster EDS keys.
pub const EDS_PREFIX: &str = "eds-";
/// Defaults of the command line.
pub const DEFAULT_NAMESPACE: &str = "modelroute-system";
pub const DEFAULT_MOUNT_DIR: &str = "/etc/modelroute";
/// Where deploy/envoy-gateway.yaml mounts the module.
pub const DEFAULT_WASM: &str = "/etc/modelroute-wasm/modelroute.wasm";
/// Label on every object the controller renders (the same as kube mode applies).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "modelroute-controller");

/// What the ConfigMap is called and where its files end up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMapTarget {
    pub namespace: String,
    pub name: String,
    /// The directory the Envoy container mounts the ConfigMap at (absolute).
    pub mount_dir: String,
    /// The wasm module's path inside the Envoy container (absolute).
    pub wasm: String,
}

impl Default for ConfigMapTarget {
    fn default() -> Self {
        ConfigMapTarget {
            namespace: DEFAULT_NAMESPACE.into(),
            name: "modelroute".into(),
            mount_dir: DEFAULT_MOUNT_DIR.into(),
            wasm: DEFAULT_WASM.into(),
        }
    }
}

/// Data key of a cluster's EDS file: `eds-<eds_file_name>`.
pub fn eds_key(cluster: &str) -> String {
    format!("{EDS_PREFIX}{}", envoy::eds_file_name(cluster))
}

/// The files, keyed by name (sorted): what the mount directory will hold.
pub fn data(compiled: &Compiled, mount_dir: &Path, wasm: &Path) -> BTreeMap<String, String> {
    let layout = EdsLayout {
        dir: mount_dir,
        file_prefix: EDS_PREFIX,
    };
    let service = compiled.gateway.rate_limit_service.as_deref();
    let mut clusters = vec![];
    if let Some(service) = service {
        let mut cluster = rate_limit::cluster(service);
        if let Some(obj) = cluster.as_object_mut() {
            obj.insert("@type".into(), json!(envoy::CLUSTER_TYPE));
        }
        clusters.push(cluster);
    }
    let files = envoy::render_with(compiled, &layout, wasm, clusters);
    let mut data = BTreeMap::new();
    data.insert(ECDS_KEY.to_string(), files.ecds);
    data.insert(
        RATE_LIMIT_ECDS_KEY.to_string(),
        envoy::discovery_response(vec![rate_limit::extension_config(service)]),
    );
    data.insert(CDS_KEY.to_string(), files.cds);
    data.insert(RDS_KEY.to_string(), files.rds);
    data.insert(FILTER_CONFIG_KEY.to_string(), filter_config_json(compiled));
    data.extend(files.eds);
    data
}

/// The ConfigMap object.
pub fn configmap(compiled: &Compiled, target: &ConfigMapTarget) -> Value {
    let data = data(
        compiled,
        Path::new(&target.mount_dir),
        Path::new(&target.wasm),
    );
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": target.name,
            "namespace": target.namespace,
            "labels": {MANAGED_BY.0: MANAGED_BY.1},
        },
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled() -> Compiled {
        Compiled::one_cluster()
    }

    #[test]
    fn every_file_is_flat_in_the_mount_dir() {
        let obj = configmap(&compiled(), &ConfigMapTarget::default());
        assert_eq!(obj["kind"], "ConfigMap");
        assert_eq!(obj["metadata"]["namespace"], "modelroute-system");
        let data = obj["data"].as_object().unwrap();
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "cds.json",
                "ecds-ratelimit.json",
                "ecds.json",
                "eds-modelserver_ns_s.json",
                "filter-config.json",
                "rds.json"
            ]
        );
        let cds: Value = serde_json::from_str(data["cds.json"].as_str().unwrap()).unwrap();
        let src = &cds["resources"][0]["eds_cluster_config"]["eds_config"]["path_config_source"];
        assert_eq!(src["path"], "/etc/modelroute/eds-modelserver_ns_s.json");
        assert_eq!(src["watched_directory"]["path"], "/etc/modelroute");
        let ecds: Value = serde_json::from_str(data["ecds.json"].as_str().unwrap()).unwrap();
        assert_eq!(
            ecds["resources"][0]["typed_config"]["config"]["vm_config"]["code"]["local"]
                ["filename"],
            DEFAULT_WASM
        );
    }

    #[test]
    fn the_rate_limit_filter_is_idle_without_a_service_and_calls_it_with_one() {
        let file = |c: &Compiled, key: &str| -> Value {
            let obj = configmap(c, &ConfigMapTarget::default());
            serde_json::from_str(obj["data"][key].as_str().unwrap()).unwrap()
        };
        let mut c = compiled();
        let idle = file(&c, RATE_LIMIT_ECDS_KEY);
        assert_eq!(idle["resources"][0]["name"], rate_limit::FILTER_NAME);
        let config = &idle["resources"][0]["typed_config"];
        assert_eq!(config["@type"], rate_limit::RATE_LIMIT_TYPE);
        assert!(config.get("rate_limits").is_none(), "{config}");
        assert_eq!(file(&c, CDS_KEY)["resources"].as_array().unwrap().len(), 1);

        c.gateway.rate_limit_service = Some("rls.modelroute-system:8081".into());
        let config = &file(&c, RATE_LIMIT_ECDS_KEY)["resources"][0]["typed_config"];
        assert_eq!(config["rate_limits"].as_array().unwrap().len(), 2);
        let cds = file(&c, CDS_KEY);
        let service = &cds["resources"][1];
        assert_eq!(service["name"], rate_limit::CLUSTER);
        assert_eq!(service["@type"], envoy::CLUSTER_TYPE);
        let address = &service["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            ["address"]["socket_address"];
        assert_eq!(address["address"], "rls.modelroute-system");
        assert_eq!(address["port_value"], 8081);
    }

    #[test]
    fn eds_keys_match_the_cds_paths() {
        assert_eq!(eds_key("modelserver|a|b"), "eds-modelserver_a_b.json");
    }
}

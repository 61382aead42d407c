//! The object the controller applies, rendered from a compile: a ConfigMap carrying the Envoy
//! files (`--output configmap`) or an Istio EnvoyFilter (`--output istio`). [`render_for_kube`]
//! is the one entry point, so a dedicated renderer (`crate::render::configmap` /
//! `crate::render::istio`) can replace the bodies here without touching the reconciler.
//! Pure: JSON in, JSON out.

use std::path::Path;

use kube::api::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};

use crate::compile::Compiled;
use crate::render::envoy::{self, eds_file_name};
use crate::{filter_config_json, render::content_hash};

/// What `kube` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    ConfigMap,
    Istio,
}

/// ConfigMap data keys.
pub const FILTER_CONFIG_KEY: &str = "filter-config.json";
pub const ECDS_KEY: &str = "ecds.json";
pub const CDS_KEY: &str = "cds.json";
/// Label put on everything the controller applies.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "modelroute-controller");

/// Where and how to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub output: OutputKind,
    pub namespace: String,
    pub name: String,
    /// Wasm module: a path inside the Envoy container, or an http(s) URL (Istio only).
    pub wasm: String,
    /// Where Envoy mounts the ConfigMap (the CDS file names EDS files under it).
    pub mount_path: String,
}

impl Target {
    /// The API resource of the rendered object.
    pub fn api_resource(&self) -> ApiResource {
        match self.output {
            OutputKind::ConfigMap => {
                ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "ConfigMap"))
            }
            OutputKind::Istio => ApiResource::from_gvk(&GroupVersionKind::gvk(
                "networking.istio.io",
                "v1alpha3",
                "EnvoyFilter",
            )),
        }
    }
}

/// ConfigMap key of a cluster's EDS file.
pub fn eds_key(cluster: &str) -> String {
    format!("eds-{}", eds_file_name(cluster))
}

/// The complete object to server-side apply.
pub fn render_for_kube(compiled: &Compiled, target: &Target) -> Value {
    let metadata = json!({
        "name": target.name,
        "namespace": target.namespace,
        "labels": {MANAGED_BY.0: MANAGED_BY.1},
    });
    match target.output {
        OutputKind::ConfigMap => json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata,
            "data": configmap_data(compiled, target),
        }),
        OutputKind::Istio => json!({
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "EnvoyFilter",
            "metadata": metadata,
            "spec": {"configPatches": istio_patches(compiled, target)},
        }),
    }
}

/// Content hash of a rendered object (what "changed" means for apply).
pub fn object_hash(obj: &Value) -> u64 {
    content_hash(obj.to_string().as_bytes())
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

fn resources(doc: &Value) -> Vec<Value> {
    doc.get("resources")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The Envoy files as flat ConfigMap keys: a mounted ConfigMap has no sub-directories, so the
/// CDS file points each cluster at `<mount>/eds-<cluster>.json` and watches `<mount>` (kubelet
/// swaps the `..data` link atomically, which is what Envoy's watched directory expects).
fn configmap_data(compiled: &Compiled, target: &Target) -> Value {
    let mount = Path::new(&target.mount_path);
    let files = envoy::render(compiled, mount, Path::new(&target.wasm));
    let mut data = serde_json::Map::new();
    data.insert(
        FILTER_CONFIG_KEY.into(),
        json!(filter_config_json(compiled)),
    );
    data.insert(ECDS_KEY.into(), json!(files.ecds));
    let mut cds = parse(&files.cds);
    if let Some(list) = cds.get_mut("resources").and_then(Value::as_array_mut) {
        for c in list {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let path = mount.join(eds_key(&name)).display().to_string();
            if let Some(src) = c.pointer_mut("/eds_cluster_config/eds_config/path_config_source") {
                *src = json!({"path": path, "watched_directory": {"path": target.mount_path}});
            }
        }
    }
    data.insert(CDS_KEY.into(), json!(pretty(&cds)));
    for (cluster, (_, content)) in compiled.clusters.iter().zip(files.eds) {
        data.insert(eds_key(&cluster.name), json!(content));
    }
    Value::Object(data)
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// EnvoyFilter patches for an Istio ingress gateway: the wasm filter before the router, and
/// one STATIC cluster per ModelServer with its ready pods inline (the cluster is re-pushed by
/// istiod when pods change).
fn istio_patches(compiled: &Compiled, target: &Target) -> Value {
    let files = envoy::render(compiled, Path::new("/"), Path::new(&target.wasm));
    let mut filter = resources(&parse(&files.ecds))
        .into_iter()
        .next()
        .unwrap_or(Value::Null);
    if let Some(o) = filter.as_object_mut() {
        o.remove("@type");
    }
    if is_url(&target.wasm) {
        if let Some(code) = filter.pointer_mut("/typed_config/config/vm_config/code") {
            *code = json!({"remote": {"http_uri": {
                "uri": target.wasm, "cluster": "outbound|80||modelroute-wasm", "timeout": "30s"}}});
        }
    }
    let mut patches = vec![json!({
        "applyTo": "HTTP_FILTER",
        "match": {"context": "GATEWAY", "listener": {"filterChain": {"filter": {
            "name": "envoy.filters.network.http_connection_manager",
            "subFilter": {"name": "envoy.filters.http.router"}}}}},
        "patch": {"operation": "INSERT_BEFORE", "value": filter},
    })];
    let clusters = resources(&parse(&files.cds));
    for (mut c, (_, eds)) in clusters.into_iter().zip(files.eds) {
        let assignment = resources(&parse(&eds))
            .into_iter()
            .next()
            .unwrap_or(Value::Null);
        if let Some(o) = c.as_object_mut() {
            o.remove("@type");
            o.remove("eds_cluster_config");
            o.insert("type".into(), json!("STATIC"));
            let mut la = assignment;
            if let Some(l) = la.as_object_mut() {
                l.remove("@type");
            }
            o.insert("load_assignment".into(), la);
        }
        patches.push(json!({
            "applyTo": "CLUSTER",
            "match": {"context": "GATEWAY"},
            "patch": {"operation": "ADD", "value": c},
        }));
    }
    Value::Array(patches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::Cluster;
    use filter_config::FilterConfig;

    fn compiled() -> Compiled {
        Compiled {
            config: FilterConfig {
                version: filter_config::SCHEMA_VERSION,
                settings: filter_config::Settings::default(),
                routes: vec![],
                servers: vec![],
            },
            clusters: vec![Cluster {
                name: "modelserver|ns|s".into(),
                tls: false,
                endpoints: vec![("10.0.0.1".parse().unwrap(), 8000)],
            }],
        }
    }

    fn target(output: OutputKind) -> Target {
        Target {
            output,
            namespace: "modelroute-system".into(),
            name: "modelroute".into(),
            wasm: "/etc/modelroute-wasm/modelroute.wasm".into(),
            mount_path: "/etc/modelroute".into(),
        }
    }

    #[test]
    fn configmap_holds_every_envoy_file_with_flat_eds_paths() {
        let obj = render_for_kube(&compiled(), &target(OutputKind::ConfigMap));
        assert_eq!(obj["kind"], "ConfigMap");
        assert_eq!(obj["metadata"]["namespace"], "modelroute-system");
        let data = obj["data"].as_object().unwrap();
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec![
                "cds.json",
                "ecds.json",
                "eds-modelserver_ns_s.json",
                "filter-config.json"
            ]
        );
        let cds = parse(data["cds.json"].as_str().unwrap());
        let src = &cds["resources"][0]["eds_cluster_config"]["eds_config"]["path_config_source"];
        assert_eq!(src["path"], "/etc/modelroute/eds-modelserver_ns_s.json");
        assert_eq!(src["watched_directory"]["path"], "/etc/modelroute");
        let eds = parse(data["eds-modelserver_ns_s.json"].as_str().unwrap());
        assert_eq!(eds["resources"][0]["cluster_name"], "modelserver|ns|s");
        assert!(data["ecds.json"]
            .as_str()
            .unwrap()
            .contains("/etc/modelroute-wasm/modelroute.wasm"));
    }

    #[test]
    fn envoyfilter_inserts_the_filter_and_a_static_cluster_per_server() {
        let obj = render_for_kube(&compiled(), &target(OutputKind::Istio));
        assert_eq!(obj["kind"], "EnvoyFilter");
        let patches = obj["spec"]["configPatches"].as_array().unwrap();
        assert_eq!(patches[0]["applyTo"], "HTTP_FILTER");
        assert_eq!(patches[0]["patch"]["value"]["name"], "modelroute");
        let cluster = &patches[1]["patch"]["value"];
        assert_eq!(cluster["type"], "STATIC");
        assert_eq!(
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["address"],
            "10.0.0.1"
        );
        assert!(cluster.get("eds_cluster_config").is_none());
    }

    #[test]
    fn wasm_urls_become_remote_code_for_istio() {
        let mut t = target(OutputKind::Istio);
        t.wasm = "https://example.com/modelroute.wasm".into();
        let obj = render_for_kube(&compiled(), &t);
        let code = &obj["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
            ["vm_config"]["code"];
        assert_eq!(
            code["remote"]["http_uri"]["uri"],
            "https://example.com/modelroute.wasm"
        );
    }

    #[test]
    fn hash_follows_content() {
        let a = render_for_kube(&compiled(), &target(OutputKind::ConfigMap));
        let mut c = compiled();
        c.clusters[0].endpoints.clear();
        let b = render_for_kube(&c, &target(OutputKind::ConfigMap));
        assert_ne!(object_hash(&a), object_hash(&b));
        assert_eq!(object_hash(&a), object_hash(&a.clone()));
    }
}

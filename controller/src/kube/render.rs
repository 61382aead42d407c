//! The object the controller applies, rendered from a compile: a ConfigMap carrying the Envoy
//! files (`--output configmap`) or an Istio EnvoyFilter (`--output istio`). [`render_for_kube`]
//! is the one entry point, so a dedicated renderer (`crate::render::configmap` /
//! `crate::render::istio`) can replace the bodies here without touching the reconciler.
//! Pure: JSON in, JSON out.

use kube::api::{ApiResource, GroupVersionKind};
use serde_json::Value;

use crate::compile::Compiled;
use crate::render::configmap::{self, ConfigMapTarget};
use crate::render::content_hash;
use crate::render::istio::{self, IstioTarget, PatchContext, WasmSource};

/// What `kube` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    ConfigMap,
    Istio,
}

/// Where and how to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub output: OutputKind,
    pub namespace: String,
    pub name: String,
    /// Wasm module: a path inside the Envoy container, or (Istio) an `oci://`, `https://` or
    /// `file://` URL.
    pub wasm: String,
    /// Istio, remote modules: the digest istio-agent checks (`--wasm-sha256`).
    pub wasm_sha256: Option<String>,
    /// Where Envoy mounts the ConfigMap (the CDS file names EDS files under it).
    pub mount_path: String,
    /// Istio: the EnvoyFilter's workloadSelector labels (empty: the renderer's default,
    /// `istio=ingressgateway`).
    pub istio_selector: Vec<(String, String)>,
    /// Istio: gateway or sidecar (inbound) patches.
    pub istio_context: PatchContext,
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

    /// The module as the Istio renderer takes it: a URL, or a plain path as `file://`.
    pub fn wasm_source(&self) -> Result<WasmSource, String> {
        if self.wasm.contains("://") {
            WasmSource::parse(&self.wasm, self.wasm_sha256.as_deref())
        } else {
            WasmSource::parse(
                &format!("file://{}", self.wasm),
                self.wasm_sha256.as_deref(),
            )
        }
    }
}

/// The complete object to server-side apply: the same object `render --target configmap|istio`
/// prints, so GitOps and the controller never disagree.
pub fn render_for_kube(compiled: &Compiled, target: &Target) -> Result<Value, String> {
    match target.output {
        OutputKind::ConfigMap => Ok(configmap::configmap(
            compiled,
            &ConfigMapTarget {
                namespace: target.namespace.clone(),
                name: target.name.clone(),
                mount_dir: target.mount_path.clone(),
                wasm: target.wasm.clone(),
            },
        )),
        OutputKind::Istio => {
            let mut t = IstioTarget::new(target.wasm_source()?);
            t.namespace.clone_from(&target.namespace);
            t.name.clone_from(&target.name);
            if !target.istio_selector.is_empty() {
                t.selector.clone_from(&target.istio_selector);
            }
            t.context = target.istio_context;
            Ok(istio::envoy_filter(compiled, &t))
        }
    }
}

/// Content hash of a rendered object (what "changed" means for apply).
pub fn object_hash(obj: &Value) -> u64 {
    content_hash(obj.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled() -> Compiled {
        Compiled::one_cluster()
    }

    fn target(output: OutputKind) -> Target {
        Target {
            output,
            namespace: "modelroute-system".into(),
            name: "modelroute".into(),
            wasm: "/etc/modelroute-wasm/modelroute.wasm".into(),
            wasm_sha256: None,
            mount_path: "/etc/modelroute".into(),
            istio_selector: vec![],
            istio_context: PatchContext::Gateway,
        }
    }

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn configmap_holds_every_envoy_file_with_flat_eds_paths() {
        let obj = render_for_kube(&compiled(), &target(OutputKind::ConfigMap)).unwrap();
        assert_eq!(obj["kind"], "ConfigMap");
        assert_eq!(obj["metadata"]["namespace"], "modelroute-system");
        let data = obj["data"].as_object().unwrap();
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec![
                "cds.json",
                "ecds-ratelimit.json",
                "ecds.json",
                "eds-modelserver_ns_s.json",
                "filter-config.json",
                "rds.json"
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
    fn envoyfilter_is_the_istio_renderers_with_a_static_cluster_per_server() {
        let obj = render_for_kube(&compiled(), &target(OutputKind::Istio)).unwrap();
        assert_eq!(obj["kind"], "EnvoyFilter");
        let patches = obj["spec"]["configPatches"].as_array().unwrap();
        let kinds: Vec<&str> = patches
            .iter()
            .map(|p| p["applyTo"].as_str().unwrap())
            .collect();
        assert!(
            kinds.contains(&"EXTENSION_CONFIG") && kinds.contains(&"HTTP_FILTER"),
            "{kinds:?}"
        );
        let cluster = patches.iter().find(|p| p["applyTo"] == "CLUSTER").unwrap();
        let cluster = &cluster["patch"]["value"];
        assert_eq!(cluster["type"], "STATIC");
        assert_eq!(
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["address"],
            "10.0.0.1"
        );
    }

    #[test]
    fn remote_wasm_urls_need_their_digest() {
        let mut t = target(OutputKind::Istio);
        t.wasm = "oci://registry.example/modelroute:0.1.0".into();
        assert!(render_for_kube(&compiled(), &t).is_err());
        t.wasm_sha256 = Some("a".repeat(64));
        let obj = render_for_kube(&compiled(), &t).unwrap();
        let ext = obj["spec"]["configPatches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["applyTo"] == "EXTENSION_CONFIG")
            .unwrap()
            .to_string();
        assert!(
            ext.contains("oci://registry.example/modelroute:0.1.0"),
            "{ext}"
        );
    }

    #[test]
    fn istio_selector_and_context_reach_the_envoyfilter() {
        let mut t = target(OutputKind::Istio);
        t.istio_selector = vec![("app".into(), "llm-gateway".into())];
        t.istio_context = PatchContext::SidecarInbound;
        let obj = render_for_kube(&compiled(), &t).unwrap();
        assert_eq!(
            obj["spec"]["workloadSelector"]["labels"]["app"],
            "llm-gateway"
        );
        assert!(obj.to_string().contains("SIDECAR_INBOUND"));
        assert!(!obj.to_string().contains("\"GATEWAY\""));
    }

    #[test]
    fn hash_follows_content() {
        let a = render_for_kube(&compiled(), &target(OutputKind::ConfigMap)).unwrap();
        let mut c = compiled();
        c.clusters[0].endpoints.clear();
        let b = render_for_kube(&c, &target(OutputKind::ConfigMap)).unwrap();
        assert_ne!(object_hash(&a), object_hash(&b));
        assert_eq!(object_hash(&a), object_hash(&a.clone()));
    }
}

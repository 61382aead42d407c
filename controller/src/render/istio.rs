//! The filter for Istio: one `networking.istio.io/v1alpha3` EnvoyFilter. Istio's `WasmPlugin`
//! cannot set `allow_on_headers_stop_iteration`, so the complete Wasm filter config goes in as
//! an `EXTENSION_CONFIG` patch (served to the proxy by ECDS over ADS; istio-agent downloads
//! `oci://` / `https://` modules and rewrites the code to a local file, as for a WasmPlugin) and
//! an `HTTP_FILTER` patch inserts a filter with `config_discovery` of the same name before the
//! router. Further patches give Envoy what the standalone bootstrap has: the listener buffer
//! limit, the routing headers as `internal_only_headers`, a first route per virtual host using
//! `cluster_header` (only for requests the filter routed), and one STATIC cluster per
//! ModelServer (Istio has no file EDS: the ready pods are inline, re-rendered on change).
//! Built from [`super::envoy`]'s pieces; produces JSON values, never writes.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::envoy::{self, BUFFER_LIMIT_BYTES, FILTER_NAME};
use crate::compile::Compiled;
use crate::render::configmap::MANAGED_BY;

pub const API_VERSION: &str = "networking.istio.io/v1alpha3";
pub const DEFAULT_NAMESPACE: &str = "istio-system";
pub const DEFAULT_SELECTOR: (&str, &str) = ("istio", "ingressgateway");
pub const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// istio-agent's download timeout for a remote module (istiod uses the same for WasmPlugin).
pub const WASM_FETCH_TIMEOUT: &str = "30s";
/// `http_uri.cluster` is required by Envoy's validation but unused: istio-agent fetches the
/// module and rewrites the code to a local file before Envoy sees it (istiod puts `_` there for
/// WasmPlugin too).
pub const WASM_FETCH_CLUSTER: &str = "_";
/// Annotation recording the expected module digest of a `file://` module (Envoy does not check
/// local files).
pub const SHA256_ANNOTATION: &str = "modelroute.io/wasm-sha256";

/// Which proxies the patches apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PatchContext {
    /// An Istio gateway (ingress gateway Deployment): the usual place for a model router.
    #[default]
    Gateway,
    /// The inbound side of a sidecar (a workload that is itself the entry point).
    SidecarInbound,
}

impl PatchContext {
    pub fn as_str(self) -> &'static str {
        match self {
            PatchContext::Gateway => "GATEWAY",
            PatchContext::SidecarInbound => "SIDECAR_INBOUND",
        }
    }
}

/// Where the proxy gets the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WasmSource {
    /// `oci://`, `https://` or `http://`: fetched by istio-agent, checked against `sha256`
    /// (for `oci://` the image manifest digest, else the module's sha256).
    Remote { url: String, sha256: String },
    /// `file:///path`: a file in the proxy container; `sha256` only recorded (annotation).
    File {
        path: String,
        sha256: Option<String>,
    },
}

fn sha256_hex(s: &str) -> Result<String, String> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s).to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(format!("--wasm-sha256 {s:?}: expected 64 hex digits"))
    }
}

impl WasmSource {
    /// Parses `--wasm-url` / `--wasm-sha256`.
    pub fn parse(url: &str, sha256: Option<&str>) -> Result<Self, String> {
        let sha256 = sha256.map(sha256_hex).transpose()?;
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "--wasm-url {url:?}: a file URL needs an absolute path (file:///...)"
                ));
            }
            return Ok(WasmSource::File {
                path: path.to_string(),
                sha256,
            });
        }
        let remote = ["oci://", "https://", "http://"]
            .iter()
            .any(|p| url.starts_with(p) && url.len() > p.len());
        if !remote {
            return Err(format!(
                "--wasm-url {url:?}: expected oci://, https:// or file:///"
            ));
        }
        let Some(sha256) = sha256 else {
            return Err(format!(
                "--wasm-url {url:?}: --wasm-sha256 is required for a remote module \
                 (oci://: the image manifest digest; https://: the module's sha256)"
            ));
        };
        Ok(WasmSource::Remote {
            url: url.to_string(),
            sha256,
        })
    }

    /// `vm_config.code`.
    pub fn code(&self) -> Value {
        match self {
            WasmSource::Remote { url, sha256 } => json!({"remote": {
                "http_uri": {"uri": url, "cluster": WASM_FETCH_CLUSTER, "timeout": WASM_FETCH_TIMEOUT},
                "sha256": sha256,
            }}),
            WasmSource::File { path, .. } => envoy::local_code(path),
        }
    }
}

/// What the EnvoyFilter is called, which proxies it selects, where the module is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioTarget {
    pub namespace: String,
    pub name: String,
    /// `workloadSelector.labels` (an empty list selects every proxy in the namespace, or in
    /// the whole mesh when the namespace is the root namespace).
    pub selector: Vec<(String, String)>,
    pub context: PatchContext,
    pub wasm: WasmSource,
}

impl IstioTarget {
    /// Defaults of the command line with the given module.
    pub fn new(wasm: WasmSource) -> Self {
        IstioTarget {
            namespace: DEFAULT_NAMESPACE.into(),
            name: "modelroute".into(),
            selector: vec![(DEFAULT_SELECTOR.0.into(), DEFAULT_SELECTOR.1.into())],
            context: PatchContext::Gateway,
            wasm,
        }
    }
}

/// The HTTP filter that takes the Wasm config by ECDS over ADS (waiting for it: a listener is
/// not served without the filter).
pub fn ecds_http_filter() -> Value {
    json!({
        "name": FILTER_NAME,
        "config_discovery": {
            "config_source": {
                "ads": {},
                "initial_fetch_timeout": "0s",
                "resource_api_version": "V3",
            },
            "type_urls": [WASM_TYPE_URL],
        },
    })
}

/// A ModelServer's cluster with its ready pods inline.
pub fn static_cluster(cluster: &crate::compile::Cluster, endpoint_header: &str) -> Value {
    let mut c = envoy::cluster_base(cluster, endpoint_header);
    let mut assignment = envoy::load_assignment(cluster);
    if let Some(a) = assignment.as_object_mut() {
        a.remove("@type");
    }
    if let Some(o) = c.as_object_mut() {
        o.insert("type".into(), json!("STATIC"));
        o.insert("load_assignment".into(), assignment);
    }
    c
}

/// The `configPatches`, in order: EXTENSION_CONFIG, HTTP_FILTER, LISTENER, ROUTE_CONFIGURATION,
/// HTTP_ROUTE, NETWORK_FILTER (the access loggers), VIRTUAL_HOST (CORS, when set), then one
/// CLUSTER per ModelServer.
pub fn patches(compiled: &Compiled, target: &IstioTarget) -> Vec<Value> {
    let settings = &compiled.config.settings;
    let context = target.context.as_str();
    // Pretty: it is read by people in `kubectl get envoyfilter -o yaml` (a literal block).
    let config_json = crate::filter_config_json(compiled);
    let mut out = vec![
        json!({
            "applyTo": "EXTENSION_CONFIG",
            "match": {"context": context},
            "patch": {
                "operation": "ADD",
                "value": envoy::extension_config(&config_json, target.wasm.code()),
            },
        }),
        before_router(context, ecds_http_filter()),
        // Long prompts are buffered whole; Istio gateways default to 32 KiB per connection.
        json!({
            "applyTo": "LISTENER",
            "match": {"context": context},
            "patch": {
                "operation": "MERGE",
                "value": {"per_connection_buffer_limit_bytes": BUFFER_LIMIT_BYTES},
            },
        }),
        json!({
            "applyTo": "ROUTE_CONFIGURATION",
            "match": {"context": context},
            "patch": {
                "operation": "MERGE",
                "value": {"internal_only_headers": [
                    settings.cluster_header,
                    settings.endpoint_header,
                    "x-envoy-original-dst-host",
                ]},
            },
        }),
        json!({
            "applyTo": "HTTP_ROUTE",
            "match": {"context": context},
            // Requests the filter routed go to its cluster; the rest fall through to the
            // virtual host's own routes.
            "patch": {"operation": "INSERT_FIRST", "value": envoy::model_route(&settings.cluster_header, &compiled.gateway)},
        }),
    ];
    // Kthena's metrics and access log, from the values the filter publishes.
    out.push(json!({
        "applyTo": "NETWORK_FILTER",
        "match": {
            "context": context,
            "listener": {"filterChain": {"filter": {"name": "envoy.filters.network.http_connection_manager"}}},
        },
        "patch": {
            "operation": "MERGE",
            "value": {"typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "access_log": super::observability::access_loggers(&compiled.gateway.access_log),
            }},
        },
    }));
    if let Some(service) = &compiled.gateway.rate_limit_service {
        // Global token budgets: Envoy's rate-limit filter right after ours (both are inserted
        // before the router, in this order), and the service's cluster.
        out.push(before_router(context, super::rate_limit::filter()));
        out.push(json!({
            "applyTo": "CLUSTER",
            "match": {"context": context},
            "patch": {"operation": "ADD", "value": super::rate_limit::cluster(service)},
        }));
    }
    if !compiled.gateway.cors_allow_origins.is_empty() {
        // Istio gateways run Envoy's CORS filter; the policy goes on every virtual host.
        out.push(json!({
            "applyTo": "VIRTUAL_HOST",
            "match": {"context": context},
            "patch": {
                "operation": "MERGE",
                "value": {"typed_per_filter_config": {
                    "envoy.filters.http.cors": envoy::cors_policy(&compiled.gateway.cors_allow_origins),
                }},
            },
        }));
    }
    out.extend(compiled.clusters.iter().map(|c| {
        json!({
            "applyTo": "CLUSTER",
            "match": {"context": context},
            "patch": {"operation": "ADD", "value": static_cluster(c, &settings.endpoint_header)},
        })
    }));
    out
}

/// A patch inserting the HTTP filter `filter` right before the router.
fn before_router(context: &str, filter: Value) -> Value {
    json!({
        "applyTo": "HTTP_FILTER",
        "match": {
            "context": context,
            "listener": {"filterChain": {"filter": {
                "name": "envoy.filters.network.http_connection_manager",
                "subFilter": {"name": "envoy.filters.http.router"},
            }}},
        },
        "patch": {"operation": "INSERT_BEFORE", "value": filter},
    })
}

/// The EnvoyFilter object.
pub fn envoy_filter(compiled: &Compiled, target: &IstioTarget) -> Value {
    let mut metadata = json!({
        "name": target.name,
        "namespace": target.namespace,
        "labels": {MANAGED_BY.0: MANAGED_BY.1},
    });
    if let WasmSource::File {
        sha256: Some(sha), ..
    } = &target.wasm
    {
        metadata["annotations"] = json!({ SHA256_ANNOTATION: sha });
    }
    let mut spec = serde_json::Map::new();
    if !target.selector.is_empty() {
        let labels: BTreeMap<&str, &str> = target
            .selector
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        spec.insert("workloadSelector".into(), json!({ "labels": labels }));
    }
    spec.insert(
        "configPatches".into(),
        Value::Array(patches(compiled, target)),
    );
    json!({
        "apiVersion": API_VERSION,
        "kind": "EnvoyFilter",
        "metadata": metadata,
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn compiled() -> Compiled {
        Compiled::one_cluster()
    }

    fn patch<'a>(obj: &'a Value, apply_to: &str) -> &'a Value {
        obj["spec"]["configPatches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["applyTo"] == apply_to)
            .unwrap()
    }

    #[test]
    fn remote_modules_need_a_digest() {
        assert!(WasmSource::parse("oci://ghcr.io/x/y:1", None).is_err());
        assert!(WasmSource::parse("https://x/y.wasm", Some("abc")).is_err());
        assert!(WasmSource::parse("ftp://x/y.wasm", Some(SHA)).is_err());
        assert!(WasmSource::parse("file://rel/y.wasm", None).is_err());
        let w = WasmSource::parse("oci://ghcr.io/x/y:1", Some(&format!("sha256:{SHA}"))).unwrap();
        assert_eq!(
            w,
            WasmSource::Remote {
                url: "oci://ghcr.io/x/y:1".into(),
                sha256: SHA.into()
            }
        );
        let code = w.code();
        assert_eq!(code["remote"]["sha256"], SHA);
        assert_eq!(code["remote"]["http_uri"]["cluster"], "_");
        let f = WasmSource::parse("file:///etc/m.wasm", None).unwrap();
        assert_eq!(f.code(), json!({"local": {"filename": "/etc/m.wasm"}}));
    }

    #[test]
    fn the_extension_config_carries_the_switch_and_the_filter_points_at_it() {
        let t = IstioTarget::new(WasmSource::parse("file:///m.wasm", Some(SHA)).unwrap());
        let obj = envoy_filter(&compiled(), &t);
        assert_eq!(
            obj["spec"]["workloadSelector"]["labels"]["istio"],
            "ingressgateway"
        );
        assert_eq!(obj["metadata"]["annotations"][SHA256_ANNOTATION], SHA);
        let ext = &patch(&obj, "EXTENSION_CONFIG")["patch"]["value"];
        assert_eq!(ext["name"], FILTER_NAME);
        let cfg = &ext["typed_config"]["config"];
        assert_eq!(cfg["allow_on_headers_stop_iteration"], true);
        assert_eq!(cfg["failure_policy"], "FAIL_RELOAD");
        let f = patch(&obj, "HTTP_FILTER");
        assert_eq!(f["patch"]["operation"], "INSERT_BEFORE");
        assert_eq!(f["patch"]["value"]["name"], ext["name"]);
        assert_eq!(f["match"]["context"], "GATEWAY");
    }

    #[test]
    fn clusters_are_static_with_the_ready_pods() {
        let mut t = IstioTarget::new(WasmSource::parse("file:///m.wasm", None).unwrap());
        t.context = PatchContext::SidecarInbound;
        t.selector.clear();
        let obj = envoy_filter(&compiled(), &t);
        assert!(obj["spec"].get("workloadSelector").is_none());
        let c = patch(&obj, "CLUSTER");
        assert_eq!(c["match"]["context"], "SIDECAR_INBOUND");
        let v = &c["patch"]["value"];
        assert_eq!(v["type"], "STATIC");
        assert_eq!(v["name"], "modelserver|ns|s");
        assert!(v["load_assignment"].get("@type").is_none());
        assert_eq!(
            v["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"],
            8000
        );
        let r = &patch(&obj, "HTTP_ROUTE")["patch"];
        assert_eq!(r["operation"], "INSERT_FIRST");
        assert_eq!(
            r["value"]["route"]["cluster_header"],
            "x-modelroute-cluster"
        );
    }

    #[test]
    fn a_rate_limit_service_adds_envoys_rate_limit_filter_after_ours_and_its_cluster() {
        let mut c = compiled();
        let target = IstioTarget::new(WasmSource::parse("file:///m.wasm", None).unwrap());
        let without = patches(&c, &target);
        c.gateway.rate_limit_service = Some("rls.modelroute-system:8081".into());
        let with = patches(&c, &target);
        let filters: Vec<&Value> = with
            .iter()
            .filter(|p| p["applyTo"] == "HTTP_FILTER")
            .map(|p| &p["patch"]["value"]["name"])
            .collect();
        // Each is inserted before the router in turn: ours, then the rate-limit filter.
        assert_eq!(filters, ["modelroute", "envoy.filters.http.ratelimit"]);
        let cluster = with
            .iter()
            .find(|p| p["patch"]["value"]["name"] == super::super::rate_limit::CLUSTER)
            .unwrap();
        let address = &cluster["patch"]["value"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
            [0]["endpoint"]["address"]["socket_address"];
        assert_eq!(address["address"], "rls.modelroute-system");
        assert_eq!(address["port_value"], 8081);
        assert_eq!(with.len(), without.len() + 2);
    }
}

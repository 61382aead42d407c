//! Envoy file-based xDS: one EDS file per ModelServer cluster, one CDS file with every cluster
//! (override_host LB policy, EDS from the watched directory), the RDS file with the gateway's
//! routes (CORS, stream idle timeout, routing-header names follow the settings), and the ECDS
//! file carrying the wasm filter with the FilterConfig as its plugin configuration. Produces
//! JSON text only; the output module writes it. Paths are taken as given: the caller passes
//! absolute ones.

use std::path::Path;

use serde_json::{json, Value};

use super::content_hash;
use crate::compile::{Cluster, Compiled, Gateway};

/// The filter's name, shared with the Envoy bootstrap (`config_discovery` of the HTTP filter).
pub const FILTER_NAME: &str = "modelroute";
/// Sub-directories of the output directory.
pub const EDS_DIR: &str = "eds";
pub const CDS_DIR: &str = "cds";
pub const ECDS_DIR: &str = "ecds";
pub const RDS_DIR: &str = "rds";
pub const CDS_FILE: &str = "clusters.json";
pub const RDS_FILE: &str = "routes.json";
/// The route configuration's name, as the bootstrap's `rds.route_config_name` asks for it.
pub const ROUTE_CONFIG_NAME: &str = "modelroute";
/// Retried only before the request reached an engine; the next pod comes from the endpoint
/// header's fallback list.
pub const RETRY_ON: &str = "connect-failure,refused-stream,reset-before-request";
pub const ECDS_FILE: &str = "modelroute.json";
/// Listener/cluster buffer limit raised for long prompts.
pub const BUFFER_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

/// The rendered Envoy files (JSON text, trailing newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyFiles {
    /// `(file name inside eds/, content)`, one per cluster.
    pub eds: Vec<(String, String)>,
    pub cds: String,
    pub rds: String,
    pub ecds: String,
}

/// EDS file name of a cluster: every char outside `[A-Za-z0-9._-]` becomes `_`.
pub fn eds_file_name(cluster: &str) -> String {
    let safe: String = cluster
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.json")
}

/// A DiscoveryResponse-shaped document whose `version_info` is the hash of its resources.
pub fn discovery_response(resources: Vec<Value>) -> String {
    let resources = Value::Array(resources);
    let version = format!("{:016x}", content_hash(resources.to_string().as_bytes()));
    let doc = json!({ "version_info": version, "resources": resources });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

/// The `ClusterLoadAssignment` of a cluster: its ready pods (EDS resource, or a STATIC
/// cluster's `load_assignment` without the `@type`).
pub fn load_assignment(cluster: &Cluster) -> Value {
    let lb_endpoints: Vec<Value> = cluster
        .endpoints
        .iter()
        .map(|(ip, port)| {
            json!({"endpoint": {"address": {"socket_address": {"address": ip.to_string(), "port_value": port}}}})
        })
        .collect();
    let endpoints = if lb_endpoints.is_empty() {
        json!([])
    } else {
        json!([{ "lb_endpoints": lb_endpoints }])
    };
    json!({
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": cluster.name,
        "endpoints": endpoints,
    })
}

fn eds(cluster: &Cluster) -> String {
    discovery_response(vec![load_assignment(cluster)])
}

/// A ModelServer's cluster without its discovery (`type`, EDS config or `load_assignment`) and
/// without `@type`: name, timeouts, buffer limit, the override_host LB policy reading
/// `endpoint_header`, upstream TLS for https servers.
pub fn cluster_base(cluster: &Cluster, endpoint_header: &str) -> Value {
    let mut c = json!({
        "name": cluster.name,
        "connect_timeout": "1s",
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT_BYTES,
        "load_balancing_policy": {"policies": [{"typed_extension_config": {
            "name": "envoy.load_balancing_policies.override_host",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
                "override_host_sources": [{"header": endpoint_header}],
                "fallback_policy": {"policies": [{"typed_extension_config": {
                    "name": "envoy.load_balancing_policies.round_robin",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"},
                }}]},
            },
        }}]},
    });
    if cluster.tls {
        if let Some(obj) = c.as_object_mut() {
            // No validation context: the pod's certificate is not verified (warned at compile).
            obj.insert(
                "transport_socket".into(),
                json!({
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    },
                }),
            );
        }
    }
    c
}

/// Where the CDS file says a cluster's EDS file is: `<dir>/<prefix><eds_file_name>`, reloaded
/// when something is renamed into `dir`.
#[derive(Debug, Clone, Copy)]
pub struct EdsLayout<'a> {
    pub dir: &'a Path,
    pub file_prefix: &'a str,
}

impl EdsLayout<'_> {
    /// File name (inside `dir`) of a cluster's EDS file.
    pub fn file_name(&self, cluster: &str) -> String {
        format!("{}{}", self.file_prefix, eds_file_name(cluster))
    }
}

/// The `@type` of a CDS resource.
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

fn cds_cluster(cluster: &Cluster, layout: &EdsLayout, endpoint_header: &str) -> Value {
    let eds_path = layout.dir.join(layout.file_name(&cluster.name));
    let mut c = cluster_base(cluster, endpoint_header);
    if let Some(obj) = c.as_object_mut() {
        obj.insert("@type".into(), json!(CLUSTER_TYPE));
        obj.insert("type".into(), json!("EDS"));
        obj.insert(
            "eds_cluster_config".into(),
            json!({
                "service_name": cluster.name,
                "eds_config": {
                    "resource_api_version": "V3",
                    "path_config_source": {
                        "path": eds_path.display().to_string(),
                        "watched_directory": {"path": layout.dir.display().to_string()},
                    },
                },
            }),
        );
    }
    c
}

/// The route for requests the filter routed (it set the cluster header): that cluster, no
/// whole-request timeout (the filter's per-try header bounds the wait for the response headers,
/// and a stream that has begun is never cut), an idle timeout for silent gaps.
pub fn model_route(cluster_header: &str, gateway: &Gateway) -> Value {
    json!({
        "name": FILTER_NAME,
        "match": {
            "prefix": "/",
            "headers": [{"name": cluster_header, "present_match": true}],
        },
        "route": {
            "cluster_header": cluster_header,
            "timeout": "0s",
            "idle_timeout": format!("{}s", gateway.stream_idle_timeout_s),
            "retry_policy": {"retry_on": RETRY_ON, "num_retries": 2},
        },
    })
}

/// Envoy's CORS policy for `origins` (`*`: any origin). Browsers send the OpenAI SDK's
/// `x-stainless-*` headers, so every header is allowed; `authorization` is named because a
/// wildcard never covers it.
pub fn cors_policy(origins: &[String]) -> Value {
    let matchers: Vec<Value> = origins
        .iter()
        .map(|o| match o.as_str() {
            "*" => json!({"safe_regex": {"regex": ".*"}}),
            exact => json!({"exact": exact}),
        })
        .collect();
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": matchers,
        "allow_methods": "GET, POST, OPTIONS",
        "allow_headers": "authorization, *",
        "expose_headers": "x-request-id",
        "max_age": "86400",
    })
}

/// The gateway's `RouteConfiguration` (with `@type`): `/healthz`, then requests the filter
/// routed, then everything else, which finds no cluster and gets a 404 (the bootstrap's
/// local_reply_config makes it a JSON `route_not_found`). That last route is not a
/// `direct_response` so that the CORS filter, which runs before the routing filter, sees a
/// route and answers preflights and tags every response.
pub fn route_configuration(settings: &filter_config::Settings, gateway: &Gateway) -> Value {
    let cluster_header = settings.cluster_header.as_str();
    let mut vhost = json!({
        "name": "inference",
        "domains": ["*"],
        "routes": [
            {
                "name": "healthz",
                "match": {"path": "/healthz"},
                "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
            },
            model_route(cluster_header, gateway),
            {
                "name": "not-routed",
                "match": {"prefix": "/"},
                "route": {"cluster_header": cluster_header, "cluster_not_found_response_code": "NOT_FOUND"},
            },
        ],
    });
    if !gateway.cors_allow_origins.is_empty() {
        if let Some(v) = vhost.as_object_mut() {
            v.insert(
                "typed_per_filter_config".into(),
                json!({"envoy.filters.http.cors": cors_policy(&gateway.cors_allow_origins)}),
            );
        }
    }
    json!({
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "name": ROUTE_CONFIG_NAME,
        // A client copy is dropped even if the filter fails open; the filter sets its own.
        "internal_only_headers": [
            settings.cluster_header,
            settings.endpoint_header,
            "x-envoy-original-dst-host",
        ],
        "virtual_hosts": [vhost],
    })
}

/// `vm_config.code` loading the module from a file.
pub fn local_code(path: &str) -> Value {
    json!({"local": {"filename": path}})
}

/// The filter's `envoy.extensions.filters.http.wasm.v3.Wasm` (with `@type`): the plugin
/// config with `allow_on_headers_stop_iteration`, `FAIL_RELOAD`, the FilterConfig JSON as
/// StringValue, and `code` as the VM's module source.
pub fn wasm_filter(config_json: &str, code: Value) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": FILTER_NAME,
            "root_id": FILTER_NAME,
            "vm_config": {
                "vm_id": FILTER_NAME,
                "runtime": "envoy.wasm.runtime.v8",
                "code": code,
            },
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": config_json,
            },
            "allow_on_headers_stop_iteration": true,
            "failure_policy": "FAIL_RELOAD",
        },
    })
}

/// The `TypedExtensionConfig` named [`FILTER_NAME`] carrying [`wasm_filter`] (without `@type`).
pub fn extension_config(config_json: &str, code: Value) -> Value {
    json!({
        "name": FILTER_NAME,
        "typed_config": wasm_filter(config_json, code),
    })
}

fn ecds(config_json: &str, wasm: &Path) -> String {
    let mut ext = extension_config(config_json, local_code(&wasm.display().to_string()));
    if let Some(obj) = ext.as_object_mut() {
        obj.insert(
            "@type".into(),
            json!("type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"),
        );
    }
    discovery_response(vec![ext])
}

/// Renders every Envoy file. `out_dir` and `wasm` must be absolute (they are written into the
/// files and Envoy resolves them from its own working directory).
pub fn render(compiled: &Compiled, out_dir: &Path, wasm: &Path) -> EnvoyFiles {
    let eds_dir = out_dir.join(EDS_DIR);
    let layout = EdsLayout {
        dir: &eds_dir,
        file_prefix: "",
    };
    render_with(compiled, &layout, wasm, vec![])
}

/// [`render`] with the EDS files elsewhere (e.g. flat in a mounted ConfigMap) and
/// `extra_clusters` (`Cluster` resources with their `@type`) in the CDS file; the returned
/// EDS names are `layout.file_name(cluster)`.
pub fn render_with(
    compiled: &Compiled,
    layout: &EdsLayout,
    wasm: &Path,
    extra_clusters: Vec<Value>,
) -> EnvoyFiles {
    let header = &compiled.config.settings.endpoint_header;
    let eds_files = compiled
        .clusters
        .iter()
        .map(|c| (layout.file_name(&c.name), eds(c)))
        .collect();
    let cds = discovery_response(
        compiled
            .clusters
            .iter()
            .map(|c| cds_cluster(c, layout, header))
            .chain(extra_clusters)
            .collect(),
    );
    let config_json = serde_json::to_string(&compiled.config).unwrap_or_default();
    let rds = discovery_response(vec![route_configuration(
        &compiled.config.settings,
        &compiled.gateway,
    )]);
    EnvoyFiles {
        eds: eds_files,
        cds,
        rds,
        ecds: ecds(&config_json, wasm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eds_file_names_are_sanitised() {
        assert_eq!(
            eds_file_name("modelserver|default|deepseek-r1.5b"),
            "modelserver_default_deepseek-r1.5b.json"
        );
    }

    #[test]
    fn empty_cluster_has_empty_endpoints() {
        let c = Cluster {
            name: "modelserver|ns|s".into(),
            tls: false,
            endpoints: vec![],
        };
        let v: Value = serde_json::from_str(&eds(&c)).unwrap();
        assert_eq!(v["resources"][0]["endpoints"], json!([]));
        assert_eq!(v["resources"][0]["cluster_name"], "modelserver|ns|s");
    }

    #[test]
    fn version_info_follows_content() {
        let a = Cluster {
            name: "c".into(),
            tls: false,
            endpoints: vec![("10.0.0.1".parse().unwrap(), 80)],
        };
        let b = Cluster {
            endpoints: vec![("10.0.0.2".parse().unwrap(), 80)],
            ..a.clone()
        };
        let va: Value = serde_json::from_str(&eds(&a)).unwrap();
        let vb: Value = serde_json::from_str(&eds(&b)).unwrap();
        assert_ne!(va["version_info"], vb["version_info"]);
        assert_eq!(eds(&a), eds(&a.clone()));
    }

    #[test]
    fn https_clusters_get_upstream_tls() {
        let c = Cluster {
            name: "c".into(),
            tls: true,
            endpoints: vec![],
        };
        let layout = EdsLayout {
            dir: Path::new("/out/eds"),
            file_prefix: "",
        };
        let v = cds_cluster(&c, &layout, "x-e");
        assert_eq!(v["transport_socket"]["name"], "envoy.transport_sockets.tls");
        assert_eq!(
            v["eds_cluster_config"]["eds_config"]["path_config_source"]["path"],
            "/out/eds/c.json"
        );
        let plain = cds_cluster(&Cluster { tls: false, ..c }, &layout, "x-e");
        assert!(plain.get("transport_socket").is_none());
    }

    #[test]
    fn routes_follow_the_settings_and_carry_no_cors_by_default() {
        let settings = filter_config::Settings {
            cluster_header: "x-my-cluster".into(),
            ..Default::default()
        };
        let rc = route_configuration(&settings, &Gateway::default());
        let vhost = &rc["virtual_hosts"][0];
        assert!(vhost.get("typed_per_filter_config").is_none());
        let routes = vhost["routes"].as_array().unwrap();
        let names: Vec<&str> = routes.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["healthz", FILTER_NAME, "not-routed"]);
        assert_eq!(routes[1]["match"]["headers"][0]["name"], "x-my-cluster");
        assert_eq!(routes[1]["route"]["cluster_header"], "x-my-cluster");
        assert_eq!(routes[1]["route"]["timeout"], "0s");
        assert_eq!(routes[1]["route"]["idle_timeout"], "600s");
        // Not a direct_response: the CORS filter must see a route for every request.
        assert_eq!(
            routes[2]["route"]["cluster_not_found_response_code"],
            "NOT_FOUND"
        );
        assert_eq!(rc["internal_only_headers"][0], "x-my-cluster");
    }

    #[test]
    fn cors_origins_become_one_policy_on_the_virtual_host() {
        let gateway = Gateway {
            cors_allow_origins: vec!["https://app.example".into(), "*".into()],
            stream_idle_timeout_s: 30,
            ..Gateway::default()
        };
        let rc = route_configuration(&filter_config::Settings::default(), &gateway);
        let vhost = &rc["virtual_hosts"][0];
        let policy = &vhost["typed_per_filter_config"]["envoy.filters.http.cors"];
        assert_eq!(
            policy["allow_origin_string_match"],
            json!([{"exact": "https://app.example"}, {"safe_regex": {"regex": ".*"}}])
        );
        assert!(policy["allow_headers"]
            .as_str()
            .unwrap()
            .starts_with("authorization"));
        assert_eq!(vhost["routes"][1]["route"]["idle_timeout"], "30s");
    }
}

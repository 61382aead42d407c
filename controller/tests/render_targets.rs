//! `render --target istio|configmap`: golden manifests for the seed (examples/kthena +
//! examples/pods.yaml), YAML that parses back to exactly the rendered objects, and real Envoy
//! checks. Istio: a static bootstrap assembled from the EnvoyFilter's patches (clusters from the
//! CLUSTER patches, the EXTENSION_CONFIG's Wasm inline before the router, the HTTP_ROUTE patch
//! first in the virtual host, the LISTENER / ROUTE_CONFIGURATION merges) passes
//! `envoy --mode validate`, then serves a seed request through mock engines. ConfigMap: the
//! data keys as files in one flat directory (`--mount-dir` = that directory) with
//! envoy/envoy.yaml pointed at them pass validation and load in a running Envoy.
//!
//! `UPDATE_GOLDEN=1 cargo test -p controller --test render_targets` rewrites the golden files.
//! Artifacts (never skipped): Envoy from MODELROUTE_ENVOY or ../.venv, the module from
//! MODELROUTE_WASM or ../target/wasm32-wasip1/release/modelroute.wasm, mock-llm from
//! MODELROUTE_BIN_DIR or ../target/debug (`./build.sh test` sets all three).

use std::fs;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use test_support::{
    admin_stat, bin, envoy_validate as validate, free_port, loopback_net, repo_root as root,
    start_envoy, temp_dir, wait_until, wasm, Proc,
};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_modelroute-controller");
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const M15: &str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B";

// ---------------------------------------------------------------------------------------------
// Artifacts and helpers

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stdout_of(out: Output) -> String {
    assert!(
        out.status.success(),
        "controller failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn update() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v != "0")
}

/// Compares with (or rewrites) a golden file.
fn check_golden(rel: &str, actual: &str) {
    let path = Path::new(GOLDEN).join(rel);
    if update() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, actual).unwrap();
        return;
    }
    let want = fs::read_to_string(&path).unwrap_or_default();
    if want != actual {
        let line = want
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs at line {}:\n  - {:?}\n  + {:?}\n(run with UPDATE_GOLDEN=1 to accept)",
            path.display(),
            line + 1,
            want.lines().nth(line),
            actual.lines().nth(line)
        );
    }
}

/// YAML documents -> JSON values.
fn parse_docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_str_multiple::<Value, Vec<Value>>(yaml).expect("rendered YAML parses")
}

fn seed_args() -> Vec<String> {
    vec![
        "render".into(),
        "--resources".into(),
        root().join("examples/kthena").display().to_string(),
        "--pods".into(),
        root().join("examples/pods.yaml").display().to_string(),
    ]
}

fn render_seed(extra: &[&str]) -> String {
    let mut args = seed_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    stdout_of(run(&refs))
}

fn patches<'a>(ef: &'a Value, apply_to: &str) -> Vec<&'a Value> {
    ef["spec"]["configPatches"]
        .as_array()
        .expect("configPatches")
        .iter()
        .filter(|p| p["applyTo"] == apply_to)
        .map(|p| &p["patch"]["value"])
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Golden manifests and the command line

#[test]
fn istio_golden_file_module() {
    let yaml = render_seed(&[
        "--target",
        "istio",
        "--wasm-url",
        "file:///etc/istio/extensions/modelroute.wasm",
        "--print",
    ]);
    check_golden("targets-istio/istio.yaml", &yaml);
    let docs = parse_docs(&yaml);
    assert_eq!(docs.len(), 1);
    let ef = &docs[0];
    assert_eq!(ef["apiVersion"], "networking.istio.io/v1alpha3");
    assert_eq!(ef["kind"], "EnvoyFilter");
    assert_eq!(ef["metadata"]["namespace"], "istio-system");
    assert_eq!(ef["metadata"]["name"], "modelroute");
    assert_eq!(
        ef["spec"]["workloadSelector"],
        json!({"labels": {"istio": "ingressgateway"}})
    );
    let ext = patches(ef, "EXTENSION_CONFIG");
    let cfg = &ext[0]["typed_config"]["config"];
    assert_eq!(cfg["allow_on_headers_stop_iteration"], true);
    assert_eq!(cfg["failure_policy"], "FAIL_RELOAD");
    assert_eq!(
        cfg["vm_config"]["code"]["local"]["filename"],
        "/etc/istio/extensions/modelroute.wasm"
    );
    // The plugin configuration is exactly what `render --print` prints.
    let printed = render_seed(&["--print"]);
    assert_eq!(cfg["configuration"]["value"], printed);
    // One STATIC cluster per ModelServer.
    let servers = serde_json::from_str::<Value>(&printed).unwrap()["servers"]
        .as_array()
        .unwrap()
        .len();
    let clusters = patches(ef, "CLUSTER");
    assert_eq!(clusters.len(), servers);
    assert!(clusters.iter().all(|c| c["type"] == "STATIC"));
}

#[test]
fn istio_golden_oci_module_on_a_sidecar() {
    let yaml = render_seed(&[
        "--target",
        "istio",
        "--wasm-url",
        "oci://ghcr.io/example/modelroute-wasm:0.1.0",
        "--wasm-sha256",
        SHA,
        "--context",
        "sidecar",
        "--namespace",
        "llm",
        "--name",
        "llm-router",
        "--workload-selector",
        "app=llm-router",
        "--workload-selector",
        "tier=edge",
    ]);
    check_golden("targets-istio/istio-oci-sidecar.yaml", &yaml);
    let ef = &parse_docs(&yaml)[0];
    assert_eq!(ef["metadata"]["namespace"], "llm");
    assert_eq!(ef["metadata"]["name"], "llm-router");
    assert_eq!(
        ef["spec"]["workloadSelector"]["labels"],
        json!({"app": "llm-router", "tier": "edge"})
    );
    for p in ef["spec"]["configPatches"].as_array().unwrap() {
        assert_eq!(p["match"]["context"], "SIDECAR_INBOUND", "{p}");
    }
    let code = &patches(ef, "EXTENSION_CONFIG")[0]["typed_config"]["config"]["vm_config"]["code"];
    assert_eq!(
        code["remote"],
        json!({"http_uri": {"uri": "oci://ghcr.io/example/modelroute-wasm:0.1.0",
                            "cluster": "_", "timeout": "30s"},
               "sha256": SHA})
    );
}

#[test]
fn configmap_golden_and_out_dir() {
    let yaml = render_seed(&["--target", "configmap"]);
    check_golden("targets-configmap/configmap.yaml", &yaml);
    let cm = &parse_docs(&yaml)[0];
    assert_eq!(cm["apiVersion"], "v1");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "modelroute-system");
    let data = cm["data"].as_object().unwrap();
    let printed = render_seed(&["--print"]);
    assert_eq!(data["filter-config.json"], printed);
    let eds = data.keys().filter(|k| k.starts_with("eds-")).count();
    let servers = serde_json::from_str::<Value>(&printed).unwrap()["servers"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(eds, servers);
    // cds.json, rds.json, ecds.json, ecds-ratelimit.json, filter-config.json and one EDS file
    // per server.
    assert_eq!(data.len(), servers + 5);
    // The literal blocks hold the exact files: each parses and names the mount dir.
    let cds: Value = serde_json::from_str(data["cds.json"].as_str().unwrap()).unwrap();
    for c in cds["resources"].as_array().unwrap() {
        let src = &c["eds_cluster_config"]["eds_config"]["path_config_source"];
        assert_eq!(src["watched_directory"]["path"], "/etc/modelroute");
        let file = src["path"].as_str().unwrap();
        let key = file.strip_prefix("/etc/modelroute/").unwrap();
        assert!(data.contains_key(key), "{key} not in the ConfigMap");
    }

    // --out DIR writes DIR/configmap.yaml with the same content; --print still prints.
    let dir = temp_dir("cm-out");
    let out = dir.join("out");
    let mut args = seed_args();
    args.extend(["--target", "configmap", "--out"].map(String::from));
    args.push(out.display().to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    stdout_of(run(&refs));
    assert_eq!(
        fs::read_to_string(out.join("configmap.yaml")).unwrap(),
        yaml
    );
    let mut printed_args = refs.clone();
    printed_args.push("--print");
    assert_eq!(stdout_of(run(&printed_args)), yaml);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn configmap_namespace_name_mount_dir_and_wasm() {
    let yaml = render_seed(&[
        "--target",
        "configmap",
        "--namespace",
        "gw",
        "--name",
        "routes",
        "--mount-dir",
        "/config/",
        "--wasm",
        "/wasm/m.wasm",
    ]);
    let cm = &parse_docs(&yaml)[0];
    assert_eq!(cm["metadata"], {
        let mut m = cm["metadata"].clone();
        m["namespace"] = json!("gw");
        m["name"] = json!("routes");
        m
    });
    let ecds = cm["data"]["ecds.json"].as_str().unwrap();
    assert!(ecds.contains("\"/wasm/m.wasm\""), "{ecds}");
    assert!(cm["data"]["cds.json"]
        .as_str()
        .unwrap()
        .contains("\"/config/eds-modelserver_default_deepseek-r1-1-5b.json\""));
}

#[test]
fn bad_target_flags_are_usage_errors() {
    let cases: &[&[&str]] = &[
        &["--target", "istio"],
        &["--target", "istio", "--wasm-url", "oci://ghcr.io/x/y:1"],
        &[
            "--target",
            "istio",
            "--wasm-url",
            "https://x/y.wasm",
            "--wasm-sha256",
            "xyz",
        ],
        &[
            "--target",
            "istio",
            "--wasm-url",
            "s3://x/y.wasm",
            "--wasm-sha256",
            SHA,
        ],
        &[
            "--target",
            "istio",
            "--wasm-url",
            "file:///m.wasm",
            "--workload-selector",
            "novalue",
        ],
        &["--target", "configmap", "--wasm-url", "file:///m.wasm"],
        &["--target", "configmap", "--mount-dir", "relative"],
        &["--target", "envoy", "--wasm-sha256", SHA, "--print"],
    ];
    for extra in cases {
        let mut args = seed_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&refs);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // `--wasm PATH` stands for file://PATH (deploy/README.md's GitOps example).
    let yaml = render_seed(&["--target", "istio", "--wasm", "/etc/m.wasm"]);
    assert!(yaml.contains("filename: /etc/m.wasm"), "{yaml}");
}

// ---------------------------------------------------------------------------------------------
// Real Envoy

/// Status, headers (names lowercased), body: what these checks look at.
type Reply = (u16, Vec<(String, String)>, String);

/// One request with a JSON body, if any.
fn http(addr: &str, method: &str, path: &str, body: &str) -> std::io::Result<Reply> {
    let headers: &[(&str, &str)] = if body.is_empty() && method != "POST" {
        &[("host", "llm.example.com")]
    } else {
        &[
            ("host", "llm.example.com"),
            ("content-type", "application/json"),
        ]
    };
    let r = test_support::http(addr, method, path, headers, body.as_bytes())?;
    let text = r.text();
    Ok((r.status, r.headers, text))
}

/// A static bootstrap built from the EnvoyFilter's patches, standing in for what istiod
/// generates for a gateway plus what the patches add: listener (LISTENER merge) -> HCM with the
/// route config (ROUTE_CONFIGURATION merge, HTTP_ROUTE inserted first before the "user's"
/// routes) -> the Wasm from EXTENSION_CONFIG inline (istiod would serve it by ECDS) before the
/// router, then any other HTTP_FILTER patch (Envoy's rate-limit filter); Kthena's access
/// loggers (NETWORK_FILTER merge); clusters from the CLUSTER patches.
fn bootstrap_from_envoyfilter(ef: &Value, port: u16, admin: u16) -> Value {
    let one = |apply_to: &str| -> Value {
        let p = patches(ef, apply_to);
        assert_eq!(p.len(), 1, "one {apply_to} patch");
        p[0].clone()
    };
    let ext = one("EXTENSION_CONFIG");
    // Ours first (by ECDS), then any filter inserted after it (the rate-limit filter), each
    // before the router in patch order.
    let http_filters = patches(ef, "HTTP_FILTER");
    let http_filter = http_filters[0];
    assert_eq!(http_filter["name"], ext["name"], "ECDS name = filter name");
    assert_eq!(
        http_filter["config_discovery"]["type_urls"][0],
        ext["typed_config"]["@type"]
    );
    let mut chain = vec![json!({"name": ext["name"], "typed_config": ext["typed_config"]})];
    chain.extend(http_filters[1..].iter().map(|f| (*f).clone()));
    chain.push(
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    );
    let listener_merge = one("LISTENER");
    let rc_merge = one("ROUTE_CONFIGURATION");
    let route = one("HTTP_ROUTE");
    let clusters: Vec<Value> = patches(ef, "CLUSTER").into_iter().cloned().collect();
    // Routes an Istio VirtualService would have produced for the rest of the traffic.
    let user_routes = json!([
        {"name": "healthz", "match": {"path": "/healthz"},
         "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}},
        {"name": "other", "match": {"prefix": "/"},
         "direct_response": {"status": 404, "body": {"inline_string": "not routed\n"}}},
    ]);
    let mut routes = vec![route];
    routes.extend(user_routes.as_array().unwrap().iter().cloned());
    let mut route_config = json!({
        "name": "http.8080",
        "virtual_hosts": [{"name": "llm.example.com:80", "domains": ["*"], "routes": routes}],
    });
    merge(&mut route_config, &rc_merge);
    let mut listener = json!({
        "name": "0.0.0.0_8080",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "per_connection_buffer_limit_bytes": 32768,
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "outbound_0.0.0.0_8080",
                "route_config": route_config,
                "http_filters": chain,
            },
        }]}],
    });
    merge(&mut listener, &listener_merge);
    assert_eq!(listener["per_connection_buffer_limit_bytes"], 67108864);
    // Kthena's metrics and access log, merged into the HTTP connection manager.
    let hcm_merge = one("NETWORK_FILTER");
    merge(&mut listener["filter_chains"][0]["filters"][0], &hcm_merge);
    assert!(
        listener["filter_chains"][0]["filters"][0]["typed_config"]["access_log"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
    );
    // What Istio renders for ProxyConfig `extraStatTags` naming the filter's labels (see
    // istio/README.md): one unanchored regex per label.
    let extra_stat_tags: Vec<Value> = filter_config::vm_metrics::LABELS
        .iter()
        .map(|t| json!({"tag_name": t, "regex": format!("({t}=\\.=(.*?);\\.;)")}))
        .collect();
    json!({
        "stats_config": {"stats_tags": extra_stat_tags},
        "node": {"id": "router~127.0.0.1~istio-ingressgateway.istio-system~istio-system.svc.cluster.local", "cluster": "istio-ingressgateway"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    })
}

/// Protobuf-style MERGE as Istio applies it: objects merge, lists append, scalars replace.
fn merge(dst: &mut Value, src: &Value) {
    match (dst, src) {
        (Value::Object(d), Value::Object(s)) => {
            for (k, v) in s {
                merge(d.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (Value::Array(d), Value::Array(s)) => d.extend(s.iter().cloned()),
        (d, s) => *d = s.clone(),
    }
}

#[test]
fn istio_patches_validate_in_envoy() {
    let dir = temp_dir("istio-validate");
    let url = format!("file://{}", wasm().display());
    let yaml = render_seed(&["--target", "istio", "--wasm-url", &url]);
    let ef = &parse_docs(&yaml)[0];
    let boot = bootstrap_from_envoyfilter(ef, free_port(), free_port());
    let config = dir.join("envoy.json");
    fs::write(&config, serde_json::to_string_pretty(&boot).unwrap()).unwrap();
    validate(&config, &dir.join("validate.log"));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn istio_patches_route_a_seed_request_and_enforce_a_global_budget_in_envoy() {
    let dir = temp_dir("istio-e2e");
    let redis = test_support::RedisServer::start();
    let service = test_support::RateLimitService::start();
    let net = {
        let (a, b) = loopback_net();
        format!("127.{a}.{b}")
    };
    let pod_port = free_port();
    // ModelRouteSimple -> ModelServer deepseek-r1-1-5b (port rewritten) with two ready pods.
    let input = dir.join("input");
    fs::create_dir_all(&input).unwrap();
    let kthena = root().join("examples/kthena");
    fs::copy(
        kthena.join("ModelRouteSimple.yaml"),
        input.join("ModelRouteSimple.yaml"),
    )
    .unwrap();
    // Kthena's global rate-limit example, on this test's Redis: 10 input tokens a minute.
    let global =
        fs::read_to_string(root().join("examples/rate-limit/ModelRoute-global-rate-limit.yaml"))
            .unwrap()
            .replace(
                "redis-server.kthena-system.svc.cluster.local:6379",
                &redis.addr(),
            );
    assert!(global.contains(&redis.addr()));
    fs::write(input.join("ModelRoute-global-rate-limit.yaml"), global).unwrap();
    let server = fs::read_to_string(kthena.join("ModelServer-ds1.5b.yaml")).unwrap();
    assert!(server.contains("port: 8000"));
    fs::write(
        input.join("ModelServer-ds1.5b.yaml"),
        server.replace("port: 8000", &format!("port: {pod_port}")),
    )
    .unwrap();
    let pods = [
        ("deepseek-r1-1-5b-a", format!("{net}.11")),
        ("deepseek-r1-1-5b-b", format!("{net}.12")),
    ];
    let mut pods_yaml = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for (name, ip) in &pods {
        pods_yaml += &format!(
            "- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: {name}\n    namespace: default\n    labels: {{app: deepseek-r1-1-5b}}\n  status:\n    phase: Running\n    podIP: {ip}\n    conditions:\n    - type: Ready\n      status: \"True\"\n"
        );
    }
    fs::write(dir.join("pods.yaml"), pods_yaml).unwrap();
    let mut children = Vec::new();
    for (name, ip) in &pods {
        let log = fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(bin("mock-llm"))
            .args(["serve", "--listen", &format!("{ip}:{pod_port}")])
            .args(["--model", M15, "--pod", &format!("default/{name}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mock-llm");
        children.push(Proc(child));
    }
    for (_, ip) in &pods {
        let addr = format!("{ip}:{pod_port}");
        wait_until(
            Duration::from_secs(20),
            &format!("mock-llm on {addr}"),
            || TcpStream::connect(&addr).is_ok(),
        );
    }

    let url = format!("file://{}", wasm().display());
    let input_s = input.display().to_string();
    let pods_s = dir.join("pods.yaml").display().to_string();
    let yaml = stdout_of(run(&[
        "render",
        "--target",
        "istio",
        "--resources",
        &input_s,
        "--pods",
        &pods_s,
        "--wasm-url",
        &url,
        "--rate-limit-service",
        &service.addr,
    ]));
    let ef = &parse_docs(&yaml)[0];
    let (port, admin) = (free_port(), free_port());
    let config = dir.join("envoy.json");
    let boot = bootstrap_from_envoyfilter(ef, port, admin);
    fs::write(&config, serde_json::to_string_pretty(&boot).unwrap()).unwrap();
    let log = dir.join("envoy.log");
    children.push(start_envoy(&config, &log));
    let addr = format!("127.0.0.1:{port}");
    wait_until(Duration::from_secs(30), "Envoy serving /healthz", || {
        http(&addr, "GET", "/healthz", "").is_ok_and(|r| r.0 == 200)
    });

    let body = r#"{"model":"deepseek-simple","prompt":"San Francisco is a","temperature":0}"#;
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match http(&addr, "POST", "/v1/completions", body) {
            Ok(r) if r.0 == 200 => {
                last = Some(r);
                break;
            }
            other => {
                last = other.ok();
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let (status, headers, text) = last.unwrap_or_else(|| {
        panic!(
            "no answer; envoy log:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert_eq!(
        status,
        200,
        "{text}\nenvoy log:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(
        v["model"], M15,
        "model rewritten to the server's model: {text}"
    );
    let pod = headers
        .iter()
        .find(|(k, _)| k == "x-mock-pod")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    assert!(
        pods.iter().any(|(n, _)| pod == format!("default/{n}")),
        "served by {pod:?}, not a deepseek-r1-1-5b pod"
    );
    // A request the filter does not route falls through to the "user's" routes.
    let (status, _, _) = http(&addr, "GET", "/elsewhere", "").unwrap();
    assert_eq!(status, 404);
    // Kthena's metrics, under Kthena's names, on Envoy's Prometheus output.
    let series = r#"kthena_router_requests_total{model="deepseek-simple",path="/v1/completions",status_code="200""#;
    wait_until(
        Duration::from_secs(10),
        "kthena_router_requests_total",
        || {
            test_support::http(
                &format!("127.0.0.1:{admin}"),
                "GET",
                "/stats/prometheus",
                &[],
                b"",
            )
            .is_ok_and(|r| r.text().contains(series))
        },
    );
    // The global budget, through the patched-in rate-limit filter and the service on Redis:
    // 20 characters are 5 tokens by Kthena's estimate, two requests fit in 10.
    let limited = r#"{"model":"deepseek-r1-global-rate-limit","prompt":"abcdefghijklmnopqrst"}"#;
    let statuses: Vec<u16> = (0..3)
        .map(|_| http(&addr, "POST", "/v1/completions", limited).unwrap().0)
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    assert!(redis
        .cli(&[
            "HGET",
            "kthena:ratelimit:deepseek-r1-global-rate-limit:input",
            "tokens"
        ])
        .parse::<f64>()
        .is_ok_and(|t| t < 5.0));
    assert!(
        admin_stat(admin, "cluster.modelroute_ratelimit.upstream_rq_total").is_some_and(|n| n >= 3)
    );
    drop(children);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn configmap_files_validate_and_load_in_envoy() {
    let dir = temp_dir("cm-envoy");
    let mount = dir.join("mount");
    fs::create_dir_all(&mount).unwrap();
    let wasm_s = wasm().display().to_string();
    let mount_s = mount.display().to_string();
    let yaml = render_seed(&[
        "--target",
        "configmap",
        "--mount-dir",
        &mount_s,
        "--wasm",
        &wasm_s,
    ]);
    let cm = &parse_docs(&yaml)[0];
    for (key, content) in cm["data"].as_object().unwrap() {
        fs::write(mount.join(key), content.as_str().unwrap()).unwrap();
    }
    let (port, admin) = (free_port(), free_port());
    // The shipped bootstrap as the controller renders it, its config paths then pointed at the
    // flat mount.
    let off = controller::render::observability::AccessLog {
        output: controller::render::observability::AccessLogOutput::Off,
        ..Default::default()
    };
    let boot =
        controller::render::observability::bootstrap(port, admin, "@CONFIG_DIR@", &off, None)
            .replace(
                "@CONFIG_DIR@/cds/clusters.json",
                &format!("{mount_s}/cds.json"),
            )
            .replace(
                "@CONFIG_DIR@/ecds/modelroute.json",
                &format!("{mount_s}/ecds.json"),
            )
            .replace(
                "@CONFIG_DIR@/rds/routes.json",
                &format!("{mount_s}/rds.json"),
            )
            .replace("@CONFIG_DIR@/cds", &mount_s)
            .replace("@CONFIG_DIR@/ecds", &mount_s)
            .replace("@CONFIG_DIR@/rds", &mount_s);
    let left: Vec<&str> = boot
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter(|l| l.contains("@CONFIG_DIR@"))
        .collect();
    assert!(left.is_empty(), "placeholders left: {left:?}");
    let config = dir.join("envoy.yaml");
    fs::write(&config, boot).unwrap();
    validate(&config, &dir.join("validate.log"));

    // Validate mode does not read the xDS files: start it and see them load.
    let log = dir.join("envoy.log");
    let envoy = start_envoy(&config, &log);
    let servers = cm["data"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("eds-"))
        .count() as u64;
    wait_until(
        Duration::from_secs(30),
        "ECDS and CDS from the flat directory",
        || {
            admin_stat(
                admin,
                "extension_config_discovery.http_filter.modelroute.update_success",
            )
            .is_some_and(|n| n >= 1)
                && admin_stat(admin, "cluster_manager.active_clusters")
                    .is_some_and(|n| n >= servers)
        },
    );
    assert_eq!(
        admin_stat(
            admin,
            "extension_config_discovery.http_filter.modelroute.update_rejected"
        ),
        Some(0)
    );
    // Every cluster got its pods from its eds-*.json.
    let (_, _, clusters) = http(&format!("127.0.0.1:{admin}"), "GET", "/clusters", "").unwrap();
    assert!(
        clusters.contains("modelserver|default|deepseek-r1-7b::127.0.0.21:8000::"),
        "{clusters}"
    );
    // The filter answers /v1/models from its configuration.
    let addr = format!("127.0.0.1:{port}");
    wait_until(
        Duration::from_secs(20),
        "the filter serving /v1/models",
        || {
            http(&addr, "GET", "/v1/models", "")
                .is_ok_and(|r| r.0 == 200 && r.2.contains("deepseek-simple"))
        },
    );
    drop(envoy);
    let _ = fs::remove_dir_all(&dir);
}

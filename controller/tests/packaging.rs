//! Deployment packaging: the OCI image layout written by scripts/oci_wasm.py, and the
//! manifests under deploy/ (well-formed documents, exact RBAC, the Deployments' wiring, and the
//! example gateway's Envoy bootstrap through `envoy --mode validate`).
//!
//! Needs `python3` and `sha256sum` on PATH, the Envoy binary (MODELROUTE_ENVOY, else the
//! project venv's, installed by `./build.sh build`) and the filter module (MODELROUTE_WASM,
//! else target/wasm32-wasip1/release/modelroute.wasm). A missing one fails with a message; no
//! test skips silently.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use test_support::{repo_root as root, wasm as wasm_module};

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    test_support::temp_dir(&format!("packaging-{name}"))
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("`sha256sum` must be on PATH (coreutils)");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

// --- scripts/oci_wasm.py ----------------------------------------------------------------

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
const MT_WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";

fn run_oci_wasm(wasm: &Path, out: &Path, tag: &str) -> String {
    let o = Command::new("python3")
        .arg(root().join("scripts/oci_wasm.py"))
        .arg("--wasm")
        .arg(wasm)
        .arg("--out")
        .arg(out)
        .args(["--tag", tag])
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("`python3` must be on PATH");
    assert!(
        o.status.success(),
        "oci_wasm.py failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Checks a descriptor against its blob (sha256sum and size) and returns the blob's path.
fn check_blob(layout: &Path, desc: &Value) -> PathBuf {
    let digest = desc["digest"].as_str().expect("descriptor digest");
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("digest {digest} is not sha256"));
    let blob = layout.join("blobs/sha256").join(hex);
    assert!(blob.is_file(), "blob {} missing", blob.display());
    assert_eq!(sha256sum(&blob), hex, "digest of {}", blob.display());
    let size = std::fs::metadata(&blob).expect("blob metadata").len();
    assert_eq!(
        desc["size"].as_u64(),
        Some(size),
        "size of {}",
        blob.display()
    );
    blob
}

/// `(manifest digest, wasm layer digest)` after checking the whole layout.
fn check_layout(layout: &Path, tag: &str, module: &[u8]) -> (String, String) {
    assert_eq!(
        read_json(&layout.join("oci-layout")),
        json!({"imageLayoutVersion": "1.0.0"})
    );
    let index = read_json(&layout.join("index.json"));
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], MT_INDEX);
    let manifests = index["manifests"].as_array().expect("index.manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    let mdesc = &manifests[0];
    assert_eq!(mdesc["mediaType"], MT_MANIFEST);
    assert_eq!(
        mdesc["annotations"]["org.opencontainers.image.ref.name"],
        tag
    );
    let manifest = read_json(&check_blob(layout, mdesc));
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], MT_MANIFEST);

    // Config: the Wasm runtime config (solo-io/wasm spec, Envoy profile).
    assert_eq!(manifest["config"]["mediaType"], MT_WASM_CONFIG);
    let config = read_json(&check_blob(layout, &manifest["config"]));
    assert_eq!(config["type"], "envoy_proxy", "{config}");
    assert_eq!(config["config"]["root_ids"], json!(["modelroute"]));
    assert!(
        config.get("created").is_none(),
        "no timestamp without SOURCE_DATE_EPOCH"
    );

    // Layers: exactly [config JSON, raw wasm], as Istio's fetcher requires for this variant.
    let layers = manifest["layers"].as_array().expect("manifest.layers");
    assert_eq!(layers.len(), 2, "{manifest}");
    assert_eq!(layers[0]["mediaType"], MT_WASM_CONFIG);
    assert_eq!(layers[0]["digest"], manifest["config"]["digest"]);
    check_blob(layout, &layers[0]);
    assert_eq!(layers[1]["mediaType"], MT_WASM_LAYER);
    assert_eq!(
        layers[1]["annotations"]["org.opencontainers.image.title"],
        "plugin.wasm"
    );
    let wasm_blob = check_blob(layout, &layers[1]);
    assert_eq!(
        std::fs::read(&wasm_blob).expect("wasm blob"),
        module,
        "the wasm layer is the module, uncompressed"
    );
    // Nothing else in blobs/.
    let blobs: BTreeSet<String> = std::fs::read_dir(layout.join("blobs/sha256"))
        .expect("blobs dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(blobs.len(), 3, "manifest, config, wasm: {blobs:?}");
    (
        mdesc["digest"].as_str().unwrap_or_default().to_string(),
        layers[1]["digest"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn oci_wasm_writes_a_valid_deterministic_image_layout() {
    let dir = scratch("oci");
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    module.extend((0..4096u32).map(|i| (i % 251) as u8));
    let wasm = dir.join("fake.wasm");
    std::fs::write(&wasm, &module).expect("write fake wasm");
    let module_sha = sha256sum(&wasm);

    let out1 = dir.join("a/modelroute");
    let stdout = run_oci_wasm(&wasm, &out1, "0.1.0");
    let (manifest1, layer1) = check_layout(&out1, "0.1.0", &module);
    assert_eq!(layer1, format!("sha256:{module_sha}"));
    // The printed values, and <out>.sha256 with the module's sha256.
    assert!(stdout.contains(&manifest1), "{stdout}");
    assert!(stdout.contains(&module_sha), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(dir.join("a/modelroute.sha256"))
            .expect("<out>.sha256")
            .trim(),
        module_sha
    );

    // Deterministic: another directory, same bytes -> same digests, byte-identical files.
    let out2 = dir.join("b/modelroute");
    run_oci_wasm(&wasm, &out2, "0.1.0");
    let (manifest2, layer2) = check_layout(&out2, "0.1.0", &module);
    assert_eq!((&manifest1, &layer1), (&manifest2, &layer2));
    assert_eq!(
        std::fs::read(out1.join("index.json")).unwrap(),
        std::fs::read(out2.join("index.json")).unwrap()
    );
    // Re-running over an existing layout replaces it cleanly.
    run_oci_wasm(&wasm, &out1, "0.1.0");
    assert_eq!(check_layout(&out1, "0.1.0", &module).0, manifest1);
    // The tag is part of the manifest (annotation), so another tag is another digest.
    let out3 = dir.join("c/modelroute");
    run_oci_wasm(&wasm, &out3, "0.2.0");
    assert_ne!(check_layout(&out3, "0.2.0", &module).0, manifest1);

    // Not a wasm module: refused.
    let bogus = dir.join("bogus.wasm");
    std::fs::write(&bogus, b"not wasm").unwrap();
    let o = Command::new("python3")
        .arg(root().join("scripts/oci_wasm.py"))
        .arg("--wasm")
        .arg(&bogus)
        .arg("--out")
        .arg(dir.join("d"))
        .args(["--tag", "0.1.0"])
        .output()
        .expect("python3");
    assert!(!o.status.success());
    assert!(!dir.join("d").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

// --- deploy/ manifests ------------------------------------------------------------------

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

/// Every non-empty document of every YAML file under deploy/, with its file.
fn deploy_docs() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    yaml_files(&root().join("deploy"), &mut files);
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read yaml");
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", f.display()));
        for d in parsed.into_iter().filter(|d| !d.is_null()) {
            docs.push((f.clone(), d));
        }
    }
    docs
}

fn find<'a>(docs: &'a [(PathBuf, Value)], kind: &str, ns: Option<&str>, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"] == name
                && d["metadata"]["namespace"].as_str() == ns
        })
        .unwrap_or_else(|| panic!("deploy/ has no {kind} {ns:?}/{name}"))
}

#[test]
fn every_deploy_document_is_a_named_kubernetes_object() {
    let docs = deploy_docs();
    let files: BTreeSet<String> = docs
        .iter()
        .filter_map(|(f, _)| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for expected in [
        "namespace.yaml",
        "rbac.yaml",
        "controller.yaml",
        "envoy-gateway.yaml",
        "ratelimit.yaml",
    ] {
        assert!(files.contains(expected), "deploy/{expected} missing");
    }
    let mut seen = BTreeSet::new();
    for (f, d) in &docs {
        let f = f.display();
        for key in ["apiVersion", "kind"] {
            assert!(
                d[key].as_str().is_some_and(|s| !s.is_empty()),
                "{f}: a document without {key}: {d}"
            );
        }
        let name = d["metadata"]["name"].as_str().unwrap_or("");
        assert!(!name.is_empty(), "{f}: {} without metadata.name", d["kind"]);
        let id = (
            d["kind"].as_str().unwrap_or("").to_string(),
            d["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            name.to_string(),
        );
        assert!(seen.insert(id.clone()), "{f}: {id:?} defined twice");
        // Namespaced objects we ship say where they go (nothing lands in `default`).
        let cluster_scoped = matches!(
            d["kind"].as_str(),
            Some("Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition")
        );
        assert_eq!(
            d["metadata"]["namespace"].is_string(),
            !cluster_scoped,
            "{f}: {id:?} namespace"
        );
    }
    find(&docs, "Namespace", None, "modelroute-system");
}

type Grants = BTreeSet<(String, String, String)>;

fn grants(role: &Value) -> Grants {
    let mut out = Grants::new();
    for rule in role["rules"].as_array().expect("rules") {
        let strs = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .unwrap_or_else(|| panic!("rule without {k}: {rule}"))
                .iter()
                .map(|v| v.as_str().expect("string").to_string())
                .collect()
        };
        for g in strs("apiGroups") {
            for r in strs("resources") {
                for v in strs("verbs") {
                    assert!(
                        g != "*" && r != "*" && v != "*",
                        "wildcard in {}: {rule}",
                        role["metadata"]["name"]
                    );
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

fn expect(list: &[(&str, &[&str], &[&str])]) -> Grants {
    let mut out = Grants::new();
    for (g, rs, vs) in list {
        for r in *rs {
            for v in *vs {
                out.insert((g.to_string(), r.to_string(), v.to_string()));
            }
        }
    }
    out
}

/// `resourceNames` per (group, resource, verb) of a role: `None` when unrestricted.
fn restricted_names(role: &Value) -> BTreeMap<(String, String, String), Option<Vec<String>>> {
    let mut out = BTreeMap::new();
    for rule in role["rules"].as_array().expect("rules") {
        let names = rule["resourceNames"].as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect::<Vec<_>>()
        });
        for key in grants(&json!({"rules": [rule], "metadata": role["metadata"]})) {
            out.insert(key, names.clone());
        }
    }
    out
}

#[test]
fn rbac_grants_exactly_what_the_controller_calls() {
    let docs = deploy_docs();
    const KTHENA: &str = "networking.serving.volcano.sh";
    let sa = find(
        &docs,
        "ServiceAccount",
        Some("modelroute-system"),
        "modelroute-controller",
    );
    assert_eq!(sa["metadata"]["name"], "modelroute-controller");

    let cluster = find(&docs, "ClusterRole", None, "modelroute-controller");
    assert_eq!(
        grants(cluster),
        expect(&[
            (
                KTHENA,
                &["modelroutes", "modelservers"],
                &["get", "list", "watch"]
            ),
            ("", &["pods"], &["get", "list", "watch"]),
            (
                KTHENA,
                &["modelroutes/status", "modelservers/status"],
                &["patch", "update"]
            ),
            ("events.k8s.io", &["events"], &["create", "patch"]),
        ])
    );

    let system = find(
        &docs,
        "Role",
        Some("modelroute-system"),
        "modelroute-controller",
    );
    assert_eq!(
        grants(system),
        expect(&[
            ("", &["configmaps"], &["get", "create", "patch", "update"]),
            (
                "coordination.k8s.io",
                &["leases"],
                &["get", "create", "update", "patch"]
            ),
        ])
    );
    let istio = find(
        &docs,
        "Role",
        Some("istio-system"),
        "modelroute-controller-istio",
    );
    assert_eq!(
        grants(istio),
        expect(&[(
            "networking.istio.io",
            &["envoyfilters"],
            &["get", "create", "patch"]
        )])
    );
    // The controller keeps its Lease in --namespace, which is istio-system in Istio mode.
    let istio_lease = find(
        &docs,
        "Role",
        Some("istio-system"),
        "modelroute-controller-istio-lease",
    );
    assert_eq!(
        grants(istio_lease),
        expect(&[(
            "coordination.k8s.io",
            &["leases"],
            &["get", "create", "update", "patch"]
        )])
    );
    let router_config = find(
        &docs,
        "Role",
        Some("kthena-system"),
        "modelroute-controller-router-config",
    );
    assert_eq!(
        grants(router_config),
        expect(&[("", &["configmaps"], &["get", "list", "watch"])])
    );
    // resourceNames: every verb but create is pinned to the one object the controller owns;
    // create cannot be (the name is not known to the authorizer on POST).
    for (role, owned) in [
        (
            system,
            [
                ("configmaps", "modelroute"),
                ("leases", "modelroute-controller"),
            ]
            .as_slice(),
        ),
        (istio, &[("envoyfilters", "modelroute")]),
        (istio_lease, &[("leases", "modelroute-controller")]),
        (router_config, &[("configmaps", "kthena-router-config")]),
    ] {
        for ((_, r, v), names) in restricted_names(role) {
            let want = owned.iter().find(|(res, _)| *res == r).map(|(_, n)| n);
            if v == "create" {
                assert_eq!(names, None, "{r} create must not carry resourceNames");
            } else {
                assert_eq!(names, want.map(|n| vec![n.to_string()]), "{r} {v}");
            }
        }
    }
    // Only ClusterRole/Role objects we checked exist.
    let roles: Vec<String> = docs
        .iter()
        .filter(|(_, d)| matches!(d["kind"].as_str(), Some("Role" | "ClusterRole")))
        .map(|(_, d)| format!("{}/{}", d["metadata"]["namespace"], d["metadata"]["name"]))
        .collect();
    assert_eq!(roles.len(), 5, "{roles:?}");

    // Each role is bound to the controller's ServiceAccount, in the role's namespace.
    for (kind, binding_kind, role) in [
        ("ClusterRole", "ClusterRoleBinding", cluster),
        ("Role", "RoleBinding", system),
        ("Role", "RoleBinding", istio),
        ("Role", "RoleBinding", istio_lease),
        ("Role", "RoleBinding", router_config),
    ] {
        let ns = role["metadata"]["namespace"].as_str();
        let name = role["metadata"]["name"].as_str().unwrap_or("");
        let b = find(&docs, binding_kind, ns, name);
        assert_eq!(b["roleRef"]["kind"], kind);
        assert_eq!(b["roleRef"]["name"], name);
        assert_eq!(b["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
        assert_eq!(
            b["subjects"],
            json!([{"kind": "ServiceAccount", "name": "modelroute-controller",
                    "namespace": "modelroute-system"}])
        );
    }
    // The istio-system objects carry the label that `-l 'modelroute.io/mode!=istio'` skips.
    for (_, d) in &docs {
        if d["metadata"]["namespace"] == "istio-system" {
            assert_eq!(
                d["metadata"]["labels"]["modelroute.io/mode"], "istio",
                "{d}"
            );
        }
    }
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// A container's `args`.
fn args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn deployments_are_wired_to_the_account_the_configmaps_and_the_service() {
    let docs = deploy_docs();
    let ctl = find(
        &docs,
        "Deployment",
        Some("modelroute-system"),
        "modelroute-controller",
    );
    let pod = &ctl["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "modelroute-controller");
    assert_eq!(ctl["spec"]["replicas"], 1);
    assert!(pod["terminationGracePeriodSeconds"].as_u64().is_some());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = container(ctl, "controller");
    let joined = args(c).join(" ");
    assert!(
        joined.starts_with(
            "kube --output configmap --namespace modelroute-system --wasm /etc/modelroute-wasm/modelroute.wasm"
        ),
        "{joined}"
    );
    assert!(joined.contains("--mount-path /etc/modelroute"), "{joined}");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());

    // The gateway: pinned Envoy = envoy/VERSION; mounts what the controller writes where the
    // controller says it is; Service 80 -> 8080.
    let gw = find(
        &docs,
        "Deployment",
        Some("modelroute-system"),
        "modelroute-gateway",
    );
    let envoy = container(gw, "envoy");
    let version = std::fs::read_to_string(root().join("envoy/VERSION")).expect("envoy/VERSION");
    assert_eq!(
        envoy["image"],
        format!("envoyproxy/envoy:v{}", version.trim())
    );
    assert_eq!(envoy["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        gw["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    let mounts: BTreeMap<String, String> = envoy["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            assert!(
                m.get("subPath").is_none(),
                "subPath mounts never update: {m}"
            );
            (
                m["name"].as_str().unwrap_or("").to_string(),
                m["mountPath"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let volumes: BTreeMap<String, Value> = gw["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| (v["name"].as_str().unwrap_or("").to_string(), v.clone()))
        .collect();
    let mounted_configmap = |cm: &str| -> String {
        let (vol, _) = volumes
            .iter()
            .find(|(_, v)| v["configMap"]["name"] == cm)
            .unwrap_or_else(|| panic!("no volume for ConfigMap {cm}"));
        mounts
            .get(vol)
            .unwrap_or_else(|| panic!("volume {vol} not mounted"))
            .clone()
    };
    assert_eq!(mounted_configmap("modelroute"), "/etc/modelroute");
    assert_eq!(
        mounted_configmap("modelroute-envoy-bootstrap"),
        "/etc/envoy"
    );
    assert_eq!(mounted_configmap("modelroute-wasm"), "/etc/modelroute-wasm");
    let eargs = args(envoy);
    assert!(
        eargs
            .windows(2)
            .any(|w| w == ["--config-path", "/etc/envoy/envoy.yaml"]),
        "{eargs:?}"
    );
    let svc = find(
        &docs,
        "Service",
        Some("modelroute-system"),
        "modelroute-gateway",
    );
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    let target = &svc["spec"]["ports"][0]["targetPort"];
    let port = envoy["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| &p["name"] == target || &p["containerPort"] == target)
        .expect("Service targetPort names a container port");
    assert_eq!(port["containerPort"], 8080);
    assert_eq!(
        svc["spec"]["selector"],
        gw["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
            .as_str()
            .map(|n| json!({"app.kubernetes.io/name": n}))
            .expect("pod label")
    );
}

#[test]
fn the_rate_limit_service_listens_where_its_service_and_the_controller_say() {
    let docs = deploy_docs();
    let rls = find(
        &docs,
        "Deployment",
        Some("modelroute-system"),
        "modelroute-ratelimit",
    );
    let c = container(rls, "ratelimit");
    assert_eq!(args(c), ["--listen", "0.0.0.0:8081"]);
    assert_eq!(
        c["ports"][0],
        json!({"name": "grpc", "containerPort": 8081})
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        rls["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
    let svc = find(
        &docs,
        "Service",
        Some("modelroute-system"),
        "modelroute-ratelimit",
    );
    assert_eq!(
        svc["spec"]["clusterIP"], "None",
        "Envoy spreads over every replica"
    );
    assert_eq!(svc["spec"]["ports"][0]["port"], 8081);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "grpc");
    // The flag the controller's manifest suggests names this Service.
    let controller = std::fs::read_to_string(root().join("deploy/controller.yaml")).unwrap();
    assert!(
        controller.contains("# - modelroute-ratelimit.modelroute-system:8081"),
        "deploy/controller.yaml"
    );
}

#[test]
fn gateway_bootstrap_passes_envoy_validate() {
    let docs = deploy_docs();
    let cm = find(
        &docs,
        "ConfigMap",
        Some("modelroute-system"),
        "modelroute-envoy-bootstrap",
    );
    let boot = cm["data"]["envoy.yaml"].as_str().expect("data.envoy.yaml");
    let parsed: Value = serde_saphyr::from_str(boot).expect("bootstrap is YAML");
    // In-cluster listener, loopback admin, every watched directory = the ConfigMap mount root.
    let listener = &parsed["static_resources"]["listeners"][0]["address"]["socket_address"];
    assert_eq!(
        (&listener["address"], &listener["port_value"]),
        (&json!("0.0.0.0"), &json!(8080))
    );
    assert_eq!(
        parsed["admin"]["address"]["socket_address"]["address"],
        "127.0.0.1"
    );
    let cds = &parsed["dynamic_resources"]["cds_config"]["path_config_source"];
    assert_eq!(cds["path"], "/etc/modelroute/cds.json");
    assert_eq!(cds["watched_directory"]["path"], "/etc/modelroute");
    assert!(boot.contains("path: /etc/modelroute/ecds.json"));
    assert!(boot.contains("path: /etc/modelroute/rds.json"));
    assert!(boot.contains(&format!(
        "path: /etc/modelroute/{}",
        controller::render::configmap::RATE_LIMIT_ECDS_KEY
    )));
    assert_eq!(
        boot.matches("watched_directory: { path: /etc/modelroute }")
            .count(),
        4,
        "CDS, RDS and both ECDS watch the mount root (kubelet swaps ..data there)"
    );

    // Kthena's metrics and access log exactly as the controller renders them (text, stdout).
    let hcm = &parsed["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    use controller::render::observability::{access_loggers, bootstrap_stats_config, AccessLog};
    assert_eq!(
        hcm["access_log"],
        Value::Array(access_loggers(&AccessLog::default())),
        "re-render with `modelroute-controller bootstrap`"
    );
    assert_eq!(parsed["stats_config"], bootstrap_stats_config());

    // Paths under /etc/modelroute do not exist here: point them at a scratch dir holding a
    // cluster-less CDS file and an ECDS file loading the real module.
    let dir = scratch("validate");
    let cfg = dir.join("etc-modelroute");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(cfg.join("cds.json"), r#"{"resources":[]}"#).unwrap();
    std::fs::write(cfg.join("rds.json"), r#"{"resources":[]}"#).unwrap();
    std::fs::write(
        cfg.join(controller::render::configmap::RATE_LIMIT_ECDS_KEY),
        r#"{"resources":[]}"#,
    )
    .unwrap();
    let ecds = json!({"resources": [{
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": "modelroute",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "modelroute", "root_id": "modelroute",
                "vm_config": {"vm_id": "modelroute", "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": wasm_module().display().to_string()}}},
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": "{}"},
                "allow_on_headers_stop_iteration": true,
                "failure_policy": "FAIL_RELOAD"
            }
        }
    }]});
    std::fs::write(cfg.join("ecds.json"), ecds.to_string()).unwrap();
    assert!(
        !boot.contains("/etc/modelroute-"),
        "only the config mount is rewritten"
    );
    let rewritten = boot.replace("/etc/modelroute", &cfg.display().to_string());
    let boot_path = dir.join("envoy.yaml");
    std::fs::write(&boot_path, rewritten).unwrap();
    test_support::envoy_validate(&boot_path, &dir.join("validate.log"));
    let _ = std::fs::remove_dir_all(&dir);
}

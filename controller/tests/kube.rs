//! `kube` mode against a fake API server (tests/kube/fake.rs): one named scenario per
//! behaviour, each with its own server and controller. Every scenario ends by checking that
//! each API call it made is granted by the RBAC rules (deploy/rbac.yaml when it exists, else
//! `controller::kube::REQUIRED_PERMISSIONS`).

#[path = "kube/fake.rs"]
mod fake;

use std::time::Duration;

use controller::kube::{lease, run, Options, OutputKind, Target};
use fake::Fake;
use serde_json::{json, Value};
use tokio::sync::oneshot;

const KTHENA: &str = "networking.serving.volcano.sh";
const NS: &str = "modelroute-system";

fn route(name: &str, targets: Value) -> Value {
    json!({"apiVersion": "networking.serving.volcano.sh/v1alpha1", "kind": "ModelRoute",
           "metadata": {"name": name, "namespace": "default", "generation": 1},
           "spec": {"modelName": name, "rules": [{"name": "default", "targetModels": targets}]}})
}

fn server(name: &str, app: &str) -> Value {
    json!({"apiVersion": "networking.serving.volcano.sh/v1alpha1", "kind": "ModelServer",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"model": format!("{name}-served"), "inferenceEngine": "vLLM",
                    "workloadSelector": {"matchLabels": {"app": app}},
                    "workloadPort": {"port": 8000}}})
}

fn pod(name: &str, app: &str, ip: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
           "spec": {"containers": [{"name": "engine", "image": "vllm"}]},
           "status": {"phase": "Running", "podIP": ip,
                      "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
}

fn options(identity: &str) -> Options {
    let mut o = Options::new(Target {
        output: OutputKind::ConfigMap,
        namespace: NS.into(),
        name: "modelroute".into(),
        wasm: "/etc/modelroute-wasm/modelroute.wasm".into(),
        wasm_sha256: None,
        mount_path: "/etc/modelroute".into(),
        istio_selector: vec![],
        istio_context: Default::default(),
    });
    o.identity = identity.into();
    o.debounce = Duration::from_millis(20);
    o.backoff = (Duration::from_millis(50), Duration::from_millis(400));
    o.lease_timing = lease::Timing {
        duration: Duration::from_secs(2),
        renew_every: Duration::from_millis(200),
    };
    o
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("controller stops")
            .expect("controller task");
    }
}

fn start(fake: &Fake, opts: Options) -> Running {
    controller::logger::init();
    let config = kube::Config::new(fake.url.parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(run(client, opts, async {
        let _ = rx.await;
    }));
    Running {
        stop: Some(tx),
        task,
    }
}

/// Polls `f` every 20 ms until it is `Some` (10 s deadline).
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn configmap(fake: &Fake) -> Option<Value> {
    fake.get("", "configmaps", NS, "modelroute")
}

fn filter_config(cm: &Value) -> Value {
    serde_json::from_str(cm["data"]["filter-config.json"].as_str().unwrap()).unwrap()
}

fn route_names(cm: &Value) -> Vec<String> {
    filter_config(cm)["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("").to_string())
        .collect()
}

fn eds_addresses(cm: &Value, cluster_file: &str) -> Vec<String> {
    let eds: Value = serde_json::from_str(cm["data"][cluster_file].as_str().unwrap()).unwrap();
    let mut out = Vec::new();
    for e in eds["resources"][0]["endpoints"].as_array().unwrap() {
        for lb in e["lb_endpoints"].as_array().unwrap() {
            out.push(
                lb["endpoint"]["address"]["socket_address"]["address"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    out
}

fn condition(obj: &Value, kind: &str) -> Option<Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

/// The RBAC rules `(group, resource, verb)` the deployment grants.
fn granted() -> Vec<(String, String, String)> {
    let rbac = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rbac.yaml");
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string(&rbac) {
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("deploy/rbac.yaml parses");
        for d in docs
            .iter()
            .filter(|d| matches!(d["kind"].as_str(), Some("ClusterRole" | "Role")))
        {
            for rule in d["rules"].as_array().into_iter().flatten() {
                let strs = |k: &str| -> Vec<String> {
                    rule[k]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                };
                for g in strs("apiGroups") {
                    for r in strs("resources") {
                        for v in strs("verbs") {
                            out.push((g.clone(), r.clone(), v.clone()));
                        }
                    }
                }
            }
        }
        return out;
    }
    for (g, r, verbs) in controller::kube::REQUIRED_PERMISSIONS {
        for v in *verbs {
            out.push((g.to_string(), r.to_string(), v.to_string()));
        }
    }
    out
}

fn assert_calls_permitted(fake: &Fake) {
    let rules = granted();
    let calls = fake.world().calls.clone();
    assert!(!calls.is_empty());
    for c in calls {
        let ok = rules.iter().any(|(g, r, v)| {
            (g == &c.group || g == "*")
                && (r == &c.resource || r == "*")
                && (v == &c.verb || v == "*")
        });
        assert!(ok, "not granted by RBAC: {c:?}");
    }
}

fn seed(fake: &Fake) {
    fake.put(KTHENA, "modelservers", server("small", "small"));
    fake.put(KTHENA, "modelservers", server("big", "big"));
    fake.put("", "pods", pod("small-0", "small", "10.0.0.1", true));
    fake.put("", "pods", pod("big-0", "big", "10.0.1.1", true));
}

const SMALL_EDS: &str = "eds-modelserver_default_small.json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_route_applies_a_configmap_with_it() {
    let fake = Fake::start().await;
    seed(&fake);
    let c = start(&fake, options("a"));
    let cm = eventually("first configmap", || configmap(&fake)).await;
    assert!(route_names(&cm).is_empty());
    fake.put(
        KTHENA,
        "modelroutes",
        route("chat", json!([{"modelServerName": "small"}])),
    );
    let cm = eventually("route in configmap", || {
        configmap(&fake).filter(|cm| route_names(cm) == vec!["default/chat"])
    })
    .await;
    for key in ["filter-config.json", "ecds.json", "cds.json", SMALL_EDS] {
        assert!(cm["data"].get(key).is_some(), "{key}");
    }
    assert_eq!(eds_addresses(&cm, SMALL_EDS), vec!["10.0.0.1"]);
    let applies: Vec<_> = fake
        .world()
        .applies
        .iter()
        .filter(|a| a.resource == "configmaps")
        .cloned()
        .collect();
    assert!(applies
        .iter()
        .all(|a| a.field_manager == "modelroute-controller"));
    let r = eventually("route accepted", || {
        fake.get(KTHENA, "modelroutes", "default", "chat")
            .filter(|r| condition(r, "Accepted").is_some())
    })
    .await;
    assert_eq!(condition(&r, "Accepted").unwrap()["status"], "True");
    assert_eq!(condition(&r, "ResolvedRefs").unwrap()["status"], "True");
    c.stop().await;
    assert_calls_permitted(&fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_weight_update_updates_the_configmap_and_unchanged_input_does_not_reapply() {
    let fake = Fake::start().await;
    seed(&fake);
    fake.put(
        KTHENA,
        "modelroutes",
        route(
            "chat",
            json!([
        {"modelServerName": "small", "weight": 70}, {"modelServerName": "big", "weight": 30}]),
        ),
    );
    let c = start(&fake, options("a"));
    let weights = |cm: &Value| -> Vec<u64> {
        filter_config(cm)["routes"][0]["rules"][0]["targets"]
            .as_array()
            .map(|ts| ts.iter().filter_map(|t| t["weight"].as_u64()).collect())
            .unwrap_or_default()
    };
    eventually("70/30", || {
        configmap(&fake).filter(|cm| weights(cm) == vec![70, 30])
    })
    .await;
    fake.put(
        KTHENA,
        "modelroutes",
        route(
            "chat",
            json!([
        {"modelServerName": "small", "weight": 20}, {"modelServerName": "big", "weight": 80}]),
        ),
    );
    eventually("20/80", || {
        configmap(&fake).filter(|cm| weights(cm) == vec![20, 80])
    })
    .await;
    let count = || {
        fake.world()
            .applies
            .iter()
            .filter(|a| a.resource == "configmaps")
            .count()
    };
    let before = count();
    // A change that does not alter the output (a label on an unrelated pod) applies nothing.
    let mut p = pod("other", "unrelated", "10.0.9.9", true);
    p["metadata"]["labels"]["x"] = json!("y");
    fake.put("", "pods", p);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(), before, "unchanged output must not be re-applied");
    c.stop().await;
    assert_calls_permitted(&fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_route_is_gone_from_the_config() {
    let fake = Fake::start().await;
    seed(&fake);
    fake.put(
        KTHENA,
        "modelroutes",
        route("chat", json!([{"modelServerName": "small"}])),
    );
    fake.put(
        KTHENA,
        "modelroutes",
        route("code", json!([{"modelServerName": "big"}])),
    );
    let c = start(&fake, options("a"));
    eventually("both routes", || {
        configmap(&fake).filter(|cm| route_names(cm).len() == 2)
    })
    .await;
    fake.delete(KTHENA, "modelroutes", "default", "chat");
    eventually("one route", || {
        configmap(&fake).filter(|cm| route_names(cm) == vec!["default/code"])
    })
    .await;
    c.stop().await;
    assert_calls_permitted(&fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_readiness_changes_the_endpoints() {
    let fake = Fake::start().await;
    seed(&fake);
    fake.put(
        KTHENA,
        "modelroutes",
        route("chat", json!([{"modelServerName": "small"}])),
    );
    let c = start(&fake, options("a"));
    eventually("one endpoint", || {
        configmap(&fake).filter(|cm| eds_addresses(cm, SMALL_EDS) == vec!["10.0.0.1"])
    })
    .await;
    fake.put("", "pods", pod("small-1", "small", "10.0.0.2", false));
    fake.put("", "pods", pod("small-1", "small", "10.0.0.2", true));
    eventually("pod became ready", || {
        configmap(&fake).filter(|cm| eds_addresses(cm, SMALL_EDS) == vec!["10.0.0.1", "10.0.0.2"])
    })
    .await;
    fake.put("", "pods", pod("small-0", "small", "10.0.0.1", false));
    eventually("pod became unready", || {
        configmap(&fake).filter(|cm| eds_addresses(cm, SMALL_EDS) == vec!["10.0.0.2"])
    })
    .await;
    c.stop().await;
    assert_calls_permitted(&fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_route_gets_an_event_and_accepted_false_and_the_configmap_stays() {
    let fake = Fake::start().await;
    seed(&fake);
    fake.put(
        KTHENA,
        "modelroutes",
        route("chat", json!([{"modelServerName": "small"}])),
    );
    let c = start(&fake, options("a"));
    let good = eventually("good configmap", || {
        configmap(&fake).filter(|cm| route_names(cm) == vec!["default/chat"])
    })
    .await;
    // A rule without targets, and a route naming a server that does not exist.
    fake.put(KTHENA, "modelroutes", route("broken", json!([])));
    fake.put(
        KTHENA,
        "modelroutes",
        route("dangling", json!([{"modelServerName": "nope"}])),
    );
    let broken = eventually("Accepted=False", || {
        fake.get(KTHENA, "modelroutes", "default", "broken")
            .filter(|r| condition(r, "Accepted").is_some_and(|c| c["status"] == "False"))
    })
    .await;
    let accepted = condition(&broken, "Accepted").unwrap();
    assert_eq!(accepted["reason"], "Invalid");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .contains("spec.rules[0]"),
        "{accepted}"
    );
    let events = eventually("InvalidSpec event", || {
        let evs = fake.world().list("events.k8s.io", "events");
        let ours: Vec<Value> = evs
            .into_iter()
            .filter(|e| e["reason"] == "InvalidSpec" && e["regarding"]["name"] == "broken")
            .collect();
        (!ours.is_empty()).then_some(ours)
    })
    .await;
    assert_eq!(events[0]["type"], "Warning");
    assert_eq!(events[0]["regarding"]["kind"], "ModelRoute");
    assert_eq!(events[0]["note"], accepted["message"]);
    let dangling = eventually("ResolvedRefs=False", || {
        fake.get(KTHENA, "modelroutes", "default", "dangling")
            .filter(|r| condition(r, "ResolvedRefs").is_some())
    })
    .await;
    let rr = condition(&dangling, "ResolvedRefs").unwrap();
    assert_eq!(
        (rr["status"].as_str(), rr["reason"].as_str()),
        (Some("False"), Some("ModelServerNotFound"))
    );
    let chat = fake.get(KTHENA, "modelroutes", "default", "chat").unwrap();
    assert_eq!(condition(&chat, "Accepted").unwrap()["status"], "True");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        configmap(&fake).unwrap()["data"],
        good["data"],
        "last good config stays"
    );
    // Fixing the route applies it.
    fake.put(
        KTHENA,
        "modelroutes",
        route("broken", json!([{"modelServerName": "big"}])),
    );
    eventually("fixed route applied", || {
        configmap(&fake).filter(|cm| route_names(cm).contains(&"default/broken".to_string()))
    })
    .await;
    c.stop().await;
    assert_calls_permitted(&fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_retried_with_backoff_until_it_converges() {
    let fake = Fake::start().await;
    seed(&fake);
    let c = start(&fake, options("a"));
    eventually("first configmap", || configmap(&fake)).await;
    fake.outage(Duration::from_millis(1500));
    fake.put(
        KTHENA,
        "modelroutes",
        route("chat", json!([{"modelServerName": "small"}])),
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        configmap(&fake).is_some_and(|cm| route_names(&cm).is_empty()),
        "nothing can be applied during the outage"
    );
    let failed = fake.world().calls.len();
    eventually("converged after the outage", || {
        configmap(&fake).filter(|cm| route_names(cm) == vec!["default/chat"])
    })
    .await;
    // Backoff, not a busy loop: a 1.5 s outage with delays from 50 ms doubling to 400 ms costs
    // a few dozen calls across the three watchers, the lease and the reconciler.
    assert!(failed < 200, "{failed} calls during the outage");
    assert!(!c.task.is_finished(), "the controller keeps running");
    c.stop().await;
    assert_calls_permitted(&fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_applies() {
    let fake = Fake::start().await;
    seed(&fake);
    let mut a_opts = options("a");
    a_opts.field_manager = "manager-a".into();
    let a = start(&fake, a_opts);
    eventually("a applies", || configmap(&fake)).await;
    let mut b_opts = options("b");
    b_opts.field_manager = "manager-b".into();
    let b = start(&fake, b_opts);
    fake.put(
        KTHENA,
        "modelroutes",
        route("chat", json!([{"modelServerName": "small"}])),
    );
    eventually("route applied", || {
        configmap(&fake).filter(|cm| route_names(cm) == vec!["default/chat"])
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let managers = |fake: &Fake| -> Vec<String> {
        fake.world()
            .applies
            .iter()
            .map(|a| a.field_manager.clone())
            .collect()
    };
    assert!(
        managers(&fake).iter().all(|m| m == "manager-a"),
        "{:?}",
        managers(&fake)
    );
    let lease = fake
        .get("coordination.k8s.io", "leases", NS, "modelroute-controller")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "a");

    // a leaves: it releases the lease and b takes over at once, without waiting for expiry.
    a.stop().await;
    let lease = fake
        .get("coordination.k8s.io", "leases", NS, "modelroute-controller")
        .unwrap();
    assert!(
        lease["spec"]
            .get("holderIdentity")
            .is_none_or(Value::is_null),
        "{lease}"
    );
    fake.put(
        KTHENA,
        "modelroutes",
        route("code", json!([{"modelServerName": "big"}])),
    );
    eventually("b applies", || {
        configmap(&fake).filter(|cm| route_names(cm).len() == 2)
    })
    .await;
    assert!(managers(&fake).iter().any(|m| m == "manager-b"));
    b.stop().await;
    assert_calls_permitted(&fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_of_a_live_foreign_lease_does_not_apply() {
    let fake = Fake::start().await;
    seed(&fake);
    let now = k8s_openapi::jiff::Timestamp::now();
    fake.put(
        "coordination.k8s.io",
        "leases",
        json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "modelroute-controller", "namespace": NS},
        "spec": {"holderIdentity": "someone-else", "leaseDurationSeconds": 3600,
                 "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()}}),
    );
    let c = start(&fake, options("a"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(configmap(&fake).is_none(), "a follower applies nothing");
    assert!(fake.world().applies.is_empty(), "nor writes status");
    c.stop().await;
    let lease = fake
        .get("coordination.k8s.io", "leases", NS, "modelroute-controller")
        .unwrap();
    assert_eq!(
        lease["spec"]["holderIdentity"], "someone-else",
        "a follower releases nothing"
    );
    assert_calls_permitted(&fake);
}

/// deploy/crds/ is generated from `controller::kube::crd`; `UPDATE_GOLDEN=1` rewrites it.
#[test]
fn crd_manifests_match_deploy_crds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v != "0");
    for (file, yaml) in controller::kube::crd::manifests() {
        let path = dir.join(file);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &yaml).unwrap();
            continue;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == yaml,
            "{} is stale: run UPDATE_GOLDEN=1 cargo test -p controller --test kube crd",
            path.display()
        );
        // And it is a CRD the API server would take: a structural schema with status.
        let crd: Value = serde_saphyr::from_str(&yaml).unwrap();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["subresources"]["status"], json!({}));
        assert_eq!(version["schema"]["openAPIV3Schema"]["type"], "object");
    }
}

/// The binary: kube config from KUBECONFIG, SIGTERM stops it with exit 0 and the Lease free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exits_cleanly_on_sigterm_and_releases_the_lease() {
    let fake = Fake::start().await;
    seed(&fake);
    let dir = std::env::temp_dir().join(format!("modelroute-kube-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: fake, user: u}}}}]\n\
             current-context: c\n",
            fake.url
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_modelroute-controller"))
        .args(["kube", "--identity", "bin", "--debounce-ms", "10"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .spawn()
        .unwrap();
    eventually("binary applies", || configmap(&fake)).await;
    let lease = || {
        fake.get("coordination.k8s.io", "leases", NS, "modelroute-controller")
            .unwrap()
    };
    assert_eq!(lease()["spec"]["holderIdentity"], "bin");
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(lease()["spec"]
        .get("holderIdentity")
        .is_none_or(Value::is_null));
    let _ = std::fs::remove_dir_all(&dir);
    assert_calls_permitted(&fake);
}

/// Kthena's router configuration ConfigMap with `maxWaitingRequests: n`.
fn router_config_map(n: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kthena-router-config", "namespace": "kthena-system"},
        "data": {"routerConfiguration": format!(
            "scheduler:\n  pluginConfig:\n  - name: least-request\n    args:\n      maxWaitingRequests: {n}\n  plugins:\n    Filter:\n      enabled: [least-request]\n    Score:\n      enabled:\n      - {{ name: least-request, weight: 1 }}\n"
        )},
    })
}

fn max_waiting(cm: &Value) -> Option<u64> {
    filter_config(cm)["settings"]["scheduler"]["max_waiting_requests"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_configmap_sets_the_scheduler_live_and_a_bad_edit_keeps_the_last_good() {
    let fake = Fake::start().await;
    seed(&fake);
    fake.put("", "configmaps", router_config_map("4"));
    let c = start(&fake, options("a"));
    eventually("scheduler from the router ConfigMap", || {
        configmap(&fake).filter(|cm| max_waiting(cm) == Some(4))
    })
    .await;
    let scores = &filter_config(&configmap(&fake).unwrap())["settings"]["scheduler"]["scores"];
    assert_eq!(scores.as_array().map(Vec::len), Some(1), "{scores}");

    // An edit applies live.
    fake.put("", "configmaps", router_config_map("7"));
    eventually("the edited scheduler", || {
        configmap(&fake).filter(|cm| max_waiting(cm) == Some(7))
    })
    .await;

    // An invalid edit changes nothing.
    fake.put("", "configmaps", router_config_map("0"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(configmap(&fake).and_then(|cm| max_waiting(&cm)), Some(7));

    // Deleted: back to the defaults (Kthena's Helm chart: 10).
    fake.delete("", "configmaps", "kthena-system", "kthena-router-config");
    eventually("the default scheduler", || {
        configmap(&fake).filter(|cm| max_waiting(cm) == Some(10))
    })
    .await;
    c.stop().await;
    assert_calls_permitted(&fake);
}

//! End-to-end harness: real mock-llm pods, the real controller and a real Envoy with the built
//! filter, all on loopback. Each [`Stack`] takes its own loopback /24 (127.a.b.0) and free
//! ports, so tests run in parallel. Readiness is polled with deadlines, never slept for.
//!
//! Artifacts, ports, waits and the raw HTTP client come from the `test-support` crate, shared
//! with the controller's and mock-llm's tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use test_support::{
    bin, free_port, http, loopback_net, repo_root, wait_until, wasm, ReservedPort, Response,
};

pub mod pool;

pub const SEED_RESOURCES: &str = "examples/kthena";

fn root() -> PathBuf {
    repo_root()
}

/// A pod of the test's pod list.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub model: String,
    pub aliases: Vec<String>,
    pub lora: Vec<String>,
    pub ready: bool,
    /// Extra container env (PD_ROLE, KV_CONNECTOR, INFERENCE_ENGINE, MOCK_DELAY_MS, ...).
    /// `{BOOTSTRAP_PORT}` in a value becomes the stack's SGLang bootstrap port.
    pub env: Vec<(String, String)>,
    /// False: the pod is listed (Ready) but no engine runs at its address (a dead pod).
    pub running: bool,
}

impl Pod {
    pub fn new(name: &str, labels: &[(&str, &str)], model: &str) -> Self {
        Pod {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            model: model.into(),
            aliases: vec![],
            lora: vec![],
            ready: true,
            env: vec![],
            running: true,
        }
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn dead(mut self) -> Self {
        self.running = false;
        self
    }
    pub fn lora(mut self, adapters: &[&str]) -> Self {
        self.lora = adapters.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn alias(mut self, name: &str) -> Self {
        self.aliases.push(name.into());
        self
    }
    pub fn not_ready(mut self) -> Self {
        self.ready = false;
        self
    }
}

/// The seed's demo pods (as examples/pods.yaml, fewer replicas).
pub fn seed_pods() -> Vec<Pod> {
    let m15 = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B";
    vec![
        Pod::new("ds15-a", &[("app", "deepseek-r1-1-5b")], m15).lora(&["lora-A", "lora-B"]),
        Pod::new("ds15-b", &[("app", "deepseek-r1-1-5b")], m15).lora(&["lora-A", "lora-B"]),
        Pod::new(
            "ds7-a",
            &[("app", "deepseek-r1-7b")],
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        ),
        Pod::new(
            "ds15-v1",
            &[("app", "deepseek-r1-1-5b"), ("version", "v1")],
            &format!("{m15}-v1"),
        )
        .alias(m15)
        .lora(&["lora-A", "lora-B"]),
        Pod::new(
            "ds15-v2",
            &[("app", "deepseek-r1-1-5b"), ("version", "v2")],
            &format!("{m15}-v2"),
        )
        .alias(m15)
        .lora(&["lora-A", "lora-B"]),
    ]
}

/// A running mock pods + controller + Envoy stack.
pub struct Stack {
    pub dir: PathBuf,
    pub port: u16,
    pub admin: u16,
    pub pod_port: u16,
    /// SGLang prefill pods' bootstrap port (`{BOOTSTRAP_PORT}` in resources and env).
    pub bootstrap_port: u16,
    pub pods: Vec<(Pod, String)>,
    children: Vec<(&'static str, Child)>,
}

#[derive(Default)]
pub struct Options {
    pub controller_args: Vec<String>,
    /// Kthena router configuration (scheduler) YAML, passed as `--scheduler-config`.
    pub scheduler: Option<String>,
    /// Edits of the shipped envoy/envoy.yaml, `(from, to)`: e.g. a timeout shortened so a test
    /// can wait it out. Each `from` must be in the file, so a test never silently checks a
    /// setting the file no longer has.
    pub bootstrap_edits: Vec<(&'static str, &'static str)>,
    /// More `modelroute-controller bootstrap` flags (e.g. `--rate-limit-service`).
    pub bootstrap_args: Vec<String>,
    /// Run the gateway of deploy/envoy-gateway.yaml instead of envoy/envoy.yaml, fed by the
    /// ConfigMap `render --target configmap` makes (with `controller_args`), rendered once at
    /// the start (later resource edits do not reach it).
    pub gateway_manifest: bool,
}

impl Stack {
    /// Starts a stack serving the seed's Kthena YAML (examples/kthena) with `pods`.
    pub fn seed(pods: Vec<Pod>) -> Stack {
        Stack::start(&read_seed_resources(), pods, Options::default())
    }

    /// `resources` is Kthena YAML; `{PORT}` in it is replaced by the pods' port.
    pub fn start(resources: &str, pods: Vec<Pod>, opts: Options) -> Stack {
        let (a, b) = loopback_net();
        let dir =
            std::env::temp_dir().join(format!("modelroute-e2e-{}-{a}-{b}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("resources")).expect("temp dir");
        let pod_port = free_port();
        let pods: Vec<(Pod, String)> = pods
            .into_iter()
            .enumerate()
            .map(|(i, p)| (p, Ipv4Addr::new(127, a, b, (i + 2) as u8).to_string()))
            .collect();
        // Envoy's ports stay bound here until Envoy is about to bind them itself.
        let (listen, admin) = (ReservedPort::new(), ReservedPort::new());
        let mut s = Stack {
            dir: dir.clone(),
            port: listen.port(),
            admin: admin.port(),
            pod_port,
            bootstrap_port: free_port(),
            pods,
            children: vec![],
        };
        s.write_resources("routes.yaml", resources);
        std::fs::write(dir.join("pods.yaml"), s.pods_yaml(false)).expect("pods.yaml");
        std::fs::write(dir.join("running-pods.yaml"), s.pods_yaml(true))
            .expect("running-pods.yaml");

        // Mock engines, one process per pod.
        let mock_log = dir.join("mock-llm.log");
        let child = Command::new(bin("mock-llm"))
            .args(["pods", "--file"])
            .arg(dir.join("running-pods.yaml"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&mock_log).expect("log"))
            .spawn()
            .expect("spawn mock-llm");
        s.children.push(("mock-llm", child));
        let stdout = s
            .children
            .last_mut()
            .and_then(|(_, c)| c.stdout.take())
            .expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("mock-llm pods ready") => break,
                Some(Ok(_)) => {}
                _ => panic!("mock-llm pods did not start; see {}", mock_log.display()),
            }
            assert!(Instant::now() < deadline, "mock-llm pods not ready in time");
        }
        // Keep draining its stdout so the pipe never fills.
        std::thread::spawn(move || for _ in lines {});
        s.start_router(&opts, listen, admin);
        s
    }

    /// Another gateway (controller and Envoy) in front of this stack's pods, with its own
    /// options, as a second Envoy replica would be: the same resources and pod list.
    pub fn another_gateway(&self, opts: Options) -> Stack {
        let (a, b) = loopback_net();
        let dir = std::env::temp_dir().join(format!(
            "modelroute-e2e-{}-{a}-{b}-gateway",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("resources")).expect("temp dir");
        for entry in std::fs::read_dir(self.dir.join("resources")).expect("resources") {
            let path = entry.expect("resources entry").path();
            if let Some(name) = path.file_name() {
                std::fs::copy(&path, dir.join("resources").join(name)).expect("copy resources");
            }
        }
        std::fs::copy(self.dir.join("pods.yaml"), dir.join("pods.yaml")).expect("pods.yaml");
        let (listen, admin) = (ReservedPort::new(), ReservedPort::new());
        let mut s = Stack {
            dir,
            port: listen.port(),
            admin: admin.port(),
            pod_port: self.pod_port,
            bootstrap_port: self.bootstrap_port,
            pods: self.pods.clone(),
            children: vec![],
        };
        s.start_router(&opts, listen, admin);
        s
    }

    /// The controller (watch mode) and Envoy of this stack, on `listen` and `admin`.
    fn start_router(&mut self, opts: &Options, listen: ReservedPort, admin: ReservedPort) {
        let s = self;
        let dir = s.dir.clone();
        // Controller in watch mode.
        let mut args: Vec<String> = vec!["watch".into(), "--resources".into()];
        args.push(dir.join("resources").display().to_string());
        args.extend(["--pods".into(), dir.join("pods.yaml").display().to_string()]);
        args.extend(["--wasm".into(), wasm().display().to_string()]);
        args.extend(["--out".into(), dir.join("config").display().to_string()]);
        args.extend(["--interval-ms".into(), "100".into()]);
        args.extend(opts.controller_args.iter().cloned());
        if let Some(sched) = &opts.scheduler {
            std::fs::write(dir.join("scheduler.yaml"), sched).expect("scheduler.yaml");
            args.extend([
                "--scheduler-config".into(),
                dir.join("scheduler.yaml").display().to_string(),
            ]);
        }
        let child = Command::new(bin("modelroute-controller"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("controller.log")).expect("log"))
            .spawn()
            .expect("spawn controller");
        s.children.push(("controller", child));
        wait_until(Duration::from_secs(20), "controller's first render", || {
            dir.join("config/ecds/modelroute.json").exists()
        });

        // Envoy.
        let mut yaml = if opts.gateway_manifest {
            let mount = dir.join("mount");
            write_configmap_files(&dir, &mount, &opts.controller_args);
            gateway_manifest_bootstrap(s.port, s.admin, &mount, &dir.join("access.log"))
        } else {
            render_bootstrap(s.port, s.admin, &dir.join("config"), &opts.bootstrap_args)
        };
        for (from, to) in &opts.bootstrap_edits {
            assert!(yaml.contains(from), "envoy/envoy.yaml has no {from:?}");
            yaml = yaml.replace(from, to);
        }
        std::fs::write(dir.join("envoy.yaml"), yaml).expect("envoy.yaml");
        let _ = (listen.release(), admin.release());
        let child = test_support::envoy_command(&dir.join("envoy.yaml"), &dir.join("envoy.log"))
            .spawn()
            .expect("spawn envoy");
        s.children.push(("envoy", child));
        wait_until(
            Duration::from_secs(30),
            "Envoy ready with the filter configured",
            || {
                s.try_request("GET", "/v1/models", &[], b"")
                    .map(|r| r.status == 200)
                    .unwrap_or(false)
            },
        );
    }

    /// The pod list; `running_only` leaves out dead pods (for the mock launcher).
    fn pods_yaml(&self, running_only: bool) -> String {
        let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
        for (p, ip) in self.pods.iter().filter(|(p, _)| p.running || !running_only) {
            y += &format!("- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: {}\n    namespace: default\n    labels:\n", p.name);
            for (k, v) in &p.labels {
                y += &format!("      {k}: \"{v}\"\n");
            }
            y += "  spec:\n    containers:\n    - name: llm-engine\n      env:\n";
            y += &format!("      - name: MODEL_NAME\n        value: \"{}\"\n", p.model);
            if !p.aliases.is_empty() {
                y += &format!(
                    "      - name: SERVED_MODEL_ALIASES\n        value: \"{}\"\n",
                    p.aliases.join(",")
                );
            }
            if !p.lora.is_empty() {
                y += &format!(
                    "      - name: LORA_ADAPTERS\n        value: \"{}\"\n",
                    p.lora.join(",")
                );
            }
            for (k, v) in &p.env {
                let v = v.replace("{BOOTSTRAP_PORT}", &self.bootstrap_port.to_string());
                y += &format!("      - name: {k}\n        value: \"{v}\"\n");
            }
            y += &format!("      ports:\n      - containerPort: {}\n", self.pod_port);
            y += &format!(
                "  status:\n    phase: Running\n    podIP: {ip}\n    conditions:\n    - type: Ready\n      status: \"{}\"\n",
                if p.ready { "True" } else { "False" }
            );
        }
        y
    }

    /// Replaces a resources file atomically (temp + rename), as an editor or kubectl would.
    pub fn write_resources(&self, name: &str, yaml: &str) {
        let yaml = yaml
            .replace("port: 8000", &format!("port: {}", self.pod_port))
            .replace("{PORT}", &self.pod_port.to_string())
            .replace("{BOOTSTRAP_PORT}", &self.bootstrap_port.to_string());
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).expect("write resources");
        std::fs::rename(&tmp, self.dir.join("resources").join(name)).expect("rename resources");
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    pub fn pod_addr(&self, name: &str) -> String {
        let ip = &self
            .pods
            .iter()
            .find(|(p, _)| p.name == name)
            .expect("pod")
            .1;
        format!("{ip}:{}", self.pod_port)
    }

    pub fn pod_name_of(&self, addr: &str) -> Option<String> {
        self.pods
            .iter()
            .find(|(_, ip)| format!("{ip}:{}", self.pod_port) == addr)
            .map(|(p, _)| p.name.clone())
    }

    /// What one mock pod received (its `GET /mock/requests`).
    pub fn pod_requests(&self, name: &str) -> Vec<serde_json::Value> {
        let r =
            http(&self.pod_addr(name), "GET", "/mock/requests", &[], b"").expect("mock requests");
        serde_json::from_slice::<Vec<serde_json::Value>>(&r.body).expect("mock requests JSON")
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        http(
            &format!("127.0.0.1:{}", self.port),
            method,
            path,
            headers,
            body,
        )
    }

    /// POST a JSON body to the router.
    pub fn post(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Response {
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        self.request("POST", path, &h, body.as_bytes())
    }

    pub fn completion(&self, model: &str, headers: &[(&str, &str)]) -> Response {
        let body =
            format!(r#"{{"model": "{model}", "prompt": "San Francisco is a", "temperature": 0}}"#);
        self.post("/v1/completions", &body, headers)
    }

    /// A counter or gauge from Envoy's admin `/stats` (0 when absent).
    pub fn stat(&self, name: &str) -> u64 {
        self.stats(&format!("^{name}$"))
            .into_iter()
            .find_map(|(n, v)| (n == name).then_some(v))
            .unwrap_or(0)
    }

    /// Every counter or gauge whose name matches the regex `filter` (admin `/stats`).
    pub fn stats(&self, filter: &str) -> Vec<(String, u64)> {
        test_support::admin_stats(self.admin, filter)
    }

    /// Holds engine gauges on a mock pod (`POST /mock/metrics`).
    pub fn hold_metrics(&self, pod: &str, json: &str) {
        let r = http(
            &self.pod_addr(pod),
            "POST",
            "/mock/metrics",
            &[("content-type", "application/json")],
            json.as_bytes(),
        )
        .expect("hold metrics");
        assert_eq!(r.status, 204, "{}", r.text());
    }

    /// Waits until the filter's collector has completed `rounds` more scrape rounds of every
    /// pod (so held metrics have been collected, published and read by every worker).
    pub fn wait_for_scrapes(&self, rounds: u64) {
        let per_round = 2 * self.pods.iter().filter(|(p, _)| p.running).count() as u64;
        let start = self.stat("wasmcustom.modelroute.metrics.scrape_ok");
        wait_until(Duration::from_secs(20), "metrics scrapes", || {
            self.stat("wasmcustom.modelroute.metrics.scrape_ok") >= start + rounds * per_round
        });
    }

    /// Kills the mock engine of one pod (the pod stays listed as Ready).
    pub fn kill_pod(&self, name: &str) {
        let needle = format!("--listen\0{}\0", self.pod_addr(name));
        for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            if String::from_utf8_lossy(&cmd).contains(&needle) {
                let pid = e.file_name().to_string_lossy().to_string();
                let _ = Command::new("kill").args(["-9", &pid]).status();
                return;
            }
        }
        panic!("no mock process for {name}");
    }

    /// Kthena's access log records (JSON lines) of inference requests (POST; the stack's own
    /// readiness probes are GETs), once there are at least `n` (Envoy writes the file out
    /// every second). Only whole lines: the file may be read while Envoy writes its last one.
    pub fn access_log(&self, n: usize) -> Vec<serde_json::Value> {
        let read = || -> Vec<serde_json::Value> {
            let text = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
            let whole = text.rfind('\n').map_or("", |end| &text[..end]);
            whole
                .lines()
                .map(|l| serde_json::from_str(l).expect("access log line is JSON"))
                .filter(|r: &serde_json::Value| r["method"] == "POST")
                .collect()
        };
        wait_until(Duration::from_secs(10), "access log records", || {
            read().len() >= n
        });
        read()
    }

    /// Envoy's `/stats/prometheus`.
    pub fn prometheus(&self) -> String {
        let r = http(
            &format!("127.0.0.1:{}", self.admin),
            "GET",
            "/stats/prometheus",
            &[],
            b"",
        )
        .expect("admin /stats/prometheus");
        r.text()
    }

    /// The summed value of the Prometheus series `name` whose labels include `labels`, once
    /// it is at least `at_least` (histograms reach the admin output at Envoy's 5 s flush).
    pub fn series_sum(&self, name: &str, labels: &[(&str, &str)], at_least: f64) -> f64 {
        let mut v = 0.0;
        let found = wait_until_ok(Duration::from_secs(12), || {
            v = series_sum(&self.prometheus(), name, labels);
            v >= at_least
        });
        assert!(
            found,
            "{name}{labels:?} stayed at {v} (< {at_least}):\n{}",
            self.prometheus()
        );
        v
    }

    pub fn log(&self, which: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{which}.log"))).unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, c) in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("e2e: kept {} for inspection", self.dir.display());
        }
    }
}

/// The sum over the series `name{...}` of a Prometheus text whose labels include `labels`.
pub fn series_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let (n, rest) = head.split_once('{').unwrap_or((head, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Polls `done` until it holds or `limit` passes; whether it held.
fn wait_until_ok(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    done()
}

pub fn read_seed_resources() -> String {
    let dir = root().join(SEED_RESOURCES);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("read example"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// One ModelServer `pool` (pods labelled `app: pool`, vLLM, serving `model`) and the ModelRoute
/// `pool` to it (modelName `pool`, and `lora` as its adapters), in Kthena's YAML.
pub fn pool_resources(model: &str, lora: &[&str]) -> String {
    let adapters = if lora.is_empty() {
        String::new()
    } else {
        format!("  loraAdapters: {lora:?}\n")
    };
    format!(
        r#"apiVersion: networking.serving.volcano.sh/v1alpha1
kind: ModelServer
metadata: {{ name: pool, namespace: default }}
spec:
  workloadSelector: {{ matchLabels: {{ app: pool }} }}
  workloadPort: {{ port: 8000 }}
  model: "{model}"
  inferenceEngine: vLLM
---
apiVersion: networking.serving.volcano.sh/v1alpha1
kind: ModelRoute
metadata: {{ name: pool, namespace: default }}
spec:
  modelName: "pool"
{adapters}  rules:
  - name: default
    targetModels:
    - modelServerName: pool
"#
    )
}

/// The shipped bootstrap as `modelroute-controller bootstrap` renders it, Kthena's access log
/// as JSON lines in `access.log` next to `config_dir`.
pub fn render_bootstrap(port: u16, admin: u16, config_dir: &Path, extra: &[String]) -> String {
    let log = config_dir.with_file_name("access.log");
    let mut cmd = Command::new(bin("modelroute-controller"));
    cmd.args(["bootstrap", "--listen-port", &port.to_string()])
        .args([
            "--admin-port",
            &admin.to_string(),
            "--access-log-format",
            "json",
        ])
        .arg("--config-dir")
        .arg(config_dir)
        .arg("--access-log")
        .arg(&log)
        .args(extra);
    controller_output(&mut cmd)
}

/// What a one-shot `modelroute-controller` command prints, which must succeed.
fn controller_output(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run modelroute-controller");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The files of the ConfigMap the controller renders for the resources and pods in `dir`
/// (`render --target configmap`, mounted at `mount`), written into `mount` as the kubelet would.
fn write_configmap_files(dir: &Path, mount: &Path, controller_args: &[String]) {
    let mut cmd = Command::new(bin("modelroute-controller"));
    cmd.args(["render", "--target", "configmap", "--print", "--resources"])
        .arg(dir.join("resources"))
        .arg("--pods")
        .arg(dir.join("pods.yaml"))
        .arg("--wasm")
        .arg(wasm())
        .arg("--mount-dir")
        .arg(mount)
        .args(controller_args);
    let text = controller_output(&mut cmd);
    let configmap: serde_json::Value = serde_saphyr::from_str(&text).expect("one ConfigMap");
    std::fs::create_dir_all(mount).expect("mount dir");
    for (key, content) in configmap["data"].as_object().expect("data") {
        std::fs::write(mount.join(key), content.as_str().expect("a file")).expect("write file");
    }
}

/// The bootstrap of deploy/envoy-gateway.yaml, listening on loopback `port` (admin `admin`),
/// the ConfigMap's mount at `mount`, the access log in `access_log`.
pub fn gateway_manifest_bootstrap(
    port: u16,
    admin: u16,
    mount: &Path,
    access_log: &Path,
) -> String {
    let manifest = std::fs::read_to_string(root().join("deploy/envoy-gateway.yaml"))
        .expect("deploy/envoy-gateway.yaml");
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&manifest).expect("deploy/envoy-gateway.yaml is YAML");
    let mut yaml = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "modelroute-envoy-bootstrap")
        .and_then(|d| d["data"]["envoy.yaml"].as_str())
        .expect("the bootstrap ConfigMap")
        .to_string();
    let edits = [
        (
            "address: 0.0.0.0, port_value: 8080".to_string(),
            format!("address: 127.0.0.1, port_value: {port}"),
        ),
        ("port_value: 9901".into(), format!("port_value: {admin}")),
        ("/etc/modelroute".into(), mount.display().to_string()),
        ("/dev/stdout".into(), access_log.display().to_string()),
    ];
    for (from, to) in edits {
        assert!(
            yaml.contains(&from),
            "the gateway bootstrap has no {from:?}"
        );
        yaml = yaml.replace(&from, &to);
    }
    yaml
}

/// A completion for the model `pool` that Kthena estimates at 5 input tokens (a 20-character
/// prompt): the unit the rate-limit tests count in.
pub fn five_tokens(s: &Stack) -> Response {
    s.post(
        "/v1/completions",
        r#"{"model":"pool","prompt":"abcdefghijklmnopqrst"}"#,
        &[],
    )
}

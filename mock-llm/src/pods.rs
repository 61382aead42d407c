//! Pods: reading a Kubernetes Pod list (`kubectl get pods -o yaml`, or multi-document YAML of
//! single Pods) into the `serve` arguments of one mock pod each, and supervising those child
//! processes (start, wait for `/health`, report unexpected exits, kill and reap on shutdown).
//! Parsing is pure and unit-tested; it must not decide anything about routing.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::engine::{EngineKind, KvConnector, PdSettings, Role};

/// Port used when neither `--port` nor a `containerPort` is given.
pub const DEFAULT_PORT: u16 = 8000;
/// How long all children get to answer `/health`.
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// One mock pod to start: the arguments of `mock-llm serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    /// `namespace/name`
    pub pod: String,
    pub listen: SocketAddr,
    pub model: String,
    pub aliases: Vec<String>,
    pub lora: Vec<String>,
    pub engine: EngineKind,
    /// From env `PD_ROLE`, `KV_CONNECTOR`, `SGLANG_BOOTSTRAP_PORT`,
    /// `SGLANG_BOOTSTRAP_TIMEOUT_MS`.
    pub pd: PdSettings,
    /// From env `MOCK_DELAY_MS`, `MOCK_STATUS`, `MAX_RUNNING` (a slow, failing or queueing
    /// pod, for tests).
    pub steer: crate::server::Steer,
}

impl PodPlan {
    /// The `serve` command line (without the program name).
    pub fn serve_args(&self) -> Vec<String> {
        let mut args = vec![
            "serve".to_string(),
            "--listen".to_string(),
            self.listen.to_string(),
            "--model".to_string(),
            self.model.clone(),
            "--pod".to_string(),
            self.pod.clone(),
            "--engine".to_string(),
            match self.engine {
                EngineKind::Vllm => "vllm".to_string(),
                EngineKind::Sglang => "sglang".to_string(),
            },
        ];
        for a in &self.aliases {
            args.push("--alias".to_string());
            args.push(a.clone());
        }
        if !self.lora.is_empty() {
            args.push("--lora".to_string());
            args.push(self.lora.join(","));
        }
        // Only what differs from the defaults, so aggregated pods keep their old command line.
        let default = PdSettings::default();
        if let Some(role) = self.pd.role {
            args.push("--role".to_string());
            args.push(role.as_str().to_string());
        }
        if self.pd.kv_connector != default.kv_connector {
            args.push("--kv-connector".to_string());
            args.push(self.pd.kv_connector.as_str().to_string());
        }
        if self.pd.bootstrap_port != default.bootstrap_port {
            args.push("--bootstrap-port".to_string());
            args.push(self.pd.bootstrap_port.to_string());
        }
        if self.pd.bootstrap_timeout_ms != default.bootstrap_timeout_ms {
            args.push("--bootstrap-timeout-ms".to_string());
            args.push(self.pd.bootstrap_timeout_ms.to_string());
        }
        if let Some(ms) = self.steer.delay_ms {
            args.push("--delay-ms".to_string());
            args.push(ms.to_string());
        }
        if let Some(s) = self.steer.status {
            args.push("--status".to_string());
            args.push(s.to_string());
        }
        if let Some(n) = self.steer.max_running {
            args.push("--max-running".to_string());
            args.push(n.to_string());
        }
        args
    }
}

/// Why a pods file could not be turned into plans.
#[derive(Debug)]
pub enum InvalidPods {
    Yaml(String),
    NoModel {
        pod: String,
    },
    BadIp {
        pod: String,
        ip: String,
    },
    BadEngine {
        pod: String,
        engine: String,
    },
    BadEnv {
        pod: String,
        name: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl fmt::Display for InvalidPods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidPods::Yaml(e) => write!(f, "cannot parse pods YAML: {e}"),
            InvalidPods::NoModel { pod } => write!(
                f,
                "pod {pod}: no container has env MODEL_NAME (the served model is required)"
            ),
            InvalidPods::BadIp { pod, ip } => {
                write!(f, "pod {pod}: status.podIP {ip:?} is not an IP address")
            }
            InvalidPods::BadEngine { pod, engine } => write!(
                f,
                "pod {pod}: env INFERENCE_ENGINE {engine:?} is not vllm or sglang"
            ),
            InvalidPods::BadEnv {
                pod,
                name,
                value,
                expected,
            } => write!(f, "pod {pod}: env {name} {value:?} is not {expected}"),
        }
    }
}

impl std::error::Error for InvalidPods {}

// Only the fields we use; Kubernetes objects carry many more, which serde ignores.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Doc {
    kind: Option<String>,
    items: Vec<PodObj>,
    metadata: Meta,
    spec: Spec,
    status: Status,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PodObj {
    kind: Option<String>,
    metadata: Meta,
    spec: Spec,
    status: Status,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Spec {
    containers: Vec<Container>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Container {
    env: Vec<EnvVar>,
    ports: Vec<Port>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EnvVar {
    name: String,
    // Any scalar (kubectl always quotes, hand-written files may not); `valueFrom` gives none.
    value: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Port {
    container_port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Status {
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
}

impl PodObj {
    fn env(&self, key: &str) -> Option<String> {
        self.spec.containers.iter().find_map(|c| {
            c.env
                .iter()
                .find(|e| e.name == key)
                .and_then(|e| e.value.as_ref())
                .and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Null => None,
                    other => Some(other.to_string()),
                })
        })
    }

    fn container_port(&self) -> Option<u16> {
        self.spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .find_map(|p| p.container_port)
    }
}

fn list(v: Option<String>) -> Vec<String> {
    v.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// An optional env value of a pod, parsed; a present but unparsable value is an error.
fn get<T>(
    p: &PodObj,
    pod: &str,
    name: &'static str,
    expected: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, InvalidPods> {
    match p.env(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(None),
        Some(v) => parse(v.trim()).map(Some).ok_or(InvalidPods::BadEnv {
            pod: pod.to_string(),
            name,
            value: v,
            expected,
        }),
    }
}

/// The PD settings from a pod's env; unset or empty variables keep the defaults.
fn pd_settings(p: &PodObj, pod: &str) -> Result<PdSettings, InvalidPods> {
    let mut pd = PdSettings {
        role: get(p, pod, "PD_ROLE", "prefill or decode", Role::parse)?,
        ..PdSettings::default()
    };
    if let Some(c) = get(
        p,
        pod,
        "KV_CONNECTOR",
        "http, lmcache, nixl or mooncake",
        KvConnector::parse,
    )? {
        pd.kv_connector = c;
    }
    if let Some(port) = get(p, pod, "SGLANG_BOOTSTRAP_PORT", "a port number", |v| {
        v.parse::<u16>().ok()
    })? {
        pd.bootstrap_port = port;
    }
    if let Some(ms) = get(
        p,
        pod,
        "SGLANG_BOOTSTRAP_TIMEOUT_MS",
        "a number of milliseconds",
        |v| v.parse::<u64>().ok(),
    )? {
        pd.bootstrap_timeout_ms = ms;
    }
    Ok(pd)
}

/// Parse a pods file into one plan per pod that has `status.podIP`.
pub fn parse_pods(yaml: &str, port: Option<u16>) -> Result<Vec<PodPlan>, InvalidPods> {
    let docs: Vec<Option<Doc>> =
        serde_saphyr::from_multiple(yaml).map_err(|e| InvalidPods::Yaml(e.to_string()))?;
    let mut pods = Vec::new();
    for doc in docs.into_iter().flatten() {
        if doc.kind.as_deref().is_some_and(|k| k.ends_with("List")) || !doc.items.is_empty() {
            pods.extend(doc.items);
        } else {
            pods.push(PodObj {
                kind: doc.kind,
                metadata: doc.metadata,
                spec: doc.spec,
                status: doc.status,
            });
        }
    }
    let mut plans = Vec::new();
    for p in pods {
        if p.kind.as_deref().is_some_and(|k| k != "Pod") {
            continue;
        }
        let Some(ip) = p.status.pod_ip.as_deref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let namespace = p.metadata.namespace.as_deref().unwrap_or("default");
        let name = p.metadata.name.as_deref().unwrap_or("");
        let pod = format!("{namespace}/{name}");
        let ip: IpAddr = ip.parse().map_err(|_| InvalidPods::BadIp {
            pod: pod.clone(),
            ip: ip.to_string(),
        })?;
        let model = p
            .env("MODEL_NAME")
            .filter(|m| !m.is_empty())
            .ok_or_else(|| InvalidPods::NoModel { pod: pod.clone() })?;
        let engine = match p.env("INFERENCE_ENGINE") {
            None => EngineKind::Vllm,
            Some(e) if e.is_empty() => EngineKind::Vllm,
            Some(e) => EngineKind::parse(&e).ok_or(InvalidPods::BadEngine {
                pod: pod.clone(),
                engine: e,
            })?,
        };
        let pd = pd_settings(&p, &pod)?;
        let steer = crate::server::Steer {
            delay_ms: get(&p, &pod, "MOCK_DELAY_MS", "a number of milliseconds", |v| {
                v.parse::<u64>().ok()
            })?,
            status: get(&p, &pod, "MOCK_STATUS", "a status 201..599", |v| {
                v.parse::<u16>().ok().filter(|s| (201..=599).contains(s))
            })?,
            max_running: get(&p, &pod, "MAX_RUNNING", "an integer >= 1", |v| {
                v.parse::<u64>().ok().filter(|n| *n >= 1)
            })?,
            sim: None,
        };
        let port = port.or_else(|| p.container_port()).unwrap_or(DEFAULT_PORT);
        plans.push(PodPlan {
            listen: SocketAddr::new(ip, port),
            model,
            aliases: list(p.env("SERVED_MODEL_ALIASES")),
            lora: list(p.env("LORA_ADAPTERS")),
            engine,
            pd,
            steer,
            pod,
        });
    }
    Ok(plans)
}

/// One `GET /health` over a fresh connection; true on a 200.
async fn healthy(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: mock\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<bool, std::io::Error>(buf.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Ok(true))
    )
}

/// Start every pod, wait until all are healthy, print the ready line, and supervise until
/// `shutdown` resolves; then kill and reap all children.
pub async fn run(
    plans: Vec<PodPlan>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let (exit_tx, mut exit_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for plan in &plans {
        let child: Child = Command::new(&exe)
            .args(plan.serve_args())
            .kill_on_drop(true)
            // Own process group: a terminal Ctrl-C reaches only us, and we stop the children,
            // so their exits are never mistaken for crashes.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("pod {}: cannot start {}: {e}", plan.pod, exe.display()))?;
        let mut stop = stop_rx.clone();
        let exit_tx = exit_tx.clone();
        let pod = plan.pod.clone();
        tasks.push(tokio::spawn(async move {
            let mut child = child;
            let stopped = async move {
                loop {
                    let stop_now = *stop.borrow_and_update();
                    if stop_now || stop.changed().await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                status = child.wait() => {
                    let what = match status {
                        Ok(s) => s.to_string(),
                        Err(e) => e.to_string(),
                    };
                    eprintln!("mock-llm pods: pod {pod} exited unexpectedly ({what})");
                    let _ = exit_tx.send(pod);
                }
                _ = stopped => {
                    let _ = child.kill().await;
                }
            }
        }));
    }
    drop(exit_tx);

    let ready = async {
        let deadline = Instant::now() + READY_DEADLINE;
        for plan in &plans {
            let mut wait = Duration::from_millis(5);
            while !healthy(plan.listen).await {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "pod {} did not answer GET /health on {} within {:?}",
                        plan.pod, plan.listen, READY_DEADLINE
                    ));
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(100));
            }
        }
        Ok(())
    };
    tokio::pin!(shutdown);
    let ready = tokio::select! {
        r = ready => r.map(|()| true),
        Some(pod) = exit_rx.recv() => Err(format!("pod {pod} exited before it was ready")),
        _ = &mut shutdown => Ok(false),
    };

    let result = match ready {
        Err(e) => Err(e),
        Ok(false) => Ok(()),
        Ok(true) => {
            {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "mock-llm pods ready: {}", plans.len());
                let _ = out.flush();
            }
            shutdown.await;
            Ok(())
        }
    };
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    result
}

#[cfg(test)]
#[path = "pods/tests.rs"]
mod tests;

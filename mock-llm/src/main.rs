//! mock-llm: a small, deterministic mock of a vLLM / SGLang OpenAI-compatible engine for
//! end-to-end tests and demos of the router. This file owns only the command line and process
//! lifetime (signals, parent watch); it reports only what each pod itself received.
//!
//! - `engine` — request -> answer logic (pure)
//! - `server` — HTTP/1.1 serving of one pod, request log, load counters, run slots
//! - `metrics` — `/metrics` text (gauges, TTFT/TPOT histograms) and `/mock/metrics` holds
//! - `pd`     — prefill/decode roles' I/O: KV blocks + `/mock/kv`, SGLang bootstrap server,
//!   the decode side's KV pull / bootstrap wait
//! - `pods`   — Kubernetes Pod list -> one `serve` child process per pod

mod engine;
mod metrics;
mod pd;
mod pods;
mod server;
mod sim;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use engine::{EngineKind, KvConnector, PdSettings, Role, Served};

const USAGE: &str = "\
usage:
  mock-llm serve --listen IP:PORT --model NAME [--alias NAME]... [--lora A,B]...
                 [--pod NAMESPACE/NAME] [--engine vllm|sglang]
                 [--role prefill|decode] [--kv-connector http|lmcache|nixl|mooncake]
                 [--bootstrap-port N] [--bootstrap-timeout-ms N]
                 [--delay-ms N] [--status CODE] [--max-running N]
                 [--sim-kv-blocks N [--sim-prefill-us-per-block N] [--sim-decode-ms-per-token N]]
  mock-llm pods --file PODS.yaml [--port PORT]
  mock-llm fleet --count N --listen IP:PORT --model NAME [serve flags]...
                 N pods in one process, on IP, IP+1, ... (a fleet for scale benchmarks)";

#[derive(Debug, PartialEq, Eq)]
enum Cli {
    Serve {
        listen: SocketAddr,
        served: Served,
        pod: Option<String>,
        pd: PdSettings,
        steer: server::Steer,
    },
    Pods {
        file: String,
        port: Option<u16>,
    },
    /// `count` pods like `serve`'s, on consecutive addresses from its `listen`.
    Fleet {
        count: u32,
        serve: Box<Cli>,
    },
    Help,
}

/// Split `--flag value` / `--flag=value` pairs.
fn flags(args: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-h" || a == "--help" {
            out.push(("--help".to_string(), String::new()));
            continue;
        }
        if !a.starts_with("--") {
            return Err(format!("unexpected argument {a:?}"));
        }
        match a.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), v.to_string())),
            None => {
                let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
                out.push((a.clone(), v.clone()));
            }
        }
    }
    Ok(out)
}

fn comma_list(v: &str) -> impl Iterator<Item = String> + '_ {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn parse_cli(args: &[String]) -> Result<Cli, String> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err("missing command".to_string());
    };
    let flags = flags(rest)?;
    if cmd == "-h" || cmd == "--help" || cmd == "help" || flags.iter().any(|(k, _)| k == "--help") {
        return Ok(Cli::Help);
    }
    match cmd.as_str() {
        "fleet" => {
            let count = flags
                .iter()
                .find(|(k, _)| k == "--count")
                .and_then(|(_, v)| v.parse::<u32>().ok())
                .filter(|n| (1..=60_000).contains(n))
                .ok_or("fleet: --count N (1..60000) is required")?;
            let mut serve = vec!["serve".to_string()];
            for (k, v) in flags.into_iter().filter(|(k, _)| k != "--count") {
                serve.extend([k, v]);
            }
            Ok(Cli::Fleet {
                count,
                serve: Box::new(parse_cli(&serve)?),
            })
        }
        "serve" => {
            let mut listen = None;
            let mut model = None;
            let mut aliases = Vec::new();
            let mut lora = Vec::new();
            let mut pod = None;
            let mut engine = EngineKind::Vllm;
            let mut pd = PdSettings::default();
            let mut steer = server::Steer::default();
            let (mut sim_blocks, mut sim_prefill, mut sim_decode) = (None, 200u32, 5u32);
            let number = |k: &str, v: &str| v.parse::<u32>().map_err(|e| format!("{k} {v:?}: {e}"));
            for (k, v) in flags {
                match k.as_str() {
                    "--listen" => {
                        listen = Some(
                            v.parse::<SocketAddr>()
                                .map_err(|e| format!("--listen {v:?}: {e}"))?,
                        )
                    }
                    "--model" => model = Some(v),
                    "--alias" => aliases.extend(comma_list(&v)),
                    "--lora" => lora.extend(comma_list(&v)),
                    "--pod" => pod = Some(v),
                    "--engine" => {
                        engine = EngineKind::parse(&v)
                            .ok_or_else(|| format!("--engine {v:?}: expected vllm or sglang"))?
                    }
                    "--role" => {
                        pd.role =
                            Some(Role::parse(&v).ok_or_else(|| {
                                format!("--role {v:?}: expected prefill or decode")
                            })?)
                    }
                    "--kv-connector" => {
                        pd.kv_connector = KvConnector::parse(&v).ok_or_else(|| {
                            format!(
                                "--kv-connector {v:?}: expected http, lmcache, nixl or mooncake"
                            )
                        })?
                    }
                    "--bootstrap-port" => {
                        pd.bootstrap_port = v
                            .parse::<u16>()
                            .map_err(|e| format!("--bootstrap-port {v:?}: {e}"))?
                    }
                    "--bootstrap-timeout-ms" => {
                        pd.bootstrap_timeout_ms = v
                            .parse::<u64>()
                            .map_err(|e| format!("--bootstrap-timeout-ms {v:?}: {e}"))?
                    }
                    "--delay-ms" => {
                        steer.delay_ms = Some(
                            v.parse::<u64>()
                                .map_err(|e| format!("--delay-ms {v:?}: {e}"))?,
                        )
                    }
                    "--sim-kv-blocks" => sim_blocks = Some(number(&k, &v)?),
                    "--sim-prefill-us-per-block" => sim_prefill = number(&k, &v)?,
                    "--sim-decode-ms-per-token" => sim_decode = number(&k, &v)?,
                    "--max-running" => {
                        steer.max_running = Some(
                            v.parse::<u64>()
                                .ok()
                                .filter(|n| *n >= 1)
                                .ok_or_else(|| format!("--max-running {v:?}: expected >= 1"))?,
                        )
                    }
                    "--status" => {
                        steer.status = Some(
                            v.parse::<u16>()
                                .ok()
                                .filter(|s| (201..=599).contains(s))
                                .ok_or_else(|| format!("--status {v:?}: expected 201..599"))?,
                        )
                    }
                    _ => return Err(format!("serve: unknown flag {k}")),
                }
            }
            steer.sim = sim_blocks.map(|kv_blocks| sim::SimSettings {
                kv_blocks,
                prefill_us_per_block: sim_prefill,
                decode_ms_per_token: sim_decode,
            });
            let model = model
                .filter(|m| !m.is_empty())
                .ok_or("serve: --model is required")?;
            Ok(Cli::Serve {
                listen: listen.ok_or("serve: --listen is required")?,
                served: Served {
                    model,
                    aliases,
                    lora,
                    engine,
                },
                pod,
                pd,
                steer,
            })
        }
        "pods" => {
            let mut file = None;
            let mut port = None;
            for (k, v) in flags {
                match k.as_str() {
                    "--file" => file = Some(v),
                    "--port" => {
                        port = Some(v.parse::<u16>().map_err(|e| format!("--port {v:?}: {e}"))?)
                    }
                    _ => return Err(format!("pods: unknown flag {k}")),
                }
            }
            Ok(Cli::Pods {
                file: file.ok_or("pods: --file is required")?,
                port,
            })
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

/// Resolves on SIGTERM or SIGINT, or (when `watch_parent`) once the parent process is gone.
/// The signal handlers are installed before this returns, so no early signal is lost.
fn shutdown_signal(watch_parent: bool) -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let parent = std::os::unix::process::parent_id();
    Ok(async move {
        let parent_gone = async {
            if !watch_parent {
                return std::future::pending::<()>().await;
            }
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if std::os::unix::process::parent_id() != parent {
                    return;
                }
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = parent_gone => {}
        }
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cli = match parse_cli(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mock-llm: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mock-llm: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), String> = runtime.block_on(async {
        match cli {
            Cli::Help => {
                println!("{USAGE}");
                Ok(())
            }
            Cli::Serve {
                listen,
                served,
                pod,
                pd,
                steer,
            } => {
                let shutdown = shutdown_signal(true).map_err(|e| e.to_string())?;
                let config = server::PodConfig {
                    served,
                    pod,
                    pd,
                    steer,
                };
                server::serve(listen, config, shutdown)
                    .await
                    .map_err(|e| format!("serve on {listen}: {e}"))
            }
            Cli::Fleet { count, serve } => {
                let Cli::Serve {
                    listen,
                    served,
                    pod,
                    pd,
                    steer,
                } = *serve
                else {
                    return Err("fleet: not a serve command".into());
                };
                let std::net::IpAddr::V4(first) = listen.ip() else {
                    return Err("fleet: --listen must be IPv4".into());
                };
                let shutdown = shutdown_signal(true).map_err(|e| e.to_string())?;
                for i in 0..count {
                    let ip = std::net::Ipv4Addr::from(u32::from(first).wrapping_add(i));
                    let config = server::PodConfig {
                        served: served.clone(),
                        pod: Some(format!("{}-{i}", pod.as_deref().unwrap_or("default/fleet"))),
                        pd,
                        steer,
                    };
                    let addr = SocketAddr::new(ip.into(), listen.port());
                    tokio::spawn(async move {
                        if let Err(e) = server::serve(addr, config, std::future::pending()).await {
                            eprintln!("mock-llm: serve on {addr}: {e}");
                        }
                    });
                }
                shutdown.await;
                Ok(())
            }
            Cli::Pods { file, port } => {
                let shutdown = shutdown_signal(true).map_err(|e| e.to_string())?;
                let yaml = std::fs::read_to_string(&file)
                    .map_err(|e| format!("cannot read {file}: {e}"))?;
                let plans = pods::parse_pods(&yaml, port).map_err(|e| format!("{file}: {e}"))?;
                pods::run(plans, shutdown).await
            }
        }
    });
    // Don't wait for open keep-alive connections or in-flight streams on exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock-llm: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn serve_flags_parse_with_repeats_and_equals() {
        let cli = parse_cli(&args(
            "serve --listen 127.0.0.1:8000 --model m --alias a1 --alias=a2 --lora x,y \
             --lora z --pod ns/p --engine SGLang",
        ));
        assert_eq!(
            cli,
            Ok(Cli::Serve {
                listen: "127.0.0.1:8000".parse().unwrap_or_else(|_| unreachable!()),
                served: Served {
                    model: "m".into(),
                    aliases: vec!["a1".into(), "a2".into()],
                    lora: vec!["x".into(), "y".into(), "z".into()],
                    engine: EngineKind::Sglang,
                },
                pod: Some("ns/p".into()),
                pd: PdSettings::default(),
                steer: server::Steer::default(),
            })
        );
    }

    #[test]
    fn pd_flags_parse() {
        let cli = parse_cli(&args(
            "serve --listen 127.0.0.1:8000 --model m --role Decode --kv-connector nixl \
             --bootstrap-port 9000 --bootstrap-timeout-ms=300",
        ));
        let Ok(Cli::Serve { pd, .. }) = cli else {
            panic!("{cli:?}");
        };
        assert_eq!(
            pd,
            PdSettings {
                role: Some(Role::Decode),
                kv_connector: KvConnector::Nixl,
                bootstrap_port: 9000,
                bootstrap_timeout_ms: 300,
            }
        );
        let base = "serve --listen 127.0.0.1:8000 --model m";
        for bad in [
            "--role both",
            "--kv-connector p2p",
            "--bootstrap-port 70000",
            "--bootstrap-timeout-ms -1",
        ] {
            assert!(parse_cli(&args(&format!("{base} {bad}"))).is_err(), "{bad}");
        }
    }

    #[test]
    fn steer_flags_parse() {
        let cli = parse_cli(&args(
            "serve --listen 127.0.0.1:8000 --model m --delay-ms 200 --status 503 \
             --max-running=4",
        ));
        let Ok(Cli::Serve { steer, .. }) = cli else {
            panic!("{cli:?}");
        };
        assert_eq!(
            steer,
            server::Steer {
                delay_ms: Some(200),
                status: Some(503),
                max_running: Some(4),
                sim: None,
            }
        );
        let base = "serve --listen 127.0.0.1:8000 --model m";
        for bad in ["--max-running 0", "--max-running -1", "--max-running x"] {
            assert!(parse_cli(&args(&format!("{base} {bad}"))).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_or_unknown_flags_are_errors() {
        assert!(parse_cli(&args("serve --listen 127.0.0.1:1")).is_err());
        assert!(parse_cli(&args("serve --model m")).is_err());
        assert!(parse_cli(&args("serve --model m --listen nope")).is_err());
        assert!(parse_cli(&args("serve --model m --listen 127.0.0.1:1 --bogus 1")).is_err());
        assert!(parse_cli(&args("serve --model")).is_err());
        assert!(parse_cli(&args("pods")).is_err());
        assert!(parse_cli(&args("frobnicate")).is_err());
        assert!(parse_cli(&[]).is_err());
        assert_eq!(
            parse_cli(&args("pods --file x.yaml --port 9000")),
            Ok(Cli::Pods {
                file: "x.yaml".into(),
                port: Some(9000)
            })
        );
    }
}

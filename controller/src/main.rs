//! The `modelroute-controller` command line: `render` (once), `watch` (poll and re-render once
//! the inputs settle) and `kube` (the Kubernetes API). Argument handling only; everything else
//! lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use controller::diag::Diagnostics;
use controller::filter_args::FilterArgs;
use controller::gateway::GatewayArgs;
use controller::render::Manifests;
use controller::watch::{self, WatchConfig, WatchError};
use controller::{build, envoy_outputs, filter_config_json, summary, InputPaths};
use filter_config::Settings;

#[derive(Parser)]
#[command(
    name = "modelroute-controller",
    version,
    about = "Compile Kthena ModelRoute/ModelServer YAML and pods into the modelroute filter config and Envoy xDS files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate, compile and write the outputs once.
    Render(RenderArgs),
    /// Render, then poll the inputs and re-render on change.
    Watch(WatchArgs),
    /// Watch ModelRoutes, ModelServers and Pods in Kubernetes and server-side apply the config.
    Kube(controller::kube::cli::KubeArgs),
    /// Print the standalone Envoy bootstrap (envoy/envoy.yaml filled in): the listener, the
    /// admin port, where `render`/`watch --out` writes, Kthena's metrics and access log.
    Bootstrap(BootstrapArgs),
}

#[derive(Args)]
struct BootstrapArgs {
    /// The router's port on 127.0.0.1.
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    listen_port: u16,
    /// Envoy's admin port on 127.0.0.1 (/stats/prometheus).
    #[arg(long, value_name = "PORT", default_value_t = 9901)]
    admin_port: u16,
    /// The directory `render`/`watch --out` writes (made absolute).
    #[arg(long, value_name = "DIR")]
    config_dir: PathBuf,
    #[command(flatten)]
    access_log: controller::gateway::AccessLogArgs,
    #[command(flatten)]
    rate_limit: controller::gateway::RateLimitServiceArgs,
}

#[derive(Args)]
struct CommonArgs {
    /// Kthena resources: files or directories (recursively *.yaml, *.yml, *.json).
    #[arg(long, value_name = "PATH", num_args = 1.., required = true)]
    resources: Vec<PathBuf>,
    /// Pod files or directories (`kubectl get pods -o yaml`); pods may also sit in --resources.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pods: Vec<PathBuf>,
    /// The filter's wasm module (written into the ECDS file as an absolute path). render
    /// --target configmap/istio: its absolute path inside the proxy container.
    #[arg(long, value_name = "PATH")]
    wasm: Option<PathBuf>,
    /// Output directory (created).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Kthena's scheduler configuration: the `kthena-router-config` ConfigMap or its bare
    /// `routerConfiguration` YAML (top-level `scheduler:`). Default: Kthena's Helm defaults.
    /// Watched for changes in watch mode.
    #[arg(long, value_name = "FILE")]
    scheduler_config: Option<PathBuf>,
    #[command(flatten)]
    gateway: GatewayArgs,
}

#[derive(Args)]
struct RenderArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Print to stdout instead of writing files: the filter config JSON (envoy target) or the
    /// target's manifests as YAML (istio, configmap; also the default without --out).
    #[arg(long)]
    print: bool,
    #[command(flatten)]
    target: TargetArgs,
}

/// `render --target`: what to produce and the Kubernetes-side knobs of the manifest targets.
#[derive(Args)]
struct TargetArgs {
    /// envoy: ECDS/CDS/EDS files under --out; istio: an EnvoyFilter (--out DIR writes
    /// DIR/istio.yaml); configmap: one ConfigMap holding the Envoy files (DIR/configmap.yaml).
    #[arg(long, value_enum, default_value = "envoy")]
    target: RenderTarget,
    /// Namespace of the ConfigMap / EnvoyFilter [default: modelroute-system for configmap,
    /// istio-system for istio].
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// Name of the ConfigMap / EnvoyFilter.
    #[arg(long, value_name = "NAME", default_value = "modelroute")]
    name: String,
    /// istio: EnvoyFilter workloadSelector label, repeatable [default: istio=ingressgateway].
    #[arg(long, value_name = "KEY=VALUE")]
    workload_selector: Vec<String>,
    /// istio: patch context: gateway (GATEWAY) or sidecar (SIDECAR_INBOUND).
    #[arg(long, value_enum, default_value = "gateway")]
    context: IstioContext,
    /// istio: the module, oci://..., https://... (with --wasm-sha256) or file:///path in the
    /// proxy container. Without it, --wasm PATH means file://PATH.
    #[arg(long, value_name = "URL")]
    wasm_url: Option<String>,
    /// istio: sha256 of the module (https://, file://) or of the OCI image manifest (oci://);
    /// required for oci:// and https://.
    #[arg(long, value_name = "HEX")]
    wasm_sha256: Option<String>,
    /// configmap: where the Envoy container mounts the ConfigMap (cds.json and ecds.json
    /// name the files under it).
    #[arg(long, value_name = "DIR", default_value = controller::render::configmap::DEFAULT_MOUNT_DIR)]
    mount_dir: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RenderTarget {
    Envoy,
    Istio,
    Configmap,
}

#[derive(Clone, Copy, ValueEnum)]
enum IstioContext {
    Gateway,
    Sidecar,
}

#[derive(Args)]
struct WatchArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Poll interval.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    interval_ms: u64,
}

impl CommonArgs {
    fn inputs(&self) -> InputPaths {
        InputPaths {
            resources: self.resources.clone(),
            pods: self.pods.clone(),
            scheduler: self.scheduler_config.clone(),
        }
    }

    fn settings(&self) -> Settings {
        self.filter.settings().unwrap_or_else(|msg| usage(msg))
    }

    /// Absolute, canonical `--out` (created) and `--wasm`.
    fn destinations(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (Some(out), Some(wasm)) = (&self.out, &self.wasm) else {
            Cli::command()
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "--out and --wasm are required (or use render --print)",
                )
                .exit();
        };
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let out = out
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", out.display()))?;
        Ok((out, absolute(wasm)?))
    }
}

/// Canonical when the file exists; otherwise made absolute (Envoy may get the module later).
fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Ok(c);
    }
    log::warn!("{}: does not exist (yet); using it as given", p.display());
    Ok(std::path::absolute(p)?)
}

fn bootstrap(a: &BootstrapArgs) -> anyhow::Result<ExitCode> {
    let dir = std::path::absolute(&a.config_dir)?;
    print!(
        "{}",
        controller::render::observability::bootstrap(
            a.listen_port,
            a.admin_port,
            &dir.display().to_string(),
            &a.access_log.access_log(),
            a.rate_limit.rate_limit_service.as_deref(),
        )
    );
    Ok(ExitCode::SUCCESS)
}

/// Exits with a usage error.
fn usage(msg: String) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, msg)
        .exit()
}

/// The manifest target of `render --target istio|configmap` (None: envoy).
fn manifests(args: &RenderArgs) -> Option<Manifests> {
    use controller::render::{configmap, istio};
    let t = &args.target;
    let wasm_path = || {
        args.common.wasm.as_ref().map(|p| {
            if !p.is_absolute() {
                usage(format!(
                    "--wasm {}: must be the absolute path inside the proxy container",
                    p.display()
                ));
            }
            p.display().to_string()
        })
    };
    match t.target {
        RenderTarget::Envoy => {
            if t.wasm_url.is_some() || t.wasm_sha256.is_some() {
                usage("--wasm-url / --wasm-sha256 are for --target istio; use --wasm".into());
            }
            None
        }
        RenderTarget::Configmap => {
            if t.wasm_url.is_some() || t.wasm_sha256.is_some() {
                usage("--wasm-url / --wasm-sha256 are for --target istio; use --wasm".into());
            }
            if !t.mount_dir.starts_with('/') {
                usage(format!("--mount-dir {}: must be absolute", t.mount_dir));
            }
            Some(Manifests::ConfigMap(configmap::ConfigMapTarget {
                namespace: t
                    .namespace
                    .clone()
                    .unwrap_or_else(|| configmap::DEFAULT_NAMESPACE.into()),
                name: t.name.clone(),
                mount_dir: t.mount_dir.trim_end_matches('/').to_string(),
                wasm: wasm_path().unwrap_or_else(|| configmap::DEFAULT_WASM.into()),
            }))
        }
        RenderTarget::Istio => {
            let url = match (&t.wasm_url, wasm_path()) {
                (Some(u), _) => u.clone(),
                (None, Some(p)) => format!("file://{p}"),
                (None, None) => usage(
                    "--target istio needs --wasm-url (oci://, https:// or file:///) or --wasm PATH"
                        .into(),
                ),
            };
            let wasm = istio::WasmSource::parse(&url, t.wasm_sha256.as_deref())
                .unwrap_or_else(|e| usage(e));
            let mut target = istio::IstioTarget::new(wasm);
            if let Some(ns) = &t.namespace {
                target.namespace = ns.clone();
            }
            target.name = t.name.clone();
            if !t.workload_selector.is_empty() {
                target.selector = t
                    .workload_selector
                    .iter()
                    .map(|kv| match kv.split_once('=') {
                        Some((k, v)) if !k.is_empty() => (k.to_string(), v.to_string()),
                        _ => usage(format!("--workload-selector {kv:?}: expected key=value")),
                    })
                    .collect();
            }
            target.context = match t.context {
                IstioContext::Gateway => istio::PatchContext::Gateway,
                IstioContext::Sidecar => istio::PatchContext::SidecarInbound,
            };
            Some(Manifests::Istio(target))
        }
    }
}

fn render(args: &RenderArgs) -> anyhow::Result<ExitCode> {
    let c = &args.common;
    let manifests = manifests(args);
    let mut diags = Diagnostics::default();
    let sources = c.inputs().read(&mut diags);
    let compiled = if diags.has_errors() {
        None
    } else {
        build(&sources, c.settings(), &mut diags)
            .map(|compiled| compiled.with_gateway(c.gateway.gateway(), &mut diags))
    };
    for w in &diags.warnings {
        log::warn!("{w}");
    }
    let Some(compiled) = compiled else {
        for e in &diags.errors {
            log::error!("{e}");
        }
        log::error!(
            "invalid input ({} errors); nothing written",
            diags.errors.len()
        );
        return Ok(ExitCode::FAILURE);
    };
    if let Some(m) = manifests {
        let yaml = m
            .yaml(&compiled)
            .context("cannot serialise the manifests")?;
        let Some(out) = c.out.as_ref().filter(|_| !args.print) else {
            print!("{yaml}");
            log::info!("{}", summary(&compiled));
            return Ok(ExitCode::SUCCESS);
        };
        let set = controller::output::OutputSet {
            files: vec![(PathBuf::from(m.file_name()), yaml.into_bytes())],
            prune: vec![],
        };
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let applied = controller::output::apply(out, &set)
            .with_context(|| format!("cannot write to {}", out.display()))?;
        let state = if applied.written.is_empty() {
            "unchanged"
        } else {
            "written"
        };
        log::info!(
            "{} -> {} ({state})",
            summary(&compiled),
            out.join(m.file_name()).display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if args.print {
        print!("{}", filter_config_json(&compiled));
        log::info!("{}", summary(&compiled));
        return Ok(ExitCode::SUCCESS);
    }
    let (out, wasm) = c.destinations()?;
    let set = envoy_outputs(&compiled, &out, &wasm);
    let applied = controller::output::apply(&out, &set)
        .with_context(|| format!("cannot write to {}", out.display()))?;
    log::info!(
        "{} -> {} ({} files written, {} removed)",
        summary(&compiled),
        out.display(),
        applied.written.len(),
        applied.removed.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn watch(args: &WatchArgs) -> anyhow::Result<ExitCode> {
    let c = &args.common;
    let (out_dir, wasm) = c.destinations()?;
    let cfg = WatchConfig {
        inputs: c.inputs(),
        settings: c.settings(),
        gateway: c.gateway.gateway(),
        out_dir,
        wasm,
        interval: Duration::from_millis(args.interval_ms.max(10)),
    };
    // SIGINT/SIGTERM end the process by default; writes are atomic, so nothing to clean up.
    let stop = AtomicBool::new(false);
    match watch::run(&cfg, &stop) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ WatchError::InvalidFirstRender(_)) => {
            log::error!("{e}; nothing written");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

fn main() -> ExitCode {
    controller::logger::init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Render(a) => render(a),
        Command::Watch(a) => watch(a),
        Command::Kube(a) => controller::kube::cli::main(a),
        Command::Bootstrap(a) => bootstrap(a),
    };
    result.unwrap_or_else(|e| {
        log::error!("{e:#}");
        ExitCode::FAILURE
    })
}

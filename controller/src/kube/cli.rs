//! `modelroute-controller kube`: flags, the tokio runtime, the client from the environment
//! (in-cluster or KUBECONFIG) and signal handling. Argument handling only; the controller is
//! [`super::run`].

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::{crd, Options, OutputKind, Target};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputArg {
    /// A ConfigMap with filter-config.json, ecds.json, cds.json and eds-*.json.
    Configmap,
    /// An Istio EnvoyFilter.
    Istio,
}

#[derive(Debug, Args)]
pub struct KubeArgs {
    /// What to apply.
    #[arg(long, value_enum, default_value = "configmap")]
    pub output: OutputArg,
    /// Namespace of the applied object and of the leader-election Lease.
    #[arg(long, default_value = "modelroute-system")]
    pub namespace: String,
    /// Name of the applied object.
    #[arg(long, default_value = "modelroute")]
    pub name: String,
    /// The wasm module as Envoy sees it: a path in the proxy container, or an http(s) URL (istio).
    #[arg(
        long,
        value_name = "PATH|URL",
        default_value = "/etc/modelroute-wasm/modelroute.wasm"
    )]
    pub wasm: String,
    /// Istio, remote module (`oci://`, `https://`): the digest istio-agent checks (for oci://
    /// the image manifest digest, see ./build.sh package).
    #[arg(long, value_name = "HEX")]
    pub wasm_sha256: Option<String>,
    /// Istio: EnvoyFilter workloadSelector label, repeatable [default: istio=ingressgateway].
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    pub workload_selector: Vec<(String, String)>,
    /// Istio: patch context, gateway (GATEWAY) or sidecar (SIDECAR_INBOUND).
    #[arg(long, value_enum, default_value = "gateway")]
    pub context: ContextArg,
    /// Where the proxy mounts the ConfigMap (CDS names the EDS files under it).
    #[arg(long, value_name = "DIR", default_value = "/etc/modelroute")]
    pub mount_path: String,
    #[command(flatten)]
    pub filter: crate::filter_args::FilterArgs,
    /// Kthena's router configuration ConfigMap (its `routerConfiguration` sets the scheduler),
    /// watched so edits apply live; `none` keeps the scheduler defaults.
    #[arg(long, value_name = "NAMESPACE/NAME|none", default_value = "kthena-system/kthena-router-config",
          value_parser = parse_router_config)]
    pub router_config: RouterConfigArg,
    /// Only watch ModelRoutes, ModelServers and Pods in this namespace (default: all).
    #[arg(long, value_name = "NS")]
    pub watch_namespace: Option<String>,
    /// Server-side apply field manager (and Event reporter).
    #[arg(long, default_value = "modelroute-controller")]
    pub field_manager: String,
    /// Leader-election Lease name (in --namespace).
    #[arg(long, default_value = "modelroute-controller")]
    pub lease_name: String,
    /// Identity in the Lease (default: $POD_NAME, else $HOSTNAME).
    #[arg(long)]
    pub identity: Option<String>,
    /// Quiet time after a change before re-rendering.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub debounce_ms: u64,
    /// Print the ModelRoute and ModelServer CRDs (YAML) and exit; no cluster needed.
    #[arg(long)]
    pub print_crds: bool,
    #[command(flatten)]
    pub gateway: crate::gateway::GatewayArgs,
}

/// Istio patch context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ContextArg {
    Gateway,
    Sidecar,
}

/// `--router-config`: where the ConfigMap is, or none.
#[derive(Debug, Clone)]
pub struct RouterConfigArg(pub Option<(String, String)>);

fn parse_router_config(s: &str) -> Result<RouterConfigArg, String> {
    if s == "none" {
        return Ok(RouterConfigArg(None));
    }
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(RouterConfigArg(Some((ns.to_string(), name.to_string()))))
        }
        _ => Err(format!("{s:?}: expected NAMESPACE/NAME or none")),
    }
}

fn parse_label(kv: &str) -> Result<(String, String), String> {
    match kv.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{kv:?}: expected key=value")),
    }
}

impl KubeArgs {
    pub fn options(&self) -> Result<Options, String> {
        let mut o = Options::new(Target {
            output: match self.output {
                OutputArg::Configmap => OutputKind::ConfigMap,
                OutputArg::Istio => OutputKind::Istio,
            },
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            wasm: self.wasm.clone(),
            wasm_sha256: self.wasm_sha256.clone(),
            mount_path: self.mount_path.clone(),
            istio_selector: self.workload_selector.clone(),
            istio_context: match self.context {
                ContextArg::Gateway => crate::render::istio::PatchContext::Gateway,
                ContextArg::Sidecar => crate::render::istio::PatchContext::SidecarInbound,
            },
        });
        o.settings = self.filter.settings()?;
        o.gateway = self.gateway.gateway();
        o.router_config = self.router_config.0.clone();
        o.watch_namespace = self.watch_namespace.clone();
        o.field_manager = self.field_manager.clone();
        o.lease_name = self.lease_name.clone();
        if let Some(id) = &self.identity {
            o.identity = id.clone();
        }
        o.debounce = Duration::from_millis(self.debounce_ms);
        Ok(o)
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn signalled() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// `kube` subcommand entry point.
pub fn main(args: &KubeArgs) -> anyhow::Result<ExitCode> {
    if args.print_crds {
        for (file, yaml) in crd::manifests() {
            println!("---\n# {file}");
            print!("{yaml}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let opts = args.options().map_err(anyhow::Error::msg)?;
    if opts.target.output == OutputKind::Istio {
        // A bad module reference is a usage error, caught before touching the cluster.
        if let Err(e) = opts.target.wasm_source() {
            anyhow::bail!("{e}");
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
        log::info!(
            "kube mode: {:?} {}/{}, identity {}",
            opts.target.output,
            opts.target.namespace,
            opts.target.name,
            opts.identity
        );
        super::run(client, opts, signalled()).await;
        Ok(ExitCode::SUCCESS)
    })
}

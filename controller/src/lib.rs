//! `modelroute-controller`: compiles Kthena `ModelRoute` / `ModelServer` resources and the pods
//! they select into the `modelroute` filter's configuration and the Envoy files that deliver it.
//!
//! Pipeline: [`load`] (files -> objects) -> [`validate`] (Kthena's webhook rules) ->
//! [`compile`] (-> `FilterConfig` + clusters) -> [`render`] (Envoy JSON) -> [`output`]
//! (atomic, only-when-changed writes). [`watch`] re-runs it when inputs change, once they have
//! settled. [`router_config`] reads Kthena's router configuration into `Settings.scheduler`
//! on the way.

pub mod compile;
pub mod diag;
pub mod duration;
pub mod filter_args;
pub mod gateway;
pub mod kthena;
pub mod kube;
pub mod load;
pub mod logger;
pub mod order;
pub mod output;
pub mod pods;
pub mod render;
pub mod router_config;
pub mod validate;
pub mod watch;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use filter_config::Settings;

use crate::compile::Compiled;
use crate::diag::Diagnostics;
use crate::load::Source;
use crate::output::OutputSet;
use crate::render::envoy;

/// Where the inputs are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputPaths {
    pub resources: Vec<PathBuf>,
    pub pods: Vec<PathBuf>,
    /// Kthena's router configuration (`kthena-router-config` ConfigMap or the bare
    /// routerConfiguration YAML); `None` keeps `Settings.scheduler` as given.
    pub scheduler: Option<PathBuf>,
}

/// Everything one render reads from disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadInputs {
    /// Resource and pod files, in [`InputPaths::files`] order.
    pub resources: Vec<Source>,
    /// The scheduler configuration file, when one is named (and readable).
    pub scheduler: Option<Source>,
}

impl InputPaths {
    /// Every input file (what watch mode polls): resources, then pods, each argument expanded
    /// and sorted, then the scheduler configuration.
    pub fn files(&self, diags: &mut Diagnostics) -> Vec<PathBuf> {
        let mut files = self.resource_files(diags);
        files.extend(self.scheduler.iter().cloned());
        files
    }

    fn resource_files(&self, diags: &mut Diagnostics) -> Vec<PathBuf> {
        let mut files = load::expand(&self.resources, diags);
        files.extend(load::expand(&self.pods, diags));
        files
    }

    /// Reads every input file.
    pub fn read(&self, diags: &mut Diagnostics) -> ReadInputs {
        let files = self.resource_files(diags);
        let resources = load::read(&files, diags);
        let scheduler = self.scheduler.as_ref().and_then(|p| {
            if p.is_dir() {
                diags.error(format!(
                    "{}: is a directory; --scheduler-config needs a file",
                    p.display()
                ));
                return None;
            }
            load::read(std::slice::from_ref(p), diags).pop()
        });
        ReadInputs {
            resources,
            scheduler,
        }
    }
}

/// Parses, validates and compiles what was read; a scheduler configuration replaces
/// `settings.scheduler` (keeping its metrics timing). `None` when anything is invalid: every
/// error is then in `diags.errors`. Warnings land in `diags.warnings` either way.
pub fn build(read: &ReadInputs, settings: Settings, diags: &mut Diagnostics) -> Option<Compiled> {
    let mut settings = settings;
    if let Some(source) = &read.scheduler {
        if let Some(s) = router_config::from_source(source, &settings.scheduler, diags) {
            settings.scheduler = s;
        }
    }
    let inputs = load::parse(&read.resources, diags);
    validate::validate(&inputs, diags);
    if diags.has_errors() {
        return None;
    }
    Some(compile::compile(&inputs, settings, diags))
}

/// The filter config as written to `filter-config.json` (pretty JSON, trailing newline).
pub fn filter_config_json(compiled: &Compiled) -> String {
    let mut s = serde_json::to_string_pretty(&compiled.config).unwrap_or_default();
    s.push('\n');
    s
}

/// Name of the filter config file in the output directory.
pub const FILTER_CONFIG_FILE: &str = "filter-config.json";

/// Every output file in write order: EDS, CDS, RDS, `filter-config.json`, ECDS last (a cluster must
/// exist before a filter config can name it); stale EDS files are pruned afterwards.
/// `out_dir` and `wasm` must be absolute.
pub fn envoy_outputs(compiled: &Compiled, out_dir: &Path, wasm: &Path) -> OutputSet {
    let files = envoy::render(compiled, out_dir, wasm);
    let mut set = OutputSet::default();
    let mut keep = BTreeSet::new();
    for (name, content) in files.eds {
        set.files
            .push((Path::new(envoy::EDS_DIR).join(&name), content.into_bytes()));
        keep.insert(name);
    }
    set.files.push((
        Path::new(envoy::CDS_DIR).join(envoy::CDS_FILE),
        files.cds.into_bytes(),
    ));
    set.files.push((
        Path::new(envoy::RDS_DIR).join(envoy::RDS_FILE),
        files.rds.into_bytes(),
    ));
    set.files.push((
        PathBuf::from(FILTER_CONFIG_FILE),
        filter_config_json(compiled).into_bytes(),
    ));
    set.files.push((
        Path::new(envoy::ECDS_DIR).join(envoy::ECDS_FILE),
        files.ecds.into_bytes(),
    ));
    set.prune.push((PathBuf::from(envoy::EDS_DIR), keep));
    set
}

/// `N routes, M servers, K ready endpoints`.
pub fn summary(compiled: &Compiled) -> String {
    format!(
        "{} routes, {} servers, {} ready endpoints",
        compiled.config.routes.len(),
        compiled.config.servers.len(),
        compiled.endpoint_count()
    )
}

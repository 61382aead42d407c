//! The command-line flags that set the filter's [`Settings`], defined once for `render`,
//! `watch` and `kube` (clap `flatten`), so the three modes can never drift apart.

use clap::{Args, ValueEnum};
use filter_config::{Scheduler, Settings, TargetSelection};

/// How a rule picks among weighted targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Selection {
    WeightedRoundRobin,
    WeightedRandom,
}

#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Largest request body the filter buffers.
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Fallback endpoints after the chosen pod.
    #[arg(long, value_name = "N")]
    pub endpoint_fallbacks: Option<u32>,
    /// How a rule picks among weighted targets.
    #[arg(long, value_enum)]
    pub target_selection: Option<Selection>,
    /// How often the filter collects engine metrics (`/metrics`, `/v1/models`) from every pod.
    #[arg(long, value_name = "MS", default_value_t = Scheduler::default().metrics_interval_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub metrics_interval_ms: u64,
    /// Metrics older than this are ignored and the pod counts as unreachable.
    #[arg(long, value_name = "MS", default_value_t = Scheduler::default().metrics_stale_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub metrics_stale_ms: u64,
}

impl FilterArgs {
    /// The settings these flags give (defaults elsewhere); an error names the flags at fault.
    pub fn settings(&self) -> Result<Settings, String> {
        let mut s = Settings::default();
        if let Some(v) = self.max_body_bytes {
            s.max_body_bytes = v;
        }
        if let Some(v) = self.endpoint_fallbacks {
            s.endpoint_fallbacks = v;
        }
        if let Some(v) = self.target_selection {
            s.target_selection = match v {
                Selection::WeightedRoundRobin => TargetSelection::WeightedRoundRobin,
                Selection::WeightedRandom => TargetSelection::WeightedRandom,
            };
        }
        s.scheduler.metrics_interval_ms = self.metrics_interval_ms;
        s.scheduler.metrics_stale_ms = self.metrics_stale_ms;
        crate::router_config::check_metrics(&s.scheduler)
            .map_err(|msg| format!("--metrics-stale-ms / --metrics-interval-ms: {msg}"))?;
        Ok(s)
    }
}

//! The gateway's own behaviour, beyond the filter: what its routes do for browsers (CORS), how
//! long an answer may stay silent, and where Kthena's access log goes. Rendered into Envoy's
//! configuration (the RDS file, the ConfigMap, Istio patches, the bootstrap); never sent to the
//! filter. One set of flags for `render`, `watch` and `kube`.

use clap::Args;

use crate::render::observability::{AccessLog, AccessLogFormat, AccessLogOutput};

/// What the gateway's routes need beyond the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// Browser origins allowed to call the API (`*` for any); empty: no CORS answers.
    pub cors_allow_origins: Vec<String>,
    /// Longest silent gap in an answer (and longest wait for a non-streaming one), seconds.
    pub stream_idle_timeout_s: u64,
    /// Kthena's access log (Istio patches and the bootstrap carry it).
    pub access_log: AccessLog,
    /// `host:port` of `modelroute-ratelimit`, which Envoy's rate-limit filter calls for the
    /// global budgets; None: no global budgets (each Envoy enforces them on its own).
    pub rate_limit_service: Option<String>,
    /// `host:port` of the Redis the gateways share placements of new prompts in, through
    /// the rate-limit service; None: each Envoy places on its own.
    pub shared_placements_redis: Option<String>,
}

/// The OpenAI SDKs' own request timeout: past it no client is waiting for the answer.
pub const DEFAULT_STREAM_IDLE_TIMEOUT_S: u64 = 600;

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            cors_allow_origins: Vec::new(),
            stream_idle_timeout_s: DEFAULT_STREAM_IDLE_TIMEOUT_S,
            access_log: AccessLog::default(),
            rate_limit_service: None,
            shared_placements_redis: None,
        }
    }
}

/// The command-line flags that set [`Gateway`].
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Answer CORS for this browser origin (`https://app.example`; `*` for any), repeatable.
    /// Off by default: browsers cannot call the API from other origins.
    #[arg(long, value_name = "ORIGIN", value_parser = parse_origin)]
    pub cors_allow_origin: Vec<String>,
    /// Longest silent gap in an answer before the request is ended (a non-streaming answer's
    /// wait included; the time to the first byte is bounded by each ModelServer's
    /// trafficPolicy.timeout).
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_STREAM_IDLE_TIMEOUT_S,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stream_idle_timeout: u64,
    #[command(flatten)]
    pub access_log: AccessLogArgs,
    #[command(flatten)]
    pub rate_limit: RateLimitServiceArgs,
}

/// Where Envoy's rate-limit filter finds `modelroute-ratelimit`.
#[derive(Debug, Clone, Args)]
pub struct RateLimitServiceArgs {
    /// `host:port` of modelroute-ratelimit (gRPC), for ModelRoutes with
    /// spec.rateLimit.global: one budget in Redis for every Envoy. Without it each Envoy
    /// enforces global limits on its own. Give the same value to `bootstrap`.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub rate_limit_service: Option<String>,
    /// `host:port` of a Redis in which every gateway in front of the same pods shares where
    /// it placed prompts new to it (through the rate-limit service, so it needs
    /// --rate-limit-service): gateways then agree on a new system prompt's pod. Without it
    /// each Envoy places new prompts on its own.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub shared_placements_redis: Option<String>,
}

/// `host:port` with a port number.
fn parse_host_port(s: &str) -> Result<String, String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(s.to_string())
        }
        _ => Err(format!("{s:?} is not host:port")),
    }
}

impl GatewayArgs {
    pub fn gateway(&self) -> Gateway {
        Gateway {
            cors_allow_origins: self.cors_allow_origin.clone(),
            stream_idle_timeout_s: self.stream_idle_timeout,
            access_log: self.access_log.access_log(),
            rate_limit_service: self.rate_limit.rate_limit_service.clone(),
            shared_placements_redis: self.rate_limit.shared_placements_redis.clone(),
        }
    }
}

/// Kthena's `ACCESS_LOG_OUTPUT` / `ACCESS_LOG_FORMAT`, as flags.
#[derive(Debug, Clone, Args)]
pub struct AccessLogArgs {
    /// Where Kthena's access log goes (requests under /v1/): stdout, stderr, a file path, or
    /// off. Metrics are always on.
    #[arg(long, value_name = "OUTPUT", default_value = "stdout", value_parser = AccessLogOutput::parse)]
    pub access_log: AccessLogOutput,
    /// Kthena's text line or one JSON object per request.
    #[arg(long, value_enum, default_value = "text")]
    pub access_log_format: AccessLogFormat,
}

impl AccessLogArgs {
    pub fn access_log(&self) -> AccessLog {
        AccessLog {
            output: self.access_log.clone(),
            format: self.access_log_format,
        }
    }
}

/// `*`, or `scheme://host[:port]` as a browser sends it in `Origin` (no path, no spaces).
fn parse_origin(s: &str) -> Result<String, String> {
    let ok = s == "*"
        || s.split_once("://").is_some_and(|(scheme, rest)| {
            matches!(scheme, "http" | "https")
                && !rest.is_empty()
                && !rest.contains(['/', ' ', ',', '*'])
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: expected an origin such as https://app.example:8443, or *"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_what_browsers_send() {
        for ok in ["*", "https://app.example", "http://127.0.0.1:3000"] {
            assert_eq!(parse_origin(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "app.example",
            "https://app.example/",
            "ftp://x",
            "https://",
            "https://a,b",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }
}

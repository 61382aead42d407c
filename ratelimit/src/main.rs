//! `modelroute-ratelimit`: command line. See the library for what it serves.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ratelimit::limiter::Limiter;
use ratelimit::placements::Placements;

/// Envoy's rate-limit service for Kthena's global token budgets (ModelRoute
/// spec.rateLimit.global), kept in Redis with Kthena's keys; and the store of placements the
/// gateways share (the controller's --shared-placements-redis).
#[derive(Parser)]
#[command(name = "modelroute-ratelimit", version)]
struct Args {
    /// Where Envoy's rate-limit filter connects (gRPC, HTTP/2 cleartext).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Use this Redis for every budget instead of each route's global.redis.address (where the
    /// address in the YAML does not resolve from here, e.g. outside the cluster).
    #[arg(long, value_name = "HOST:PORT")]
    redis: Option<String>,
    /// Longest wait for Redis per call (connecting included); past it the budget's failure
    /// mode applies. Keep it below the rate-limit filter's timeout.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    redis_timeout_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    let _ = log::set_logger(&StderrLogger);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("modelroute-ratelimit: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "modelroute-ratelimit: cannot listen on {}: {e}",
                    args.listen
                );
                return ExitCode::FAILURE;
            }
        };
        let timeout = Duration::from_millis(args.redis_timeout_ms.max(1));
        let services = Arc::new(ratelimit::Services {
            limiter: Limiter::new(args.redis.clone(), timeout),
            placements: Placements::new(args.redis.clone(), timeout),
            sessions: ratelimit::sessions::Sessions::new(args.redis, timeout),
        });
        eprintln!("modelroute-ratelimit listening on {}", args.listen);
        tokio::select! {
            _ = ratelimit::serve(listener, services) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        ExitCode::SUCCESS
    })
}

/// Warnings and errors to stderr, one line each.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("{} {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

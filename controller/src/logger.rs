//! A minimal `log` backend: `modelroute-controller: LEVEL: message` on stderr. Debug lines are
//! shown when `RUST_LOG` mentions `debug` or `trace`.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                Level::Error => "error",
                Level::Warn => "warning",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            eprintln!("modelroute-controller: {level}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger once; later calls are no-ops.
pub fn init() {
    let level = match std::env::var("RUST_LOG") {
        Ok(v) if v.contains("trace") => LevelFilter::Trace,
        Ok(v) if v.contains("debug") => LevelFilter::Debug,
        _ => LevelFilter::Info,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

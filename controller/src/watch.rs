//! Watch mode: render once, then poll the inputs and re-render on change. A poll only stats
//! the files (list + mtime + size); bytes are re-read and hashed when that changes, and every
//! few polls anyway (an in-place edit may keep size and mtime granule). An invalid new input is
//! logged and the last good outputs stay untouched. The scheduler configuration file
//! (`--scheduler-config`) is polled like the resources. No threads, no inotify: cheap and portable.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use filter_config::Settings;
use thiserror::Error;

use crate::diag::Diagnostics;
use crate::render::content_hash;
use crate::{build, envoy_outputs, summary, InputPaths, ReadInputs};

/// Re-read and hash the inputs every this many polls even if no stat changed.
const FULL_CHECK_EVERY: u64 = 10;

#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub inputs: InputPaths,
    pub settings: Settings,
    /// Absolute output directory.
    pub out_dir: PathBuf,
    /// Absolute path of the wasm module.
    pub wasm: PathBuf,
    pub interval: Duration,
}

#[derive(Debug, Error)]
pub enum WatchError {
    #[error("the first render is invalid ({0} errors)")]
    InvalidFirstRender(usize),
    #[error("cannot write outputs to {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

fn fingerprint(inputs: &InputPaths) -> Fingerprint {
    let mut scratch = Diagnostics::default();
    inputs
        .files(&mut scratch)
        .into_iter()
        .map(|f| {
            let stat = std::fs::metadata(&f)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            (f, stat)
        })
        .collect()
}

fn sources_hash(read: &ReadInputs, read_errors: &[String]) -> u64 {
    let mut buf = Vec::new();
    // The scheduler file is hashed under a marker so it can never alias a resource file.
    let scheduler = read.scheduler.iter().map(|s| (b"scheduler:" as &[u8], s));
    for (tag, s) in read
        .resources
        .iter()
        .map(|s| (b"" as &[u8], s))
        .chain(scheduler)
    {
        buf.extend_from_slice(tag);
        buf.extend_from_slice(s.path.as_os_str().as_encoded_bytes());
        buf.push(0);
        buf.extend_from_slice(&(s.content.len() as u64).to_le_bytes());
        buf.extend_from_slice(&s.content);
    }
    for e in read_errors {
        buf.extend_from_slice(e.as_bytes());
    }
    content_hash(&buf)
}

/// Outcome of one render attempt.
enum Attempt {
    Applied,
    Invalid(usize),
}

fn attempt(
    cfg: &WatchConfig,
    sources: &ReadInputs,
    read_diags: Diagnostics,
    first: bool,
) -> Result<Attempt, WatchError> {
    let mut diags = read_diags;
    let compiled = if diags.has_errors() {
        None
    } else {
        build(sources, cfg.settings.clone(), &mut diags)
    };
    for w in &diags.warnings {
        log::warn!("{w}");
    }
    let Some(compiled) = compiled else {
        for e in &diags.errors {
            log::error!("{e}");
        }
        if !first {
            log::error!(
                "invalid input ({} errors); keeping the last good outputs",
                diags.errors.len()
            );
        }
        return Ok(Attempt::Invalid(diags.errors.len()));
    };
    let set = envoy_outputs(&compiled, &cfg.out_dir, &cfg.wasm);
    let applied = crate::output::apply(&cfg.out_dir, &set)
        .map_err(|e| WatchError::Write(cfg.out_dir.clone(), e))?;
    let what = if first { "rendered" } else { "applied change" };
    log::info!(
        "{what}: {} -> {} ({} files written, {} removed)",
        summary(&compiled),
        cfg.out_dir.display(),
        applied.written.len(),
        applied.removed.len()
    );
    Ok(Attempt::Applied)
}

/// Renders once (an invalid first render is an error), then polls until `stop` is set.
pub fn run(cfg: &WatchConfig, stop: &AtomicBool) -> Result<(), WatchError> {
    let mut fp = fingerprint(&cfg.inputs);
    let mut diags = Diagnostics::default();
    let sources = cfg.inputs.read(&mut diags);
    let mut last_hash = Some(sources_hash(&sources, &diags.errors));
    if let Attempt::Invalid(n) = attempt(cfg, &sources, diags, true)? {
        return Err(WatchError::InvalidFirstRender(n));
    }
    let mut polls: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(cfg.interval);
        polls += 1;
        let now = fingerprint(&cfg.inputs);
        if now == fp && !polls.is_multiple_of(FULL_CHECK_EVERY) {
            continue;
        }
        fp = now;
        let mut diags = Diagnostics::default();
        let sources = cfg.inputs.read(&mut diags);
        let hash = sources_hash(&sources, &diags.errors);
        if Some(hash) == last_hash {
            continue;
        }
        log::info!("inputs changed");
        match attempt(cfg, &sources, diags, false) {
            Ok(_) => last_hash = Some(hash),
            Err(e) => {
                // Retry on a later poll: the disk may come back.
                log::error!("{e}");
                last_hash = None;
            }
        }
    }
    Ok(())
}

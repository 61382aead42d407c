//! Watch mode: render once, then poll the inputs and re-render on change. A poll only stats
//! the files (list + mtime + size); bytes are re-read and hashed when that changes, and every
//! few polls anyway (an in-place edit may keep size and mtime granule). The scheduler
//! configuration file (`--scheduler-config`) is polled like the resources. No threads, no
//! inotify: cheap and portable.
//!
//! A change is never applied from the read that first saw it: writers truncate before they write
//! (`kubectl get pods -o yaml > pods.yaml`, editors), and a file read mid-write would take routes
//! or every endpoint away. [`Settle`] keeps the change pending and the inputs are re-read every
//! [`PENDING_POLL`] until the same bytes have been read for [`SETTLE`]. A file that held objects
//! when last applied and now holds none is suspect and held for [`EMPTIED_HOLD`] instead: a
//! deliberate emptying still applies, later. A pending change that goes back to what is applied
//! is dropped. Each deferral is logged once with its reason; so are its outcome and its first
//! replacement. The first render at startup is not held. An invalid input (once settled) is
//! logged and the last good outputs stay untouched.
//!
//! Owns when to render; what a render reads, builds and writes belongs to the crate root,
//! [`crate::load`] and [`crate::output`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use filter_config::Settings;

use crate::gateway::Gateway;
use thiserror::Error;

use crate::diag::Diagnostics;
use crate::load::{object_count, Source};
use crate::render::content_hash;
use crate::{build, envoy_outputs, summary, InputPaths, ReadInputs};

/// Re-read and hash the inputs every this many polls even if no stat changed.
const FULL_CHECK_EVERY: u64 = 10;

/// How long a changed input must keep reading the same before it applies. Writers that truncate
/// and rewrite finish well within it once they have the data; short enough that an edit applies
/// within about a second at the default 500 ms poll (detection + this + one [`PENDING_POLL`]).
pub const SETTLE: Duration = Duration::from_millis(400);

/// How long a file that became empty must stay so before that applies. The shell truncates
/// `pods.yaml` before `kubectl` has even asked the API server, so the empty file lasts as long as
/// that round trip; emptying every pod or route on purpose is rare and loses little by waiting.
pub const EMPTIED_HOLD: Duration = Duration::from_secs(5);

/// Poll interval while a change is pending (when `--interval-ms` is longer), so settling costs
/// [`SETTLE`] rather than several intervals.
pub const PENDING_POLL: Duration = Duration::from_millis(100);

/// Identical reads, the first included, a pending change needs before it applies: a loop slowed
/// past [`SETTLE`] (a long render, a suspended process) must still confirm the bytes once.
const MIN_READS: u32 = 2;

/// Why a pending change is held, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// An ordinary change: it may still be being written.
    Settling,
    /// A file that held objects now holds none: likely truncated by a writer that is not done.
    Emptied,
}

impl Hold {
    pub fn duration(self) -> Duration {
        match self {
            Hold::Settling => SETTLE,
            Hold::Emptied => EMPTIED_HOLD,
        }
    }
}

/// What to do after one read of the inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing pending, and the inputs read as last applied.
    Unchanged,
    /// A change was first seen; it is held.
    Deferred(Hold),
    /// The pending change changed again before it settled; the new content is held from now.
    Superseded { hold: Hold, was: Hold },
    /// The pending change still reads the same but has not been held long enough.
    Waiting,
    /// The inputs read as last applied again; the pending change is dropped unapplied.
    Withdrawn,
    /// The pending change read the same for its whole hold: apply it now.
    Apply { stable_for: Duration },
}

/// When a changed input may be applied. Pure: the caller reads, hashes and passes the time in.
#[derive(Debug)]
pub struct Settle {
    /// Hash of the inputs last rendered (applied or found invalid): not to be rendered again.
    applied: Option<u64>,
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    hash: u64,
    /// When this exact content was first read.
    since: Instant,
    reads: u32,
    hold: Hold,
}

impl Settle {
    /// Starts from the inputs rendered at startup.
    pub fn new(applied: u64) -> Self {
        Settle {
            applied: Some(applied),
            pending: None,
        }
    }

    /// Whether a change is waiting (the caller then re-reads every poll, polling faster).
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// One read of the inputs at `now`: `hash` of everything read, `emptied` when a file that held
    /// objects when last applied holds none now.
    pub fn observe(&mut self, hash: u64, emptied: bool, now: Instant) -> Decision {
        if let Some(p) = &mut self.pending {
            if p.hash == hash {
                p.reads += 1;
                let stable_for = now.saturating_duration_since(p.since);
                if p.reads < MIN_READS || stable_for < p.hold.duration() {
                    return Decision::Waiting;
                }
                self.pending = None;
                return Decision::Apply { stable_for };
            }
        }
        if Some(hash) == self.applied {
            return match self.pending.take() {
                Some(_) => Decision::Withdrawn,
                None => Decision::Unchanged,
            };
        }
        let hold = if emptied {
            Hold::Emptied
        } else {
            Hold::Settling
        };
        let next = Pending {
            hash,
            since: now,
            reads: 1,
            hold,
        };
        match self.pending.replace(next) {
            Some(was) => Decision::Superseded {
                hold,
                was: was.hold,
            },
            None => Decision::Deferred(hold),
        }
    }

    /// Records a render of `hash` (applied, or rejected as invalid): the same inputs are not
    /// rendered again until something else was read in between.
    pub fn rendered(&mut self, hash: u64) {
        self.applied = Some(hash);
    }

    /// Forgets what was rendered (its write failed), so the same inputs are tried again.
    pub fn forget(&mut self) {
        self.applied = None;
    }
}

/// Each input file's content hash and object count as last applied: what "became empty" and
/// "which files changed" are measured against.
#[derive(Debug, Default)]
struct Baseline(BTreeMap<FileKey, (u64, usize)>);

/// A resource file, or the scheduler file (which may share a path and is still another input).
type FileKey = (bool, PathBuf);

fn entries(read: &ReadInputs) -> impl Iterator<Item = (FileKey, &Source)> {
    let resources = read.resources.iter().map(|s| ((false, s.path.clone()), s));
    resources.chain(read.scheduler.iter().map(|s| ((true, s.path.clone()), s)))
}

/// How the inputs read now differ from the [`Baseline`].
#[derive(Debug, Default, PartialEq, Eq)]
struct Changes {
    /// Changed, new and vanished files, as named.
    files: Vec<String>,
    /// Files that held this many objects and now hold none.
    emptied: Vec<(String, usize)>,
}

impl Baseline {
    fn of(read: &ReadInputs) -> Self {
        Baseline(
            entries(read)
                .map(|(k, s)| {
                    let count = object_count(s).unwrap_or(0);
                    (k, (content_hash(&s.content), count))
                })
                .collect(),
        )
    }

    fn compare(&self, read: &ReadInputs) -> Changes {
        let mut changes = Changes::default();
        let mut seen = BTreeSet::new();
        for (key, source) in entries(read) {
            match self.0.get(&key) {
                Some(&(hash, _)) if hash == content_hash(&source.content) => {}
                Some(&(_, was)) => {
                    changes.files.push(source.display());
                    // A file now unparseable is merely invalid, and invalid input never applies.
                    if was > 0 && object_count(source) == Some(0) {
                        changes.emptied.push((source.display(), was));
                    }
                }
                None => changes.files.push(source.display()),
            }
            seen.insert(key);
        }
        // A file gone from a directory is an ordinary change: deleting one is how it is done.
        for key @ (_, path) in self.0.keys() {
            if !seen.contains(key) {
                changes.files.push(path.display().to_string());
            }
        }
        changes
    }
}

impl Changes {
    /// The changed files for a log line; a long list (a `git checkout`) is cut short.
    fn what(&self) -> String {
        const SHOWN: usize = 3;
        match self.files.len() {
            0 => "the inputs".to_string(),
            n if n <= SHOWN => self.files.join(", "),
            n => format!(
                "{} and {} more files",
                self.files[..SHOWN].join(", "),
                n - SHOWN
            ),
        }
    }

    /// Why an emptied change is held, e.g. `it became empty (was 14 objects)`.
    fn emptied_reason(&self) -> String {
        let was = |n: usize| format!("was {n} object{}", if n == 1 { "" } else { "s" });
        match (&self.files[..], &self.emptied[..]) {
            ([_], [(_, n)]) => format!("it became empty ({})", was(*n)),
            _ => self
                .emptied
                .iter()
                .map(|(f, n)| format!("{f} became empty ({})", was(*n)))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub inputs: InputPaths,
    pub settings: Settings,
    pub gateway: Gateway,
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
            .map(|c| c.with_gateway(cfg.gateway.clone(), &mut diags))
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

/// Logs a decision that changes what is pending. `what` names the pending change's files;
/// `quiet` turns later replacements of the same change down to debug, so a file that is written
/// slowly logs one line, not one per poll.
fn log_decision(decision: Decision, changes: &Changes, what: &str, quiet: bool) {
    let deferred = |hold: Hold| match hold {
        Hold::Settling => log::info!(
            "deferring change to {what}: waiting until the inputs read the same for {SETTLE:?} (a \
             file read mid-write must not be applied)"
        ),
        Hold::Emptied => log::warn!(
            "deferring change to {what}: {}; applying only if it stays so for {EMPTIED_HOLD:?}",
            changes.emptied_reason()
        ),
    };
    match decision {
        Decision::Deferred(hold) => deferred(hold),
        Decision::Superseded { hold, was } if hold != was => {
            if hold == Hold::Settling {
                log::info!("pending change superseded: no file is empty any more");
            }
            deferred(hold);
        }
        Decision::Superseded { hold, .. } => {
            let line = format!(
                "pending change superseded: {what} changed again before it settled; waiting {:?} \
                 from now",
                hold.duration()
            );
            if quiet {
                log::debug!("{line}");
            } else {
                log::info!("{line}");
            }
        }
        Decision::Withdrawn => {
            log::info!("pending change to {what} withdrawn: the inputs read as last rendered again")
        }
        Decision::Apply { stable_for } => log::info!(
            "{what} unchanged for {} ms; applying",
            stable_for.as_millis()
        ),
        Decision::Unchanged | Decision::Waiting => {}
    }
}

/// Renders once (an invalid first render is an error), then polls until `stop` is set.
pub fn run(cfg: &WatchConfig, stop: &AtomicBool) -> Result<(), WatchError> {
    let mut fp = fingerprint(&cfg.inputs);
    let mut diags = Diagnostics::default();
    let sources = cfg.inputs.read(&mut diags);
    let mut settle = Settle::new(sources_hash(&sources, &diags.errors));
    let mut baseline = Baseline::of(&sources);
    if let Attempt::Invalid(n) = attempt(cfg, &sources, diags, true)? {
        return Err(WatchError::InvalidFirstRender(n));
    }
    // The pending change as first described (a withdrawal has nothing left to compare), and
    // whether its replacements were logged already.
    let mut pending_what = String::new();
    let mut quiet = false;
    let mut polls: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let pending = settle.is_pending();
        std::thread::sleep(if pending {
            cfg.interval.min(PENDING_POLL)
        } else {
            cfg.interval
        });
        polls += 1;
        let now = fingerprint(&cfg.inputs);
        // A pending change is re-read every poll: a rewrite may keep size and mtime granule.
        if !pending && now == fp && !polls.is_multiple_of(FULL_CHECK_EVERY) {
            continue;
        }
        fp = now;
        let mut diags = Diagnostics::default();
        let sources = cfg.inputs.read(&mut diags);
        let hash = sources_hash(&sources, &diags.errors);
        let changes = baseline.compare(&sources);
        let decision = settle.observe(hash, !changes.emptied.is_empty(), Instant::now());
        match decision {
            Decision::Deferred(_) => {
                pending_what = changes.what();
                quiet = false;
            }
            Decision::Superseded { .. } => pending_what = changes.what(),
            _ => {}
        }
        log_decision(decision, &changes, &pending_what, quiet);
        if let Decision::Superseded { .. } = decision {
            quiet = true;
        }
        if !matches!(decision, Decision::Apply { .. }) {
            continue;
        }
        match attempt(cfg, &sources, diags, false) {
            Ok(Attempt::Applied) => {
                settle.rendered(hash);
                baseline = Baseline::of(&sources);
            }
            // Emptiness stays measured against what is in force, not against the rejected input.
            Ok(Attempt::Invalid(_)) => settle.rendered(hash),
            Err(e) => {
                // Retry on a later poll: the disk may come back.
                log::error!("{e}");
                settle.forget();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

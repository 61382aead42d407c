//! Kthena's router configuration (its scheduler section) -> [`filter_config::Scheduler`].
//!
//! Kthena configures pod picking with the ConfigMap `kthena-router-config`, whose
//! `data.routerConfiguration` is a YAML document with a `scheduler:` section (`pluginConfig`:
//! plugin arguments; `plugins.Filter` / `plugins.Score`: enabled plugins, scores with weights).
//! [`parse`] accepts either that ConfigMap or the bare routerConfiguration document, validates it
//! the way Kthena's router does (and a little stricter, so a typo is an error rather than a
//! silently different scheduler) and maps it. Pure: no I/O; every problem lands in
//! [`Diagnostics`] as `file: [ConfigMap ns/name: data.routerConfiguration: ]path: message`.
//!
//! Rules, each with a unit test below:
//! - plugins: `least-request`, `gpu-usage`, `least-latency`, `prefix-cache`, `lora-affinity`,
//!   `random`, `session-affinity` (from an open Kthena pull request); any other name is an
//!   error (`cost-aware`, proposed in another, with an error that says so). `kvcache-aware` (needs Redis and the
//!   Kthena router runtime) is warned about and ignored wherever it is enabled or configured.
//! - `Filter.enabled`: only `least-request` and `lora-affinity`; `Score.enabled`: only
//!   `least-request`, `gpu-usage`, `least-latency`, `prefix-cache`, `random`,
//!   `session-affinity`.
//! - a score `weight` is an integer >= 0, 1 when omitted.
//! - `disabled` lists only document intent; a plugin both enabled and disabled in one section is
//!   an error.
//! - `random` next to other score plugins is dropped with a warning (Kthena does the same:
//!   random scores would only add noise to meaningful ones).
//! - a plugin listed twice is warned about (filters: once is enough; scores: the last weight
//!   wins, as in Kthena's map).
//! - arguments: `maxWaitingRequests` >= 1, `TTFTTPOTWeightFactor` finite in 0.0..=1.0 (Kthena
//!   rejects others), `blockSizeToHash`, `maxBlocksToMatch`, `maxHashCacheSize`,
//!   `topKMatches` >= 1; missing arguments keep their defaults; unknown ones are warned about.
//!   `session-affinity`'s `headerName` (a header name) and `ttl` (a Go duration above zero;
//!   Kthena falls back to its defaults on bad values, here they are errors).
//!   Beyond Kthena: `prefix-cache`'s `boundedLoad` (0: off, else a number >= 1.0) and
//!   `podSpeed` (true or false; Kthena's router ignores arguments it does not know, so the
//!   YAML stays Kthena's).
//! - other top-level keys of routerConfiguration (`auth`, ...) are warned about and ignored; a
//!   routerConfiguration without `scheduler` keeps the defaults (with a warning).

use filter_config::{Plugin, Scheduler, WeightedPlugin};

mod args;
mod walk;
use args::{integer, plugin_config};
use serde_json::{Map, Value};
use walk::{join, list, mapping, type_name, unknown_keys, Report};

use crate::diag::Diagnostics;
use crate::load::Source;

/// The ConfigMap key holding the router configuration.
pub const CONFIGMAP_KEY: &str = "routerConfiguration";
/// Kthena's Redis-backed KV-cache plugin: not supported, ignored with a warning.
pub const KVCACHE_AWARE: &str = "kvcache-aware";
/// Plugins proposed for Kthena's router (open pull requests) and not implemented here. An error, not a warning: ignoring
/// `cost-aware` would silently drop its token budgets.
const NOT_YET: [&str; 1] = ["cost-aware"];

const ALL: [Plugin; 7] = [
    Plugin::LeastRequest,
    Plugin::GpuUsage,
    Plugin::LeastLatency,
    Plugin::PrefixCache,
    Plugin::LoraAffinity,
    Plugin::Random,
    Plugin::SessionAffinity,
];

/// Kthena's name of a plugin.
pub fn plugin_name(p: Plugin) -> &'static str {
    match p {
        Plugin::LeastRequest => "least-request",
        Plugin::GpuUsage => "gpu-usage",
        Plugin::LeastLatency => "least-latency",
        Plugin::PrefixCache => "prefix-cache",
        Plugin::LoraAffinity => "lora-affinity",
        Plugin::Random => "random",
        Plugin::SessionAffinity => "session-affinity",
    }
}

fn plugin_by_name(name: &str) -> Option<Plugin> {
    ALL.into_iter().find(|p| plugin_name(*p) == name)
}

/// Plugins that can drop pods.
pub fn is_filter(p: Plugin) -> bool {
    matches!(p, Plugin::LeastRequest | Plugin::LoraAffinity)
}

/// Plugins that can score pods.
pub fn is_score(p: Plugin) -> bool {
    !matches!(p, Plugin::LoraAffinity)
}

fn names(pred: fn(Plugin) -> bool) -> String {
    ALL.into_iter()
        .filter(|p| pred(*p))
        .map(plugin_name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Metrics timing must make sense together (checked for the command-line flags).
pub fn check_metrics(s: &Scheduler) -> Result<(), String> {
    if s.metrics_interval_ms == 0 {
        return Err("the metrics interval must be at least 1 ms".into());
    }
    if s.metrics_stale_ms <= s.metrics_interval_ms {
        return Err(format!(
            "metrics staleness ({} ms) must be longer than the metrics interval ({} ms), \
             otherwise every pod's metrics go stale between two scrapes",
            s.metrics_stale_ms, s.metrics_interval_ms
        ));
    }
    Ok(())
}

/// [`parse`] on a read file.
pub fn from_source(
    source: &Source,
    base: &Scheduler,
    diags: &mut Diagnostics,
) -> Option<Scheduler> {
    let file = source.display();
    match std::str::from_utf8(&source.content) {
        Ok(text) => parse(&file, text, base, diags),
        Err(e) => {
            diags.error(format!("{file}: not UTF-8: {e}"));
            None
        }
    }
}

/// Reads a `kthena-router-config` ConfigMap or a bare routerConfiguration document. `base`
/// provides what the file cannot set (metrics timing) and the argument defaults. `None` when
/// anything is invalid (every error is then in `diags`); warnings land in `diags` either way.
pub fn parse(
    file: &str,
    text: &str,
    base: &Scheduler,
    diags: &mut Diagnostics,
) -> Option<Scheduler> {
    let docs: Vec<Value> = match serde_saphyr::from_multiple::<Value>(text) {
        Ok(d) => d.into_iter().filter(|d| !d.is_null()).collect(),
        Err(e) => {
            diags.error(format!(
                "{file}: cannot parse: {}",
                first_line(&e.to_string())
            ));
            return None;
        }
    };
    let doc = match pick_document(&docs) {
        Ok(d) => d,
        Err(msg) => {
            diags.error(format!("{file}: {msg}"));
            return None;
        }
    };
    let (prefix, config) = if doc.get("kind").is_some() {
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind != "ConfigMap" {
            diags.error(format!(
                "{file}: kind {kind:?}: expected a ConfigMap (kthena-router-config) or a bare \
                 routerConfiguration document (top-level `scheduler:`)"
            ));
            return None;
        }
        let key = configmap_key(doc);
        let object = format!("{file}: ConfigMap {key}: data.{CONFIGMAP_KEY}");
        let text = match doc.get("data").and_then(|d| d.get(CONFIGMAP_KEY)) {
            Some(Value::String(s)) => s,
            Some(_) => {
                diags.error(format!("{object}: must be a string (a YAML document)"));
                return None;
            }
            None => {
                diags.error(format!(
                    "{object}: missing (Kthena's router reads its configuration from this key)"
                ));
                return None;
            }
        };
        match serde_saphyr::from_str::<Value>(text) {
            Ok(v) => (format!("{object}: "), v),
            Err(e) => {
                diags.error(format!(
                    "{object}: cannot parse: {}",
                    first_line(&e.to_string())
                ));
                return None;
            }
        }
    } else {
        (format!("{file}: "), doc.clone())
    };
    let mut r = Report {
        prefix,
        diags,
        errors: 0,
    };
    let scheduler = router_configuration(&config, base, &mut r);
    (r.errors == 0).then_some(scheduler)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn is_router_config_doc(doc: &Value) -> bool {
    match doc.get("kind").and_then(Value::as_str) {
        Some("ConfigMap") => doc.get("data").and_then(|d| d.get(CONFIGMAP_KEY)).is_some(),
        Some(_) => false,
        None => doc.get("scheduler").is_some(),
    }
}

/// The one document of the file, or the one ConfigMap / bare document among several (a file
/// of rendered Helm output, say).
fn pick_document(docs: &[Value]) -> Result<&Value, String> {
    if let [only] = docs {
        return Ok(only);
    }
    let found: Vec<&Value> = docs.iter().filter(|d| is_router_config_doc(d)).collect();
    match (docs.len(), found.as_slice()) {
        (0, _) => Err("empty: expected a ConfigMap (kthena-router-config) or a \
                       routerConfiguration document"
            .into()),
        (_, [one]) => Ok(one),
        (n, found) => Err(format!(
            "{n} documents, {} of them router configurations: expected exactly one \
             (a ConfigMap with data.{CONFIGMAP_KEY} or a document with top-level `scheduler:`)",
            found.len()
        )),
    }
}

fn configmap_key(doc: &Value) -> String {
    let meta = doc.get("metadata");
    let field = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let ns = field("namespace");
    let ns = if ns.is_empty() { "default".into() } else { ns };
    format!("{ns}/{}", field("name"))
}

fn router_configuration(config: &Value, base: &Scheduler, r: &mut Report) -> Scheduler {
    let Some(top) = mapping(config, "routerConfiguration", r) else {
        return base.clone();
    };
    for k in top.keys().filter(|k| *k != "scheduler") {
        r.warn(k, "not used by modelroute (only `scheduler` is); ignored");
    }
    match top.get("scheduler") {
        None => {
            r.warn(
                "scheduler",
                "missing; using Kthena's default scheduler configuration",
            );
            base.clone()
        }
        Some(s) => scheduler(s, base, r),
    }
}

fn scheduler(v: &Value, base: &Scheduler, r: &mut Report) -> Scheduler {
    let mut out = base.clone();
    let Some(m) = mapping(v, "scheduler", r) else {
        return out;
    };
    unknown_keys(m, &["pluginConfig", "plugins"], "scheduler", r);
    if let Some(pc) = m.get("pluginConfig") {
        plugin_config(pc, &mut out, r);
    }
    let plugins = m.get("plugins").unwrap_or(&Value::Null);
    let Some(pm) = mapping(plugins, "scheduler.plugins", r) else {
        return out;
    };
    unknown_keys(pm, &["Filter", "Score"], "scheduler.plugins", r);
    out.filters = filters(pm.get("Filter").unwrap_or(&Value::Null), r);
    out.scores = scores(pm.get("Score").unwrap_or(&Value::Null), r);
    // (Not worth a warning when the entries were invalid: that is an error already.)
    if out.scores.is_empty() && r.errors == 0 {
        r.warn(
            "scheduler.plugins.Score.enabled",
            "no score plugins: every pod that passes the filters scores the same",
        );
    }
    out
}

/// What an entry of an `enabled` / `disabled` list names.
enum Named {
    Plugin(Plugin),
    KvCacheAware,
    /// Reported already.
    Invalid,
}

/// `name` (a string) of a list entry, checked against the known plugins.
fn named(v: &Value, path: &str, r: &mut Report) -> Named {
    let Some(name) = v.as_str() else {
        r.error(
            path,
            &format!("plugin name must be a string, got {}", type_name(v)),
        );
        return Named::Invalid;
    };
    if name == KVCACHE_AWARE {
        return Named::KvCacheAware;
    }
    match plugin_by_name(name) {
        Some(p) => Named::Plugin(p),
        None if NOT_YET.contains(&name) => {
            r.error(
                path,
                &format!(
                    "{name:?} is a plugin proposed for Kthena's router (an open pull request) \
                     that this router does not implement (known: {})",
                    names(|_| true)
                ),
            );
            Named::Invalid
        }
        None => {
            r.error(
                path,
                &format!("unknown plugin {name:?} (known: {})", names(|_| true)),
            );
            Named::Invalid
        }
    }
}

/// The entry of a `disabled` list: a name or `{name: ...}` (Kthena's Score.disabled type).
fn disabled_entry(v: &Value, path: &str, r: &mut Report) -> Option<Plugin> {
    let (name, path) = match v {
        Value::Object(m) => (
            m.get("name").unwrap_or(&Value::Null),
            format!("{path}.name"),
        ),
        other => (other, path.to_string()),
    };
    match named(name, &path, r) {
        Named::Plugin(p) => Some(p),
        Named::KvCacheAware | Named::Invalid => None,
    }
}

/// `disabled` of a section: checked names; an enabled plugin there is an error.
fn disabled(section: &Map<String, Value>, path: &str, enabled: &[Plugin], r: &mut Report) {
    let path = join(path, "disabled");
    let items = list(section.get("disabled").unwrap_or(&Value::Null), &path, r);
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if let Some(p) = disabled_entry(item, &at, r) {
            if enabled.contains(&p) {
                r.error(
                    &at,
                    &format!("{:?} is both enabled and disabled", plugin_name(p)),
                );
            }
        }
    }
}

fn filters(v: &Value, r: &mut Report) -> Vec<Plugin> {
    const PATH: &str = "scheduler.plugins.Filter";
    let Some(m) = mapping(v, PATH, r) else {
        return Vec::new();
    };
    unknown_keys(m, &["enabled", "disabled"], PATH, r);
    let path = format!("{PATH}.enabled");
    let mut out = Vec::new();
    for (i, item) in list(m.get("enabled").unwrap_or(&Value::Null), &path, r)
        .iter()
        .enumerate()
    {
        let at = format!("{path}[{i}]");
        match named(item, &at, r) {
            Named::KvCacheAware => r.unsupported_kvcache(&at),
            Named::Invalid => {}
            Named::Plugin(p) if !is_filter(p) => r.error(
                &at,
                &format!(
                    "{:?} is not a filter plugin (filters: {})",
                    plugin_name(p),
                    names(is_filter)
                ),
            ),
            Named::Plugin(p) if out.contains(&p) => {
                r.warn(&at, &format!("{:?} is listed twice", plugin_name(p)))
            }
            Named::Plugin(p) => out.push(p),
        }
    }
    disabled(m, PATH, &out, r);
    out
}

fn scores(v: &Value, r: &mut Report) -> Vec<WeightedPlugin> {
    const PATH: &str = "scheduler.plugins.Score";
    let Some(m) = mapping(v, PATH, r) else {
        return Vec::new();
    };
    unknown_keys(m, &["enabled", "disabled"], PATH, r);
    let path = format!("{PATH}.enabled");
    let mut out: Vec<WeightedPlugin> = Vec::new();
    let mut random_at = None;
    for (i, item) in list(m.get("enabled").unwrap_or(&Value::Null), &path, r)
        .iter()
        .enumerate()
    {
        let at = format!("{path}[{i}]");
        let Value::Object(entry) = item else {
            r.error(
                &at,
                &format!(
                    "must be a mapping with name and weight, got {}",
                    type_name(item)
                ),
            );
            continue;
        };
        unknown_keys(entry, &["name", "weight"], &at, r);
        let name_at = format!("{at}.name");
        let plugin = match named(entry.get("name").unwrap_or(&Value::Null), &name_at, r) {
            Named::KvCacheAware => {
                r.unsupported_kvcache(&name_at);
                None
            }
            Named::Invalid => None,
            Named::Plugin(p) if !is_score(p) => {
                r.error(
                    &name_at,
                    &format!(
                        "{:?} is not a score plugin (scores: {})",
                        plugin_name(p),
                        names(is_score)
                    ),
                );
                None
            }
            Named::Plugin(p) => Some(p),
        };
        let weight = match entry.get("weight") {
            None => Some(1),
            Some(w) => match integer(w, 0) {
                Ok(w) => Some(w),
                Err(msg) => {
                    r.error(&format!("{at}.weight"), &msg);
                    None
                }
            },
        };
        let (Some(name), Some(weight)) = (plugin, weight) else {
            continue;
        };
        if name == Plugin::Random {
            random_at = Some(name_at.clone());
        }
        if let Some(prev) = out.iter_mut().find(|p| p.name == name) {
            r.warn(
                &name_at,
                &format!(
                    "{:?} is listed twice; the last weight ({weight}) wins",
                    plugin_name(name)
                ),
            );
            prev.weight = weight;
        } else {
            out.push(WeightedPlugin { name, weight });
        }
    }
    if let Some(at) = random_at {
        if out.len() > 1 {
            r.warn(
                &at,
                "\"random\" is dropped because other score plugins are enabled (as Kthena does)",
            );
            out.retain(|p| p.name != Plugin::Random);
        }
    }
    let enabled: Vec<Plugin> = out.iter().map(|p| p.name).collect();
    disabled(m, PATH, &enabled, r);
    out
}

#[cfg(test)]
mod tests;

//! `scheduler.pluginConfig`: each plugin's arguments, checked and applied to the
//! [`Scheduler`] (Kthena's arguments and ranges, and modelroute's `boundedLoad` and `podSpeed`).

use filter_config::{Plugin, Scheduler};
use serde_json::{Map, Value};

use super::walk::{join, list, mapping, type_name, unknown_keys, Report};
use super::{named, plugin_name, Named};

/// An integer in `min..=u32::MAX`.
pub(super) fn integer(v: &Value, min: u32) -> Result<u32, String> {
    if let Some(n) = v.as_u64() {
        if n < u64::from(min) {
            return Err(format!("must be at least {min}, got {n}"));
        }
        return u32::try_from(n).map_err(|_| format!("must be at most {}, got {n}", u32::MAX));
    }
    match v {
        Value::Number(n) if n.is_i64() => Err(format!("must be at least {min}, got {n}")),
        Value::Number(n) => Err(format!("must be an integer, got {n}")),
        other => Err(format!("must be an integer, got {}", type_name(other))),
    }
}

/// A finite number in `0.0..=1.0`.
fn fraction(v: &Value) -> Result<f64, String> {
    match v.as_f64() {
        Some(f) if f.is_finite() && (0.0..=1.0).contains(&f) => Ok(f),
        Some(f) => Err(format!("must be between 0.0 and 1.0, got {f}")),
        // (The YAML parser already rejects .nan / .inf.)
        None => Err(format!(
            "must be a finite number between 0.0 and 1.0, got {}",
            type_name(v)
        )),
    }
}

/// modelroute's argument of `prefix-cache` (Kthena's router ignores arguments it does not
/// know): 0 is off, else a factor of at least 1 (1: every pod at most the mean).
const BOUNDED_LOAD: &str = "boundedLoad";

fn load_factor(v: &Value) -> Result<f64, String> {
    match v.as_f64() {
        Some(f) if f == 0.0 || (f.is_finite() && f >= 1.0) => Ok(f),
        Some(f) => Err(format!("must be 0 (off) or at least 1.0, got {f}")),
        None => Err(format!(
            "must be a number (0: off, or at least 1.0), got {}",
            type_name(v)
        )),
    }
}

/// modelroute's other argument of `prefix-cache`: true weighs each pod's part by its speed.
const POD_SPEED: &str = "podSpeed";

fn switch(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("must be true or false, got {}", type_name(v)))
}

/// session-affinity's `headerName`: a header name ([`crate::kthena::is_header_name`]), kept
/// lower-case as Envoy gives headers to the filter. Kthena falls back to its default on a bad
/// value; here it is an error.
fn header_name(v: &Value) -> Result<String, String> {
    let Some(name) = v.as_str() else {
        return Err(format!("must be a header name, got {}", type_name(v)));
    };
    if !crate::kthena::is_header_name(name) {
        return Err(format!(
            "must be a header name of letters, digits and '-', got {name:?}"
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// session-affinity's `ttl`: a Go duration above zero (Kthena falls back to 30m on a bad one).
fn ttl(v: &Value) -> Result<u64, String> {
    let Some(text) = v.as_str() else {
        return Err(format!(
            "must be a duration such as \"30m\", got {}",
            type_name(v)
        ));
    };
    match crate::duration::parse_duration_ms(text) {
        Ok(0) => Err(format!("must be longer than zero, got {text:?}")),
        Ok(ms) => Ok(ms),
        Err(e) => Err(e.to_string()),
    }
}

pub(super) fn plugin_config(v: &Value, out: &mut Scheduler, r: &mut Report) {
    const PATH: &str = "scheduler.pluginConfig";
    let mut seen: Vec<Plugin> = Vec::new();
    for (i, item) in list(v, PATH, r).iter().enumerate() {
        let at = format!("{PATH}[{i}]");
        let Value::Object(entry) = item else {
            r.error(
                &at,
                &format!(
                    "must be a mapping with name and args, got {}",
                    type_name(item)
                ),
            );
            continue;
        };
        unknown_keys(entry, &["name", "args"], &at, r);
        let name_at = format!("{at}.name");
        let plugin = match named(entry.get("name").unwrap_or(&Value::Null), &name_at, r) {
            Named::Plugin(p) => p,
            Named::KvCacheAware => {
                r.unsupported_kvcache(&name_at);
                continue;
            }
            Named::Invalid => continue,
        };
        if seen.contains(&plugin) {
            r.warn(
                &name_at,
                &format!(
                    "{:?} is configured twice; the last arguments win",
                    plugin_name(plugin)
                ),
            );
        }
        seen.push(plugin);
        let args_at = format!("{at}.args");
        let Some(args) = mapping(entry.get("args").unwrap_or(&Value::Null), &args_at, r) else {
            continue;
        };
        plugin_args(plugin, args, &args_at, out, r);
    }
}

fn plugin_args(
    plugin: Plugin,
    args: &Map<String, Value>,
    path: &str,
    out: &mut Scheduler,
    r: &mut Report,
) {
    for (key, value) in args {
        let at = join(path, key);
        let target: Option<&mut u32> = match (plugin, key.as_str()) {
            (Plugin::LeastRequest, "maxWaitingRequests") => Some(&mut out.max_waiting_requests),
            (Plugin::PrefixCache, "blockSizeToHash") => Some(&mut out.prefix_block_size),
            (Plugin::PrefixCache, "maxBlocksToMatch") => Some(&mut out.prefix_max_blocks),
            (Plugin::PrefixCache, "maxHashCacheSize") => Some(&mut out.prefix_max_hashes),
            (Plugin::PrefixCache, "topKMatches") => Some(&mut out.prefix_top_k),
            (Plugin::LeastLatency, "TTFTTPOTWeightFactor") => {
                match fraction(value) {
                    Ok(f) => out.ttft_tpot_weight_factor = f,
                    Err(msg) => r.error(&at, &msg),
                }
                continue;
            }
            (Plugin::SessionAffinity, "headerName" | "ttl") => {
                let args = out.session_affinity.get_or_insert_with(Default::default);
                let set = if key == "ttl" {
                    ttl(value).map(|ms| args.ttl_ms = ms)
                } else {
                    header_name(value).map(|h| args.header = h)
                };
                if let Err(msg) = set {
                    r.error(&at, &msg);
                }
                continue;
            }
            (Plugin::PrefixCache, POD_SPEED) => {
                match switch(value) {
                    Ok(on) => out.prefix_pod_speed = on,
                    Err(msg) => r.error(&at, &msg),
                }
                continue;
            }
            (Plugin::PrefixCache, BOUNDED_LOAD) => {
                match load_factor(value) {
                    Ok(f) => out.prefix_bounded_load = f,
                    Err(msg) => r.error(&at, &msg),
                }
                continue;
            }
            _ => None,
        };
        match target {
            Some(t) => match integer(value, 1) {
                Ok(n) => *t = n,
                Err(msg) => r.error(&at, &msg),
            },
            None => r.warn(
                &at,
                &format!("unknown argument of {}, ignored", plugin_name(plugin)),
            ),
        }
    }
}

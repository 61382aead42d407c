//! Prefill/decode disaggregation on the engine side: a pod's role, and what a real engine
//! requires of each leg (vLLM's `kv_transfer_params` for NIXL / Mooncake, SGLang's bootstrap
//! fields). Pure checks of a parsed body; the server enforces them.

use std::net::IpAddr;

use serde::Serialize;
use serde_json::{Map, Value};

/// The PD role of a pod; `None` in [`PdSettings`] means aggregated (both phases locally).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Prefill,
    Decode,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s.trim().to_ascii_lowercase().as_str() {
            "prefill" => Some(Role::Prefill),
            "decode" => Some(Role::Decode),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Prefill => "prefill",
            Role::Decode => "decode",
        }
    }
}

/// vLLM's KV connector (`--kv-transfer-config`). `Nixl` and `Mooncake` move the KV cache
/// between pods and so need `kv_transfer_params`; `Http` and `Lmcache` do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvConnector {
    Http,
    Lmcache,
    Nixl,
    Mooncake,
}

impl KvConnector {
    pub fn parse(s: &str) -> Option<KvConnector> {
        match s.trim().to_ascii_lowercase().as_str() {
            "http" => Some(KvConnector::Http),
            "lmcache" => Some(KvConnector::Lmcache),
            "nixl" => Some(KvConnector::Nixl),
            "mooncake" => Some(KvConnector::Mooncake),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KvConnector::Http => "http",
            KvConnector::Lmcache => "lmcache",
            KvConnector::Nixl => "nixl",
            KvConnector::Mooncake => "mooncake",
        }
    }

    /// True if the decode side pulls the KV blocks named by `kv_transfer_params`.
    pub fn transfers_kv(self) -> bool {
        matches!(self, KvConnector::Nixl | KvConnector::Mooncake)
    }
}

/// SGLang's default bootstrap port.
pub const DEFAULT_BOOTSTRAP_PORT: u16 = 8998;
/// How long an SGLang decode waits for its prefill by default.
pub const DEFAULT_BOOTSTRAP_TIMEOUT_MS: u64 = 5000;

/// A pod's PD settings (`serve --role/--kv-connector/--bootstrap-port/--bootstrap-timeout-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PdSettings {
    /// `None` = aggregated.
    pub role: Option<Role>,
    /// vLLM only.
    pub kv_connector: KvConnector,
    /// SGLang prefill only: the bootstrap server's port.
    pub bootstrap_port: u16,
    /// SGLang decode only: how long to wait for the prefill's bootstrap room.
    pub bootstrap_timeout_ms: u64,
}

impl Default for PdSettings {
    fn default() -> Self {
        PdSettings {
            role: None,
            kv_connector: KvConnector::Http,
            bootstrap_port: DEFAULT_BOOTSTRAP_PORT,
            bootstrap_timeout_ms: DEFAULT_BOOTSTRAP_TIMEOUT_MS,
        }
    }
}

/// What a vLLM prefill (NIXL / Mooncake) answers as top-level `kv_transfer_params`, and what
/// the router must copy verbatim into the decode leg. Field order as vLLM's NIXL connector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvTransferParams {
    pub do_remote_prefill: bool,
    pub do_remote_decode: bool,
    pub remote_engine_id: String,
    pub remote_block_ids: Vec<u64>,
    pub remote_host: String,
    pub remote_port: u16,
    pub tp_size: u32,
}

impl KvTransferParams {
    /// The params a prefill pod hands out for blocks `block_ids` it holds.
    pub fn issued(engine_id: &str, block_ids: Vec<u64>, host: &str, port: u16) -> Self {
        KvTransferParams {
            do_remote_prefill: true,
            do_remote_decode: false,
            remote_engine_id: engine_id.to_string(),
            remote_block_ids: block_ids,
            remote_host: host.to_string(),
            remote_port: port,
            tp_size: 1,
        }
    }
}

/// Where a decode pod must pull its KV blocks from (parsed from `kv_transfer_params`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteKv {
    pub engine_id: String,
    pub block_ids: Vec<u64>,
    pub host: String,
    pub port: u16,
}

fn malformed(what: &str) -> String {
    format!("malformed kv_transfer_params: {what}")
}

/// `true`, `false`, or absent/null (= `None`); anything else is an error.
fn opt_bool(params: &Map<String, Value>, key: &str) -> Result<Option<bool>, String> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(malformed(&format!("{key} must be a boolean, got {other}"))),
    }
}

/// A vLLM prefill pod (NIXL / Mooncake) checks the request's `kv_transfer_params`:
/// `Ok(true)` = the router asks for a remote decode (answer with [`KvTransferParams`]),
/// `Ok(false)` = absent or null (an ordinary request), `Err` = 400 message.
pub fn check_prefill_kv(body: &Map<String, Value>) -> Result<bool, String> {
    let params = match body.get("kv_transfer_params") {
        None | Some(Value::Null) => return Ok(false),
        Some(Value::Object(p)) => p,
        Some(other) => return Err(malformed(&format!("must be an object, got {other}"))),
    };
    if opt_bool(params, "do_remote_decode")? != Some(true) {
        return Err(malformed(
            "a prefill request needs \"do_remote_decode\": true",
        ));
    }
    if opt_bool(params, "do_remote_prefill")? == Some(true) {
        return Err(malformed(
            "a prefill request must not set \"do_remote_prefill\": true",
        ));
    }
    Ok(true)
}

/// A vLLM decode pod (NIXL / Mooncake) checks the request's `kv_transfer_params`:
/// `Ok(None)` = absent or null (compute the prefill locally), `Ok(Some)` = pull the KV blocks
/// from there, `Err` = 400 message.
pub fn check_decode_kv(body: &Map<String, Value>) -> Result<Option<RemoteKv>, String> {
    let params = match body.get("kv_transfer_params") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(p)) => p,
        Some(other) => return Err(malformed(&format!("must be an object, got {other}"))),
    };
    if opt_bool(params, "do_remote_prefill")? != Some(true) {
        return Err(malformed(
            "a decode request needs \"do_remote_prefill\": true",
        ));
    }
    if opt_bool(params, "do_remote_decode")? == Some(true) {
        return Err(malformed(
            "a decode request must not set \"do_remote_decode\": true",
        ));
    }
    let string = |key: &str| match params.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(other) => Err(malformed(&format!(
            "{key} must be a non-empty string, got {other}"
        ))),
        None => Err(malformed(&format!("{key} is missing"))),
    };
    let engine_id = string("remote_engine_id")?;
    let host = string("remote_host")?;
    let block_ids = match params.get("remote_block_ids") {
        Some(Value::Array(ids)) if !ids.is_empty() => ids
            .iter()
            .map(|v| {
                v.as_u64().ok_or_else(|| {
                    malformed(&format!(
                        "remote_block_ids must hold non-negative integers, got {v}"
                    ))
                })
            })
            .collect::<Result<Vec<u64>, String>>()?,
        Some(other) => {
            return Err(malformed(&format!(
                "remote_block_ids must be a non-empty array of integers, got {other}"
            )))
        }
        None => return Err(malformed("remote_block_ids is missing")),
    };
    let port = match params.get("remote_port") {
        Some(v) => v
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| malformed(&format!("remote_port must be a port number, got {v}")))?,
        None => return Err(malformed("remote_port is missing")),
    };
    Ok(Some(RemoteKv {
        engine_id,
        block_ids,
        host,
        port,
    }))
}

/// The SGLang PD fields both legs must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    pub room: u64,
    pub host: String,
    pub port: u16,
}

/// Check `bootstrap_room` (integer 0..2^63-1), `bootstrap_host` (string) and `bootstrap_port`
/// (integer port); `Err` is the 400 message, starting "missing bootstrap_* fields".
pub fn check_bootstrap(body: &Map<String, Value>) -> Result<Bootstrap, String> {
    let bad = |what: String| format!("missing bootstrap_* fields: {what}");
    let room = match body.get("bootstrap_room") {
        Some(v) => v
            .as_u64()
            .filter(|r| *r <= i64::MAX as u64)
            .ok_or_else(|| {
                bad(format!(
                    "bootstrap_room must be an integer in 0..2^63-1, got {v}"
                ))
            })?,
        None => return Err(bad("bootstrap_room is missing".into())),
    };
    let host = match body.get("bootstrap_host") {
        Some(Value::String(h)) if !h.is_empty() => h.clone(),
        Some(v) => {
            return Err(bad(format!(
                "bootstrap_host must be a non-empty string, got {v}"
            )))
        }
        None => return Err(bad("bootstrap_host is missing".into())),
    };
    let port = match body.get("bootstrap_port") {
        Some(v) => v
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(format!("bootstrap_port must be a port number, got {v}")))?,
        None => return Err(bad("bootstrap_port is missing".into())),
    };
    Ok(Bootstrap { room, host, port })
}

/// True if `host` (as a router would write it: plain or bracketed IP) names `ip`.
pub fn host_is(host: &str, ip: IpAddr) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|h| h == ip)
}

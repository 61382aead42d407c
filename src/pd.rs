//! Prefill/decode disaggregation: which wire protocol a ModelServer speaks and how each leg's
//! body is built from the client's body. Pure byte work on the scanned top-level members; no
//! host calls. Protocols (shared/KTHENA-BEHAVIOUR.md):
//!
//! - vLLM `http` / `lmcache` (and the vLLM default): prefill leg without `stream` /
//!   `stream_options`, `max_tokens: 1` (and `max_completion_tokens: 1` if present); after a 2xx,
//!   the decode leg is the client's body.
//! - vLLM `nixl` / `mooncake`: as above, and the prefill leg asks for a remote decode with
//!   `kv_transfer_params`; the prefill answer's `kv_transfer_params` go verbatim into the decode
//!   leg.
//! - SGLang: both legs carry `bootstrap_host` (prefill pod IP), `bootstrap_port`,
//!   `bootstrap_room`; they are sent at the same time and the prefill answer is discarded.
//!
//! Both legs carry the rewritten model name.

use filter_config::Engine;

use crate::rewrite::{json_string, push_json_string};
use crate::scan::{scan, Key, Scan};

/// How a PD ModelServer's two legs are coordinated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// vLLM http / lmcache: prefill first (1 token), then decode.
    VllmSequential,
    /// vLLM nixl / mooncake: prefill first, its `kv_transfer_params` go to decode.
    VllmKvTransfer,
    /// SGLang bootstrap: both legs at once, paired by `bootstrap_room`.
    Sglang,
}

impl Protocol {
    pub fn of(engine: Engine, kv_connector: Option<&str>) -> Self {
        match (engine, kv_connector) {
            (_, Some("nixl" | "mooncake")) => Protocol::VllmKvTransfer,
            (Engine::Sglang, _) => Protocol::Sglang,
            (Engine::Vllm, _) => Protocol::VllmSequential,
        }
    }
}

/// What the prefill leg asks of a NIXL/Mooncake connector.
pub const KV_TRANSFER_REQUEST: &str = r#"{"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}"#;

/// SGLang's pairing fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// The prefill pod's IP (no port).
    pub host: String,
    pub port: u16,
    /// 0..2^63-1, fresh per attempt.
    pub room: u64,
}

impl Bootstrap {
    fn fields(&self) -> Vec<(Key, Vec<u8>)> {
        vec![
            (Key::BootstrapHost, json_string(&self.host)),
            (Key::BootstrapPort, self.port.to_string().into_bytes()),
            (Key::BootstrapRoom, self.room.to_string().into_bytes()),
        ]
    }
}

/// The prefill leg's body.
pub fn prefill_body(
    body: &[u8],
    scan: &Scan<'_>,
    protocol: Protocol,
    model: &str,
    bootstrap: Option<&Bootstrap>,
) -> Vec<u8> {
    let mut set: Vec<(Key, Vec<u8>)> = vec![(Key::Model, json_string(model))];
    let mut remove: Vec<Key> = vec![];
    match protocol {
        Protocol::VllmSequential | Protocol::VllmKvTransfer => {
            remove.extend([Key::Stream, Key::StreamOptions]);
            set.push((Key::MaxTokens, b"1".to_vec()));
            if scan.member(Key::MaxCompletionTokens).is_some() {
                set.push((Key::MaxCompletionTokens, b"1".to_vec()));
            }
            if protocol == Protocol::VllmKvTransfer {
                set.push((
                    Key::KvTransferParams,
                    KV_TRANSFER_REQUEST.as_bytes().to_vec(),
                ));
            }
        }
        Protocol::Sglang => set.extend(bootstrap.map(Bootstrap::fields).unwrap_or_default()),
    }
    edit_object(body, scan, &remove, &set)
}

/// The decode leg's body: the client's body with the model rewritten, plus the prefill's
/// `kv_transfer_params` (raw JSON) or SGLang's bootstrap fields, and the `stream_options` the
/// router asks for (usage accounting), if any.
pub fn decode_body(
    body: &[u8],
    scan: &Scan<'_>,
    model: &str,
    kv_transfer_params: Option<&[u8]>,
    bootstrap: Option<&Bootstrap>,
    stream_options: Option<&[u8]>,
) -> Vec<u8> {
    let mut set: Vec<(Key, Vec<u8>)> = vec![(Key::Model, json_string(model))];
    if let Some(options) = stream_options {
        set.push((Key::StreamOptions, options.to_vec()));
    }
    if let Some(kv) = kv_transfer_params {
        set.push((Key::KvTransferParams, kv.to_vec()));
    }
    set.extend(bootstrap.map(Bootstrap::fields).unwrap_or_default());
    edit_object(body, scan, &[], &set)
}

/// The raw top-level `kv_transfer_params` object of a prefill answer, if it has one.
pub fn kv_transfer_params(answer: &[u8]) -> Option<&[u8]> {
    let s = scan(answer).ok()?;
    let span = s.member(Key::KvTransferParams)?;
    let raw = answer.get(span)?;
    raw.starts_with(b"{").then_some(raw)
}

/// Rebuilds a JSON object: members whose key is in `remove` or `set` are cut out where they
/// stand (every occurrence), the text between them is copied byte for byte, then the `set`
/// members are appended. Only the members the scan recorded are touched, so the cost is one
/// copy of the body whatever its shape.
pub fn edit_object(
    body: &[u8],
    scan: &Scan<'_>,
    remove: &[Key],
    set: &[(Key, Vec<u8>)],
) -> Vec<u8> {
    let named = |k: Key| remove.contains(&k) || set.iter().any(|(s, _)| *s == k);
    let extra: usize = set.iter().map(|(k, v)| k.name().len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    out.push(b'{');
    // Between two cut members lie whole kept members separated by commas; the commas and
    // whitespace at either end belonged to a cut neighbour (no member starts or ends with one).
    let mut keep = |text: &[u8]| {
        let text = text.trim_ascii_start().trim_ascii_end();
        let text = text.strip_prefix(b",").unwrap_or(text).trim_ascii_start();
        let text = text.strip_suffix(b",").unwrap_or(text).trim_ascii_end();
        if !text.is_empty() {
            if out.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(text);
        }
    };
    let mut from = scan.object.start + 1;
    for m in scan.members.iter().filter(|m| named(m.key)) {
        let span = m.span();
        keep(body.get(from..span.start).unwrap_or_default());
        from = span.end;
    }
    keep(body.get(from..scan.object.end).unwrap_or_default());
    for (k, v) in set {
        if out.len() > 1 {
            out.push(b',');
        }
        push_json_string(&mut out, k.name());
        out.push(b':');
        out.extend_from_slice(v);
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests;

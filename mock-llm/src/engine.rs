//! Engine: turns one parsed inference request into the answer a vLLM / SGLang OpenAI-compatible
//! server would give (JSON body or the sequence of SSE events), plus the `/v1/models` list and
//! error bodies (the Prometheus text lives in `metrics.rs`). Pure: no I/O, no clock, no
//! randomness — ids and timestamps are passed in, so every answer here is deterministic and
//! unit-tested.
//! It must not know about sockets, headers or the request log (see `server.rs`).

use std::net::IpAddr;

use serde::Serialize;
use serde_json::{Map, Value};

/// Which engine's wire dialect (metrics names, `owned_by`) this pod speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Vllm,
    Sglang,
}

impl EngineKind {
    pub fn parse(s: &str) -> Option<EngineKind> {
        match s.to_ascii_lowercase().as_str() {
            "vllm" => Some(EngineKind::Vllm),
            "sglang" => Some(EngineKind::Sglang),
            _ => None,
        }
    }

    fn owned_by(self) -> &'static str {
        match self {
            EngineKind::Vllm => "vllm",
            EngineKind::Sglang => "sglang",
        }
    }
}

/// The model names one pod answers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The served model (vLLM `--served-model-name`, first value).
    pub model: String,
    /// Extra names the engine also answers to (further `--served-model-name` values).
    pub aliases: Vec<String>,
    /// Loaded LoRA adapters.
    pub lora: Vec<String>,
    pub engine: EngineKind,
}

impl Served {
    /// True if a request naming `model` is served by this pod.
    pub fn knows(&self, model: &str) -> bool {
        self.model == model
            || self.aliases.iter().any(|a| a == model)
            || self.lora.iter().any(|a| a == model)
    }

    /// The `GET /v1/models` body.
    pub fn models_list<'a>(&'a self, created: u64) -> String {
        let owned_by = self.engine.owned_by();
        let model = |name: &'a str, parent: Option<&'a str>| ModelCard {
            id: name,
            object: "model",
            created,
            owned_by,
            root: name,
            parent,
        };
        let data: Vec<ModelCard> = std::iter::once(&self.model)
            .chain(self.aliases.iter())
            .map(|name| model(name, None))
            .chain(self.lora.iter().map(|name| model(name, Some(&self.model))))
            .collect();
        to_json(&ModelList {
            object: "list",
            data,
        })
    }
}

// Wire shapes. Typed structs (not `json!`) so fields keep vLLM's order on the wire.

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'a str,
    data: Vec<ModelCard<'a>>,
}

#[derive(Serialize)]
struct ModelCard<'a> {
    id: &'a str,
    object: &'a str,
    created: u64,
    owned_by: &'a str,
    root: &'a str,
    parent: Option<&'a str>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    object: &'a str,
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<()>,
    code: u16,
}

#[derive(Serialize, Clone, Copy)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize)]
struct Envelope<'a, C> {
    id: &'a str,
    object: &'a str,
    created: u64,
    model: &'a str,
    choices: C,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kv_transfer_params: Option<&'a KvTransferParams>,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    index: u32,
    text: &'a str,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

fn to_json<T: Serialize>(v: &T) -> String {
    // Serializing these plain structs cannot fail; fall back to an empty object regardless.
    serde_json::to_string(v).unwrap_or_else(|_| "{}".to_string())
}

/// The two inference endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/completions`
    Completions,
    /// `POST /v1/chat/completions`
    Chat,
}

impl Api {
    pub fn from_path(path: &str) -> Option<Api> {
        match path {
            "/v1/completions" => Some(Api::Completions),
            "/v1/chat/completions" => Some(Api::Chat),
            _ => None,
        }
    }
}

/// Per-answer values the caller supplies (the only non-deterministic parts of an answer).
#[derive(Debug, Clone)]
pub struct Stamp {
    /// Random hex suffix of the response id.
    pub id_hex: String,
    /// Unix seconds.
    pub created: u64,
}

/// What to send back.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A JSON body with this status (answers and errors alike).
    Json { status: u16, body: String },
    /// `200 text/event-stream`: each element is one complete SSE event (`data: ...\n\n`).
    Stream { events: Vec<String> },
}

impl Reply {
    pub fn status(&self) -> u16 {
        match self {
            Reply::Json { status, .. } => *status,
            Reply::Stream { .. } => 200,
        }
    }
}

/// vLLM's error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 => "BadRequestError",
        401 => "AuthenticationError",
        403 => "PermissionDeniedError",
        404 => "NotFoundError",
        405 => "MethodNotAllowedError",
        408 => "RequestTimeoutError",
        413 => "RequestEntityTooLargeError",
        422 => "UnprocessableEntityError",
        429 => "RateLimitError",
        501 => "NotImplementedError",
        503 => "ServiceUnavailableError",
        504 => "GatewayTimeoutError",
        500..=599 => "InternalServerError",
        _ => "Error",
    }
}

/// vLLM's error body: `{"object":"error","message":..,"type":..,"param":null,"code":status}`.
pub fn error_body(status: u16, message: &str) -> String {
    to_json(&ErrorBody {
        object: "error",
        message,
        kind: error_type(status),
        param: None,
        code: status,
    })
}

/// A JSON error reply.
pub fn error_reply(status: u16, message: &str) -> Reply {
    Reply::Json {
        status,
        body: error_body(status, message),
    }
}

/// The text every answer generates.
pub fn simulated_text(model: &str) -> String {
    format!("This is simulated message from {model}!")
}

/// Answer one inference request. `body` is the parsed request body, or the JSON parse error.
/// (The server uses [`prepare`] + [`Prepared::reply`] to fit the PD steps in between.)
#[cfg_attr(not(test), allow(dead_code))]
pub fn answer(served: &Served, api: Api, body: Result<&Value, &str>, stamp: &Stamp) -> Reply {
    match prepare(served, api, body) {
        Ok(p) => p.reply(stamp, None),
        Err(e) => e,
    }
}

/// A request that passed the engine's checks (body shape, model, `max_tokens`): everything
/// needed to render its answer. Splitting this from rendering lets the caller run the PD steps
/// (KV pull, bootstrap wait) between validation and answering, as a real engine does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    api: Api,
    model: String,
    max_tokens: Option<u64>,
    prompt_tokens: u64,
    stream: bool,
    include_usage: bool,
}

/// Validate one inference request; `Err` is the error reply to send.
pub fn prepare(served: &Served, api: Api, body: Result<&Value, &str>) -> Result<Prepared, Reply> {
    let obj = match body {
        Ok(Value::Object(obj)) => obj,
        Ok(_) => return Err(error_reply(400, "The request body must be a JSON object.")),
        Err(e) => {
            return Err(error_reply(
                400,
                &format!("Invalid JSON in request body: {e}"),
            ))
        }
    };
    let model = match obj.get("model") {
        None | Some(Value::Null) => served.model.clone(),
        Some(Value::String(m)) if m.is_empty() => served.model.clone(),
        Some(Value::String(m)) => m.clone(),
        Some(other) => {
            return Err(error_reply(
                400,
                &format!("The field `model` must be a string, got {other}."),
            ))
        }
    };
    if !served.knows(&model) {
        return Err(error_reply(
            404,
            &format!("The model `{model}` does not exist."),
        ));
    }
    let max_tokens = max_tokens(obj).map_err(|msg| error_reply(400, &msg))?;
    let prompt_tokens = match api {
        Api::Completions => prompt_words(obj.get("prompt")),
        Api::Chat => messages_words(obj.get("messages")),
    }
    .max(1);
    Ok(Prepared {
        api,
        model,
        max_tokens,
        prompt_tokens,
        stream: obj.get("stream").and_then(Value::as_bool) == Some(true),
        include_usage: obj
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true),
    })
}

impl Prepared {
    /// True if the answer will be an SSE stream.
    pub fn is_stream(&self) -> bool {
        self.stream
    }

    /// Render the answer. `kv` (vLLM prefill with a KV connector) is added as the top-level
    /// `kv_transfer_params` of a non-streaming answer.
    pub fn reply(&self, stamp: &Stamp, kv: Option<&KvTransferParams>) -> Reply {
        let api = self.api;
        let full = simulated_text(&self.model);
        let all_words: Vec<&str> = full.split_whitespace().collect();
        let truncated = self.max_tokens.is_some_and(|m| m < all_words.len() as u64);
        let words: Vec<&str> = match self.max_tokens {
            Some(m) if truncated => all_words.iter().take(m as usize).copied().collect(),
            _ => all_words,
        };
        let finish_reason = match api {
            Api::Completions => "length",
            Api::Chat if truncated => "length",
            Api::Chat => "stop",
        };
        let completion_tokens = words.len() as u64;
        let usage = Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens,
            total_tokens: self.prompt_tokens + completion_tokens,
        };
        let out = Out {
            api,
            id: match api {
                Api::Completions => format!("cmpl-{}", stamp.id_hex),
                Api::Chat => format!("chatcmpl-{}", stamp.id_hex),
            },
            created: stamp.created,
            model: self.model.clone(),
        };
        if self.stream {
            Reply::Stream {
                events: out.events(&words, finish_reason, self.include_usage.then_some(usage)),
            }
        } else {
            Reply::Json {
                status: 200,
                body: out.full(&words.join(" "), finish_reason, usage, kv),
            }
        }
    }
}

/// `max_tokens` (or `max_completion_tokens`): absent/null = unlimited; must be an integer >= 1.
fn max_tokens(obj: &Map<String, Value>) -> Result<Option<u64>, String> {
    let mut limit: Option<u64> = None;
    for key in ["max_tokens", "max_completion_tokens"] {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => limit = Some(limit.map_or(n, |l| l.min(n))),
                _ => return Err(format!("{key} must be at least 1, got {v}.")),
            },
        }
    }
    Ok(limit)
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Approximate prompt tokens of a completions `prompt`: words of strings, one per token id.
fn prompt_words(prompt: Option<&Value>) -> u64 {
    match prompt {
        Some(Value::String(s)) => words(s),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => words(s),
                Value::Number(_) => 1,
                Value::Array(ids) => ids.len() as u64,
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Approximate prompt tokens of chat `messages`: words of every text content.
fn messages_words(messages: Option<&Value>) -> u64 {
    let Some(Value::Array(messages)) = messages else {
        return 0;
    };
    messages
        .iter()
        .map(|m| match m.get("content") {
            Some(Value::String(s)) => words(s),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(words)
                .sum(),
            _ => 0,
        })
        .sum()
}

/// The fields shared by every object of one answer.
struct Out {
    api: Api,
    id: String,
    created: u64,
    model: String,
}

impl Out {
    fn envelope<C>(
        &self,
        object: &'static str,
        choices: C,
        usage: Option<Usage>,
    ) -> Envelope<'_, C> {
        Envelope {
            id: &self.id,
            object,
            created: self.created,
            model: &self.model,
            choices,
            usage,
            kv_transfer_params: None,
        }
    }

    /// Non-streaming body.
    fn full(
        &self,
        text: &str,
        finish_reason: &str,
        usage: Usage,
        kv: Option<&KvTransferParams>,
    ) -> String {
        let finish_reason = Some(finish_reason);
        match self.api {
            Api::Completions => to_json(&Envelope {
                kv_transfer_params: kv,
                ..self.envelope(
                    "text_completion",
                    [TextChoice {
                        index: 0,
                        text,
                        logprobs: None,
                        finish_reason,
                    }],
                    Some(usage),
                )
            }),
            Api::Chat => to_json(&Envelope {
                kv_transfer_params: kv,
                ..self.envelope(
                    "chat.completion",
                    [ChatChoice {
                        index: 0,
                        message: Message {
                            role: "assistant",
                            content: text,
                        },
                        logprobs: None,
                        finish_reason,
                    }],
                    Some(usage),
                )
            }),
        }
    }

    fn chunk_object(&self) -> &'static str {
        match self.api {
            Api::Completions => "text_completion",
            Api::Chat => "chat.completion.chunk",
        }
    }

    /// One chunk carrying `piece` (or the end marker when `finish_reason` is set).
    fn chunk(&self, piece: &str, first: bool, finish_reason: Option<&str>) -> String {
        let object = self.chunk_object();
        match self.api {
            Api::Completions => to_json(&self.envelope(
                object,
                [TextChoice {
                    index: 0,
                    text: piece,
                    logprobs: None,
                    finish_reason,
                }],
                None,
            )),
            Api::Chat => {
                let delta = match (first, finish_reason) {
                    (_, Some(_)) => Delta {
                        role: None,
                        content: None,
                    },
                    (true, None) => Delta {
                        role: Some("assistant"),
                        content: Some(piece),
                    },
                    (false, None) => Delta {
                        role: None,
                        content: Some(piece),
                    },
                };
                to_json(&self.envelope(
                    object,
                    [ChunkChoice {
                        index: 0,
                        delta,
                        logprobs: None,
                        finish_reason,
                    }],
                    None,
                ))
            }
        }
    }

    /// The SSE events: one per word, the finish chunk, the optional usage chunk, `[DONE]`.
    fn events(&self, words: &[&str], finish_reason: &str, usage: Option<Usage>) -> Vec<String> {
        let mut events = Vec::with_capacity(words.len() + 3);
        for (i, w) in words.iter().enumerate() {
            let piece = if i == 0 {
                (*w).to_string()
            } else {
                format!(" {w}")
            };
            events.push(sse(&self.chunk(&piece, i == 0, None)));
        }
        events.push(sse(&self.chunk("", words.is_empty(), Some(finish_reason))));
        if let Some(usage) = usage {
            let no_choices: [(); 0] = [];
            events.push(sse(&to_json(&self.envelope(
                self.chunk_object(),
                no_choices,
                Some(usage),
            ))));
        }
        events.push("data: [DONE]\n\n".to_string());
        events
    }
}

fn sse(json: &str) -> String {
    format!("data: {json}\n\n")
}

// ---------------------------------------------------------------------------------------------
// Prefill/decode disaggregation: the pod's role and what a real engine requires of each leg.

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

/// Live load numbers reported on `/metrics` (the gauges a fresh pod derives from them).
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    pub running: u64,
    pub success_total: u64,
}

/// Prometheus text for `/metrics`, in the engine's own metric names, of a pod with this load,
/// nothing held and no answers observed yet. The server renders through
/// [`crate::metrics::Metrics::scrape`], which adds waiting, holds and latency histograms.
#[cfg_attr(not(test), allow(dead_code))]
pub fn metrics_text(served: &Served, load: Load) -> String {
    crate::metrics::render_derived(
        served,
        crate::metrics::Live {
            running: load.running,
            waiting: 0,
            success_total: load.success_total,
        },
    )
}

#[cfg(test)]
#[path = "engine/tests.rs"]
mod tests;

//! Engine: turns one parsed inference request into the answer a vLLM / SGLang OpenAI-compatible
//! server would give (JSON body or the sequence of SSE events), plus the `/v1/models` list and
//! error bodies (the Prometheus text lives in `metrics.rs`). Pure: no I/O, no clock, no
//! randomness — ids and timestamps are passed in, so every answer here is deterministic and
//! unit-tested.
//! It must not know about sockets, headers or the request log (see `server.rs`).

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

pub(crate) fn to_json<T: Serialize>(v: &T) -> String {
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

mod errors;
mod pd_wire;
pub use errors::{error_body, error_reply};
pub use pd_wire::*;

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
            kv_usage: None,
        },
    )
}

#[cfg(test)]
#[path = "engine/tests.rs"]
mod tests;

//! Usage accounting for one inference request: what it cost in tokens and time, gathered as the
//! response passes (never holding it) and published when the request ends as Envoy filter
//! state ([`filter_config::published`]), from which Envoy's own access loggers make Kthena's
//! metrics and access log. No host calls: the flow feeds it and publishes what it returns.
//!
//! Tokens: the engine's `usage` (a JSON answer, or the chunk of a stream that carries it); when
//! none arrives, Kthena's estimate of the prompt ([`crate::prompt::estimate_input_tokens`]) and
//! the stream's `data:` events delivered. A streaming request whose client did not ask for
//! usage is sent to the engine with `stream_options.include_usage` (see [`include_usage`]) and
//! the usage-only chunk that causes is removed here, so the client gets the stream it asked for.

use filter_config::published;

use crate::usage::{Usage, UsageChunkFilter, UsageScanner};

/// Label value for a model no route names (Kthena's), so clients cannot mint series.
pub const UNKNOWN_MODEL: &str = "unknown";
/// Label value for a path outside [`KNOWN_PATHS`].
pub const OTHER_PATH: &str = "other";
/// The OpenAI-style paths that are their own `path` label.
pub const KNOWN_PATHS: [&str; 12] = [
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1/rerank",
    "/v1/score",
    "/v1/moderations",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/audio/speech",
    "/v1/images/generations",
];

/// The bounded `path` label of a request path.
pub fn path_label(path: &str) -> &'static str {
    KNOWN_PATHS
        .iter()
        .find(|p| **p == path)
        .copied()
        .unwrap_or(OTHER_PATH)
}

/// Whether the engine can be asked for stream usage on this path (the OpenAI APIs with
/// `stream_options`).
pub fn supports_stream_options(path: &str) -> bool {
    path == "/v1/completions" || path == "/v1/chat/completions"
}

/// The `stream_options` value to send for a streaming request whose client sent `current`
/// (the raw JSON value, if any): None if the client already asked for usage (nothing to change
/// or hide), else the value with `include_usage: true` and the client's other options kept.
pub fn include_usage(current: Option<&[u8]>) -> Option<Vec<u8>> {
    const ASKED: &[u8] = br#"{"include_usage":true}"#;
    let Some(raw) = current else {
        return Some(ASKED.to_vec());
    };
    match serde_json::from_slice::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Object(mut options)) => {
            if options.get("include_usage") == Some(&serde_json::Value::Bool(true)) {
                return None;
            }
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            serde_json::to_vec(&options).ok()
        }
        // `null` or a value the engine will refuse anyway: ask plainly.
        _ => Some(ASKED.to_vec()),
    }
}

/// How the request ended, as Kthena's `error_type` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending<'a> {
    /// The filter answered with this error code.
    Local(&'a str),
    /// The response headers carried this status.
    Status(u32),
}

/// What one request cost, gathered while it runs.
#[derive(Debug, Clone, Default)]
pub struct Accounting {
    /// When the request headers arrived (ms on the host clock); 0: not an inference request.
    pub start_ms: u64,
    /// Kthena's estimate of the prompt's tokens, made before routing.
    pub input_estimate: u64,
    /// The router asked the engine for stream usage the client did not ask for.
    pub usage_injected: bool,
    /// PD: the prefill leg's duration, and when the decode leg was released.
    pub prefill_ms: Option<u64>,
    pub decode_start_ms: Option<u64>,
    /// With the prefix-cache plugin: the chosen pod's share of the prompt's blocks, in
    /// thousandths.
    pub prefix_match: Option<u16>,
    response: Option<ResponseScan>,
}

/// The response as it passes.
#[derive(Debug, Clone)]
struct ResponseScan {
    status: u32,
    scanner: Option<UsageScanner>,
    sse: bool,
    /// Removes the usage-only chunk the router caused.
    hide: Option<UsageChunkFilter>,
    first_byte_ms: Option<u64>,
    complete: bool,
}

impl Accounting {
    /// The response headers arrived: `content_type` says how to read the body.
    pub fn on_response_headers(&mut self, status: u32, content_type: &str, end_of_stream: bool) {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let sse = media == "text/event-stream";
        let scanner = if sse {
            Some(UsageScanner::sse())
        } else if media == "application/json" {
            Some(UsageScanner::json())
        } else {
            None
        };
        self.response = Some(ResponseScan {
            status,
            hide: (sse && self.usage_injected).then(UsageChunkFilter::default),
            scanner,
            sse,
            first_byte_ms: None,
            complete: end_of_stream,
        });
    }

    /// Whether the response body needs reading at all.
    pub fn reads_body(&self) -> bool {
        self.response.as_ref().is_some_and(|r| r.scanner.is_some())
    }

    /// Whether the next body piece needs the clock: a stream's first byte (its TTFT; the last
    /// byte is taken to be the request's end).
    pub fn wants_clock(&self) -> bool {
        self.response
            .as_ref()
            .is_some_and(|r| r.sse && r.first_byte_ms.is_none())
    }

    /// One piece of the response body (`now_ms`: the clock if [`Accounting::wants_clock`]).
    /// Returns the bytes to forward instead of `chunk` when they differ (the removed usage
    /// chunk), else None.
    pub fn on_response_body(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        now_ms: u64,
    ) -> Option<Vec<u8>> {
        let r = self.response.as_mut()?;
        if !chunk.is_empty() && r.sse && r.first_byte_ms.is_none() {
            r.first_byte_ms = Some(now_ms);
        }
        if let Some(s) = r.scanner.as_mut() {
            s.feed(chunk);
        }
        r.complete |= end_of_stream;
        let hide = r.hide.as_mut()?;
        let mut out = hide.feed(chunk);
        if end_of_stream {
            out.extend(hide.finish());
        }
        (out != chunk).then_some(out)
    }

    fn usage(&self) -> Usage {
        self.response
            .as_ref()
            .and_then(|r| r.scanner.as_ref())
            .map(UsageScanner::usage)
            .unwrap_or_default()
    }

    /// The answer's tokens so far: the engine's `completion_tokens`, else the events a stream
    /// delivered.
    pub fn output_tokens(&self) -> u64 {
        let delivered = self
            .response
            .as_ref()
            .filter(|r| r.sse)
            .and_then(|r| r.scanner.as_ref())
            .map(UsageScanner::events)
            .unwrap_or(0);
        self.usage().completion_tokens.unwrap_or(delivered)
    }

    /// The values to publish when the request ends (`now_ms`), in
    /// [`filter_config::published`]'s names. `ending`: None when no response was seen (the
    /// client left first). `routed` holds (route, server, upstream model, prefill pod).
    pub fn published(
        &self,
        model_label: &str,
        path: &str,
        routed: Option<Routed<'_>>,
        ending: Option<Ending<'_>>,
        now_ms: u64,
    ) -> Vec<(&'static str, String)> {
        let input = self.usage().prompt_tokens.unwrap_or(self.input_estimate);
        let output = self.output_tokens();
        let error_type = match (ending, &self.response) {
            (Some(Ending::Local(code)), _) => kthena_error_type(code).to_string(),
            (Some(Ending::Status(s)), Some(r)) if s < 400 && r.scanner.is_some() && !r.complete => {
                "stream_interrupted".into()
            }
            (Some(Ending::Status(s)), _) if s < 400 => "successful_request".into(),
            (Some(Ending::Status(_)), _) => "request_failed".into(),
            (None, _) => "client_cancelled".into(),
        };
        let (route, server, upstream_model) = match &routed {
            Some(r) => (r.route, r.server, r.upstream_model),
            None => ("", "", ""),
        };
        let mut out = vec![
            (published::MODEL, model_label.to_string()),
            (published::PATH, path_label(path).to_string()),
            (published::ROUTE, route.to_string()),
            (published::SERVER, server.to_string()),
            (
                published::BACKEND_TYPE,
                if routed.is_some() {
                    "model_server"
                } else {
                    "none"
                }
                .to_string(),
            ),
            (published::UPSTREAM_MODEL, upstream_model.to_string()),
            (published::ERROR_TYPE, error_type),
            (published::INPUT_TOKENS, input.to_string()),
            (published::OUTPUT_TOKENS, output.to_string()),
            (
                published::DURATION,
                thousandths(now_ms.saturating_sub(self.start_ms)),
            ),
        ];
        if let Some(r) = self.response.as_ref().filter(|r| r.sse) {
            if let Some(first) = r.first_byte_ms {
                out.push((
                    published::TTFT,
                    thousandths(first.saturating_sub(self.start_ms)),
                ));
                if output >= 2 {
                    // The last byte is the request's end, give or take the log.
                    let per_token = now_ms.saturating_sub(first) as f64 / (output - 1) as f64;
                    out.push((published::TPOT, format!("{:.6}", per_token / 1000.0)));
                }
            }
        }
        if let Some(ratio) = self.prefix_match {
            out.push((published::PREFIX_MATCH, thousandths(u64::from(ratio))));
        }
        if let Some(r) = routed.filter(|r| !r.prefill_pod.is_empty()) {
            out.push((published::PREFILL_POD, r.prefill_pod.to_string()));
            if let Some(ms) = self.prefill_ms {
                out.push((published::PREFILL_DURATION, thousandths(ms)));
            }
            if let Some(start) = self.decode_start_ms {
                out.push((
                    published::DECODE_DURATION,
                    thousandths(now_ms.saturating_sub(start)),
                ));
            }
        }
        out
    }

    /// The status of the response seen, if any.
    pub fn response_status(&self) -> Option<u32> {
        self.response.as_ref().map(|r| r.status)
    }
}

/// Where a routed request went.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'a> {
    pub route: &'a str,
    pub server: &'a str,
    pub upstream_model: &'a str,
    pub prefill_pod: &'a str,
}

/// Kthena's `error_type` for one of the filter's error codes: an unknown model is its
/// `route_not_found`; the rest keep the code the client saw.
fn kthena_error_type(code: &str) -> &str {
    match code {
        "model_not_found" => "route_not_found",
        "rate_limit_exceeded" => "rate_limit",
        other => other,
    }
}

/// `n` thousandths as a decimal: milliseconds as seconds, a per-mille share as a ratio.
fn thousandths(n: u64) -> String {
    format!("{}.{:03}", n / 1000, n % 1000)
}

#[cfg(test)]
mod tests;

//! Prefill/decode orchestration for one request of a PD ModelServer: the prefill leg is an
//! Envoy side call pinned to the prefill pod of the current pair; the decode leg is the client's
//! own request, released to that pair's decode pod. vLLM protocols hold the request until the
//! prefill answers 2xx (and carry its `kv_transfer_params` for NIXL / Mooncake); SGLang sends
//! both legs at once. A prefill that fails, cannot be reached or times out moves to the next
//! pair (another group) while pairs remain; then the client gets 502 / 503 / 504. Leg bodies
//! are built by [`crate::pd`] from the one scan of the client's body. Owns the PD part of
//! [`Flow`]'s phases; must not decide routes or pods (the router's pairs come in).

use crate::errors::ErrorReply;
use crate::host::{Action, Counter, Host};
use crate::pd::{self, Bootstrap, Protocol};
use crate::rng::Rng;
use crate::router::Pair;
use crate::scan::Scan;

use super::{
    Flow, Phase, ENVOY_MAX_RETRIES_HEADER, ENVOY_PER_TRY_TIMEOUT_HEADER, REQUEST_ID_HEADER,
};

/// Prefill legs of a ModelServer without `trafficPolicy.timeout` still end.
pub const DEFAULT_PREFILL_TIMEOUT_MS: u64 = 60_000;

/// What a PD request needs between its legs.
#[derive(Debug)]
pub(super) struct PdRequest {
    pub protocol: Protocol,
    /// The client's body as buffered (both legs are built from it).
    pub body: Vec<u8>,
    /// The top-level members of `body` the leg builders edit, from the request's one scan.
    pub layout: Scan<'static>,
    /// The model name both legs carry (the ModelServer's, or the LoRA adapter).
    pub model: String,
    pub cluster: String,
    /// The configured routing header names (side calls honour them too).
    pub cluster_header: String,
    pub endpoint_header: String,
    pub full_path: String,
    pub authority: String,
    pub request_id: String,
    pub authorization: Option<String>,
    /// Pairs in the order to try them; `attempt` indexes the current one.
    pub pairs: Vec<Pair>,
    pub attempt: usize,
    /// The side call of the current attempt.
    pub token: Option<u32>,
    pub sent_ms: u64,
    pub prefill_timeout_ms: u64,
    /// `trafficPolicy.timeout` for the decode leg's response headers.
    pub decode_timeout_ms: Option<u64>,
    pub bootstrap_port: u16,
    /// SGLang: the room of the current attempt.
    pub bootstrap: Option<Bootstrap>,
    /// The decode leg's `stream_options`, when the router asks for usage.
    pub stream_options: Option<Vec<u8>>,
}

/// How a prefill leg ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leg {
    Ok,
    TimedOut,
    Unreachable,
    Failed(u32),
}

impl Flow {
    /// First PD step, from the body hook. vLLM: send the prefill leg and hold the request
    /// (Pause until [`Flow::on_call_response`]). SGLang: send the prefill leg and release the
    /// decode leg at once (Continue).
    pub(super) fn start_pd(
        &mut self,
        mut pd: Box<PdRequest>,
        rng: &mut Rng,
        host: &mut dyn Host,
        body_size: usize,
    ) -> Action {
        loop {
            let Some(pair) = pd.pairs.get(pd.attempt).cloned() else {
                host.count(Counter::PdExhausted);
                return self.fail(
                    host,
                    &ErrorReply::prefill_unavailable("accepted the request"),
                );
            };
            if pd.protocol == Protocol::Sglang {
                pd.bootstrap = Some(Bootstrap {
                    host: address_host(&pair.prefill).to_string(),
                    port: pd.bootstrap_port,
                    room: rng.next_u64() >> 1,
                });
            }
            if self.send_prefill(&mut pd, host, &pair) {
                break;
            }
            host.count(Counter::PrefillUnreachable);
            pd.attempt += 1;
        }
        if pd.protocol == Protocol::Sglang {
            // Both legs at once: the decode engine waits for the prefill's KV by itself.
            self.release_decode(&pd, host, body_size, None);
            self.phase = Phase::Decoding(pd);
            return Action::Continue;
        }
        self.phase = Phase::AwaitPrefill(pd);
        Action::Pause
    }

    /// Dispatches the prefill leg of the current attempt; false if the host refused it.
    fn send_prefill(&mut self, pd: &mut PdRequest, host: &mut dyn Host, pair: &Pair) -> bool {
        let body = pd::prefill_body(
            &pd.body,
            &pd.layout,
            pd.protocol,
            &pd.model,
            pd.bootstrap.as_ref(),
        );
        let len = body.len().to_string();
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", "POST"),
            (":path", &pd.full_path),
            (":authority", &pd.authority),
            ("content-type", "application/json"),
            ("content-length", &len),
            (REQUEST_ID_HEADER, &pd.request_id),
            (&pd.endpoint_header, &pair.prefill),
        ];
        if let Some(a) = &pd.authorization {
            headers.push(("authorization", a));
        }
        pd.sent_ms = host.now_ms();
        pd.token = host.dispatch(&pd.cluster, &headers, &body, pd.prefill_timeout_ms);
        self.outcome.prefill = pair.prefill.clone();
        pd.token.is_some()
    }

    /// Sets the decode leg's body and headers for the current pair; the caller lets the
    /// request go on.
    fn release_decode(
        &mut self,
        pd: &PdRequest,
        host: &mut dyn Host,
        body_size: usize,
        kv_transfer_params: Option<&[u8]>,
    ) {
        let Some(pair) = pd.pairs.get(pd.attempt) else {
            return;
        };
        let body = pd::decode_body(
            &pd.body,
            &pd.layout,
            &pd.model,
            kv_transfer_params,
            pd.bootstrap.as_ref(),
            pd.stream_options.as_deref(),
        );
        host.replace_body(body_size, &body);
        if self.headers.contains("content-length") {
            host.set_header("content-length", &body.len().to_string());
        }
        host.set_header(&pd.cluster_header, &pd.cluster);
        // The decode pod alone: after a prefill, a decode is not retried elsewhere blindly.
        host.set_header(&pd.endpoint_header, &pair.decode);
        host.set_header(ENVOY_MAX_RETRIES_HEADER, "0");
        if let Some(ms) = pd.decode_timeout_ms {
            host.set_header(ENVOY_PER_TRY_TIMEOUT_HEADER, &ms.to_string());
        }
        self.outcome.endpoint = pair.decode.clone();
        self.outcome.prefill = pair.prefill.clone();
        self.acct.decode_start_ms = Some(host.now_ms());
    }

    /// Runs when a side call of this request answers or fails (Envoy's
    /// `on_http_call_response`; `body_size` is the answer's). A call this request is not
    /// waiting for is ignored. vLLM: a 2xx builds and releases the decode leg (the request
    /// resumes); a failure tries the next pair or answers the client with an error. SGLang:
    /// the answer is only counted; the decode leg already went.
    pub fn on_call_response(&mut self, host: &mut dyn Host, token: u32, body_size: usize) {
        let held = matches!(self.phase, Phase::AwaitPrefill(_));
        let (Phase::AwaitPrefill(pd) | Phase::Decoding(pd)) = &self.phase else {
            return;
        };
        if pd.token != Some(token) {
            return;
        }
        let elapsed = host.now_ms().saturating_sub(pd.sent_ms);
        self.acct.prefill_ms = Some(elapsed);
        let leg = match host.call_status() {
            Some(200..=299) => Leg::Ok,
            Some(504) | None if elapsed + 50 >= pd.prefill_timeout_ms => Leg::TimedOut,
            None => Leg::Unreachable,
            // Envoy's own answer when it could not reach the pod at all.
            Some(503)
                if envoy_local_unreachable(
                    &host.call_body(body_size.min(128)).unwrap_or_default(),
                ) =>
            {
                Leg::Unreachable
            }
            Some(s) => Leg::Failed(s),
        };
        host.count(match leg {
            Leg::Ok => Counter::PrefillOk,
            Leg::TimedOut => Counter::PrefillTimeout,
            Leg::Unreachable => Counter::PrefillUnreachable,
            Leg::Failed(_) => Counter::PrefillFailed,
        });
        if !held {
            return;
        }
        let Phase::AwaitPrefill(mut pd) = std::mem::take(&mut self.phase) else {
            return;
        };
        if leg == Leg::Ok {
            let answer = host.call_body(body_size).unwrap_or_default();
            let kv = if pd.protocol == Protocol::VllmKvTransfer {
                let kv = pd::kv_transfer_params(&answer).map(<[u8]>::to_vec);
                if kv.is_none() {
                    // The decode engine then computes the prefill itself: slower, not wrong.
                    host.count(Counter::KvParamsMissing);
                    log::warn!(
                        "modelroute: prefill answer for {} carried no kv_transfer_params",
                        pd.request_id
                    );
                }
                kv
            } else {
                None
            };
            self.release_decode(&pd, host, pd.body.len(), kv.as_deref());
            self.phase = Phase::Decoding(pd);
            host.resume();
            return;
        }
        // Try the next pair, if any.
        while pd.attempt + 1 < pd.pairs.len() {
            pd.attempt += 1;
            host.count(Counter::PdRetry);
            let Some(pair) = pd.pairs.get(pd.attempt).cloned() else {
                break;
            };
            if self.send_prefill(&mut pd, host, &pair) {
                self.phase = Phase::AwaitPrefill(pd);
                return;
            }
            host.count(Counter::PrefillUnreachable);
        }
        host.count(Counter::PdExhausted);
        let e = match leg {
            Leg::TimedOut => ErrorReply::prefill_timeout(pd.prefill_timeout_ms),
            Leg::Failed(s) => ErrorReply::prefill_failed(s),
            Leg::Ok | Leg::Unreachable => ErrorReply::prefill_unavailable("could be reached"),
        };
        self.fail(host, &e);
    }
}

/// Envoy's local reply bodies for "could not reach the upstream" (connect failure, reset
/// before headers, no host): a 503 that no engine sent.
fn envoy_local_unreachable(body: &[u8]) -> bool {
    body.starts_with(b"upstream connect error") || body.starts_with(b"no healthy upstream")
}

/// The host part of `ip:port` / `[v6]:port` (SGLang's `bootstrap_host`).
fn address_host(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.trim_start_matches('[').trim_end_matches(']')
}

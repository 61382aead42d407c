//! Server: the HTTP/1.1 side of one mock pod — accepting connections, routing paths, reading
//! (possibly chunked) bodies, the test-steering headers (`x-mock-delay-ms`, `x-mock-status`,
//! `x-mock-chunk-delay-ms`), the request log behind `/mock/requests`, the live load counters
//! (run slots of `--max-running`, the waiting queue), the latency measurements and holds behind
//! `/metrics` and `/mock/metrics` (rendered by `metrics.rs`), the streaming response body, and
//! the order of a request's steps (admission incl. the PD checks, run slot, delay, PD step from
//! `pd.rs`, answer). What to answer is decided in `engine.rs`; this
//! file only moves bytes and records what it received. It never invents routing results.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::engine::{self, Api, EngineKind, PdSettings, Reply, Role, Served, Stamp};
use crate::metrics::{self, Live, Metrics};
use crate::pd::{self, PdState};

/// How many requests `/mock/requests` keeps.
const LOG_CAPACITY: usize = 10_000;
/// Bodies up to this size are kept (parsed) in the log.
const LOG_BODY_MAX: usize = 64 * 1024;
/// Larger request bodies are refused with 413.
const BODY_LIMIT: usize = 64 * 1024 * 1024;
/// Largest `POST /mock/metrics` body.
const CONTROL_BODY_LIMIT: usize = 64 * 1024;

/// One pod's identity and served models.
#[derive(Debug, Clone)]
pub struct PodConfig {
    pub served: Served,
    /// `namespace/name`; `None` = `default/<bound address>`.
    pub pod: Option<String>,
    /// Prefill/decode role and its settings.
    pub pd: PdSettings,
    /// Pod-wide steering defaults (a slow or failing pod); request headers override them.
    pub steer: Steer,
}

/// Pod-wide behaviour for tests: `--delay-ms` / `MOCK_DELAY_MS`, `--status` / `MOCK_STATUS`,
/// `--max-running` / `MAX_RUNNING`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Steer {
    pub delay_ms: Option<u64>,
    pub status: Option<u16>,
    /// At most this many inference requests are answered at once; the others queue (and count
    /// as waiting). `None` = unlimited.
    pub max_running: Option<u64>,
    /// A simulated engine (prefix KV cache, prefill and decode time), for the quality bench.
    pub sim: Option<crate::sim::SimSettings>,
}

/// One entry of `/mock/requests`.
#[derive(Debug, Serialize)]
struct Record {
    seq: u64,
    method: String,
    path: String,
    model: Option<String>,
    stream: bool,
    request_id: Option<String>,
    headers: Map<String, Value>,
    body: Option<Value>,
    body_bytes: usize,
    status: u16,
    /// `"prefill"`, `"decode"`, or null (aggregated).
    role: Option<&'static str>,
    #[serde(flatten)]
    pd: PdNote,
}

/// What the PD steps of one request did (only the fields that apply are shown).
#[derive(Debug, Default, Serialize)]
struct PdNote {
    /// vLLM decode without `kv_transfer_params`: the prefill was computed here.
    #[serde(skip_serializing_if = "Option::is_none")]
    local_prefill: Option<bool>,
    /// vLLM decode: `host:port` the KV blocks were pulled from.
    #[serde(skip_serializing_if = "Option::is_none")]
    kv_pulled_from: Option<String>,
    /// SGLang decode: how long it waited for its prefill's bootstrap room.
    #[serde(skip_serializing_if = "Option::is_none")]
    bootstrap_waited_ms: Option<u64>,
}

#[derive(Default)]
struct Log {
    next_seq: u64,
    entries: VecDeque<Record>,
}

struct State {
    served: Served,
    pod: HeaderValue,
    listen: SocketAddr,
    pd_settings: PdSettings,
    steer: Steer,
    pd: Arc<PdState>,
    running: AtomicU64,
    waiting: AtomicU64,
    /// Run slots (`--max-running`); `None` = unlimited.
    slots: Option<Arc<Semaphore>>,
    success: AtomicU64,
    /// `GET /metrics` answered (reported by `GET /mock/metrics` as `scrapes`, beside
    /// `requests_ok`).
    scrapes: AtomicU64,
    /// The simulated engine's prefix cache (`--sim-kv-blocks`).
    kv: Option<Mutex<crate::sim::KvCache>>,
    metrics: Mutex<Metrics>,
    log: Mutex<Log>,
    id_seed: std::collections::hash_map::RandomState,
    id_counter: AtomicU64,
}

impl State {
    fn stamp(&self) -> Stamp {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        let mut a = self.id_seed.build_hasher();
        a.write_u64(n);
        let mut b = self.id_seed.build_hasher();
        b.write_u64(!n);
        Stamp {
            id_hex: format!("{:016x}{:016x}", a.finish(), b.finish()),
            created: now_secs(),
        }
    }

    fn record(&self, mut rec: Record) {
        let mut log = lock(&self.log);
        log.next_seq += 1;
        rec.seq = log.next_seq;
        if log.entries.len() >= LOG_CAPACITY {
            log.entries.pop_front();
        }
        log.entries.push_back(rec);
    }

    fn with_log<T>(&self, f: impl FnOnce(&mut Log) -> T) -> T {
        f(&mut lock(&self.log))
    }

    fn with_metrics<T>(&self, f: impl FnOnce(&mut Metrics) -> T) -> T {
        f(&mut lock(&self.metrics))
    }

    fn live(&self) -> Live {
        Live {
            running: self.running.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            success_total: self.success.load(Ordering::Relaxed),
            kv_usage: self.kv.as_ref().map(|kv| lock(kv).usage()),
        }
    }

    /// Queue for a run slot (counted as waiting meanwhile, also if the client goes away), then
    /// count as running until the returned slot is dropped.
    async fn run_slot(self: &Arc<Self>) -> Slot {
        let permit = match &self.slots {
            None => None,
            Some(sem) => {
                let _waiting = Counted::new(&self.waiting);
                // The semaphore is never closed, so this only fails in theory; then run anyway.
                sem.clone().acquire_owned().await.ok()
            }
        };
        Slot {
            _running: RunningGuard::new(self),
            _permit: permit,
        }
    }
}

/// Counts one unit in an atomic from creation until drop.
struct Counted<'a>(&'a AtomicU64);

impl<'a> Counted<'a> {
    fn new(n: &'a AtomicU64) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Counted(n)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request's run slot: counted as running, holding a `--max-running` permit if limited.
/// Fields drop in order: `running` falls before the permit lets the next request in.
struct Slot {
    _running: RunningGuard,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Measures one successful answer as its body leaves: TTFT = request arrival to the first
/// frame; TPOT = mean gap between SSE events (0 for a non-streaming answer). Recorded into the
/// pod's metrics on the first frame (TTFT) and when the body ends or is dropped (TPOT).
struct Observer {
    state: Arc<State>,
    arrived: Instant,
    streaming: bool,
    first: Option<Instant>,
    last: Option<Instant>,
    frames: u64,
}

impl Observer {
    fn new(state: &Arc<State>, arrived: Instant) -> Self {
        Observer {
            state: state.clone(),
            arrived,
            streaming: false,
            first: None,
            last: None,
            frames: 0,
        }
    }

    fn frame(&mut self) {
        let now = Instant::now();
        if self.first.is_none() {
            self.first = Some(now);
            let ttft = now.duration_since(self.arrived).as_secs_f64();
            self.state.with_metrics(|m| m.observe_ttft(ttft));
        }
        self.last = Some(now);
        self.frames += 1;
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let (Some(first), Some(last)) = (self.first, self.last) else {
            return;
        };
        let tpot = if !self.streaming {
            0.0
        } else if self.frames >= 2 {
            last.duration_since(first).as_secs_f64() / (self.frames - 1) as f64
        } else {
            // The client left after the first event: no gap was measured.
            return;
        };
        self.state.with_metrics(|m| m.observe_tpot(tpot));
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Counts a request as running from creation until drop (i.e. until its body is fully sent or
/// the client goes away).
struct RunningGuard(Arc<State>);

impl RunningGuard {
    fn new(state: &Arc<State>) -> Self {
        state.running.fetch_add(1, Ordering::Relaxed);
        RunningGuard(state.clone())
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bind `listen`, print the readiness line, and serve until `shutdown` resolves.
pub async fn serve(
    listen: SocketAddr,
    config: PodConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    let pod = config
        .pod
        .clone()
        .unwrap_or_else(|| format!("default/{local}"));
    let pod_header = HeaderValue::from_str(&pod).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("pod name {pod:?} is not a valid header value: {e}"),
        )
    })?;
    let pd_state = Arc::new(PdState::new(&pod));
    let role = config.pd.role;
    let mut role_note = String::new();
    if let Some(role) = role {
        role_note = format!(" role={}", role.as_str());
    }
    let bootstrap = match (config.served.engine, role) {
        (EngineKind::Sglang, Some(Role::Prefill)) => {
            let addr = pd::bootstrap_addr(local, config.pd.bootstrap_port);
            let l = TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("bootstrap server on {addr}: {e}"))
            })?;
            role_note.push_str(&format!(" bootstrap={}", l.local_addr()?));
            Some(l)
        }
        (EngineKind::Vllm, Some(_)) => {
            role_note.push_str(&format!(
                " kv_connector={}",
                config.pd.kv_connector.as_str()
            ));
            None
        }
        _ => None,
    };
    if let Some(l) = bootstrap {
        tokio::spawn(pd::serve_bootstrap(l, pd_state.clone(), pod_header.clone()));
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "mock-llm listening on {local} pod={pod} model={}{role_note}",
            config.served.model
        )?;
        out.flush()?;
    }
    let metrics = Metrics::new(config.served.engine, config.steer.max_running);
    let state = Arc::new(State {
        served: config.served,
        pod: pod_header,
        listen: local,
        pd_settings: config.pd,
        steer: config.steer,
        pd: pd_state,
        running: AtomicU64::new(0),
        waiting: AtomicU64::new(0),
        slots: config.steer.max_running.map(|n| {
            Arc::new(Semaphore::new(
                usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .clamp(1, Semaphore::MAX_PERMITS),
            ))
        }),
        success: AtomicU64::new(0),
        scrapes: AtomicU64::new(0),
        kv: config
            .steer
            .sim
            .map(|s| Mutex::new(crate::sim::KvCache::new(s.kv_blocks))),
        metrics: Mutex::new(metrics),
        log: Mutex::new(Log::default()),
        id_seed: std::collections::hash_map::RandomState::new(),
        id_counter: AtomicU64::new(0),
    });

    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Transient (e.g. EMFILE, aborted handshakes): keep serving.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = match (&method, path.as_str()) {
        (&Method::GET, "/health") => plain(StatusCode::OK, None, MockBody::empty()),
        (&Method::GET, "/metrics") => {
            state.scrapes.fetch_add(1, Ordering::Relaxed);
            let live = state.live();
            let text = state.with_metrics(|m| m.scrape(&state.served, live));
            plain(
                StatusCode::OK,
                Some("text/plain; version=0.0.4; charset=utf-8"),
                MockBody::full(text),
            )
        }
        (&Method::GET, "/mock/metrics") => mock_metrics_status(&state),
        (&Method::POST, "/mock/metrics") => hold_metrics(&state, req).await,
        (&Method::DELETE, "/mock/metrics") => {
            state.with_metrics(Metrics::release_all);
            plain(StatusCode::NO_CONTENT, None, MockBody::empty())
        }
        (&Method::GET, "/v1/models") => json_response(200, state.served.models_list(now_secs())),
        (&Method::GET, "/mock/requests") => {
            let body = state.with_log(|log| {
                let entries: Vec<&Record> = log.entries.iter().collect();
                serde_json::to_vec(&entries)
            });
            match body {
                Ok(b) => plain(StatusCode::OK, Some("application/json"), MockBody::full(b)),
                Err(e) => error_response(500, &format!("cannot serialize log: {e}")),
            }
        }
        (&Method::DELETE, "/mock/requests") => {
            state.with_log(|log| log.entries.clear());
            plain(StatusCode::NO_CONTENT, None, MockBody::empty())
        }
        (&Method::GET, "/mock/kv") => kv_blocks(&state, req.uri().query().unwrap_or("")),
        (&Method::POST, p) if p.starts_with("/v1/") => inference(&state, req).await,
        _ => error_response(404, &format!("Not Found: {method} {path}")),
    };
    let mut resp = resp;
    resp.headers_mut().insert("x-mock-pod", state.pod.clone());
    Ok(resp)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    header_str(headers, name).and_then(|v| v.parse().ok())
}

async fn inference(state: &Arc<State>, req: Request<Incoming>) -> Response<MockBody> {
    let arrived = Instant::now();
    let (parts, incoming) = req.into_parts();
    let path = parts.uri.path().to_string();

    let mut headers = Map::new();
    for name in parts.headers.keys() {
        if let Some(v) = parts.headers.get(name) {
            headers.insert(
                name.as_str().to_string(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            );
        }
    }
    let request_id = header_str(&parts.headers, "x-request-id").map(str::to_string);

    let body = Limited::new(incoming, BODY_LIMIT).collect().await;

    let (bytes, read_error) = match body {
        Ok(c) => (c.to_bytes(), None),
        Err(e) => {
            let too_large = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            (Bytes::new(), Some((too_large, e.to_string())))
        }
    };
    let parsed: Result<Value, String> = match &read_error {
        Some((_, e)) => Err(e.clone()),
        None => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
    };

    let forced_status = header_u64(&parts.headers, "x-mock-status")
        .and_then(|s| u16::try_from(s).ok())
        .or(state.steer.status)
        .filter(|s| (200..=599).contains(s) && *s != 200);

    // Admission: what the engine checks before scheduling (body, model, PD fields). An SGLang
    // prefill registers its bootstrap room here, as soon as the request has arrived.
    let admitted = match (&read_error, forced_status, Api::from_path(&path)) {
        (Some((true, _)), _, _) => Err(engine::error_reply(413, "Request body too large.")),
        (Some((false, e)), _, _) => Err(engine::error_reply(
            400,
            &format!("Cannot read request body: {e}"),
        )),
        (None, Some(status), _) => Err(engine::error_reply(
            status,
            &format!("Mock error with status {status} requested by x-mock-status."),
        )),
        (None, None, None) => Err(engine::error_reply(404, &format!("Not Found: POST {path}"))),
        (None, None, Some(api)) => {
            engine::prepare(&state.served, api, parsed.as_ref().map_err(String::as_str)).and_then(
                |prepared| {
                    let empty = Map::new();
                    let obj = parsed.as_ref().ok().and_then(Value::as_object);
                    admit_pd(state, obj.unwrap_or(&empty), prepared.is_stream())
                        .map(|step| (prepared, step))
                },
            )
        }
    };

    // Every inference request queues for a run slot (`--max-running`), errors included: the
    // delay below is work done while running, and counts in TTFT.
    let slot = state.run_slot().await;

    if let Some(ms) = header_u64(&parts.headers, "x-mock-delay-ms").or(state.steer.delay_ms) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // The simulated engine: prefill what its cache lacks; a non-streaming answer also
    // decodes before it is sent (a stream decodes between its chunks).
    let mut decode_ms_per_chunk = None;
    if let (Some(sim), Some(kv), Ok(body)) = (state.steer.sim, &state.kv, &parsed) {
        let text = crate::sim::prompt_text(body);
        let (cached, total) = lock(kv).admit(text.as_bytes());
        tokio::time::sleep(Duration::from_micros(sim.prefill_us(total - cached))).await;
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        if stream {
            decode_ms_per_chunk = Some(u64::from(sim.decode_ms_per_token));
        } else {
            let tokens = body
                .get("max_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(16)
                .min(4096);
            tokio::time::sleep(Duration::from_millis(
                tokens * u64::from(sim.decode_ms_per_token),
            ))
            .await;
        }
    }

    let mut note = PdNote::default();
    let reply = match admitted {
        Err(reply) => reply,
        Ok((prepared, step)) => run_pd(state, &prepared, step, &mut note).await,
    };

    let status = reply.status();
    let body_json = parsed.ok();
    state.record(Record {
        seq: 0,
        method: parts.method.to_string(),
        path,
        model: body_json
            .as_ref()
            .and_then(|b| b.get("model"))
            .and_then(Value::as_str)
            .map(str::to_string),
        stream: body_json
            .as_ref()
            .and_then(|b| b.get("stream"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        request_id,
        headers,
        body: if bytes.len() <= LOG_BODY_MAX {
            body_json
        } else {
            None
        },
        body_bytes: bytes.len(),
        status,
        role: state.pd_settings.role.map(Role::as_str),
        pd: note,
    });
    if (200..300).contains(&status) {
        state.success.fetch_add(1, Ordering::Relaxed);
    }

    let ok = (200..300).contains(&status);
    // vLLM reports its load in-band on a non-streaming answer, when asked.
    let load_report = match (&reply, state.served.engine) {
        (Reply::Json { .. }, EngineKind::Vllm) if ok => {
            header_str(&parts.headers, "endpoint-load-metrics-format").and_then(|format| {
                let live = state.live();
                metrics::load_report(format, &state.with_metrics(|m| m.effective(live)))
            })
        }
        _ => None,
    };
    let finish = |body: MockBody| {
        let body = body.slotted(slot);
        if ok {
            body.observed(Observer::new(state, arrived))
        } else {
            body
        }
    };
    match reply {
        Reply::Json { status, body } => {
            let mut resp = json_response(status, body).map(finish);
            if let Some(v) = load_report.and_then(|v| HeaderValue::from_str(&v).ok()) {
                resp.headers_mut().insert("endpoint-load-metrics", v);
            }
            resp
        }
        Reply::Stream { events } => {
            let delay = Duration::from_millis(
                header_u64(&parts.headers, "x-mock-chunk-delay-ms")
                    .or(decode_ms_per_chunk)
                    .unwrap_or(0),
            );
            let mut resp = plain(
                StatusCode::OK,
                Some("text/event-stream"),
                finish(MockBody::stream(events, delay)),
            );
            resp.headers_mut()
                .insert("cache-control", HeaderValue::from_static("no-cache"));
            resp
        }
    }
}

mod body;
mod pd_steps;
mod steering;

use body::{error_response, json_response, plain, MockBody};
use pd_steps::{admit_pd, kv_blocks, run_pd};
use steering::{hold_metrics, mock_metrics_status};

/// A mutex's guard, poisoned or not (what it guards stays consistent if a holder panicked).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

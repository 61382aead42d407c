//! PD: the I/O a prefill or decode pod does besides answering — the KV blocks a vLLM prefill
//! handed out (and `/mock/kv`, which a decode "pulls" them from, like NIXL does), SGLang's
//! bootstrap rooms and bootstrap server, and the tiny HTTP/1.1 GET client the decode side uses.
//! What the request must contain is checked in `engine.rs`; this file never invents a result:
//! a decode succeeds only if the prefill pod really saw the matching prefill.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::engine::{self, Bootstrap, RemoteKv};

/// Blocks handed out per prefill request.
pub const BLOCKS_PER_REQUEST: u64 = 4;
/// How many block ids a prefill pod remembers (oldest forgotten first).
const BLOCK_MEMORY: usize = 100_000;
/// How many bootstrap rooms a prefill pod remembers.
const ROOM_MEMORY: usize = 100_000;
/// Timeout of one GET to another pod (KV pull, one bootstrap poll).
const GET_TIMEOUT: Duration = Duration::from_secs(2);
/// SGLang decode: pause between bootstrap polls.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// A set that forgets its oldest members beyond `cap`.
struct Bounded {
    cap: usize,
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Bounded {
    fn new(cap: usize) -> Self {
        Bounded {
            cap,
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    fn insert(&mut self, v: u64) {
        if !self.set.insert(v) {
            return;
        }
        self.order.push_back(v);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    fn contains(&self, v: u64) -> bool {
        self.set.contains(&v)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The PD state of one pod process.
pub struct PdState {
    /// Unique per process: `<pod name>-<random hex>`.
    pub engine_id: String,
    next_block: AtomicU64,
    /// First block id of every allocation still remembered (each allocation is
    /// `BLOCKS_PER_REQUEST` consecutive ids).
    allocations: Mutex<Bounded>,
    rooms: Mutex<Bounded>,
}

impl PdState {
    /// `pod` is `namespace/name`; the engine id uses the name.
    pub fn new(pod: &str) -> Self {
        let name = pod.rsplit('/').next().unwrap_or(pod);
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        PdState {
            engine_id: format!("{name}-{:016x}", h.finish()),
            next_block: AtomicU64::new(1),
            allocations: Mutex::new(Bounded::new(BLOCK_MEMORY / BLOCKS_PER_REQUEST as usize)),
            rooms: Mutex::new(Bounded::new(ROOM_MEMORY)),
        }
    }

    /// Fresh block ids for one prefill; never reused by this process.
    pub fn allocate_blocks(&self) -> Vec<u64> {
        let first = self
            .next_block
            .fetch_add(BLOCKS_PER_REQUEST, Ordering::Relaxed);
        lock(&self.allocations).insert(first);
        (first..first + BLOCKS_PER_REQUEST).collect()
    }

    /// True if this pod issued exactly `ids` (one whole allocation) under `engine_id`.
    pub fn holds(&self, engine_id: &str, ids: &[u64]) -> bool {
        let Some(&first) = ids.first() else {
            return false;
        };
        engine_id == self.engine_id
            && ids.len() as u64 == BLOCKS_PER_REQUEST
            && ids.iter().zip(first..).all(|(id, want)| *id == want)
            && lock(&self.allocations).contains(first)
    }

    pub fn register_room(&self, room: u64) {
        lock(&self.rooms).insert(room);
    }

    pub fn has_room(&self, room: u64) -> bool {
        lock(&self.rooms).contains(room)
    }
}

// ------------------------------------------------------------------------------------------
// `/mock/kv` query.

/// Percent-encode everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    String::from_utf8(filter_config::query::unescape(s)?).ok()
}

/// The path a decode pod GETs to pull `ids` of `engine_id`.
pub fn kv_path(engine_id: &str, ids: &[u64]) -> String {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    format!(
        "/mock/kv?engine={}&ids={}",
        percent_encode(engine_id),
        ids.join(",")
    )
}

/// Parse `engine=E&ids=1,2,3`; `None` if either is missing or malformed.
pub fn parse_kv_query(query: &str) -> Option<(String, Vec<u64>)> {
    let mut engine = None;
    let mut ids = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=')?;
        match k {
            "engine" => engine = Some(percent_decode(v)?),
            "ids" => {
                let v = percent_decode(v)?;
                ids = Some(
                    v.split(',')
                        .map(|i| i.trim().parse::<u64>().ok())
                        .collect::<Option<Vec<u64>>>()?,
                )
            }
            _ => {}
        }
    }
    Some((engine?, ids?))
}

// ------------------------------------------------------------------------------------------
// Client side (decode pods).

/// One `GET path` to `host:port` over a fresh connection (`Connection: close`), bounded by
/// `timeout`; the response status, or why there is none.
pub async fn http_get(host: &str, port: u16, path: &str, timeout: Duration) -> Result<u16, String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let authority = if bare.contains(':') {
        format!("[{bare}]:{port}")
    } else {
        format!("{bare}:{port}")
    };
    let attempt = async {
        let mut s = TcpStream::connect((bare, port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("cannot send request: {e}"))?;
        let mut buf = Vec::new();
        // The status line is all we need; bodies here are tiny.
        s.take(64 * 1024)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| format!("cannot read response: {e}"))?;
        let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned();
        head.strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| "not an HTTP response".to_string())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// vLLM decode (NIXL / Mooncake): pull the KV blocks from the prefill pod named in
/// `kv_transfer_params`. `Err` is the 500 message.
pub async fn pull_kv(remote: &RemoteKv) -> Result<(), String> {
    let path = kv_path(&remote.engine_id, &remote.block_ids);
    let fail = |reason: String| {
        format!(
            "KV transfer from {}:{} failed: {reason}",
            remote.host, remote.port
        )
    };
    match http_get(&remote.host, remote.port, &path, GET_TIMEOUT).await {
        Ok(200) => Ok(()),
        Ok(404) => Err(fail(format!(
            "the prefill engine does not hold blocks {:?} under engine id {:?}",
            remote.block_ids, remote.engine_id
        ))),
        Ok(status) => Err(fail(format!("the prefill pod answered HTTP {status}"))),
        Err(e) => Err(fail(e)),
    }
}

/// SGLang decode: wait until the prefill pod's bootstrap server knows `bootstrap.room`, polling
/// every 10 ms until `timeout`. `Ok` is the time waited in ms, `Err` the 500 message.
pub async fn wait_for_room(bootstrap: &Bootstrap, timeout: Duration) -> Result<u64, String> {
    let start = Instant::now();
    let deadline = start + timeout;
    let path = format!("/bootstrap/room/{}", bootstrap.room);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let status = if left.is_zero() {
            Err("timeout".to_string())
        } else {
            http_get(
                &bootstrap.host,
                bootstrap.port,
                &path,
                left.min(GET_TIMEOUT),
            )
            .await
        };
        match status {
            Ok(200) => return Ok(start.elapsed().as_millis() as u64),
            Ok(404) if Instant::now() + POLL_EVERY < deadline => {
                tokio::time::sleep(POLL_EVERY).await
            }
            _ => {
                return Err(format!(
                    "KV transfer failed: prefill for bootstrap_room {} never arrived at {}:{}",
                    bootstrap.room, bootstrap.host, bootstrap.port
                ))
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// SGLang prefill: the bootstrap server.

/// Serve `GET /bootstrap/room/<room>` on `listener` (200 if a prefill with that room arrived).
pub async fn serve_bootstrap(
    listener: TcpListener,
    state: std::sync::Arc<PdState>,
    pod: HeaderValue,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let pod = pod.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = bootstrap_answer(&state, req.method(), req.uri().path(), &pod);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn bootstrap_answer(
    state: &PdState,
    method: &Method,
    path: &str,
    pod: &HeaderValue,
) -> Response<Full<Bytes>> {
    let room = path
        .strip_prefix("/bootstrap/room/")
        .and_then(|r| r.parse::<u64>().ok());
    let (status, body) = match (method, room, path) {
        (&Method::GET, Some(room), _) if state.has_room(room) => {
            (200, format!("{{\"bootstrap_room\":{room}}}"))
        }
        (&Method::GET, Some(room), _) => (
            404,
            engine::error_body(404, &format!("bootstrap_room {room} has not arrived")),
        ),
        (&Method::GET, None, "/health") => (200, String::new()),
        _ => (
            404,
            engine::error_body(404, &format!("Not Found: {method} {path}")),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert("x-mock-pod", pod.clone());
    resp
}

/// The bootstrap address of an SGLang prefill pod listening on `listen`.
pub fn bootstrap_addr(listen: SocketAddr, port: u16) -> SocketAddr {
    SocketAddr::new(listen.ip(), port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_fresh_and_held_only_as_issued() {
        let pd = PdState::new("ns/prefill-0");
        assert!(pd.engine_id.starts_with("prefill-0-"));
        assert_ne!(pd.engine_id, PdState::new("ns/prefill-0").engine_id);
        let a = pd.allocate_blocks();
        let b = pd.allocate_blocks();
        assert_eq!(a.len(), 4);
        assert!(a.iter().all(|id| !b.contains(id)));
        let id = pd.engine_id.clone();
        assert!(pd.holds(&id, &a));
        assert!(pd.holds(&id, &b));
        assert!(!pd.holds("other", &a));
        assert!(!pd.holds(&id, &a[..3]));
        assert!(!pd.holds(&id, &[a[0], a[1], a[2], b[0]]));
        assert!(!pd.holds(&id, &[]));
        let unissued: Vec<u64> = (1000..1004).collect();
        assert!(!pd.holds(&id, &unissued));
    }

    #[test]
    fn bounded_set_forgets_the_oldest() {
        let mut s = Bounded::new(2);
        s.insert(1);
        s.insert(2);
        s.insert(2);
        s.insert(3);
        assert!(!s.contains(1));
        assert!(s.contains(2) && s.contains(3));
    }

    #[test]
    fn kv_query_round_trips() {
        let path = kv_path("ns p/x-1&y", &[1, 2, 30]);
        assert_eq!(path, "/mock/kv?engine=ns%20p%2Fx-1%26y&ids=1,2,30");
        let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
        assert_eq!(
            parse_kv_query(query),
            Some(("ns p/x-1&y".to_string(), vec![1, 2, 30]))
        );
        assert_eq!(parse_kv_query("engine=e"), None);
        assert_eq!(parse_kv_query("ids=1,2"), None);
        assert_eq!(parse_kv_query("engine=e&ids=1,x"), None);
        assert_eq!(parse_kv_query("engine=%zz&ids=1"), None);
    }
}

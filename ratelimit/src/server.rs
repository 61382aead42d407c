//! The one gRPC method, `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, over
//! HTTP/2: a length-prefixed protobuf message in, one out, `grpc-status` in the trailers; and
//! the gateways' placement store ([`filter_config::placement_store`]): a record in, one out.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::net::TcpListener;

use crate::limiter::Limiter;
use crate::placements::Placements;
use crate::proto::RateLimitRequest;
use crate::sessions::Sessions;

const METHOD: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
/// A request holds a few descriptors of a few hundred bytes.
const MAX_REQUEST: usize = 64 * 1024;

/// What the service keeps: the budgets' and the placements' Redis clients.
pub struct Services {
    pub limiter: Limiter,
    pub placements: Placements,
    pub sessions: Sessions,
}

/// Serves connections from `listener` until the process ends.
pub async fn serve(listener: TcpListener, services: Arc<Services>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let services = services.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let services = services.clone();
                async move { Ok::<_, Infallible>(handle(req, &services).await) }
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                log::debug!("modelroute-ratelimit: connection ended: {e}");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, services: &Services) -> Response<Frames> {
    if req.uri().path() == filter_config::placement_store::PATH {
        return placement(req, &services.placements).await;
    }
    if req.uri().path() == filter_config::placement_store::SESSION_PATH {
        return session(req, &services.sessions).await;
    }
    let limiter = &services.limiter;
    if req.uri().path() != METHOD {
        return status_only(12, "unknown method"); // UNIMPLEMENTED
    }
    let body = match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status_only(8, "request too large or cut"), // RESOURCE_EXHAUSTED
    };
    let Some(message) = unframe(body) else {
        return status_only(3, "not one uncompressed gRPC message"); // INVALID_ARGUMENT
    };
    let Ok(request) = RateLimitRequest::decode(message) else {
        return status_only(3, "not a RateLimitRequest");
    };
    let reply = limiter.should_rate_limit(&request).await.encode_to_vec();
    let mut framed = Vec::with_capacity(reply.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(reply.len()).unwrap_or(u32::MAX).to_be_bytes());
    framed.extend_from_slice(&reply);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    grpc_response(Frames(VecDeque::from([
        Frame::data(Bytes::from(framed)),
        Frame::trailers(trailers),
    ])))
}

/// What a store call (placements or sessions) names in its headers, and its body.
struct StoreCall {
    redis: Option<String>,
    key: Option<String>,
    placed_blocks: Option<String>,
    /// Sessions: the binding a write may replace (compare-and-set); None: unconditional.
    expect: Option<String>,
    ttl_s: u64,
    /// None: longer than `max` bytes, or cut.
    body: Option<Bytes>,
}

impl StoreCall {
    async fn read(req: Request<Incoming>, max: usize) -> StoreCall {
        use filter_config::placement_store as contract;
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (redis, key) = (header(contract::REDIS_HEADER), header(contract::KEY_HEADER));
        let placed_blocks = header(contract::PLACED_BLOCKS_HEADER);
        let expect = header(contract::SESSION_EXPECT_HEADER);
        let ttl_s = header(contract::TTL_HEADER)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(600);
        let body = Limited::new(req.into_body(), max).collect().await;
        StoreCall {
            redis,
            key,
            placed_blocks,
            expect,
            ttl_s,
            body: body.ok().map(|b| b.to_bytes()),
        }
    }
}

/// A store call's answer: `body` (empty: no answer; the filter then decides on its own).
fn store_answer(body: Vec<u8>) -> Response<Frames> {
    let mut r = Response::new(Frames(VecDeque::from([Frame::data(Bytes::from(body))])));
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

/// A placement store call: the store's [`filter_config::placement_store::Answer`] as the
/// body (empty: Redis did not answer).
async fn placement(req: Request<Incoming>, placements: &Placements) -> Response<Frames> {
    use filter_config::placement_store as contract;
    let call = StoreCall::read(req, contract::MAX_RECORD).await;
    // Only the store's own keys: never a rate-limit bucket, whatever a caller names.
    let key = call
        .key
        .filter(|k| k.starts_with(contract::RECORD_KEY_PREFIX));
    let placed_blocks = call
        .placed_blocks
        .filter(|k| k.starts_with(contract::PLACED_BLOCKS_KEY_PREFIX));
    let kept = match (call.redis, key, placed_blocks, call.body) {
        (Some(redis), Some(key), Some(placed_blocks), Some(record)) => placements
            .call(&redis, &key, &placed_blocks, &record, call.ttl_s)
            .await
            .map(|a| a.encode())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    store_answer(kept)
}

/// A session store call: the pod address bound as the body (empty: none); 503 when Redis
/// did not answer or the call named no session key, so that the gateway does not take it for
/// "no binding" and overwrite another gateway's.
async fn session(req: Request<Incoming>, sessions: &Sessions) -> Response<Frames> {
    use filter_config::placement_store as contract;
    let call = StoreCall::read(req, contract::MAX_SESSION_POD).await;
    let key = call
        .key
        .filter(|k| k.starts_with(contract::SESSION_KEY_PREFIX));
    let bound = match (call.redis, key, call.body) {
        (Some(redis), Some(key), Some(pod)) => {
            let expect = call.expect.as_deref();
            sessions.call(&redis, &key, &pod, expect, call.ttl_s).await
        }
        _ => None,
    };
    let Some(bound) = bound else {
        let mut r = store_answer(Vec::new());
        *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
        return r;
    };
    store_answer(bound)
}

/// The message of a gRPC body: one uncompressed, length-prefixed message.
fn unframe(mut body: Bytes) -> Option<Bytes> {
    if body.len() < 5 || body.get_u8() != 0 {
        return None;
    }
    let len = usize::try_from(body.get_u32()).ok()?;
    (body.len() == len).then_some(body)
}

fn grpc_response(body: Frames) -> Response<Frames> {
    let mut r = Response::new(body);
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    r
}

/// A trailers-only error response.
fn status_only(code: u8, message: &'static str) -> Response<Frames> {
    let mut r = grpc_response(Frames(VecDeque::new()));
    r.headers_mut()
        .insert("grpc-status", HeaderValue::from(u16::from(code)));
    r.headers_mut()
        .insert("grpc-message", HeaderValue::from_static(message));
    r
}

/// A body of frames known in advance (the message, then the trailers).
pub struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_one_uncompressed_length_prefixed_frame() {
        let framed = Bytes::from_static(b"\0\0\0\0\x02hi");
        assert_eq!(unframe(framed), Some(Bytes::from_static(b"hi")));
        for bad in [
            &b""[..],
            b"\0\0\0",
            b"\x01\0\0\0\x02hi",
            b"\0\0\0\0\x03hi",
            b"\0\0\0\0\x01hi",
        ] {
            assert_eq!(unframe(Bytes::copy_from_slice(bad)), None, "{bad:?}");
        }
    }
}

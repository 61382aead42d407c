//! The response body of one mock answer (a JSON body or SSE events, the latter paced by
//! `x-mock-chunk-delay-ms`), holding the request's run slot until it is sent and reporting
//! what was sent to the latency observer; and the plain / JSON / error responses.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::time::Sleep;

use super::{Observer, Slot};
use crate::engine;

/// Response body: a queue of chunks, optionally paced, sent frame by frame so SSE events leave
/// as they are produced.
pub struct MockBody {
    chunks: VecDeque<Bytes>,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    streaming: bool,
    observer: Option<Observer>,
    _slot: Option<Slot>,
}

impl MockBody {
    pub(super) fn empty() -> Self {
        MockBody::full(Bytes::new())
    }

    pub(super) fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        let mut chunks = VecDeque::new();
        if !b.is_empty() {
            chunks.push_back(b);
        }
        MockBody {
            chunks,
            delay: Duration::ZERO,
            sleep: None,
            streaming: false,
            observer: None,
            _slot: None,
        }
    }

    pub(super) fn stream(events: Vec<String>, delay: Duration) -> Self {
        MockBody {
            chunks: events.into_iter().map(Bytes::from).collect(),
            delay,
            sleep: None,
            streaming: true,
            observer: None,
            _slot: None,
        }
    }

    /// Keep the request's run slot until the body has been sent (or the client goes away).
    pub(super) fn slotted(mut self, slot: Slot) -> Self {
        self._slot = Some(slot);
        self
    }

    /// Measure this (successful) answer's TTFT / TPOT as it is sent.
    pub(super) fn observed(mut self, mut observer: Observer) -> Self {
        observer.streaming = self.streaming;
        self.observer = Some(observer);
        self
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        match self.chunks.pop_front() {
            None => {
                self.observer = None;
                self._slot = None;
                Poll::Ready(None)
            }
            Some(chunk) => {
                // TTFT and the inter-token gaps are the tokens' (not the usage chunk's or
                // `[DONE]`'s, sent with the last token).
                if let Some(o) = self.observer.as_mut().filter(|_| paced(&chunk)) {
                    o.frame();
                }
                // A token takes a decode step; the usage chunk and `[DONE]` follow the last one
                // at once, as an engine sends them.
                if self.chunks.front().is_some_and(paced) && !self.delay.is_zero() {
                    let delay = self.delay;
                    self.sleep = Some(Box::pin(tokio::time::sleep(delay)));
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.sleep.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.streaming {
            SizeHint::default()
        } else {
            SizeHint::with_exact(self.chunks.iter().map(|c| c.len() as u64).sum())
        }
    }
}

/// Whether an SSE event carries generated text (or the finish), i.e. comes a decode step after
/// the one before it.
fn paced(event: &Bytes) -> bool {
    const NO_CHOICES: &[u8] = b"\"choices\":[]";
    !event.starts_with(b"data: [DONE]") && !event.windows(NO_CHOICES.len()).any(|w| w == NO_CHOICES)
}

pub(super) fn plain(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: MockBody,
) -> Response<MockBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Some(ct) = content_type {
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    resp
}

pub(super) fn json_response(status: u16, body: String) -> Response<MockBody> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    plain(status, Some("application/json"), MockBody::full(body))
}

pub(super) fn error_response(status: u16, message: &str) -> Response<MockBody> {
    json_response(status, engine::error_body(status, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_paced_and_the_usage_chunk_and_done_are_not() {
        let token =
            Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
        let usage = Bytes::from_static(b"data: {\"id\":\"x\",\"choices\":[],\"usage\":{}}\n\n");
        assert!(paced(&token));
        assert!(!paced(&usage));
        assert!(!paced(&Bytes::from_static(b"data: [DONE]\n\n")));
    }
}

//! Unary gRPC requests sent as one HTTP/2 DATA frame that ends the stream.
//!
//! tonic's request body yields the encoded message first and only says it
//! has ended when polled again, so hyper sends the message, then an empty
//! DATA frame with END_STREAM. h2 does not copy a payload of 256 bytes or
//! more into its frame buffer but writes it straight from the message, and
//! must write it before it can buffer the next frame: the empty frame took
//! one more `writev` in the gateway and one more wake-up and read in the
//! counter, for every coalesced batch (seen with `strace` on the counter:
//! three reads per request, the last one nine bytes).
//!
//! [`WholeBody`] reads the body before handing the request on. A unary
//! message is encoded when the body is first polled, so it is always
//! there: it goes on as a body of known length, whose last (only) DATA
//! frame carries END_STREAM itself. A body that is not complete at once
//! (a stream) goes on unchanged, with whatever was read put back first.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use http_body::Body as HttpBody;
use http_body_util::Full;
use tonic::Status;
use tonic::body::Body;
use tower::Service;

/// Wraps a gRPC transport (tonic's `Channel`).
#[derive(Debug, Clone)]
pub struct WholeBody<S>(pub S);

impl<S> Service<http::Request<Body>> for WholeBody<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.0.call(request.map(whole))
    }
}

/// Frames read from a body before it was handed on.
type Taken = VecDeque<Result<http_body::Frame<bytes::Bytes>, Status>>;

/// `body` as one frame of known length when it is complete now (all data,
/// no trailers); else the same frames as `body`.
fn whole(mut body: Body) -> Body {
    let mut cx = Context::from_waker(Waker::noop());
    let mut taken = Taken::new();
    let mut data = bytes::BytesMut::new();
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(None) if taken.is_empty() => return Body::new(Full::new(data.freeze())),
            Poll::Ready(Some(Ok(frame))) if frame.is_data() && taken.is_empty() => {
                if let Ok(chunk) = frame.into_data() {
                    data.extend_from_slice(&chunk);
                }
            }
            Poll::Ready(None) => return Body::new(Prefixed { taken, rest: None }),
            Poll::Ready(Some(frame)) => {
                if !data.is_empty() {
                    taken.push_back(Ok(http_body::Frame::data(data.split().freeze())));
                }
                taken.push_back(frame);
            }
            Poll::Pending => {
                if !data.is_empty() {
                    taken.push_back(Ok(http_body::Frame::data(data.split().freeze())));
                }
                return Body::new(Prefixed { taken, rest: Some(body) });
            }
        }
    }
}

/// The frames already read, then the rest of the body (if any).
struct Prefixed {
    taken: Taken,
    rest: Option<Body>,
}

impl HttpBody for Prefixed {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        if let Some(frame) = self.taken.pop_front() {
            return Poll::Ready(Some(frame));
        }
        match &mut self.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.taken.is_empty() && self.rest.as_ref().is_none_or(HttpBody::is_end_stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    async fn frames(mut body: Body) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            seen.push(match frame {
                Ok(frame) if frame.is_data() => {
                    format!("data {}", String::from_utf8_lossy(&frame.into_data().unwrap_or_default()))
                }
                Ok(_) => "trailers".to_string(),
                Err(status) => format!("error {}", status.message()),
            });
        }
        seen
    }

    #[tokio::test]
    async fn a_complete_body_becomes_one_frame_that_ends_it() {
        let chunks = [
            Ok::<_, Status>(http_body::Frame::data(bytes::Bytes::from("ab"))),
            Ok(http_body::Frame::data("cd".into())),
        ];
        let body = whole(Body::new(StreamBody::new(futures_util::stream::iter(chunks))));
        assert_eq!(body.size_hint().exact(), Some(4), "its length is known, so its DATA frame ends the stream");
        assert_eq!(frames(body).await, ["data abcd"]);
        assert_eq!(whole(Body::empty()).size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn a_body_not_complete_at_once_keeps_its_frames_in_order() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<http_body::Frame<bytes::Bytes>, Status>>();
        tx.send(Ok(http_body::Frame::data("ab".into()))).expect("send");
        let body = whole(Body::new(StreamBody::new(tokio_stream_like(rx))));
        assert_eq!(body.size_hint().exact(), None, "not complete: handed on as a stream");
        tx.send(Ok(http_body::Frame::data("cd".into()))).expect("send");
        tx.send(Err(Status::internal("gone"))).expect("send");
        drop(tx);
        assert_eq!(frames(body).await, ["data ab", "data cd", "error gone"]);
    }

    #[tokio::test]
    async fn trailers_and_errors_are_kept() {
        let chunks = [
            Ok::<_, Status>(http_body::Frame::data(bytes::Bytes::from("ab"))),
            Ok(http_body::Frame::trailers(http::HeaderMap::new())),
        ];
        let body = whole(Body::new(StreamBody::new(futures_util::stream::iter(chunks))));
        assert_eq!(frames(body).await, ["data ab", "trailers"]);
        let chunks = [Err::<http_body::Frame<bytes::Bytes>, _>(Status::internal("too large"))];
        let body = whole(Body::new(StreamBody::new(futures_util::stream::iter(chunks))));
        assert_eq!(frames(body).await, ["error too large"]);
    }

    fn tokio_stream_like<T>(mut rx: tokio::sync::mpsc::UnboundedReceiver<T>) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}

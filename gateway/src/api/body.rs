//! Reading a request body within its limits, before any handler runs: at
//! most [`MAX_BODY_BYTES`], complete within the body timeout, and only with
//! room in the body budget the requests in flight share. A client that
//! sends its body slowly gets 408 and its connection back, instead of
//! holding a request slot (and buffers) for as long as it likes; many
//! clients sending large bodies at once get 503 instead of the gateway's
//! memory.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_LENGTH;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use bytes::BytesMut;
use futures_util::StreamExt;
use http_body_util::BodyExt;

use super::error::ApiError;
use super::gate::Pass;
use super::handlers::MAX_BODY_BYTES;

/// How much of an oversized body is read (and discarded) before answering 413.
const DRAIN_LIMIT: usize = 16 << 20;

/// Why a body was not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("request body exceeds {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("request body not received within {} ms", .0.as_millis())]
    TimedOut(Duration),
    /// The bodies in flight hold the whole budget: shed, not queued.
    #[error("too many request body bytes in flight; retry later")]
    OverBudget,
    #[error("failed to read the request body: {0}")]
    Unreadable(String),
}

impl From<BodyError> for ApiError {
    fn from(err: BodyError) -> ApiError {
        let message = err.to_string();
        match err {
            BodyError::TooLarge => ApiError::too_large(message),
            BodyError::TimedOut(_) => ApiError::request_timeout(message),
            BodyError::OverBudget => ApiError::overloaded(message),
            BodyError::Unreadable(_) => ApiError::bad_request(message),
        }
    }
}

/// The body's bytes, read within [`MAX_BODY_BYTES`], `timeout` and the body
/// budget, which `pass` reserves from: the announced length before anything
/// is read, or each chunk as it arrives when no length was announced. A
/// `GET` without `Content-Length` has no body: it is not read.
pub async fn bytes(parts: &Parts, body: Body, timeout: Duration, pass: &mut Pass<'_>) -> Result<Bytes, BodyError> {
    let announced = announced(&parts.headers);
    if announced == Some(0) || (announced.is_none() && parts.method == Method::GET) {
        return Ok(Bytes::new());
    }
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        // Read and discard what the client sends (bounded in size and time)
        // before answering: a server that closes on unread data makes the
        // client's kernel reset the connection, and the client sees a broken
        // connection instead of the 413.
        let _ = tokio::time::timeout(timeout, drain(body)).await;
        return Err(BodyError::TooLarge);
    }
    let reserve_chunks = match announced {
        // At most MAX_BODY_BYTES here, so the cast is lossless.
        Some(length) if !pass.reserve_body(length as usize) => return Err(BodyError::OverBudget),
        Some(_) => false,
        None => true,
    };
    let mut collect = pin!(collect(body, reserve_chunks.then_some(pass)));
    // A small body usually arrived with the head: then no timer is needed.
    match poll_fn(|cx| Poll::Ready(collect.as_mut().poll(cx))).await {
        Poll::Ready(read) => read,
        Poll::Pending => tokio::time::timeout(timeout, collect).await.map_err(|_| BodyError::TimedOut(timeout))?,
    }
}

/// Reads `body` to its end, at most [`MAX_BODY_BYTES`]; with `reserve`,
/// each chunk's bytes are reserved from the budget before it is kept. One
/// chunk (the usual small body) is returned as it came, without a copy.
async fn collect(mut body: Body, mut reserve: Option<&mut Pass<'_>>) -> Result<Bytes, BodyError> {
    let mut first = Bytes::new();
    let mut joined = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| BodyError::Unreadable(err.to_string()))?;
        let Ok(chunk) = frame.into_data() else { continue }; // trailers carry nothing the API reads
        if first.len() + joined.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(BodyError::TooLarge);
        }
        if let Some(pass) = reserve.as_deref_mut()
            && !pass.reserve_body(chunk.len())
        {
            return Err(BodyError::OverBudget);
        }
        if first.is_empty() && joined.is_empty() {
            first = chunk;
        } else {
            if joined.is_empty() {
                joined.extend_from_slice(&std::mem::take(&mut first));
            }
            joined.extend_from_slice(&chunk);
        }
    }
    Ok(if joined.is_empty() { first } else { joined.freeze() })
}

/// The `Content-Length` the client announced, when it sent a valid one.
fn announced(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

async fn drain(body: Body) {
    let mut body = body.into_data_stream();
    let mut drained = 0;
    while drained < DRAIN_LIMIT {
        match body.next().await {
            Some(Ok(chunk)) => drained += chunk.len(),
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::InFlightGate;

    fn parts(method: Method, length: Option<usize>) -> Parts {
        let mut request = axum::http::Request::builder().method(method).uri("/api/v1/counter/increment");
        if let Some(length) = length {
            request = request.header(CONTENT_LENGTH, length);
        }
        request.body(()).expect("request").into_parts().0
    }

    /// A body sent in `chunks`, with no length announced (HTTP/1.1 chunked).
    fn streamed(chunks: &[&'static [u8]]) -> Body {
        let frames: Vec<Result<Bytes, std::io::Error>> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Body::from_stream(futures_util::stream::iter(frames))
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn an_announced_body_reserves_its_length_before_it_is_read() {
        let gate = InFlightGate::new(10, 10);
        let mut pass = gate.try_enter().expect("room");
        let read = bytes(&parts(Method::POST, Some(8)), Body::from("12345678"), TIMEOUT, &mut pass).await;
        assert_eq!(read, Ok(Bytes::from_static(b"12345678")));
        assert_eq!(gate.body_bytes(), 8, "held while the request is served");
        let mut other = gate.try_enter().expect("room");
        let refused = bytes(&parts(Method::POST, Some(3)), Body::from("abc"), TIMEOUT, &mut other).await;
        assert_eq!(refused, Err(BodyError::OverBudget), "8 + 3 passes the budget of 10");
        assert_eq!(gate.body_bytes(), 8, "the refused body took nothing");
        drop(pass);
        assert_eq!(gate.body_bytes(), 0, "given back with the pass");
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_reserves_each_chunk_and_is_joined() {
        let gate = InFlightGate::new(10, 100);
        let mut pass = gate.try_enter().expect("room");
        let read = bytes(&parts(Method::POST, None), streamed(&[b"{\"a\":", b"1}"]), TIMEOUT, &mut pass).await;
        assert_eq!(read, Ok(Bytes::from_static(b"{\"a\":1}")));
        assert_eq!(gate.body_bytes(), 7);
    }

    #[tokio::test]
    async fn a_streamed_body_past_the_budget_is_shed_midway() {
        let gate = InFlightGate::new(10, 6);
        let mut pass = gate.try_enter().expect("room");
        let read = bytes(&parts(Method::POST, None), streamed(&[b"1234", b"5678"]), TIMEOUT, &mut pass).await;
        assert_eq!(read, Err(BodyError::OverBudget));
        assert_eq!(gate.body_bytes(), 4, "the chunk read stays reserved until the pass goes");
    }

    #[tokio::test]
    async fn a_streamed_body_past_the_size_limit_is_too_large() {
        static CHUNK: [u8; 64 << 10] = [b'x'; 64 << 10];
        let chunks = vec![&CHUNK[..]; MAX_BODY_BYTES / CHUNK.len() + 1];
        let gate = InFlightGate::new(10, usize::MAX);
        let mut pass = gate.try_enter().expect("room");
        let read = bytes(&parts(Method::POST, None), streamed(&chunks), TIMEOUT, &mut pass).await;
        assert_eq!(read, Err(BodyError::TooLarge));
        assert!(gate.body_bytes() <= MAX_BODY_BYTES, "never more than the limit reserved");
    }

    #[tokio::test]
    async fn an_announced_oversized_body_is_refused_without_a_reservation() {
        let gate = InFlightGate::new(10, usize::MAX);
        let mut pass = gate.try_enter().expect("room");
        let length = MAX_BODY_BYTES + 1;
        let read = bytes(&parts(Method::POST, Some(length)), Body::from(vec![0u8; length]), TIMEOUT, &mut pass).await;
        assert_eq!(read, Err(BodyError::TooLarge));
        assert_eq!(gate.body_bytes(), 0);
    }

    #[tokio::test]
    async fn a_get_without_a_length_has_no_body_and_reserves_nothing() {
        let gate = InFlightGate::new(10, 0);
        let mut pass = gate.try_enter().expect("room");
        let read = bytes(&parts(Method::GET, None), Body::from("ignored"), TIMEOUT, &mut pass).await;
        assert_eq!(read, Ok(Bytes::new()));
    }

    #[test]
    fn each_refusal_has_its_documented_status() {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        let status = |err: BodyError| ApiError::from(err).into_response().status();
        assert_eq!(status(BodyError::TooLarge), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(status(BodyError::TimedOut(TIMEOUT)), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(status(BodyError::OverBudget), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(BodyError::Unreadable("reset".into())), StatusCode::BAD_REQUEST);
    }
}

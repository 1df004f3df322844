//! Reading a request body within its limits, before any handler runs: at
//! most [`MAX_BODY_BYTES`], complete within the body timeout. A client that
//! sends its body slowly gets 408 and its connection back, instead of
//! holding a request slot (and buffers) for as long as it likes.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_LENGTH;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::ApiError;
use super::handlers::MAX_BODY_BYTES;

/// How much of an oversized body is read (and discarded) before answering 413.
const DRAIN_LIMIT: usize = 16 << 20;

/// The body's bytes, read within [`MAX_BODY_BYTES`] and `timeout`, or the
/// error response (413, 408 or 400). A `GET` without `Content-Length` has
/// none: its body is not read.
pub async fn bytes(parts: &Parts, body: Body, timeout: Duration) -> Result<Bytes, Response> {
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
        return Err(too_large().into_response());
    }
    let mut collect = pin!(Limited::new(body, MAX_BODY_BYTES).collect());
    // A small body usually arrived with the head: then no timer is needed.
    let read = match poll_fn(|cx| Poll::Ready(collect.as_mut().poll(cx))).await {
        Poll::Ready(read) => Ok(read),
        Poll::Pending => tokio::time::timeout(timeout, collect).await,
    };
    match read {
        Err(_) => {
            Err(ApiError::request_timeout(format!("request body not received within {} ms", timeout.as_millis()))
                .into_response())
        }
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large().into_response()),
        Ok(Err(err)) => Err(ApiError::bad_request(format!("failed to read the request body: {err}")).into_response()),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The `Content-Length` the client announced, when it sent a valid one.
fn announced(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

fn too_large() -> ApiError {
    ApiError::too_large(format!("request body exceeds {MAX_BODY_BYTES} bytes"))
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

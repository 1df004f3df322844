//! Reading a request body within its limits, before any handler runs: at
//! most [`MAX_BODY_BYTES`], complete within the body timeout. A client that
//! sends its body slowly gets 408 and its connection back, instead of
//! holding a request slot (and buffers) for as long as it likes.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::Method;
use axum::http::header::CONTENT_LENGTH;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::ApiError;
use super::handlers::MAX_BODY_BYTES;

/// How much of an oversized body is read (and discarded) before answering 413.
const DRAIN_LIMIT: usize = 16 << 20;

/// The request with its body read in full, or the error response.
pub async fn read(request: Request, timeout: Duration) -> Result<Request, Response> {
    let announced = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced == Some(0) || (announced.is_none() && request.method() == Method::GET) {
        return Ok(request);
    }
    let (parts, body) = request.into_parts();
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
        Ok(Ok(collected)) => Ok(Request::from_parts(parts, Body::from(collected.to_bytes()))),
    }
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

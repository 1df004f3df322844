//! Response bodies of the HTTP API, wire-compatible with the original
//! project's clients and load scripts (request bodies: `tally_proto::json`).

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};

/// The header on the answer to a replayed write (the idempotency key was
/// seen before).
pub const REPLAYED: &str = "idempotent-replayed";

/// Room for a single counter's answer (about 150–200 bytes): axum's `Json`
/// starts at 128 bytes and grew its buffer once for nearly every answer.
const ANSWER_CAPACITY: usize = 256;

/// `{"status":"success","data":…}`
#[derive(Debug, Serialize, ToSchema)]
pub struct Success<T> {
    /// Always `success`.
    #[schema(value_type = String, example = "success")]
    pub status: &'static str,
    pub data: T,
}

fn success<T>(data: T) -> Success<T> {
    Success { status: "success", data }
}

/// The 200 answer `{"status":"success","data":…}`, as `Json(success(data))`
/// would make it, written into a buffer that fits the common answers: every
/// success envelope of the API is made here.
pub fn success_response<T: Serialize>(data: T) -> Response {
    let mut body = Vec::with_capacity(ANSWER_CAPACITY);
    match serde_json::to_writer(&mut body, &success(data)) {
        Ok(()) => {
            let mut response = Response::new(Body::from(body));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        // The API's own types always serialize: a failure here is a bug,
        // answered 500 `internal` in the error envelope (docs/api.md).
        Err(err) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", err.to_string()).into_response(),
    }
}

/// Now, in Unix seconds: the `timestamp` / `updated_at` fields the
/// original project's responses carry (its clients read them).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// (Response bodies borrow the request's validated key: no copies per request.)
#[derive(Debug, Serialize, ToSchema)]
pub struct CounterValue<'a> {
    pub resource_id: &'a str,
    pub counter_type: &'a str,
    pub current_value: i64,
    /// When the value was read, Unix seconds (as the original reports it).
    pub updated_at: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Incremented<'a> {
    pub resource_id: &'a str,
    pub counter_type: &'a str,
    pub delta: i64,
    pub current_value: i64,
    /// Always true in a 200 answer: the original's clients check it
    /// (failures come as the error envelope with a non-2xx status).
    pub success: bool,
    /// When it was applied, Unix seconds.
    pub timestamp: u64,
    /// Present (true) when the idempotency key was seen before.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

/// One operation of a sync batch: applied (with its value) or not (with why).
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationOutcome<'a> {
    pub resource_id: String,
    pub counter_type: String,
    pub delta: i64,
    /// `success` or `error`.
    #[schema(value_type = String, example = "success")]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_value: Option<i64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody<'a>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResults<'a> {
    pub results: Vec<OperationOutcome<'a>>,
    pub processed: usize,
    #[serde(rename = "async")]
    pub is_async: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub accepted: usize,
    #[serde(rename = "async")]
    pub is_async: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Values<'a> {
    pub results: Vec<CounterValue<'a>>,
    /// How many results (the original's batch GET carries it).
    pub total: usize,
}

/// The answer to a reset.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reset<'a> {
    pub resource_id: &'a str,
    pub counter_type: &'a str,
    /// The value right before the reset.
    pub previous_value: i64,
    /// Always 0: the value right after it.
    pub current_value: i64,
    pub success: bool,
    /// When it was applied, Unix seconds.
    pub timestamp: u64,
    /// Present (true) when the idempotency key was seen before: nothing was
    /// reset now and `previous_value` is the first reset's.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

/// Every counter of one resource.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResourceCounters<'a> {
    pub resource_id: &'a str,
    /// Sorted by counter type.
    pub counters: Vec<CounterEntry<'a>>,
    pub total: usize,
    /// When the values were read, Unix seconds.
    pub updated_at: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CounterEntry<'a> {
    pub counter_type: &'a str,
    pub current_value: i64,
}

/// A sync batch with a failed operation: the first failure's error, and
/// every operation's outcome so the client knows exactly what was applied.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchFailure<'a> {
    /// Always `error`.
    #[schema(value_type = String, example = "error")]
    pub status: &'static str,
    pub error: ErrorBody<'a>,
    pub data: BatchResults<'a>,
}

/// `GET /api/v1/health`, as the original project answered it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `healthy`.
    #[schema(value_type = String, example = "healthy")]
    pub status: &'static str,
    #[schema(value_type = String, example = "tally-gateway")]
    pub service: &'static str,
    #[schema(value_type = String)]
    pub version: &'static str,
    /// Now, Unix seconds.
    pub timestamp: u64,
}

//! The JSON error envelope and the HTTP status of every failure (docs/api.md, "Errors"):
//! `{"status":"error","error":{"code":"…","message":"…"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tally_proto::InvalidInput;
use tonic::Code;

use crate::client::CallError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header: set only on answers to requests
    /// that wrote nothing and may be resent (shed, rate limited, refused
    /// unrun by every counter tried, no counter to send to, buffer full).
    pub retry_after: Option<u32>,
    /// Answer with `WWW-Authenticate: Bearer` (401).
    pub bearer_challenge: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after: None, bearer_challenge: false }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message)
    }

    /// 503 for load shed at the door: answered with `Retry-After`.
    pub fn overloaded(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message).with_retry_after()
    }

    pub fn request_timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
    }

    fn with_retry_after(mut self) -> ApiError {
        self.retry_after = Some(RETRY_AFTER_SECONDS);
        self
    }
}

/// `Retry-After` of shed requests, in seconds.
pub const RETRY_AFTER_SECONDS: u32 = 1;

impl From<InvalidInput> for ApiError {
    fn from(err: InvalidInput) -> Self {
        if err.is_too_large() { ApiError::too_large(err.to_string()) } else { ApiError::bad_request(err.to_string()) }
    }
}

impl From<tally_proto::json::BodyError> for ApiError {
    fn from(err: tally_proto::json::BodyError) -> Self {
        match err {
            tally_proto::json::BodyError::Json(message) => {
                ApiError::bad_request(format!("invalid JSON body: {message}"))
            }
            tally_proto::json::BodyError::Invalid(invalid) => ApiError::from(invalid),
        }
    }
}

/// 401 (with the Bearer challenge), 403 or 429 (with `Retry-After`).
impl From<crate::auth::Refusal> for ApiError {
    fn from(refusal: crate::auth::Refusal) -> Self {
        use crate::auth::Refusal;
        match refusal {
            Refusal::Unauthenticated(message) => ApiError {
                bearer_challenge: true,
                ..ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
            },
            Refusal::Forbidden(message) => ApiError::new(StatusCode::FORBIDDEN, "permission_denied", message),
            Refusal::RateLimited { message, retry_after } => ApiError {
                // Whole seconds, rounded up: never 0, which would invite an immediate retry.
                retry_after: Some(u32::try_from(retry_after.as_millis().div_ceil(1000)).unwrap_or(u32::MAX).max(1)),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
            },
        }
    }
}

/// How a counter-side failure reaches the HTTP client.
impl From<CallError> for ApiError {
    fn from(err: CallError) -> Self {
        let message = err.to_string();
        match err {
            CallError::NoBackend { not_applied } => {
                inviting_retry(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message), not_applied)
            }
            CallError::ShuttingDown => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
            CallError::Overloaded => ApiError::overloaded(message),
            CallError::Protocol(_) => ApiError::new(StatusCode::BAD_GATEWAY, "bad_gateway", message),
            CallError::Status { code, message, not_applied } => inviting_retry(from_grpc(code, message), not_applied),
        }
    }
}

/// A 503 for a call that wrote nothing is as safe to resend as a shed
/// request, and says so the same way: `Retry-After`.
fn inviting_retry(answer: ApiError, not_applied: bool) -> ApiError {
    if not_applied && answer.status == StatusCode::SERVICE_UNAVAILABLE {
        ApiError { retry_after: Some(RETRY_AFTER_SECONDS), ..answer }
    } else {
        answer
    }
}

fn from_grpc(code: Code, message: String) -> ApiError {
    match code {
        Code::InvalidArgument => ApiError::bad_request(message),
        Code::OutOfRange => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "out_of_range", message),
        // The counter's write-behind buffer is full: nothing written, "retry later".
        Code::ResourceExhausted => ApiError {
            retry_after: Some(RETRY_AFTER_SECONDS),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "resource_exhausted", message)
        },
        Code::FailedPrecondition => ApiError::new(StatusCode::CONFLICT, "failed_precondition", message),
        Code::DeadlineExceeded => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "deadline_exceeded", message),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
        _ => ApiError::new(StatusCode::BAD_GATEWAY, "bad_gateway", message),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// The failure class, e.g. `invalid_argument`, `unavailable`.
    #[schema(example = "invalid_argument")]
    pub code: &'a str,
    /// What went wrong, for people.
    pub message: &'a str,
}

/// Every error answer: `{"status":"error","error":{"code","message"}}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Envelope<'a> {
    /// Always `error`.
    #[schema(value_type = String, example = "error")]
    status: &'static str,
    error: ErrorBody<'a>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Envelope { status: "error", error: ErrorBody { code: self.code, message: &self.message } };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        if self.bearer_challenge {
            let challenge = axum::http::HeaderValue::from_static("Bearer realm=\"tally\"");
            response.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_documented_http_statuses() {
        let status = |code| ApiError::from(CallError::Status { code, message: "m".into(), not_applied: false }).status;
        assert_eq!(status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(status(Code::OutOfRange), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(status(Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(Code::DeadlineExceeded), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ApiError::from(CallError::NoBackend { not_applied: false }).status, StatusCode::SERVICE_UNAVAILABLE);
        let shed = ApiError::from(CallError::Overloaded).into_response();
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.headers()[axum::http::header::RETRY_AFTER], "1");
    }

    #[test]
    fn only_a_refusal_that_wrote_nothing_invites_a_retry() {
        let answer = |code, not_applied| {
            let response = ApiError::from(CallError::Status { code, message: "m".into(), not_applied }).into_response();
            (response.status(), response.headers().get(axum::http::header::RETRY_AFTER).cloned())
        };
        let one = Some(axum::http::HeaderValue::from_static("1"));
        assert_eq!(answer(Code::Unavailable, true), (StatusCode::SERVICE_UNAVAILABLE, one.clone()));
        assert_eq!(answer(Code::Unavailable, false), (StatusCode::SERVICE_UNAVAILABLE, None), "outcome unknown");
        assert_eq!(answer(Code::Unimplemented, true), (StatusCode::BAD_GATEWAY, None), "a retry will not help");
        assert_eq!(answer(Code::ResourceExhausted, false), (StatusCode::TOO_MANY_REQUESTS, one.clone()), "buffer full");
        let no_backend = |not_applied| {
            let response = ApiError::from(CallError::NoBackend { not_applied }).into_response();
            response.headers().get(axum::http::header::RETRY_AFTER).cloned()
        };
        assert_eq!((no_backend(true), no_backend(false)), (one, None));
    }

    #[test]
    fn oversized_batches_are_413() {
        let err = tally_proto::validate::batch_len("operations", 1001).unwrap_err();
        assert_eq!(ApiError::from(err).status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(ApiError::from(tally_proto::InvalidInput::ZeroDelta).status, StatusCode::BAD_REQUEST);
    }
}

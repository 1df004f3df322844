//! The caller of an API request: authenticated before the body is looked
//! at, and checked against its scopes, prefix and rate before anything is
//! sent to a counter (see `crate::auth`).

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::ApiError;
use super::handlers::AppState;
use crate::auth::{Caller, Refusal, Scope};
use crate::metrics::Metrics;

/// The authenticated caller (401 with the Bearer challenge otherwise).
pub struct Authenticated(pub Caller);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(Early(caller)) = parts.extensions.remove::<Early>() {
            return Ok(Authenticated(caller));
        }
        authenticate(parts, state).map(Authenticated)
    }
}

/// A caller authenticated before the body was read ([`authenticate_early`]),
/// kept for the handler's [`Authenticated`].
#[derive(Clone)]
struct Early(Caller);

/// With API keys on, authenticates the caller before the request's body is
/// read, and keeps it for the handler; refused: 401, the body never read.
/// Without keys, nothing to do (every caller is anyone).
pub fn authenticate_early(parts: &mut Parts, state: &AppState) -> Result<(), ApiError> {
    if !state.auth.required() {
        return Ok(());
    }
    let caller = authenticate(parts, state)?;
    parts.extensions.insert(Early(caller));
    Ok(())
}

fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    state.auth.authenticate(parts.headers.get(AUTHORIZATION)).map_err(|refusal| refused(&state.metrics, refusal))
}

/// [`Caller::permit`], counted and answered in the JSON envelope.
pub fn permit<'a>(
    state: &super::App,
    caller: &Caller,
    scope: Scope,
    resource_ids: impl IntoIterator<Item = &'a str>,
    operations: usize,
) -> Result<(), ApiError> {
    caller.permit(scope, resource_ids, operations).map_err(|refusal| refused(&state.metrics, refusal))
}

fn refused(metrics: &Metrics, refusal: Refusal) -> ApiError {
    let reason = match refusal {
        Refusal::Unauthenticated(_) => "unauthenticated",
        Refusal::Forbidden(_) => "forbidden",
        Refusal::RateLimited { .. } => "rate_limited",
    };
    metrics.auth_refused.get_or_create(&[("reason", reason)]).inc();
    ApiError::from(refusal)
}

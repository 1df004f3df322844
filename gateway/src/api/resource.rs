//! The routes under `/api/v1/counter/{…}` that take no body: reading one
//! counter or a whole resource (`GET`), and resetting one counter
//! (`DELETE`). Which one a path addresses is decided by [`super::path`].

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Uri};
use axum::response::Response;
use tally_proto::v1::{GetResourceRequest, ResetRequest};

use super::ApiError;
use super::caller::{self, Authenticated};
use super::handlers::{App, AppState, IdempotencyHeader, get_counter};
use super::json::{CounterEntry, REPLAYED, Reset, ResourceCounters, success_response, unix_now};
use super::path::{self, Target};
use crate::auth::{Caller, Scope};
use crate::cache::Listing;
use crate::client::CallError;

/// Where the paths these routes parse start.
const PREFIX: &str = "/api/v1/counter/";

/// The path after [`PREFIX`], as sent (still percent-encoded).
fn raw(uri: &Uri) -> &str {
    uri.path().strip_prefix(PREFIX).unwrap_or_default()
}

/// `GET /api/v1/counter/{resource_id}/{counter_type}` or
/// `GET /api/v1/counter/{resource_id}`.
/// Called directly by the routes (a hot path: no extractors, no boxed
/// future of its own).
pub async fn get(state: &AppState, parts: &mut Parts) -> Result<Response, ApiError> {
    let Authenticated(caller) = Authenticated::from_request_parts(parts, state).await?;
    match path::parse(raw(&parts.uri))? {
        Target::Counter(key) => get_counter(state, &caller, key).await,
        Target::Resource(resource_id) => get_resource(state, &caller, &resource_id).await,
    }
}

/// Every counter of a resource: cached like single counters (any write
/// through this gateway to one of them drops the listing).
async fn get_resource(state: &App, caller: &Caller, resource_id: &str) -> Result<Response, ApiError> {
    caller::permit(state, caller, Scope::Read, [resource_id], 1)?;
    let listing = match state.cache.get_listing(resource_id) {
        Some(listing) => {
            state.metrics.cache_lookup(true);
            listing
        }
        None => {
            state.metrics.cache_lookup(false);
            let stamp = state.cache.read_stamp();
            let request = GetResourceRequest { resource_id: resource_id.to_string() };
            let response = state.counter.get_resource(request).await;
            if matches!(response, Err(CallError::Overloaded)) {
                state.metrics.shed("queue");
            }
            let listing: Listing = response?.counters.into_iter().map(|c| (c.counter_type, c.current_value)).collect();
            state.cache.fill_listing(resource_id, listing.clone(), &stamp);
            listing
        }
    };
    let counters: Vec<CounterEntry<'_>> = listing
        .iter()
        .map(|(counter_type, current_value)| CounterEntry { counter_type, current_value: *current_value })
        .collect();
    let total = counters.len();
    Ok(success_response(ResourceCounters { resource_id, counters, total, updated_at: unix_now() }))
}

/// `DELETE /api/v1/counter/{resource_id}/{counter_type}`: sets the counter
/// to 0 and answers with the value it had. An `Idempotency-Key` header
/// makes a resend (after a timeout, say) answer the first reset's value
/// without resetting again.
pub async fn reset(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    header: IdempotencyHeader,
    uri: Uri,
) -> Result<Response, ApiError> {
    let key = path::counter(raw(&uri))?;
    let idempotency_key = header.validated()?;
    caller::permit(&state, &caller, Scope::Write, [key.resource_id()], 1)?;
    let idempotency_key = caller.scoped_idempotency_key(idempotency_key).unwrap_or_default();
    let request = ResetRequest {
        resource_id: key.resource_id().to_string(),
        counter_type: key.counter_type().to_string(),
        idempotency_key,
    };
    let write = state.cache.write_started([&key]);
    let result = state.counter.reset(request).await;
    if matches!(result, Err(CallError::Overloaded)) {
        state.metrics.shed("queue");
    }
    // After a fresh reset the counter is 0; a replay says nothing about now.
    write.finish([result.as_ref().ok().filter(|r| !r.replayed).map(|_| 0)]);
    let reset = result?;
    let mut response = success_response(Reset {
        resource_id: key.resource_id(),
        counter_type: key.counter_type(),
        previous_value: reset.previous_value,
        current_value: 0,
        success: true,
        timestamp: unix_now(),
        replayed: reset.replayed,
    });
    if reset.replayed {
        response.headers_mut().insert(REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

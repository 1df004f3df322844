//! A Kubernetes API **test double** for one `coordination.k8s.io/v1` Lease
//! (no API server can run here): get, create, and patch with the two kinds
//! leader election uses — server-side apply, which refuses (409 Conflict) to
//! change a field another field manager owns, and strategic merge, which
//! takes the fields it sets (a `null` clears value and owner). That field
//! ownership is what makes only one replica's claim on `holderIdentity` win.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

#[derive(Default)]
struct Stored {
    /// The Lease object, once created.
    lease: Option<Value>,
    /// `spec` field → the field manager that owns it.
    owners: HashMap<String, String>,
    version: u64,
}

type Shared = Arc<Mutex<Stored>>;

pub struct LeaseDouble {
    pub addr: SocketAddr,
    stored: Shared,
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
        "reason": reason, "code": code.as_u16()});
    (code, axum::Json(body)).into_response()
}

impl LeaseDouble {
    pub async fn start(namespace: &str) -> LeaseDouble {
        let stored = Shared::default();
        let base = format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases");
        let app = Router::new()
            .route(&base, post(create))
            .route(&format!("{base}/{{name}}"), get(read).patch(patch))
            .with_state(stored.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind lease double");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        LeaseDouble { addr, stored }
    }

    /// The current `spec.holderIdentity`, if any.
    pub fn holder(&self) -> Option<String> {
        let stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        stored.lease.as_ref()?.pointer("/spec/holderIdentity")?.as_str().map(str::to_string)
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Stored> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

async fn read(State(shared): State<Shared>, Path(name): Path<String>) -> Response {
    match &lock(&shared).lease {
        Some(lease) => axum::Json(lease.clone()).into_response(),
        None => status(StatusCode::NOT_FOUND, "NotFound", format!("leases \"{name}\" not found")),
    }
}

async fn create(State(shared): State<Shared>, body: Bytes) -> Response {
    let Ok(mut lease) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON".into());
    };
    let mut stored = lock(&shared);
    if stored.lease.is_some() {
        return status(StatusCode::CONFLICT, "AlreadyExists", "lease already exists".into());
    }
    stored.version += 1;
    lease["metadata"]["resourceVersion"] = json!(stored.version.to_string());
    stored.lease = Some(lease.clone());
    (StatusCode::CREATED, axum::Json(lease)).into_response()
}

async fn patch(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let manager = query.get("fieldManager").cloned().unwrap_or_default();
    let force = query.get("force").is_some_and(|f| f == "true");
    let apply = headers.get("content-type").is_some_and(|c| c.as_bytes().starts_with(b"application/apply-patch"));
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON".into());
    };
    let fields = patch.get("spec").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut stored = lock(&shared);
    let Some(mut lease) = stored.lease.clone() else {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("leases \"{name}\" not found"));
    };
    let spec = lease["spec"].as_object().cloned().unwrap_or_default();
    if apply && !force {
        let conflicts: Vec<&String> = fields
            .iter()
            .filter(|(field, value)| {
                let owner = stored.owners.get(*field);
                owner.is_some_and(|o| *o != manager) && spec.get(*field) != Some(*value)
            })
            .map(|(field, _)| field)
            .collect();
        if !conflicts.is_empty() {
            let message = format!("Apply failed with conflicts: {conflicts:?} are owned by another manager");
            return status(StatusCode::CONFLICT, "Conflict", message);
        }
    }
    let mut merged: Map<String, Value> = spec;
    for (field, value) in fields {
        if value.is_null() {
            merged.remove(&field);
            stored.owners.remove(&field);
        } else {
            merged.insert(field.clone(), value);
            stored.owners.insert(field, manager.clone());
        }
    }
    stored.version += 1;
    lease["spec"] = Value::Object(merged);
    lease["metadata"]["resourceVersion"] = json!(stored.version.to_string());
    stored.lease = Some(lease.clone());
    axum::Json(lease).into_response()
}

//! A Consul HTTP **test double** (Consul itself cannot run here): the agent
//! endpoints tally uses, with Consul's blocking-query semantics.
//!
//! - `PUT /v1/agent/service/register` and `/v1/agent/service/deregister/<id>`
//!   change the catalog and bump the index;
//! - `GET /v1/health/service/<name>?passing&index=N&wait=Ns[&tag=T]` answers
//!   at once when `N` is 0 or differs from the current index, otherwise holds
//!   the request until the index changes or `wait` passes; `X-Consul-Index`
//!   carries the index.
//!
//! Simplification, named: the double runs no health checks — every
//! registered instance counts as passing. Tests can also force the index
//! backwards (as after an agent restart) and count queries.
//!
//! [`ConsulDouble::start_secured`] serves HTTPS and enforces an ACL token
//! as Consul does: a request without `X-Consul-Token` matching it gets 403
//! `ACL not found` and changes nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use serde_json::{Value, json};
use tokio::sync::watch;

#[derive(Default)]
struct Catalog {
    services: BTreeMap<String, Value>,
    queries: usize,
}

#[derive(Clone)]
struct Shared {
    catalog: Arc<Mutex<Catalog>>,
    index: Arc<watch::Sender<u64>>,
    token: Option<String>,
    /// Requests refused for a missing or wrong token.
    refused: Arc<std::sync::atomic::AtomicUsize>,
}

pub struct ConsulDouble {
    pub addr: SocketAddr,
    shared: Shared,
    https: bool,
}

impl ConsulDouble {
    pub async fn start() -> ConsulDouble {
        Self::start_with(None, None).await
    }

    /// Over HTTPS with `certs`' server certificate, requiring ACL `token`.
    pub async fn start_secured(certs: &crate::TestCerts, token: &str) -> ConsulDouble {
        Self::start_with(Some(certs), Some(token)).await
    }

    async fn start_with(certs: Option<&crate::TestCerts>, token: Option<&str>) -> ConsulDouble {
        let shared = Shared {
            catalog: Arc::default(),
            index: Arc::new(watch::channel(1).0),
            token: token.map(str::to_string),
            refused: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/agent/service/register", put(register))
            .route("/v1/agent/service/deregister/{id}", put(deregister))
            .route("/v1/health/service/{name}", get(health))
            .layer(axum::middleware::from_fn_with_state(shared.clone(), acl))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind consul double");
        let addr = listener.local_addr().expect("addr");
        match certs {
            None => drop(tokio::spawn(async move { axum::serve(listener, app).await })),
            Some(certs) => {
                let tls = crate::tls::TlsListener::new(listener, certs);
                drop(tokio::spawn(async move { axum::serve(tls, app).await }));
            }
        }
        ConsulDouble { addr, shared, https: certs.is_some() }
    }

    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Requests refused so far for a missing or wrong ACL token.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Registered service IDs.
    pub fn ids(&self) -> Vec<String> {
        self.shared.catalog.lock().unwrap().services.keys().cloned().collect()
    }

    /// Waits until exactly `n` services are registered.
    pub async fn wait_for_registrations(&self, n: usize) {
        let mut index = self.shared.index.subscribe();
        tokio::time::timeout(Duration::from_secs(30), async {
            while self.shared.catalog.lock().unwrap().services.len() != n {
                let _ = index.changed().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("consul double: never saw {n} registrations, has {:?}", self.ids()));
    }

    /// Health queries answered so far.
    pub fn queries(&self) -> usize {
        self.shared.catalog.lock().unwrap().queries
    }

    /// Sets the index to `index` (e.g. lower, as after an agent restart).
    pub fn set_index(&self, index: u64) {
        self.shared.index.send_replace(index);
    }
}

/// Consul's answer to a request without the right ACL token.
async fn acl(
    State(s): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let given = request.headers().get("x-consul-token").and_then(|v| v.to_str().ok());
    match &s.token {
        Some(token) if given != Some(token.as_str()) => {
            s.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (axum::http::StatusCode::FORBIDDEN, "ACL not found").into_response()
        }
        _ => next.run(request).await,
    }
}

async fn register(State(s): State<Shared>, body: axum::Json<Value>) -> impl IntoResponse {
    let id = body["ID"].as_str().unwrap_or_default().to_string();
    s.catalog.lock().unwrap().services.insert(id, body.0);
    s.index.send_modify(|i| *i += 1);
    ""
}

async fn deregister(State(s): State<Shared>, Path(id): Path<String>) -> impl IntoResponse {
    s.catalog.lock().unwrap().services.remove(&id);
    s.index.send_modify(|i| *i += 1);
    ""
}

async fn health(
    State(s): State<Shared>,
    Path(name): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> impl IntoResponse {
    let asked: u64 = query.get("index").and_then(|v| v.parse().ok()).unwrap_or(0);
    let wait = query
        .get("wait")
        .and_then(|w| w.trim_end_matches('s').parse::<u64>().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let mut index = s.index.subscribe();
    if asked != 0 && *index.borrow() == asked {
        let _ = tokio::time::timeout(wait, index.changed()).await;
    }
    let current = *index.borrow();
    let tag = query.get("tag");
    let entries: Vec<Value> = {
        let mut catalog = s.catalog.lock().unwrap();
        catalog.queries += 1;
        catalog
            .services
            .values()
            .filter(|r| r["Name"] == name.as_str())
            .filter(|r| tag.is_none_or(|t| r["Tags"].as_array().is_some_and(|tags| tags.iter().any(|x| x == t.as_str()))))
            .map(|r| {
                json!({
                    "Node": {"Address": "127.0.0.1"},
                    "Service": {"ID": r["ID"], "Service": r["Name"], "Address": r["Address"], "Port": r["Port"], "Tags": r["Tags"], "Weights": {"Passing": 1}},
                    "Checks": [],
                })
            })
            .collect()
    };
    let mut headers = HeaderMap::new();
    headers.insert("X-Consul-Index", current.to_string().parse().expect("header"));
    (headers, axum::Json(entries))
}

//! A Kubernetes API **test double** for EndpointSlices (no API server can
//! run here): list and watch of
//! `/apis/discovery.k8s.io/v1/namespaces/<ns>/endpointslices`, enough for
//! kube-runtime's watcher. Watches stream `ADDED`/`MODIFIED`/`DELETED`
//! events as the test changes slices; the test can also change the set
//! *without* telling open watches and then cut them, to prove that a
//! watcher restart resyncs fully. Label selectors are not evaluated: every
//! slice in the double belongs to the watched Service.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

#[derive(Clone)]
struct Shared {
    slices: Arc<Mutex<(u64, BTreeMap<String, Value>)>>,
    events: broadcast::Sender<Option<String>>,
    /// Watches opened so far.
    watches: Arc<watch::Sender<usize>>,
    /// The next watch answers 410 Gone (history expired): the client must relist.
    expired: Arc<AtomicBool>,
}

pub struct KubernetesDouble {
    pub addr: SocketAddr,
    shared: Shared,
    kubeconfig: PathBuf,
}

impl KubernetesDouble {
    pub async fn start(namespace: &str) -> KubernetesDouble {
        let shared = Shared {
            slices: Arc::default(),
            events: broadcast::channel(256).0,
            watches: Arc::new(watch::channel(0).0),
            expired: Arc::default(),
        };
        let path = format!("/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices");
        let app = Router::new().route(&path, get(endpointslices)).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind kubernetes double");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let kubeconfig = std::env::temp_dir().join(format!("tally-kubeconfig-{}-{}", std::process::id(), addr.port()));
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: http://{addr}\nusers:\n- name: test\n  user: {{}}\ncontexts:\n- name: double\n  context:\n    cluster: double\n    user: test\n    namespace: {namespace}\ncurrent-context: double\n"
        );
        std::fs::write(&kubeconfig, config).expect("write kubeconfig");
        KubernetesDouble { addr, shared, kubeconfig }
    }

    /// A kubeconfig pointing at the double (for `KUBECONFIG`).
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig.to_string_lossy().into_owned()
    }

    /// Creates or replaces the slice `name` with one endpoint per
    /// `(address, ready)` on port `port` (named `grpc`).
    pub fn set_slice(&self, name: &str, port: u16, endpoints: &[(&str, bool)]) {
        self.store(name, Some(slice(name, port, endpoints)), true);
    }

    pub fn delete_slice(&self, name: &str) {
        self.store(name, None, true);
    }

    /// Removes a slice without telling open watches (as if the event was
    /// missed while disconnected).
    pub fn delete_slice_silently(&self, name: &str) {
        self.store(name, None, false);
    }

    /// Ends every open watch and answers the next one with 410 Gone, as an
    /// API server does when its history no longer reaches the client's
    /// resource version: watchers must relist.
    pub fn cut_watches(&self) {
        self.shared.expired.store(true, Ordering::SeqCst);
        let _ = self.shared.events.send(None);
    }

    /// Waits until at least `n` watches were opened in total.
    pub async fn wait_for_watches(&self, n: usize) {
        let mut watches = self.shared.watches.subscribe();
        let waited = tokio::time::timeout(std::time::Duration::from_secs(30), watches.wait_for(|&w| w >= n)).await;
        assert!(matches!(waited, Ok(Ok(_))), "kubernetes double: fewer than {n} watches were opened");
    }

    fn store(&self, name: &str, slice: Option<Value>, notify: bool) {
        let mut state = self.shared.slices.lock().unwrap();
        state.0 += 1;
        let version = state.0.to_string();
        let (kind, object) = match slice {
            Some(mut s) => {
                s["metadata"]["resourceVersion"] = json!(version);
                let kind = if state.1.contains_key(name) { "MODIFIED" } else { "ADDED" };
                state.1.insert(name.to_string(), s.clone());
                (kind, s)
            }
            None => match state.1.remove(name) {
                Some(mut s) => {
                    s["metadata"]["resourceVersion"] = json!(version);
                    ("DELETED", s)
                }
                None => return,
            },
        };
        if notify {
            let _ = self.shared.events.send(Some(json!({"type": kind, "object": object}).to_string()));
        }
    }
}

impl Drop for KubernetesDouble {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

fn slice(name: &str, port: u16, endpoints: &[(&str, bool)]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "tally-counter"}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}})).collect::<Vec<_>>(),
    })
}

async fn endpointslices(State(s): State<Shared>, Query(query): Query<BTreeMap<String, String>>) -> Response {
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watching {
        let state = s.slices.lock().unwrap();
        let list = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSliceList",
            "metadata": {"resourceVersion": state.0.to_string()},
            "items": state.1.values().cloned().collect::<Vec<_>>(),
        });
        return axum::Json(list).into_response();
    }
    if s.expired.swap(false, Ordering::SeqCst) {
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Expired", "code": 410, "message": "too old resource version"}});
        s.watches.send_modify(|w| *w += 1);
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(gone.to_string() + "\n"))
            .unwrap_or_else(|_| Response::new(Body::empty()));
    }
    let events = s.events.subscribe();
    s.watches.send_modify(|w| *w += 1);
    let stream = futures_util::stream::unfold(events, |mut events| async move {
        loop {
            match events.recv().await {
                Ok(Some(line)) => return Some((Ok::<_, std::convert::Infallible>(Bytes::from(line + "\n")), events)),
                Ok(None) | Err(broadcast::error::RecvError::Closed) => return None,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

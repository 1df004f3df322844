//! A mocked API server for reconcile scenarios (kube-rs's `tower-test`
//! pair, as kube-rs/controller-rs tests its reconciler): it records every
//! request and answers like an API server — a PATCH (server-side apply)
//! echoes the applied object (the whole resource for status), a POST (an
//! Event, a created Secret) echoes it, a list returns the objects a test
//! put there, a DELETE succeeds — unless the test told it to refuse.
#![allow(dead_code)] // each scenario file uses a different part

use std::sync::Arc;

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tally_operator::controller::{Context, Error, reconcile};
use tally_operator::crd::CounterCluster;
use tally_operator::metrics::Metrics;
use tower_test::mock;

/// One request the operator made: method, path and query, JSON body (Null without one).
pub type Seen = (Method, String, Value);

pub fn cluster(spec: Value) -> CounterCluster {
    let mut cc = CounterCluster::new("demo", serde_json::from_value(spec).expect("spec"));
    cc.metadata.namespace = Some("tally".into());
    cc.metadata.uid = Some("uid-1".into());
    cc.metadata.generation = Some(3);
    cc
}

/// A refusal: requests with this method whose path contains this get this status and message.
pub type Refusal = (Method, &'static str, u16, &'static str);

/// How the mock answers besides echoing.
#[derive(Default, Clone)]
pub struct Api {
    /// Creating a Secret answers 409 AlreadyExists.
    pub secret_exists: bool,
    /// Objects a list returns: (plural resource, e.g. `statefulsets`, object).
    pub existing: Vec<(&'static str, Value)>,
    /// Requests whose method and path contain these are refused with this status and message.
    pub refuse: Vec<Refusal>,
    /// As `refuse`, but only the first matching request.
    pub refuse_once: Arc<std::sync::Mutex<Vec<Refusal>>>,
    /// GETs of paths containing the first part are answered with the second
    /// (e.g. a pod's settings view through the API server's pod proxy).
    pub answers: Vec<(String, Value)>,
}

/// The `labelSelector` of a list request, as (key, value) pairs.
fn label_selector(uri: &str) -> Vec<(String, String)> {
    let Some(query) = uri.split_once("labelSelector=").map(|(_, q)| q.split('&').next().unwrap_or_default()) else {
        return Vec::new();
    };
    let decoded = query.replace("%2F", "/").replace("%3D", "=").replace("%2C", ",");
    decoded.split(',').filter_map(|pair| pair.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn matches_labels(object: &Value, selector: &[(String, String)]) -> bool {
    selector.iter().all(|(key, value)| object["metadata"]["labels"][key.as_str()] == value.as_str())
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": message})
}

impl Api {
    fn answer(&self, method: &Method, uri: &str, body: &[u8], json: &Value, resource: &[u8]) -> (u16, Vec<u8>) {
        let mut once = self.refuse_once.lock().expect("lock");
        if let Some(i) = once.iter().position(|(m, path, _, _)| m == method && uri.contains(path)) {
            let (_, _, code, message) = once.remove(i);
            return (code, status(code, "Invalid", message).to_string().into_bytes());
        }
        drop(once);
        if let Some((_, _, code, message)) =
            self.refuse.iter().find(|(m, path, _, _)| m == method && uri.contains(path))
        {
            let reason = if *code == 403 { "Forbidden" } else { "Invalid" };
            return (*code, status(*code, reason, message).to_string().into_bytes());
        }
        if *method == Method::POST && json["kind"] == "Secret" && self.secret_exists {
            let message = "secrets \"demo-redis-auth\" already exists";
            return (409, status(409, "AlreadyExists", message).to_string().into_bytes());
        }
        if *method == Method::GET
            && let Some((_, answer)) = self.answers.iter().find(|(path, _)| uri.contains(path.as_str()))
        {
            return (200, answer.to_string().into_bytes());
        }
        if *method == Method::GET {
            let selector = label_selector(uri);
            let items: Vec<&Value> = self
                .existing
                .iter()
                .filter(|(plural, _)| uri.contains(&format!("/{plural}?")))
                .map(|(_, o)| o)
                .filter(|o| matches_labels(o, &selector))
                .collect();
            let list =
                json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items});
            return (200, list.to_string().into_bytes());
        }
        if *method == Method::DELETE {
            return (200, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}).to_string().into_bytes());
        }
        (200, if uri.contains("/status") { resource.to_vec() } else { body.to_vec() })
    }
}

/// Runs one reconcile of `cc` against the mock; returns its result and every request.
pub async fn run_against(api: Api, cc: CounterCluster) -> (Result<(), Error>, Vec<Seen>) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "tally");
    let resource = serde_json::to_vec(&cc).expect("resource");
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            let method = request.method().clone();
            let uri = request.uri().to_string();
            let body = request.into_body().collect_bytes().await.expect("body");
            let json: Value =
                if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).expect("json body") };
            let (code, answer) = api.answer(&method, &uri, &body, &json, &resource);
            respond.send_response(Response::builder().status(code).body(Body::from(answer)).expect("response"));
            seen.push((method, uri, json));
        }
        seen
    });
    let context = Context::new(client, Arc::new(Metrics::new()));
    let result = reconcile(Arc::new(cc), Arc::new(context)).await.map(drop);
    (result, server.await.expect("mock server"))
}

/// A reconcile that must succeed; its requests.
pub async fn run(cc: CounterCluster) -> Vec<Seen> {
    let (result, seen) = run_against(Api::default(), cc).await;
    result.expect("reconcile");
    seen
}

/// The kinds of the objects sent (applied, created, Events, status), in order.
pub fn kinds(seen: &[Seen]) -> Vec<&str> {
    seen.iter()
        .filter(|(m, _, _)| m != Method::GET && m != Method::DELETE)
        .map(|(_, _, b)| b["kind"].as_str().unwrap_or("?"))
        .collect()
}

/// The applied objects (not Events, not the status).
pub fn applied(seen: &[Seen]) -> Vec<Seen> {
    seen.iter().filter(|(m, uri, _)| m == Method::PATCH && !uri.contains("/status")).cloned().collect()
}

pub fn events(seen: &[Seen]) -> Vec<&Value> {
    seen.iter().filter(|(m, _, body)| m == Method::POST && body["kind"] == "Event").map(|(_, _, body)| body).collect()
}

pub fn deleted(seen: &[Seen]) -> Vec<&str> {
    seen.iter().filter(|(m, _, _)| m == Method::DELETE).map(|(_, uri, _)| uri.as_str()).collect()
}

/// The last status patch's condition of `type_`.
pub fn condition<'a>(seen: &'a [Seen], type_: &str) -> &'a Value {
    let (_, uri, status) = seen.iter().rev().find(|(_, uri, _)| uri.contains("/status")).expect("a status patch");
    assert!(uri.contains("fieldManager=tally-operator"), "{uri}");
    status["status"]["conditions"].as_array().expect("conditions").iter().find(|c| c["type"] == type_).expect(type_)
}

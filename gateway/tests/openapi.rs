//! The OpenAPI document against the real gateway: the served document is
//! the committed `docs/openapi.json`, it is valid OpenAPI 3.1 with valid
//! examples, the request examples it gives are accepted, and real answers
//! of every route — successes and errors — validate against it
//! (`scripts/validate-openapi.py`: openapi-spec-validator and jsonschema).

mod common;

use std::io::Write;
use std::path::Path;

use common::{Http, Stack, unique};
use serde_json::{Value, json};
use tally_testkit::{Service, free_port};

/// Answers recorded as `{method, path (documented template), status, body}`.
struct Recorder {
    http: Http,
    answers: Vec<Value>,
}

impl Recorder {
    async fn send(&mut self, method: &str, template: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, answer) = self.http.send(method, path, body.map(|b| b.to_string().into_bytes())).await;
        self.answers.push(json!({"method": method, "path": template, "status": status, "body": answer}));
        (status, answer)
    }
}

fn example<'a>(doc: &'a Value, schema: &str) -> &'a Value {
    let example = &doc["components"]["schemas"][schema]["example"];
    assert!(example.is_object(), "{schema} has an example");
    example
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_the_openapi_document_says() {
    let stack = Stack::start(&[]);
    let mut r = Recorder { http: stack.http.clone(), answers: Vec::new() };
    let (status, doc) = r.send("GET", "/api/v1/openapi.json", "/api/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")).expect("read"),
    )
    .expect("docs/openapi.json is JSON");
    assert_eq!(doc, committed, "the served document is docs/openapi.json");

    let post = unique("oas");
    let inc = "/api/v1/counter/increment";
    let (batch_inc, batch_get) = ("/api/v1/counter/batch-increment", "/api/v1/counter/batch");
    let (counter, resource) = ("/api/v1/counter/{resource_id}/{counter_type}", "/api/v1/counter/{resource_id}");
    // The document's own request examples are accepted.
    for (path, schema, want) in
        [(inc, "IncrementBody", 200), (batch_inc, "BatchIncrementBody", 200), (batch_get, "BatchGetBody", 200)]
    {
        let (status, body) = r.send("POST", path, path, Some(example(&doc, schema).clone())).await;
        assert_eq!(status, want, "{schema}'s example: {body}");
    }
    let one = |delta: i64| json!({"resource_id": post, "counter_type": "likes", "delta": delta});
    r.send("POST", inc, inc, Some(one(2))).await;
    r.send("POST", inc, inc, Some(json!({"resource_id": post}))).await; // 400
    r.send("POST", inc, inc, Some(json!({"resource_id": post, "counter_type": "big", "delta": i64::MAX}))).await;
    r.send("POST", inc, inc, Some(json!({"resource_id": post, "counter_type": "big", "delta": 1}))).await; // 422
    let ops = |n: usize| json!({"operations": (0..n).map(|i| json!({"resource_id": post, "counter_type": format!("c{i}")})).collect::<Vec<_>>()});
    r.send("POST", batch_inc, batch_inc, Some(ops(1000))).await;
    r.send("POST", batch_inc, batch_inc, Some(ops(1001))).await; // 413
    r.send("POST", batch_inc, batch_inc, Some(json!({"operations": [one(1)], "async": true}))).await; // 202
    let partial = json!({"operations": [one(1), {"resource_id": post, "counter_type": "big", "delta": 1}]});
    assert_eq!(r.send("POST", batch_inc, batch_inc, Some(partial)).await.0, 422);
    r.send("POST", batch_inc, batch_inc, Some(json!({"operations": []}))).await; // 400
    r.send("POST", batch_get, batch_get, Some(json!({"items": [{"resource_id": post, "counter_type": "likes"}]})))
        .await;
    r.send("POST", batch_get, batch_get, Some(json!({"items": "no"}))).await; // 400
    r.send("GET", counter, &format!("/api/v1/counter/{post}/likes"), None).await;
    r.send("GET", counter, &format!("/api/v1/counter/{post}/Likes"), None).await; // 400
    r.send("GET", resource, "/api/v1/counter/post:1", None).await;
    r.send("GET", resource, "/api/v1/counter/bad%20id", None).await; // 400
    // 1,000 counters from the batch above, plus one more: too many to list.
    r.send("POST", inc, inc, Some(json!({"resource_id": post, "counter_type": "c1000"}))).await;
    assert_eq!(r.send("GET", resource, &format!("/api/v1/counter/{post}"), None).await.0, 409);
    r.send("DELETE", counter, &format!("/api/v1/counter/{post}/likes"), None).await;
    r.send("DELETE", counter, &format!("/api/v1/counter/{post}/LIKES"), None).await; // 400
    // A path with no counter type: the 404 the reset documents.
    assert_eq!(r.send("DELETE", counter, &format!("/api/v1/counter/{post}"), None).await.0, 404);
    for path in ["/api/v1/health", "/api/v1/system/grpc-pools", "/api/v1/system/services/health"] {
        r.send("GET", path, path, None).await;
    }
    for path in ["/api/v1/system/metrics/stats", "/api/v1/system/object-pools"] {
        r.send("GET", path, path, None).await;
    }

    // A gateway with no counter to reach: the 503s.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let lonely = Service::start(
        Path::new(env!("CARGO_BIN_EXE_tally-gateway")),
        &[("TALLY_COUNTER_ENDPOINTS", dead.as_str()), ("TALLY_HEALTH_INTERVAL_MS", "100")],
    );
    let mut r = Recorder { http: Http::new(lonely.http_base()), answers: r.answers };
    assert_eq!(r.send("GET", "/api/v1/system/services/health", "/api/v1/system/services/health", None).await.0, 503);
    assert_eq!(r.send("POST", inc, inc, Some(one(1))).await.0, 503);

    let recorded = std::env::temp_dir().join(format!("{post}.jsonl"));
    let mut file = std::fs::File::create(&recorded).expect("create");
    for answer in &r.answers {
        writeln!(file, "{answer}").expect("write");
    }
    drop(file);
    let Some(python) = tally_testkit::tool("python3") else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/validate-openapi.py");
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let output = std::process::Command::new(python).arg(script).arg(docs).arg(&recorded).output().expect("run");
    let _ = std::fs::remove_file(&recorded);
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    assert!(text.contains("document valid"), "{text}");
}

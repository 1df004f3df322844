//! The body budget against the real gateway binary: many clients sending
//! large bodies at once get 503 beyond `TALLY_MAX_BODY_BYTES_IN_FLIGHT`
//! instead of the gateway's memory, small requests are still served beside
//! them, and the budget comes back when the large ones end.

mod common;

use std::net::SocketAddr;

use common::{PeakRss, Stack, metric, metric_reaches, retry_after, unique};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const INC: &str = "/api/v1/counter/increment";
const MIB: u64 = 1 << 20;
const BODY_BYTES: &str = "tally_gateway_http_request_body_bytes";
const SHED: &str = "tally_gateway_requests_shed_total";

/// The budget of these tests: room for four of the large bodies below.
const BUDGET: u64 = 4 * MIB;
/// A large body's announced length, within the 1 MiB limit of one body.
const LARGE: usize = 1_000_000;
/// Clients sending a large body at once.
const CLIENTS: usize = 64;

/// A client that announces a `LARGE` body, sends all of it but its last
/// 100 KB, and keeps the connection open until the task is aborted.
fn send_most_of_a_large_body(addr: SocketAddr) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut stream) = TcpStream::connect(addr).await else { return };
        let head = format!(
            "POST {INC} HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\nContent-Length: {LARGE}\r\n\r\n"
        );
        // A shed client's connection may be closed under its writes.
        if stream.write_all(head.as_bytes()).await.is_ok() {
            let _ = stream.write_all(&vec![b' '; LARGE - 100_000]).await;
        }
        std::future::pending::<()>().await;
    })
}

/// An increment of `resource` padded with whitespace to `length` bytes.
fn padded_increment(resource: &str, length: usize) -> String {
    let json = json!({"resource_id": resource, "counter_type": "likes"}).to_string();
    format!("{json}{}", " ".repeat(length - json.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_beyond_the_budget_are_shed_and_memory_stays_bounded() {
    let budget = BUDGET.to_string();
    let stack =
        Stack::start(&[("TALLY_MAX_BODY_BYTES_IN_FLIGHT", budget.as_str()), ("TALLY_HTTP_BODY_TIMEOUT_MS", "60000")]);
    let (addr, admin) = (stack.gateway.addr("http"), stack.gateway.admin_base());
    let baseline = stack.gateway.rss_bytes();
    let rss = PeakRss::watch(stack.gateway.pid());

    let clients: Vec<_> = (0..CLIENTS).map(|_| send_most_of_a_large_body(addr)).collect();
    let admitted = (BUDGET as usize / LARGE) as f64;
    let shed = (CLIENTS as f64) - admitted;
    metric_reaches(&admin, SHED, &["body_bytes"], "every client past the budget shed", |n| n == shed).await;
    let held = metric(&admin, BODY_BYTES, &[]).await;
    assert_eq!(held, admitted * LARGE as f64, "the admitted bodies hold their announced lengths");

    // Room is left for small requests: they are served beside the large ones.
    let resource = unique("budget");
    let client = reqwest::Client::new();
    let small = client
        .post(format!("{}{INC}", stack.http.base))
        .json(&json!({"resource_id": resource, "counter_type": "likes"}));
    assert_eq!(small.send().await.expect("send").status(), 200, "a small body fits beside the large ones");
    // A large one does not, and is told to come back.
    let large = client.post(format!("{}{INC}", stack.http.base)).body(padded_increment(&resource, LARGE));
    let refused = large.header("content-type", "application/json").send().await.expect("send");
    assert_eq!(refused.status(), 503);
    assert_eq!(retry_after(refused.headers()), Some("1"));
    let body: serde_json::Value = refused.json().await.expect("the JSON error envelope");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    // Without the budget the same clients grew it by about 97 MiB (measured
    // with the budget set to 1 TiB); with it, by about 10.
    let grown = rss.peak().saturating_sub(baseline);
    assert!(grown < 32 * MIB, "{CLIENTS} clients sending {LARGE}-byte bodies grew the gateway by {} MiB", grown / MIB);

    // The budget comes back when the large bodies' clients go away.
    clients.iter().for_each(JoinHandle::abort);
    metric_reaches(&admin, BODY_BYTES, &[], "the held bodies given back", |n| n == 0.0).await;
    let large = client.post(format!("{}{INC}", stack.http.base)).body(padded_increment(&resource, LARGE));
    let served = large.header("content-type", "application/json").send().await.expect("send");
    assert_eq!(served.status(), 200, "a large body is served once the budget has room");
    assert_eq!(stack.http.value(&resource, "likes").await, 2, "the small and the last large increment, nothing shed");
}

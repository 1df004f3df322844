//! Serving on thread-per-core workers, over real sockets.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::{ConnMetrics, HttpLimits, Worker, serve_on};
use crate::workers::{self, Workers};

fn limits() -> HttpLimits {
    HttpLimits {
        header_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        max_connections: 16,
        max_header_bytes: 16 * 1024,
        max_concurrent_streams: 10,
    }
}

/// The body of one `GET /` answered on `conn` (kept open).
async fn which_worker(conn: &mut TcpStream) -> String {
    conn.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n").await.expect("request sent");
    let mut response = Vec::new();
    let mut chunk = [0u8; 512];
    while !response.ends_with(b"}") {
        let n = conn.read(&mut chunk).await.expect("response read");
        assert!(n > 0, "connection closed before the answer");
        response.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8(response).expect("utf-8");
    text.rsplit("\r\n\r\n").next().unwrap_or_default().to_string()
}

#[test]
fn each_connection_is_served_on_the_least_busy_worker() {
    let workers = Workers::start(2, "http-test").expect("workers start");
    let control = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    control.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let router = || Router::new().route("/", get(|| async { format!("{{{:?}}}", workers::current()) }));
        let served = workers.handles().iter().map(|h| Worker::on(h.clone(), router())).collect();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_on(listener, served, limits(), ConnMetrics::default(), None, async {
            let _ = stopped.await;
        }));

        let mut conns = Vec::new();
        for _ in 0..4 {
            conns.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let mut answers = Vec::new();
        for conn in &mut conns {
            answers.push(which_worker(conn).await);
        }
        // Requests stay on their connection's worker.
        assert_eq!(which_worker(&mut conns[0]).await, answers[0]);
        answers.sort();
        assert_eq!(answers, ["{Some(0)}", "{Some(0)}", "{Some(1)}", "{Some(1)}"], "two connections each");

        drop(conns);
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server stops once its connections are closed")
            .expect("server task");
    });
}

#[tokio::test]
async fn stopping_closes_an_idle_keep_alive_connection_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let router = Router::new().route("/", get(|| async { "{idle}" }));
    // Timeouts far beyond the test's bound: only the stop signal can close it.
    let limits =
        HttpLimits { idle_timeout: Duration::from_secs(600), header_timeout: Duration::from_secs(600), ..limits() };
    let (stop, stopped) = oneshot::channel::<()>();
    let server =
        tokio::spawn(serve_on(listener, vec![Worker::here(router)], limits, ConnMetrics::default(), None, async {
            let _ = stopped.await;
        }));
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(which_worker(&mut conn).await, "{idle}", "served, and kept open");

    let _ = stop.send(());
    let mut rest = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut rest)).await;
    assert_eq!(read.expect("closed by the stop, not left open").expect("read"), 0, "closed without another answer");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops once its connections are closed")
        .expect("server task");
}

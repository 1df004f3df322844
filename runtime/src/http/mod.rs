//! Serving HTTP (HTTP/1.1 and h2c; over TLS, HTTP/1.1 and HTTP/2 by ALPN)
//! with the bounds every public listener needs, shared by the gateway's API and admin ports and the counter's
//! admin port: a cap on open connections, a header timeout, an idle
//! timeout, a cap on header size and on HTTP/2 streams, and a graceful stop.
//!
//! `axum::serve` has none of these: a client sending headers one byte at a
//! time (slowloris) kept a connection and its buffers forever.

pub mod attend;
mod io;
mod settings;
pub mod watchdog;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, watch};
use tower::Service;

pub use settings::{HttpArgs, HttpLimits};

use crate::conn::{HeldConn, Transport, handshake};
use crate::tls::ServerTls;
use crate::workers::LeastBusy;
use attend::{Attended, attend};
use watchdog::{Activity, Expiry, InFlight, expired};

/// How long an HTTP/2 connection closed by its watchdog may take to finish
/// its GOAWAY exchange before it is dropped.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// Connection metrics of one listener.
#[derive(Clone, Default)]
pub struct ConnMetrics {
    pub open: Gauge,
    pub rejected: Counter,
    pub closed_by_timeout: Family<[(&'static str, &'static str); 1], Counter>,
    /// TLS handshakes that failed or did not finish within the header timeout.
    pub tls_handshake_failures: Counter,
}

impl ConnMetrics {
    /// Registers the metrics as `<prefix>_http_connections_*` of `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("http_connections_open", "Open HTTP connections", self.open.clone());
        registry.register(
            "http_connections_rejected",
            "HTTP connections closed at once because the connection cap was reached",
            self.rejected.clone(),
        );
        registry.register(
            "http_connections_timed_out",
            "HTTP connections closed by the header or idle timeout",
            self.closed_by_timeout.clone(),
        );
        registry.register(
            "http_tls_handshake_failures",
            "HTTPS connections closed because the TLS handshake failed or took longer than the header timeout",
            self.tls_handshake_failures.clone(),
        );
        for expiry in [Expiry::Header, Expiry::Idle] {
            let _ = self.closed_by_timeout.get_or_create(&[("reason", expiry.label())]);
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting, asks every connection to finish (HTTP/1.1: after the request
/// in progress; HTTP/2: GOAWAY) and returns once all are closed. Callers
/// bound that last phase with their shutdown timeout.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    metrics: ConnMetrics,
    shutdown: impl Future<Output = ()>,
) {
    serve_on(listener, vec![Worker::here(router)], limits, metrics, None, shutdown).await
}

/// What serves a listener's requests: an axum `Router`, or any service
/// like it (always ready, never failing).
pub trait HttpService:
    Service<axum::extract::Request, Response = axum::response::Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> HttpService for S where
    S: Service<axum::extract::Request, Response = axum::response::Response, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Where connections are served: a runtime, and the service of the
/// requests served there.
pub struct Worker<S = Router> {
    /// `None`: the runtime that accepts.
    runtime: Option<Handle>,
    service: S,
}

impl<S: HttpService> Worker<S> {
    /// Connections served where they are accepted.
    pub fn here(service: S) -> Worker<S> {
        Worker { runtime: None, service }
    }

    /// Connections handed over to `runtime` (a thread-per-core worker).
    pub fn on(runtime: Handle, service: S) -> Worker<S> {
        Worker { runtime: Some(runtime), service }
    }
}

/// As [`serve`], each connection handed to the worker with the fewest open
/// connections (actix-web's acceptor does the same): the workers stay
/// evenly loaded, which accepting on every worker's own handle of the
/// socket did not do (measured 41/59 % between two). With `tls`, every
/// connection is HTTPS: the handshake runs on the worker and must finish
/// within the header timeout.
pub async fn serve_on<S: HttpService>(
    listener: TcpListener,
    workers: Vec<Worker<S>>,
    limits: HttpLimits,
    metrics: ConnMetrics,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let busy = LeastBusy::new(workers.len());
    let (stop_tx, stop_rx) = watch::channel(false);
    let builder = Arc::new(builder(&limits));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // EMFILE and the like: back off briefly rather than spin.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Over the cap: close at once (Envoy's downstream connection limit
        // does the same), so the backlog never fills with doomed connections.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.rejected.inc();
            drop(stream);
            continue;
        };
        let (index, open) = busy.pick();
        let Some(worker) = workers.get(index) else { return };
        let _ = stream.set_nodelay(true);
        let (service, builder, metrics, stop, tls) =
            (worker.service.clone(), builder.clone(), metrics.clone(), stop_rx.clone(), tls.clone());
        let serve = move |stream| async move {
            metrics.open.inc();
            match handshake(stream, tls.as_deref(), limits.header_timeout).await {
                Ok(stream) => serve_connection(stream, service, &builder, limits, &metrics, stop).await,
                Err(err) => {
                    metrics.tls_handshake_failures.inc();
                    tracing::debug!(%err, "HTTPS connection closed");
                }
            }
            metrics.open.dec();
            drop((slot, open));
        };
        match &worker.runtime {
            None => drop(tokio::spawn(serve(stream))),
            // The socket leaves this runtime's reactor for the worker's.
            Some(runtime) => match stream.into_std() {
                Ok(stream) => drop(runtime.spawn(async move {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => serve(stream).await,
                        Err(err) => tracing::warn!(%err, "cannot hand a connection to a worker"),
                    }
                })),
                Err(err) => tracing::warn!(%err, "cannot hand a connection to a worker"),
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot: all slots back means all closed.
    let _ = slots.acquire_many(limits.max_connections as u32).await;
}

fn builder(limits: &HttpLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The read buffer bounds a request head (hyper answers 431 beyond it).
    builder.http1().max_buf_size(limits.max_header_bytes.max(8192)).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        // Envoy's edge recommendation: 64 KiB per stream, 1 MiB per
        // connection of unread request body in flight.
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(1024 * 1024)
        // Dead peers: a PING unanswered within 20 s closes the connection.
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20))
        // HTTP/2 rapid reset (CVE-2023-44487): hyper's defaults, made explicit.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(1024));
    builder
}

async fn serve_connection<S: HttpService>(
    stream: Transport,
    service: S,
    builder: &auto::Builder<TokioExecutor>,
    limits: HttpLimits,
    metrics: &ConnMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(HeldConn::new(stream, io::Watched::new(activity.clone())));
    let tracked = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let response = service.clone().call(request.map(Body::new));
        let request_done = InFlight::new(tracked.clone());
        async move {
            let response = response.await;
            drop(request_done);
            Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
        }
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut stopping = *stop.borrow();
    if stopping {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        let side = watch_side(&mut stop, stopping, &activity, limits);
        match attend(connection.as_mut(), side).await {
            Attended::Main(_) => return,
            Attended::Side(Side::Stop) => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            Attended::Side(Side::Expired(expiry)) => {
                metrics.closed_by_timeout.get_or_create(&[("reason", expiry.label())]).inc();
                // No request is in flight: nothing is lost by closing. HTTP/2
                // gets a GOAWAY first so its client knows not to retry blind;
                // HTTP/1.1 is closed at once (a graceful shutdown would let a
                // head that is still arriving complete, and be served, late).
                if activity.is_http2() {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(GOAWAY_GRACE, connection.as_mut()).await;
                }
                return;
            }
        }
    }
}

/// What a connection watches beside serving it.
enum Side {
    /// The listener is stopping.
    Stop,
    Expired(Expiry),
}

/// The next [`Side`] event: the stop signal (until it was seen) or the
/// watchdog closing the connection.
async fn watch_side(stop: &mut watch::Receiver<bool>, stopping: bool, activity: &Activity, limits: HttpLimits) -> Side {
    tokio::select! {
        _ = stop.changed(), if !stopping => Side::Stop,
        expiry = expired(activity, limits.timeouts()) => Side::Expired(expiry),
    }
}

#[cfg(test)]
mod tests;

//! Serves the gRPC services on the connections one worker is handed
//! ([`crate::incoming`]), over hyper's HTTP/2 server directly rather than
//! tonic's `Server`, for the one bound tonic's server cannot give: a
//! connection with no call open for the idle timeout is sent a GOAWAY and
//! closed (grpc-go's `MaxConnectionIdle`, Envoy's `idle_timeout`). Without
//! it a client that connects and opens no call held one of the listener's
//! connection slots for as long as it answered HTTP/2 PINGs.
//!
//! The GOAWAY is graceful: a call the client started as it was sent is
//! still served (hyper's two-step GOAWAY), and the connection closes once
//! its calls end, so no call is cut into an unknown outcome; one that
//! never completes the exchange is dropped a second later if no call is
//! open on it. A call counts as open until its response body ends: a
//! `StreamBatchIncrements` stream keeps its connection however quiet it is.
//!
//! What tonic's server did on the way is done here too: each call gets its
//! span ([`crate::spans::rpc_server`]), and a `grpc-timeout` the client sent
//! bounds the call until its response starts (answered DEADLINE_EXCEEDED).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tally_runtime::http::attend::{Attended, attend};
use tally_runtime::http::watchdog::{Activity, InFlight, Timeouts, expired};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::Status;
use tonic::body::Body;
use tonic::service::Routes;
use tower::Service as _;
use tracing::Instrument;

use crate::deadline::grpc_timeout;
use crate::incoming::{BoundedConn, WorkerConns};

/// How the gRPC connections are served.
#[derive(Debug, Clone, Copy)]
pub struct GrpcServing {
    /// HTTP/2 PINGs towards the client (dead peers); `None`: none.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
    /// A connection with no call open this long is closed.
    pub idle_timeout: Duration,
}

impl GrpcServing {
    fn builder(&self) -> http2::Builder<TokioExecutor> {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list_size)
            // HTTP/2 rapid reset (CVE-2023-44487): hyper's defaults, made explicit.
            .max_pending_accept_reset_streams(Some(20))
            .max_local_error_reset_streams(Some(1024));
        builder
    }

    /// The idle timeout also bounds a new connection's wait for its first
    /// call: a gateway's pool may open connections ahead of its traffic.
    fn timeouts(&self) -> Timeouts {
        Timeouts { header: self.idle_timeout, idle: self.idle_timeout }
    }
}

/// Serves `routes` on every connection of `conns` until `stop` turns true,
/// then stops taking connections, sends every connection a GOAWAY, and
/// returns once all of them closed (their open calls ended). The caller
/// bounds that last phase with its shutdown timeout.
pub async fn serve(
    mut conns: WorkerConns,
    routes: Routes,
    serving: GrpcServing,
    idle_closed: Counter,
    mut stop: watch::Receiver<bool>,
) {
    let builder = Arc::new(serving.builder());
    // Every connection's task holds a sender: `recv` answers `None` once
    // all of them have ended.
    let (open_tx, mut open_rx) = mpsc::channel::<Infallible>(1);
    loop {
        let conn = tokio::select! {
            conn = conns.next() => conn,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        match conn {
            Some(Ok(conn)) => {
                let connection = Connection {
                    builder: builder.clone(),
                    routes: routes.clone(),
                    timeouts: serving.timeouts(),
                    idle_closed: idle_closed.clone(),
                    stop: stop.clone(),
                    _open: open_tx.clone(),
                };
                tokio::spawn(connection.serve(conn));
            }
            Some(Err(err)) => tracing::debug!(%err, "gRPC connection not served"),
            None => break,
        }
    }
    drop((conns, open_tx));
    let _ = open_rx.recv().await;
}

/// One connection being served, and what it needs for that.
struct Connection {
    builder: Arc<http2::Builder<TokioExecutor>>,
    routes: Routes,
    timeouts: Timeouts,
    idle_closed: Counter,
    stop: watch::Receiver<bool>,
    _open: mpsc::Sender<Infallible>,
}

/// How long a connection sent a GOAWAY has to finish the exchange (a
/// client that never acknowledges hyper's PING would hold it open until
/// its keep-alive gave up) before it is dropped, once no call is open.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// What a connection watches beside serving it.
enum Side {
    /// The server is stopping.
    Stop,
    /// No call for the idle timeout.
    Idle,
    /// Closing: the grace passed and no call is open.
    Quiet,
}

impl Connection {
    async fn serve(mut self, conn: BoundedConn) {
        let activity = Arc::new(Activity::new());
        activity.set_http2();
        let calls = Calls { routes: self.routes.clone(), activity: activity.clone(), stop: self.stop.clone() };
        let connection = self.builder.serve_connection(TokioIo::new(conn), calls);
        tokio::pin!(connection);
        // After a GOAWAY the connection only finishes its open calls.
        let mut closing = *self.stop.borrow();
        if closing {
            connection.as_mut().graceful_shutdown();
        }
        loop {
            let side = watch_side(&mut self.stop, closing, &activity, self.timeouts);
            match attend(connection.as_mut(), side).await {
                Attended::Main(Ok(())) => return,
                Attended::Main(Err(err)) => {
                    tracing::debug!(%err, "gRPC connection ended with an error");
                    return;
                }
                Attended::Side(Side::Quiet) => return,
                Attended::Side(side) => {
                    if let Side::Idle = side {
                        self.idle_closed.inc();
                    }
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The next [`Side`] event. Once the connection is closing, a call the
/// client opened as the GOAWAY crossed it is still waited for.
async fn watch_side(stop: &mut watch::Receiver<bool>, closing: bool, activity: &Activity, timeouts: Timeouts) -> Side {
    if closing {
        tokio::time::sleep(GOAWAY_GRACE).await;
        expired(activity, Timeouts { header: GOAWAY_GRACE, idle: GOAWAY_GRACE }).await;
        return Side::Quiet;
    }
    tokio::select! {
        _ = stop.wait_for(|stop| *stop) => Side::Stop,
        _ = expired(activity, timeouts) => Side::Idle,
    }
}

/// The streams of the health and reflection services, which run until
/// their client ends them: they are ended (UNAVAILABLE) when the server
/// stops, or a client's health `Watch` would hold the shutdown up until its
/// deadline. The counter's own streams end themselves at the stop.
const ENDED_AT_STOP: [&str; 3] = [
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The services, as hyper calls them on one connection: each call is
/// counted open on the connection's [`Activity`] until its response body
/// ends or is dropped.
#[derive(Clone)]
struct Calls {
    routes: Routes,
    activity: Arc<Activity>,
    stop: watch::Receiver<bool>,
}

type CallFuture = Pin<Box<dyn Future<Output = Result<Response<Tracked>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Calls {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = CallFuture;

    fn call(&self, request: Request<Incoming>) -> CallFuture {
        let open = InFlight::new(self.activity.clone());
        let (parts, body) = request.into_parts();
        let span = crate::spans::rpc_server(&parts);
        let deadline = grpc_timeout(&parts.headers);
        let stop = ENDED_AT_STOP.contains(&parts.uri.path()).then(|| stopped(self.stop.clone()));
        let response = self.routes.clone().call(Request::from_parts(parts, Body::new(body)));
        Box::pin(
            async move {
                let response = match deadline {
                    None => response.await,
                    Some(deadline) => match tokio::time::timeout(deadline, response).await {
                        Ok(response) => response,
                        Err(_) => Ok(Status::deadline_exceeded("the call's grpc-timeout passed").into_http()),
                    },
                };
                let response = response.unwrap_or_else(|never| match never {});
                Ok(response.map(|body| Tracked { body, _open: open, stop, ended: false }))
            }
            .instrument(span),
        )
    }
}

/// Completes when the server stops.
fn stopped(mut stop: watch::Receiver<bool>) -> Stopped {
    Box::pin(async move {
        let _ = stop.wait_for(|stop| *stop).await;
    })
}

type Stopped = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A response body that keeps its call counted open until it is dropped,
/// and for the streams [`ENDED_AT_STOP`], ends at the stop.
struct Tracked {
    body: Body,
    _open: InFlight,
    stop: Option<Stopped>,
    /// Ended here, at the stop.
    ended: bool,
}

impl http_body::Body for Tracked {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        // Between two of the body's frames, so no message is cut.
        if let Some(stop) = &mut this.stop
            && stop.as_mut().poll(cx).is_ready()
        {
            this.ended = true;
            let mut trailers = http::HeaderMap::new();
            let _ = Status::unavailable("the counter is shutting down").add_header(&mut trailers);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

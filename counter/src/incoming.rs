//! The gRPC listener's connections, bounded before they are served: at most
//! `max_connections` open (more are closed at once), and each must send the
//! HTTP/2 connection preface (in plain text) or complete its TLS handshake
//! within the handshake timeout (a client that connects and says nothing
//! holds no slot for long). tonic's own server has neither bound. One acceptor
//! hands the connections to the thread-per-core workers that serve them,
//! the least busy first; a TLS handshake runs on the worker that will
//! serve the connection, with the certificate in force at that moment.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tally_runtime::conn::{Held, HeldConn, Transport, handshake};
use tally_runtime::tls::ServerTls;
use tally_runtime::workers::{LeastBusy, OpenConn};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

/// How often a connection that sent part of its preface is looked at again.
const PARTIAL_PREFACE_POLL: Duration = Duration::from_millis(50);

/// What every HTTP/2 connection starts with (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
}

/// Connection metrics of the gRPC listener.
#[derive(Clone, Default)]
pub struct GrpcConnMetrics {
    pub open: Gauge,
    pub rejected: Counter,
    pub handshake_timeouts: Counter,
    /// TLS handshakes that failed (e.g. no or an untrusted client certificate).
    pub tls_failures: Counter,
    /// Connections sent a GOAWAY after the idle timeout with no call open.
    pub idle_closed: Counter,
}

/// The connections one worker serves: handed over by the acceptor, and
/// registered with the worker's own reactor there
/// ([`crate::grpc_serve::serve`]).
pub type WorkerConns = Box<dyn Stream<Item = io::Result<BoundedConn>> + Send + Unpin>;

/// Accepts on `listener` (on the current runtime) and hands each connection
/// that passed the bounds to one of the `workers`' streams: the one whose
/// worker has the fewest open connections. Each stream is meant to be
/// served on its own worker. With `tls`, every connection is TLS.
pub fn bounded(
    listener: TcpListener,
    limits: ConnectionLimits,
    metrics: GrpcConnMetrics,
    workers: &[Handle],
    tls: Option<Arc<ServerTls>>,
) -> Vec<WorkerConns> {
    let (senders, streams): (Vec<_>, Vec<_>) = workers
        .iter()
        .map(|worker| {
            let (tx, rx) = mpsc::channel::<BoundedConn>(64);
            ((worker.clone(), tx), Box::new(ReceiverStream::new(rx).map(Ok)) as WorkerConns)
        })
        .unzip();
    let busy = Arc::new(LeastBusy::new(senders.len()));
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                metrics.rejected.inc();
                continue; // dropped: closed at once
            };
            if senders.iter().all(|(_, sender)| sender.is_closed()) {
                return; // the servers stopped
            }
            let (senders, busy, metrics, tls) = (senders.clone(), busy.clone(), metrics.clone(), tls.clone());
            tokio::spawn(async move {
                // TLS clients speak first with a ClientHello, not the preface.
                if tls.is_none() && !sent_preface(&stream, limits.handshake_timeout).await {
                    metrics.handshake_timeouts.inc();
                    return;
                }
                let _ = stream.set_nodelay(true);
                let Ok(stream) = stream.into_std() else { return };
                let (worker, on_worker) = busy.pick();
                let Some((runtime, sender)) = senders.get(worker).cloned() else { return };
                runtime.spawn(async move {
                    let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
                    // The socket joins the worker's reactor here.
                    let Ok(stream) = TcpStream::from_std(stream) else { return };
                    let mut transport = match handshake(stream, tls.as_deref(), limits.handshake_timeout).await {
                        Ok(transport) => transport,
                        Err(err) => {
                            metrics.tls_failures.inc();
                            tracing::debug!(%err, "gRPC connection closed");
                            return;
                        }
                    };
                    // Over TLS the preface comes after the handshake, within the same time.
                    let mut unread = Vec::new();
                    if tls.is_some() {
                        if !read_preface(&mut transport, deadline).await {
                            metrics.handshake_timeouts.inc();
                            return;
                        }
                        unread = PREFACE.to_vec();
                    }
                    metrics.open.inc();
                    let slot = Slot { _permit: permit, _on_worker: on_worker, open: metrics.open.clone() };
                    let _ = sender.send(HeldConn::with_unread(transport, unread, slot)).await;
                });
            });
        }
    });
    streams
}

/// Reads the HTTP/2 preface from a (decrypted) connection by `deadline`;
/// false when something else came, the peer closed, or time ran out.
async fn read_preface(transport: &mut Transport, deadline: tokio::time::Instant) -> bool {
    let mut buf = [0u8; PREFACE.len()];
    matches!(tokio::time::timeout_at(deadline, transport.read_exact(&mut buf)).await, Ok(Ok(_))) && buf == *PREFACE
}

/// Waits (without consuming anything) until the client has sent the
/// HTTP/2 preface; false when it sent something else, closed, or took
/// longer than `timeout`.
async fn sent_preface(stream: &TcpStream, timeout: Duration) -> bool {
    let wait = async {
        let mut buf = [0u8; PREFACE.len()];
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if buf[..n] != PREFACE[..n] => return false,
                Ok(n) if n == PREFACE.len() => return true,
                // Part of it so far (rare: the preface is 24 bytes, sent in
                // one segment by every client). `peek` leaves the socket
                // readable, so look again after a pause rather than spin.
                Ok(_) => tokio::time::sleep(PARTIAL_PREFACE_POLL).await,
            }
        }
    };
    tokio::time::timeout(timeout, wait).await.unwrap_or(false)
}

/// What a gRPC connection holds until it closes: one of the listener's
/// slots, and its place in the open-connections gauge.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    /// Its place in its worker's count of open connections.
    _on_worker: OpenConn,
    open: Gauge,
}

impl Held for Slot {}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

pub type BoundedConn = HeldConn<Slot>;

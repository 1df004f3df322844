//! One accepted TCP connection (in plain text or TLS) together with what
//! must live exactly as long as it (a slot of the listener's connection
//! cap, a gauge of open connections) and an observer of the bytes it reads.
//! Both servers use it: the HTTP listeners (`crate::http`), where the
//! observer feeds the connection's watchdog, and the counter's gRPC
//! listener.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::tls::ServerTls;

/// The bytes of a connection: as they arrive, or decrypted.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake not completed within {0:?}")]
    TimedOut(Duration),
    #[error("TLS handshake failed: {0}")]
    Failed(io::Error),
}

/// `stream` as it is without `tls`; else after a TLS handshake with the
/// certificate in force now, which must complete within `timeout` (a
/// client that connects and says nothing holds its slot no longer).
pub async fn handshake(
    stream: TcpStream,
    tls: Option<&ServerTls>,
    timeout: Duration,
) -> Result<Transport, HandshakeError> {
    let Some(tls) = tls else { return Ok(Transport::Plain(stream)) };
    let accept = TlsAcceptor::from(tls.current()).accept(stream);
    match tokio::time::timeout(timeout, accept).await {
        Ok(Ok(stream)) => Ok(Transport::Tls(Box::new(stream))),
        Ok(Err(err)) => Err(HandshakeError::Failed(err)),
        Err(_) => Err(HandshakeError::TimedOut(timeout)),
    }
}

impl Transport {
    fn io(self: Pin<&mut Self>) -> Pin<&mut dyn Io> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream),
            Transport::Tls(stream) => Pin::new(stream.as_mut()),
        }
    }
}

/// What both kinds of transport are.
trait Io: AsyncRead + AsyncWrite + Unpin {}

impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.io().poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(stream) => stream.is_write_vectored(),
            Transport::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}

/// Told about every chunk of bytes a connection reads; also holds whatever
/// must be released when the connection closes (its `Drop`).
pub trait Held: Send + Unpin + 'static {
    fn on_read(&mut self, _bytes: &[u8]) {}
}

/// A connection and what it holds.
pub struct HeldConn<H: Held> {
    stream: Transport,
    held: H,
    /// Bytes already read from `stream` (to check them) that the server
    /// must still see first; empty on most connections.
    unread: Vec<u8>,
}

impl<H: Held> HeldConn<H> {
    pub fn new(stream: Transport, held: H) -> HeldConn<H> {
        HeldConn { stream, held, unread: Vec::new() }
    }

    /// As [`HeldConn::new`], with `unread` (read from `stream` already)
    /// served before anything else `stream` reads.
    pub fn with_unread(stream: Transport, unread: Vec<u8>, held: H) -> HeldConn<H> {
        HeldConn { stream, held, unread }
    }
}

impl<H: Held> AsyncRead for HeldConn<H> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..n]);
            this.unread.drain(..n);
            this.held.on_read(&buf.filled()[before..]);
            return Poll::Ready(Ok(()));
        }
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.held.on_read(&buf.filled()[before..]);
        }
        result
    }
}

impl<H: Held> AsyncWrite for HeldConn<H> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    /// Reported as not vectored, whatever the transport: h2 then copies a
    /// DATA payload of up to 1 KiB into its frame buffer (beyond 256 bytes
    /// it otherwise writes the payload from where it lies, and must flush
    /// it before buffering the next frame), so a gRPC response's headers,
    /// message and trailers leave in one write instead of two. hyper's
    /// HTTP/1 does the same for a response's head and body (one `write`
    /// rather than a two-part `writev`). Larger payloads are written in two
    /// parts, head and payload: a cost per large batch, not per increment.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

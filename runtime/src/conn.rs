//! One accepted TCP connection together with what must live exactly as long
//! as it (a slot of the listener's connection cap, a gauge of open
//! connections) and an observer of the bytes it reads. Both servers use it:
//! the HTTP listeners (`crate::http`), where the observer feeds the
//! connection's watchdog, and the counter's gRPC listener (tonic), which is
//! why it also implements tonic's `Connected`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Told about every chunk of bytes a connection reads; also holds whatever
/// must be released when the connection closes (its `Drop`).
pub trait Held: Send + Unpin + 'static {
    fn on_read(&mut self, _bytes: &[u8]) {}
}

/// A connection and what it holds.
pub struct HeldConn<H: Held> {
    stream: TcpStream,
    held: H,
}

impl<H: Held> HeldConn<H> {
    pub fn new(stream: TcpStream, held: H) -> HeldConn<H> {
        HeldConn { stream, held }
    }
}

impl<H: Held> Connected for HeldConn<H> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl<H: Held> AsyncRead for HeldConn<H> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
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

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

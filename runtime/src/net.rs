//! Listening sockets. The services listen on `[::]:port` by default:
//! dual-stack (IPV6_V6ONLY off), so one socket takes IPv4 and IPv6 clients
//! and probes alike on IPv4-only, IPv6-only and dual-stack clusters. Where
//! the kernel has no IPv6 at all, `[::]` falls back to `0.0.0.0` on the same
//! port. Any other address is bound as given.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;

/// Pending connections the kernel queues (Go and nginx use a similar figure).
const BACKLOG: i32 = 1024;

/// Linux's "address family not supported" (no IPv6 in the kernel).
const EAFNOSUPPORT: i32 = 97;

/// Binds `addr` (see the module docs for `[::]`).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    if !(addr.is_ipv6() && addr.ip().is_unspecified()) {
        return TcpListener::bind(addr).await;
    }
    match dual_stack(addr) {
        Ok(listener) => Ok(listener),
        // No IPv6 in this kernel (or this network namespace): IPv4 only.
        Err(err) if err.raw_os_error() == Some(EAFNOSUPPORT) || err.kind() == io::ErrorKind::AddrNotAvailable => {
            TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()))).await
        }
        Err(err) => Err(err),
    }
}

fn dual_stack(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_unspecified_ipv6_address_takes_ipv4_and_ipv6_clients() {
        let listener = bind("[::]:0".parse().unwrap()).await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move {
            for _ in 0..2 {
                listener.accept().await.expect("accept");
            }
        });
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("an IPv4 client");
        if std::fs::read_to_string("/proc/net/if_inet6").is_ok_and(|t| t.contains(" lo")) {
            tokio::net::TcpStream::connect(("::1", port)).await.expect("an IPv6 client");
        } else {
            eprintln!("no IPv6 loopback here: only the IPv4 half was checked");
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("a second IPv4 client");
        }
        accept.await.unwrap();
    }

    #[tokio::test]
    async fn other_addresses_are_bound_as_given() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.expect("bind");
        assert!(listener.local_addr().unwrap().is_ipv4());
    }
}

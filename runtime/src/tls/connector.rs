//! TLS for tonic's client channels (the gateway's to the counters, mutual
//! when it has a client certificate; the OTLP exporter's): a connector that
//! dials TCP and then handshakes with the client configuration in force at
//! that moment. Certificates rotate (cert-manager renews them in place)
//! without dropping traffic: open HTTP/2 connections keep the session they
//! made, and every new connection — a pool member reconnecting, a new
//! endpoint — uses the renewed files.
//!
//! Written as a connector rather than with tonic's own `ClientTlsConfig`
//! because that one is fixed when the channel is made (a channel here
//! lives as long as its endpoint), and so one TLS stack serves every hop.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::ClientTls;
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A client's TLS to its servers: whom it trusts, what it presents, and
/// which name it expects in their certificates.
#[derive(Clone)]
pub struct UpstreamTls {
    pub config: Arc<ClientTls>,
    /// Expected in every server's certificate instead of the endpoint's
    /// host (`TALLY_COUNTER_TLS_SERVER_NAME`): discovered counters are pod
    /// IPs, while certificates usually name the Service.
    pub server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// The name a counter at `uri` must prove it is.
    fn name_for(&self, host: &str) -> io::Result<ServerName<'static>> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        ServerName::try_from(host.to_string())
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, format!("server name {host:?}: {err}")))
    }
}

/// Dials a server: TCP (no Nagle), then TLS.
#[derive(Clone, Debug)]
pub struct Connector {
    tls: UpstreamTls,
}

impl Connector {
    pub fn new(tls: UpstreamTls) -> Connector {
        Connector { tls }
    }
}

/// `host` without the brackets of an IPv6 literal.
fn bare_host(uri: &Uri) -> io::Result<&str> {
    let host = uri.host().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?;
    Ok(host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host))
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = bare_host(&uri)?;
            let name = tls.name_for(host)?;
            let tcp = TcpStream::connect((host, uri.port_u16().unwrap_or(443))).await?;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(tls.config.current()).connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_literals_are_dialled_and_named_without_brackets() {
        let uri: Uri = "https://[::1]:9001".parse().unwrap();
        assert_eq!(bare_host(&uri).unwrap(), "::1");
        let uri: Uri = "https://counter.tally.svc:9001".parse().unwrap();
        assert_eq!(bare_host(&uri).unwrap(), "counter.tally.svc");
        let name = ServerName::try_from("::1".to_string()).unwrap();
        assert!(matches!(name, ServerName::IpAddress(_)));
    }
}

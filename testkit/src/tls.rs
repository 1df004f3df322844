//! Test certificates made with the `openssl` command at test time: a CA, a
//! server certificate for 127.0.0.1/localhost and a client certificate,
//! all short-lived and in a directory of their own.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A test CA and the certificates it signed (PEM files).
pub struct TestCerts {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (apt-get install openssl)");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// `openssl req` with a new P-256 key (unencrypted) and `args`.
fn new_key(dir: &Path, args: &[&str]) {
    let mut all = vec!["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    all.extend_from_slice(args);
    openssl(dir, &all);
}

/// A key pair and a certificate for `cn`, signed by the CA in `dir`.
fn issue(dir: &Path, name: &str, cn: &str, extensions: &str) {
    let (key, csr, crt, ext) =
        (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
    std::fs::write(dir.join(&ext), extensions).expect("extensions file");
    let subject = format!("/CN={cn}");
    new_key(dir, &["-new", "-keyout", &key, "-out", &csr, "-subj", &subject]);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

impl TestCerts {
    /// A fresh CA in a new directory under the system's temp dir, with a
    /// server certificate (127.0.0.1, localhost) and a client certificate.
    pub fn generate(label: &str) -> TestCerts {
        let dir = std::env::temp_dir().join(crate::unique(label));
        std::fs::create_dir_all(&dir).expect("certificate dir");
        new_key(&dir, &["-x509", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=tally test CA"]);
        issue(&dir, "server", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
        issue(&dir, "client", "tally-test-client", "extendedKeyUsage=clientAuth\n");
        TestCerts {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            dir,
        }
    }
}

impl TestCerts {
    /// Another server certificate (127.0.0.1, localhost) from the same CA,
    /// as a renewal would issue: its certificate and key files.
    pub fn issue_server(&self, name: &str) -> (PathBuf, PathBuf) {
        issue(&self.dir, name, "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
        (self.dir.join(format!("{name}.crt")), self.dir.join(format!("{name}.key")))
    }

    /// Another client certificate from the same CA: certificate and key files.
    pub fn issue_client(&self, name: &str) -> (PathBuf, PathBuf) {
        issue(&self.dir, name, "tally-test-client", "extendedKeyUsage=clientAuth\n");
        (self.dir.join(format!("{name}.crt")), self.dir.join(format!("{name}.key")))
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS listener for test doubles served with `axum::serve`: each
/// accepted connection is handshaken with the test server certificate
/// (connections whose handshake fails are dropped).
pub struct TlsListener {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl TlsListener {
    pub fn new(listener: tokio::net::TcpListener, certs: &TestCerts) -> TlsListener {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(&certs.server_cert)
            .expect("server certificate")
            .collect::<Result<Vec<_>, _>>()
            .expect("PEM certificate");
        let key = PrivateKeyDer::from_pem_file(&certs.server_key).expect("server key");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate and key");
        TlsListener { listener, acceptor: tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)) }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.listener.accept().await else { continue };
            if let Ok(stream) = self.acceptor.accept(stream).await {
                return (stream, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

impl TlsListener {
    /// The accepted (and handshaken) connections as a stream, for a tonic server.
    pub fn incoming(self) -> impl futures_util::Stream<Item = std::io::Result<TlsIo>> {
        futures_util::stream::unfold(self, |mut listener| async move {
            let (io, _) = axum::serve::Listener::accept(&mut listener).await;
            Some((Ok(TlsIo(io)), listener))
        })
    }
}

/// A server-side TLS connection that tonic can serve.
pub struct TlsIo(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for TlsIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

//! TLS for tally's own hops (rustls with ring; no OpenSSL): the counter's
//! gRPC listener, the gateway's HTTPS listener and the gateway's client to
//! the counters. Each configuration is built from PEM files named by
//! settings and rebuilt when they change ([`Reloading`]): cert-manager
//! renews a certificate by updating its Secret volume in place, and new
//! handshakes take the new certificate while open connections carry on.
//!
//! Every error names the setting whose file is wrong, so a misconfigured
//! pod says what to fix at startup rather than failing handshakes later.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::reload::{ReloadError, Reloading, SettingFile};

mod connector;

pub use connector::{Connector, UpstreamTls};

/// ALPN for gRPC: HTTP/2 only.
pub const ALPN_H2: &[&[u8]] = &[b"h2"];

/// ALPN for an HTTP listener: HTTP/2 preferred, HTTP/1.1 too.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// ALPN for an HTTP/1.1 client (Consul's API).
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting} {path}: no PEM certificate in it")]
    NoCertificate { setting: &'static str, path: String },
    #[error("{setting} {path}: no usable PEM private key in it ({reason})")]
    NoKey { setting: &'static str, path: String, reason: String },
    #[error("{setting} {path}: {reason}")]
    Rejected { setting: &'static str, path: String, reason: String },
    #[error("no CA file is set and the system has no usable root certificates ({0})")]
    NoSystemRoots(String),
}

pub type TlsReloadError = ReloadError<TlsError>;

/// A server configuration, rebuilt when its files change.
pub type ServerTls = Reloading<ServerConfig, TlsError>;

/// A client configuration, rebuilt when its files change.
pub type ClientTls = Reloading<ClientConfig, TlsError>;

/// What a TLS server presents, and whom it lets in.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    pub cert: SettingFile,
    pub key: SettingFile,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<SettingFile>,
}

/// Whom a TLS client trusts, and what it presents when asked.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    /// The CA the server's certificate must chain to; `None`: the system's
    /// root certificates.
    pub ca: Option<SettingFile>,
    /// A client certificate and its key, for servers that require one.
    pub identity: Option<(SettingFile, SettingFile)>,
}

/// The TLS settings of a service's main listener (the counter's gRPC port,
/// the gateway's HTTP port), shared by both.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenerTlsArgs {
    /// Serve TLS on the main listener with this PEM certificate chain (re-read when it changes).
    #[arg(long, env = "TALLY_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of `TALLY_TLS_CERT_FILE`.
    #[arg(long, env = "TALLY_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// Require client certificates signed by this PEM CA (mutual TLS).
    #[arg(long, env = "TALLY_TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<PathBuf>,

    /// How often certificate, key and CA files (and the gateway's client TLS files) are checked
    /// for changes, in milliseconds.
    #[arg(long, env = "TALLY_TLS_RELOAD_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub tls_reload_ms: u64,
}

impl ListenerTlsArgs {
    /// The listener's TLS configuration, or `None` for plain text.
    pub fn load(&self, alpn: &'static [&'static [u8]]) -> Result<Option<ServerTls>, TlsReloadError> {
        let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) else { return Ok(None) };
        let files = ServerFiles {
            cert: SettingFile::new("TALLY_TLS_CERT_FILE", cert),
            key: SettingFile::new("TALLY_TLS_KEY_FILE", key),
            client_ca: self.tls_client_ca_file.as_ref().map(|ca| SettingFile::new("TALLY_TLS_CLIENT_CA_FILE", ca)),
        };
        server(files, alpn).map(Some)
    }

    pub fn reload_interval(&self) -> Duration {
        Duration::from_millis(self.tls_reload_ms)
    }
}

/// Reloads of TLS files by what they configure (`listener`, `upstream`)
/// and result (`ok`, `failed`).
pub type ReloadMetrics = Family<[(&'static str, &'static str); 2], Counter>;

/// Keeps `tls` current with its files until the process ends: each change
/// is logged and counted; a change that does not load keeps the
/// configuration in force (and is logged as an error).
pub async fn keep_current<T>(
    tls: Arc<Reloading<T, TlsError>>,
    interval: Duration,
    what: &'static str,
    metrics: ReloadMetrics,
) {
    tls.watch(interval, |result| match result {
        Ok(()) => {
            metrics.get_or_create(&[("tls", what), ("result", "ok")]).inc();
            tracing::info!(tls = what, "TLS certificates reloaded; new connections use them");
        }
        Err(err) => {
            metrics.get_or_create(&[("tls", what), ("result", "failed")]).inc();
            tracing::error!(tls = what, %err, "TLS certificates not reloaded; the previous ones stay in force");
        }
    })
    .await
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a server configuration from `files` (which must be valid now),
/// offering `alpn`.
pub fn server(files: ServerFiles, alpn: &'static [&'static [u8]]) -> Result<ServerTls, TlsReloadError> {
    let mut list = vec![files.cert.clone(), files.key.clone()];
    list.extend(files.client_ca.clone());
    Reloading::load(list, move |contents| server_config(&files, contents, alpn))
}

/// Loads a client configuration from `files` (which must be valid now),
/// asking for `alpn`.
pub fn client(files: ClientFiles, alpn: &'static [&'static [u8]]) -> Result<ClientTls, TlsReloadError> {
    let mut list: Vec<SettingFile> = files.ca.iter().cloned().collect();
    if let Some((cert, key)) = &files.identity {
        list.extend([cert.clone(), key.clone()]);
    }
    Reloading::load(list, move |contents| client_config(&files, contents, alpn))
}

/// `contents`: the certificate, the key, then the client CA if any.
fn server_config(files: &ServerFiles, contents: &[Vec<u8>], alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| rejected(&files.cert, err))?;
    let builder = match (&files.client_ca, contents.get(2)) {
        (Some(ca), Some(pem)) => {
            let roots = roots(ca, pem)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|err| rejected(ca, err))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let chain = certificates(&files.cert, &contents[0])?;
    let key = private_key(&files.key, &contents[1])?;
    let mut config = builder.with_single_cert(chain, key).map_err(|err| rejected(&files.key, err))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// `contents`: the CA if any, then the client certificate and key if any.
fn client_config(files: &ClientFiles, contents: &[Vec<u8>], alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
    let (roots, rest) = match &files.ca {
        Some(ca) => (roots(ca, &contents[0])?, &contents[1..]),
        None => (system_roots()?, contents),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::NoSystemRoots(err.to_string()))?
        .with_root_certificates(roots);
    let mut config = match (&files.identity, rest.first(), rest.get(1)) {
        (Some((cert, key)), Some(cert_pem), Some(key_pem)) => builder
            .with_client_auth_cert(certificates(cert, cert_pem)?, private_key(key, key_pem)?)
            .map_err(|err| rejected(key, err))?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

fn rejected(file: &SettingFile, err: impl std::fmt::Display) -> TlsError {
    TlsError::Rejected { setting: file.setting, path: file.path.display().to_string(), reason: err.to_string() }
}

fn certificates(file: &SettingFile, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| rejected(file, format!("not PEM: {err}")))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { setting: file.setting, path: file.path.display().to_string() });
    }
    Ok(chain)
}

fn private_key(file: &SettingFile, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|err| TlsError::NoKey {
        setting: file.setting,
        path: file.path.display().to_string(),
        reason: err.to_string(),
    })
}

/// The operating system's trusted roots (a container image needs its
/// `ca-certificates` for these).
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.first().map_or_else(|| "none found".to_string(), ToString::to_string);
        return Err(TlsError::NoSystemRoots(why));
    }
    Ok(roots)
}

fn roots(file: &SettingFile, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(file, pem)? {
        roots.add(cert).map_err(|err| rejected(file, err))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(setting: &'static str, dir: &std::path::Path, name: &str, contents: &[u8]) -> SettingFile {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        SettingFile::new(setting, path)
    }

    #[test]
    fn files_that_are_not_certificates_or_keys_name_their_setting() {
        let dir = std::env::temp_dir().join(format!("tally-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = ServerFiles {
            cert: file("TALLY_TLS_CERT_FILE", &dir, "cert.pem", b"not a certificate"),
            key: file("TALLY_TLS_KEY_FILE", &dir, "key.pem", b""),
            client_ca: None,
        };
        let err = server(files, ALPN_H2).err().expect("no certificate in the file");
        assert!(matches!(err, ReloadError::Invalid(TlsError::NoCertificate { setting: "TALLY_TLS_CERT_FILE", .. })));

        let ca = ClientFiles { ca: Some(file("TALLY_COUNTER_TLS_CA_FILE", &dir, "ca.pem", b"junk")), identity: None };
        let err = client(ca, ALPN_H2).err().expect("no CA in the file");
        assert!(err.to_string().starts_with("TALLY_COUNTER_TLS_CA_FILE "), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The security parts of the spec (docs/security.md): API keys, TLS
//! between gateways and counters and on the gateways' public port, and TLS
//! to the store. Certificates come from Secrets laid out as cert-manager
//! writes them (`tls.crt`, `tls.key`, `ca.crt`); the operator mounts each
//! Secret whole, so a renewal reaches the pods without a restart and the
//! services pick it up.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// Where the gateways' API keys come from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// The Secret key holding the keys file: SHA-256 digests of the keys,
    /// their scopes, resource prefixes and rates. Mounted into the gateways
    /// and re-read there when the Secret changes, without a restart.
    pub keys_secret: SecretKeyRef,
}

/// TLS on tally's own hops, each from a Secret of type `kubernetes.io/tls`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// The counters' certificate (`tls.crt`, `tls.key`), which must name
    /// `<name>-counter.<namespace>.svc`; its `ca.crt` is the CA the
    /// gateways' client certificates must chain to (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter_secret: Option<String>,
    /// The gateways' client certificate to the counters (`tls.crt`,
    /// `tls.key`); its `ca.crt` is the CA the counters' certificate must
    /// chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_client_secret: Option<String>,
    /// HTTPS on the gateways' public port (HTTP/1.1 and HTTP/2 by ALPN):
    /// `tls.crt` and `tls.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_secret: Option<String>,
}

/// TLS material for a `rediss://` store.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoreTlsSpec {
    /// A Secret whose `ca.crt` the store's certificate must chain to.
    pub secret: String,
    /// Also present the Secret's `tls.crt`/`tls.key` as a client
    /// certificate (Redis `tls-auth-clients yes`).
    #[serde(default)]
    pub client_certificate: bool,
}

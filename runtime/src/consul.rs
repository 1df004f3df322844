//! The slice of Consul's HTTP API tally uses: the counter registers itself
//! with a gRPC health check and deregisters on shutdown; the gateway
//! follows the passing instances with blocking queries. Over `http://` or
//! `https://` (rustls, verified against `TALLY_CONSUL_CA_FILE` or the
//! system's roots), with an ACL token (`TALLY_CONSUL_TOKEN`, sent as
//! `X-Consul-Token`) when Consul's ACLs are on.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::reload::SettingFile;
use crate::tls::{self, ClientFiles};

/// How to reach Consul beyond its address: TLS trust and the ACL token.
/// Both services read the same settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConsulAccess {
    /// Consul ACL token, sent as `X-Consul-Token` (from a Secret; never logged).
    #[arg(long, env = "TALLY_CONSUL_TOKEN", hide_env_values = true)]
    pub consul_token: Option<Token>,

    /// `https://` Consul: PEM CA its certificate must chain to (default: the system's roots).
    #[arg(long, env = "TALLY_CONSUL_CA_FILE")]
    pub consul_ca_file: Option<PathBuf>,
}

/// A secret value: its `Debug` shows no part of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(redacted)")
    }
}

/// Takes any text: a token that is no valid header value is refused when
/// the client is built ([`Consul::new`]), with a message that leaves it
/// out. A parse error here would be clap's, which quotes the value it
/// refused, and so print the token on a failed startup.
impl std::str::FromStr for Token {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Token, Self::Err> {
        Ok(Token(s.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("consul client: {0}")]
    Config(String),
    /// The request failed (user-info in the URL is masked).
    #[error("consul request failed: {0}")]
    Http(String),
    #[error("consul answered {status}: {body}")]
    Status { status: u16, body: String },
}

impl From<reqwest::Error> for ConsulError {
    fn from(err: reqwest::Error) -> Self {
        ConsulError::Http(crate::redact::userinfo(&err.to_string()).into_owned())
    }
}

/// What the counter registers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Registration {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub check: Check,
}

/// A gRPC health check (grpc.health.v1) Consul runs against the counter.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Check {
    #[serde(rename = "GRPC")]
    pub grpc: String,
    /// The check speaks TLS (the counter serves TLS).
    #[serde(rename = "GRPCUseTLS")]
    pub grpc_use_tls: bool,
    pub interval: String,
    pub timeout: String,
    pub deregister_critical_service_after: String,
}

/// One passing instance from `/v1/health/service/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub address: String,
    pub port: u16,
    pub weight: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    node: Node,
    service: Service,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    weights: Option<Weights>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: u32,
}

/// A Consul agent at `base` (`http://host:8500`).
#[derive(Clone)]
pub struct Consul {
    base: String,
    http: reqwest::Client,
}

impl Consul {
    /// A client of the agent at `base` (`http://` or `https://`).
    pub fn new(base: &str, access: &ConsulAccess) -> Result<Consul, ConsulError> {
        let https = base.starts_with("https://");
        if !https && !base.starts_with("http://") {
            return Err(ConsulError::Config(format!(
                "the Consul address must be http:// or https://, not {:?}",
                crate::redact::userinfo(base)
            )));
        }
        let mut builder = reqwest::Client::builder();
        if let Some(Token(token)) = &access.consul_token {
            let mut value = http::HeaderValue::from_str(token)
                .map_err(|_| ConsulError::Config("TALLY_CONSUL_TOKEN is not a valid header value".into()))?;
            value.set_sensitive(true);
            builder = builder
                .default_headers([(http::HeaderName::from_static("x-consul-token"), value)].into_iter().collect());
        }
        match (&access.consul_ca_file, https) {
            (Some(_), false) => {
                return Err(ConsulError::Config(
                    "TALLY_CONSUL_CA_FILE is set but the Consul address is http://".into(),
                ));
            }
            (ca, true) => {
                let files = ClientFiles {
                    ca: ca.as_ref().map(|ca| SettingFile::new("TALLY_CONSUL_CA_FILE", ca)),
                    identity: None,
                };
                let config = tls::client(files, tls::ALPN_HTTP1).map_err(|err| ConsulError::Config(err.to_string()))?;
                builder = builder.use_preconfigured_tls((*config.current()).clone());
            }
            (None, false) => {}
        }
        let http = builder.build().map_err(|err| ConsulError::Config(err.to_string()))?;
        Ok(Consul { base: base.trim_end_matches('/').to_string(), http })
    }

    pub async fn register(&self, registration: &Registration) -> Result<(), ConsulError> {
        let url = format!("{}/v1/agent/service/register", self.base);
        check(self.http.put(url).json(registration).send().await?).await.map(drop)
    }

    pub async fn deregister(&self, id: &str) -> Result<(), ConsulError> {
        let url = format!("{}/v1/agent/service/deregister/{id}", self.base);
        check(self.http.put(url).send().await?).await.map(drop)
    }

    /// A blocking query for the passing instances of `service` (with `tag`,
    /// if given): returns once the result's index moves past `index`, or
    /// after `wait`. Returns the instances and the new index.
    pub async fn passing(
        &self,
        service: &str,
        tag: Option<&str>,
        index: u64,
        wait: Duration,
    ) -> Result<(Vec<Instance>, u64), ConsulError> {
        let mut query = vec![("passing", "true".to_string()), ("index", index.to_string())];
        query.push(("wait", format!("{}s", wait.as_secs().max(1))));
        if let Some(tag) = tag {
            query.push(("tag", tag.to_string()));
        }
        let url = format!("{}/v1/health/service/{service}", self.base);
        // Consul may hold the request up to wait + wait/16; allow a margin.
        let response =
            check(self.http.get(url).query(&query).timeout(wait + wait / 8 + Duration::from_secs(5)).send().await?)
                .await?;
        let new_index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let entries: Vec<Entry> = response.json().await?;
        let instances = entries
            .into_iter()
            .map(|e| Instance {
                address: if e.service.address.is_empty() { e.node.address } else { e.service.address },
                port: e.service.port,
                weight: e.service.weights.map_or(1, |w| w.passing.max(1)),
            })
            .collect();
        Ok((instances, new_index))
    }
}

async fn check(response: reqwest::Response) -> Result<reqwest::Response, ConsulError> {
    let status = response.status();
    if status.is_success() {
        Ok(response)
    } else {
        let body = response.text().await.unwrap_or_default();
        Err(ConsulError::Status { status: status.as_u16(), body })
    }
}

/// The index to send next (Consul's blocking-query rules): an index that
/// went backwards (agent restart, snapshot restore) resets to 0, and 0 is
/// never reused as "wait for a change" (it would return at once forever).
pub fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous { 0 } else { returned.max(1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token that is no valid header value (a trailing newline from a
    /// Secret written with `echo`) stops startup without being printed.
    #[test]
    fn a_malformed_token_is_refused_without_being_shown() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            access: ConsulAccess,
        }
        let secret = "s3cret-token\n";
        let cli = <Cli as clap::Parser>::try_parse_from(["test", "--consul-token", secret])
            .unwrap_or_else(|err| panic!("clap refused it, quoting it: {}", err.to_string().contains("s3cret")));
        let refused = Consul::new("http://127.0.0.1:8500", &cli.access).err().expect("not a header value");
        let text = refused.to_string();
        assert!(text.contains("TALLY_CONSUL_TOKEN") && !text.contains("s3cret"), "{text}");
    }

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, 42), 42);
        assert_eq!(next_index(42, 42), 42);
        assert_eq!(next_index(42, 7), 0, "went backwards: start over");
        assert_eq!(next_index(0, 0), 1, "never block on 0");
    }

    #[test]
    fn registration_uses_consul_field_names() {
        let r = Registration {
            id: "counter-1".into(),
            name: "counter-service".into(),
            address: "10.0.0.7".into(),
            port: 9001,
            tags: vec!["v2".into()],
            check: Check {
                grpc: "10.0.0.7:9001/tally.counter.v1.CounterService".into(),
                grpc_use_tls: false,
                interval: "10s".into(),
                timeout: "2s".into(),
                deregister_critical_service_after: "1m".into(),
            },
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["ID"], "counter-1");
        assert_eq!(json["Check"]["GRPC"], "10.0.0.7:9001/tally.counter.v1.CounterService");
        assert_eq!(json["Check"]["DeregisterCriticalServiceAfter"], "1m");
    }
}

//! Who may call the public API (docs/security.md, "API keys"): nobody is asked
//! (`TALLY_AUTH=none`), or every API request carries `Authorization:
//! Bearer <key>` for a key in `TALLY_AUTH_KEYS_FILE` (`api_keys`), whose
//! scopes, resource prefix and rate it must keep to. Probes and the admin
//! port need no key.
//!
//! Every check runs before anything is sent to a counter: a refused request
//! writes nothing.

mod keys;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use http::HeaderValue;
use tally_runtime::reload::{ReloadError, Reloading, SettingFile};

pub use keys::{KeySet, KeysError, Principal, Rate, Scope};

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No key, or not one of ours: 401.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The key may not do this: 403.
    #[error("{0}")]
    Forbidden(String),
    /// The key's rate is used up: 429, try again after `retry_after`.
    #[error("{message}")]
    RateLimited { message: String, retry_after: Duration },
}

/// Why the keys file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("TALLY_AUTH=api_keys needs TALLY_AUTH_KEYS_FILE")]
    NoKeysFile,
    #[error(transparent)]
    File(#[from] ReloadError<InvalidKeys>),
}

/// A keys file that does not parse, and where it is.
#[derive(Debug, thiserror::Error)]
#[error("{SETTING} {path}: {source}")]
pub struct InvalidKeys {
    path: String,
    source: KeysError,
}

const SETTING: &str = "TALLY_AUTH_KEYS_FILE";

/// The authentication mode and, for API keys, the keys in force (re-read
/// when the file changes).
pub struct Auth {
    keys: Option<Reloading<KeySet, InvalidKeys>>,
}

/// Who is calling: a principal of the keys file, or anyone (no auth).
#[derive(Clone)]
pub enum Caller {
    Anyone,
    Key(Arc<Principal>),
}

impl Auth {
    /// No authentication: every request is [`Caller::Anyone`].
    pub fn none() -> Auth {
        Auth { keys: None }
    }

    /// API keys from `path`, which must exist and be valid now.
    pub fn api_keys(path: Option<PathBuf>) -> Result<Auth, AuthError> {
        let path = path.ok_or(AuthError::NoKeysFile)?;
        let shown = path.display().to_string();
        let parse = move |contents: &[Vec<u8>]| {
            parse_bytes(&contents[0]).map_err(|source| InvalidKeys { path: shown.clone(), source })
        };
        Ok(Auth { keys: Some(Reloading::load(vec![SettingFile::new(SETTING, path)], parse)?) })
    }

    /// The caller a request's `Authorization` header names.
    pub fn authenticate(&self, authorization: Option<&HeaderValue>) -> Result<Caller, Refusal> {
        let Some(keys) = &self.keys else { return Ok(Caller::Anyone) };
        let header =
            authorization.ok_or(Refusal::Unauthenticated("an API key is required: Authorization: Bearer <key>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::Unauthenticated("the Authorization header must be: Bearer <key>"))?;
        keys.with(|keys| keys.find(token)).map(Caller::Key).ok_or(Refusal::Unauthenticated("unknown API key"))
    }

    /// True when API keys are on: a request needs one.
    pub fn required(&self) -> bool {
        self.keys.is_some()
    }

    /// Number of keys in force (0 without API keys).
    pub fn key_count(&self) -> usize {
        self.keys.as_ref().map_or(0, |keys| keys.with(KeySet::len))
    }

    /// Reads the keys file again if its contents changed. `Ok(false)`: no
    /// change. On an error the keys in force stay.
    pub fn reload(&self) -> Result<bool, AuthError> {
        let Some(keys) = &self.keys else { return Ok(false) };
        Ok(keys.reload()?)
    }

    /// Re-reads the keys file every `interval` (Kubernetes updates a
    /// mounted Secret in place), until the process ends.
    pub async fn watch(self: Arc<Self>, interval: Duration, metrics: Arc<crate::metrics::Metrics>) {
        let Some(keys) = &self.keys else { return };
        metrics.auth_keys.set(self.key_count() as i64);
        keys.watch(interval, |result| match result {
            Ok(()) => {
                metrics.auth_reloads.get_or_create(&[("result", "ok")]).inc();
                metrics.auth_keys.set(self.key_count() as i64);
                tracing::info!(keys = self.key_count(), "API keys reloaded");
            }
            Err(err) => {
                metrics.auth_reloads.get_or_create(&[("result", "failed")]).inc();
                tracing::error!(%err, "API keys not reloaded; the previous keys stay in force");
            }
        })
        .await
    }
}

fn parse_bytes(text: &[u8]) -> Result<KeySet, KeysError> {
    let text = std::str::from_utf8(text).map_err(|_| KeysError::Syntax("not UTF-8".into()))?;
    keys::parse(text)
}

impl Caller {
    /// The principal's name, or `-` for anyone.
    pub fn name(&self) -> &str {
        match self {
            Caller::Anyone => "-",
            Caller::Key(principal) => &principal.name,
        }
    }

    /// Whether this caller may do `scope` on every resource of
    /// `resource_ids`, spending `operations` of its rate. Checked before
    /// anything is sent.
    pub fn permit<'a>(
        &self,
        scope: Scope,
        resource_ids: impl IntoIterator<Item = &'a str>,
        operations: usize,
    ) -> Result<(), Refusal> {
        let Caller::Key(principal) = self else { return Ok(()) };
        if !principal.scopes.contains(&scope) {
            let what = match scope {
                Scope::Read => "read",
                Scope::Write => "write",
            };
            return Err(Refusal::Forbidden(format!("API key {:?} has no {what} scope", principal.name)));
        }
        if let Some(prefix) = &principal.resource_prefix
            && let Some(outside) = resource_ids.into_iter().find(|id| !id.starts_with(prefix.as_str()))
        {
            return Err(Refusal::Forbidden(format!(
                "API key {:?} may only address resource ids starting with {prefix:?}, not {:?}",
                principal.name, outside
            )));
        }
        spend(principal, operations)
    }

    /// The idempotency key sent to the counters: scoped to the principal, so
    /// one client cannot suppress (or learn the result of) another's write
    /// by guessing its key. Anyone's keys are sent as they are.
    pub fn scoped_idempotency_key(&self, key: Option<&str>) -> Option<String> {
        let key = key?;
        match self {
            Caller::Anyone => Some(key.to_string()),
            Caller::Key(principal) => {
                let mut material = Vec::with_capacity(principal.name.len() + 1 + key.len());
                material.extend_from_slice(principal.name.as_bytes());
                material.push(0);
                material.extend_from_slice(key.as_bytes());
                Some(keys::hex(&keys::sha256(&material)))
            }
        }
    }
}

/// Takes `operations` from the principal's rate, or says when to retry.
fn spend(principal: &Principal, operations: usize) -> Result<(), Refusal> {
    let Some(Rate { per_second: rate, limiter }) = &principal.rate else { return Ok(()) };
    let wanted = u32::try_from(operations).unwrap_or(u32::MAX);
    let n = std::num::NonZeroU32::new(wanted).unwrap_or(std::num::NonZeroU32::MIN);
    match limiter.check_n(n) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => Err(Refusal::RateLimited {
            message: format!("API key {:?} is over its rate of {rate} operations per second", principal.name),
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        }),
        Err(_) => Err(Refusal::RateLimited {
            message: format!(
                "{wanted} operations in one request exceed API key {:?}'s rate of {rate} per second; send smaller batches",
                principal.name
            ),
            retry_after: Duration::from_secs(1),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(scopes: Vec<Scope>, prefix: Option<&str>, rate: Option<u32>) -> Caller {
        let rate = rate.and_then(std::num::NonZeroU32::new);
        Caller::Key(Arc::new(Principal {
            name: "web".into(),
            scopes,
            resource_prefix: prefix.map(str::to_string),
            rate: rate.map(Rate::new),
        }))
    }

    #[test]
    fn scopes_and_prefixes_are_enforced() {
        let reader = principal(vec![Scope::Read], Some("post:"), None);
        assert!(reader.permit(Scope::Read, ["post:1"], 1).is_ok());
        assert!(matches!(reader.permit(Scope::Write, ["post:1"], 1), Err(Refusal::Forbidden(_))));
        let mixed = ["post:1", "user:1"];
        assert!(matches!(reader.permit(Scope::Read, mixed, 2), Err(Refusal::Forbidden(m)) if m.contains("user:1")));
        assert!(Caller::Anyone.permit(Scope::Write, mixed, 2).is_ok());
    }

    #[test]
    fn the_rate_counts_operations_and_says_when_to_retry() {
        let limited = principal(vec![Scope::Write], None, Some(3));
        assert!(limited.permit(Scope::Write, ["a"], 2).is_ok());
        assert!(limited.permit(Scope::Write, ["a"], 1).is_ok());
        match limited.permit(Scope::Write, ["a"], 1) {
            Err(Refusal::RateLimited { retry_after, .. }) => assert!(retry_after <= Duration::from_secs(1)),
            other => panic!("expected a rate limit, got {other:?}"),
        }
        let batch = principal(vec![Scope::Write], None, Some(3));
        assert!(matches!(batch.permit(Scope::Write, ["a"], 4), Err(Refusal::RateLimited { .. })), "over the burst");
    }

    #[test]
    fn idempotency_keys_are_scoped_per_principal() {
        let web = principal(vec![Scope::Write], None, None);
        let other = Caller::Key(Arc::new(Principal {
            name: "batch".into(),
            scopes: vec![Scope::Write],
            resource_prefix: None,
            rate: None,
        }));
        let (a, b) = (web.scoped_idempotency_key(Some("k1")), other.scoped_idempotency_key(Some("k1")));
        assert_ne!(a, b);
        assert_eq!(a, web.scoped_idempotency_key(Some("k1")), "stable");
        assert!(tally_proto::validate::idempotency_key(a.as_deref().unwrap_or_default()).is_ok());
        assert_eq!(Caller::Anyone.scoped_idempotency_key(Some("k1")).as_deref(), Some("k1"));
        assert_eq!(web.scoped_idempotency_key(None), None);
    }

    #[test]
    fn bearer_tokens_are_required_with_api_keys() {
        assert!(matches!(Auth::none().authenticate(None), Ok(Caller::Anyone)));
        let dir = std::env::temp_dir().join(format!("tally-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("keys.yaml");
        let digest = keys::hex(&keys::sha256(b"s3cret"));
        std::fs::write(&path, format!("keys:\n  - name: web\n    sha256: {digest}\n    scopes: [read]\n"))
            .expect("write");
        let auth = Auth::api_keys(Some(path.clone())).expect("valid file");
        let header = |v: &str| HeaderValue::from_str(v).expect("header");
        assert!(matches!(auth.authenticate(None), Err(Refusal::Unauthenticated(_))));
        assert!(matches!(auth.authenticate(Some(&header("Basic s3cret"))), Err(Refusal::Unauthenticated(_))));
        assert!(matches!(auth.authenticate(Some(&header("Bearer nope"))), Err(Refusal::Unauthenticated(_))));
        assert_eq!(auth.authenticate(Some(&header("Bearer s3cret"))).map(|c| c.name().to_string()), Ok("web".into()));
        // A broken file is refused and the keys in force stay.
        std::fs::write(&path, "keys: [").expect("write");
        assert!(matches!(auth.reload(), Err(AuthError::File(ReloadError::Invalid(_)))));
        assert!(auth.authenticate(Some(&header("Bearer s3cret"))).is_ok());
        assert!(matches!(Auth::api_keys(None), Err(AuthError::NoKeysFile)));
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! The API keys file: parsing and validation (pure), and finding the key a
//! bearer token belongs to.
//!
//! ```yaml
//! keys:
//!   - name: web                  # the principal, in logs and metrics
//!     sha256: 9f86d08…           # sha256 of the bearer key, hex
//!     scopes: [read, write]
//!     resource_prefix: "post:"   # optional: only resource ids starting with it
//!     rate_per_second: 1000      # optional: counter operations per second
//! ```
//!
//! Only digests are stored: the file (and this process's memory) never holds
//! a usable key.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use subtle::ConstantTimeEq;

/// Why a keys file was refused (the previous keys, if any, stay in force).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    #[error("not a valid keys file: {0}")]
    Syntax(String),
    #[error("key {index}: {reason}")]
    Entry { index: usize, reason: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    sha256: String,
    scopes: Vec<Scope>,
    #[serde(default)]
    resource_prefix: Option<String>,
    #[serde(default)]
    rate_per_second: Option<u32>,
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read counters.
    Read,
    /// Increment counters.
    Write,
}

/// One caller the keys file names.
#[derive(Debug)]
pub struct Principal {
    pub name: String,
    pub scopes: Vec<Scope>,
    /// Resource ids this principal may address start with it.
    pub resource_prefix: Option<String>,
    /// Its rate, when the file gives one.
    pub rate: Option<Rate>,
}

/// Counter operations per second, as a token bucket whose burst is one
/// second's worth.
#[derive(Debug)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub limiter: DefaultDirectRateLimiter,
}

impl Rate {
    pub fn new(per_second: NonZeroU32) -> Rate {
        Rate { per_second, limiter: RateLimiter::direct(Quota::per_second(per_second)) }
    }
}

/// The keys in force: digests and who they belong to.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<([u8; 32], Arc<Principal>)>,
}

/// Longest principal name: it becomes a metric label and part of scoped
/// idempotency keys.
const MAX_NAME_LEN: usize = 64;

/// Parses and checks a keys file; every entry must be valid, or none is used.
pub fn parse(text: &str) -> Result<KeySet, KeysError> {
    let file: KeysFile = serde_yaml_ng::from_str(text).map_err(|e| KeysError::Syntax(e.to_string()))?;
    let mut names = HashSet::new();
    let mut digests = HashSet::new();
    let mut keys = Vec::with_capacity(file.keys.len());
    for (index, entry) in file.keys.into_iter().enumerate() {
        let refuse = |reason: String| KeysError::Entry { index, reason };
        let name_ok = !entry.name.is_empty()
            && entry.name.len() <= MAX_NAME_LEN
            && entry.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !name_ok {
            return Err(refuse(format!("name must be 1–{MAX_NAME_LEN} characters of [A-Za-z0-9_.-]")));
        }
        if !names.insert(entry.name.clone()) {
            return Err(refuse(format!("name {:?} is used twice", entry.name)));
        }
        let digest = hex_digest(&entry.sha256)
            .ok_or_else(|| refuse("sha256 must be 64 hexadecimal characters (the SHA-256 of the key)".into()))?;
        if !digests.insert(digest) {
            return Err(refuse("the same key is listed twice".into()));
        }
        if entry.scopes.is_empty() {
            return Err(refuse("scopes must name at least one of read, write".into()));
        }
        if entry.resource_prefix.as_deref() == Some("") {
            return Err(refuse("resource_prefix, when given, may not be empty".into()));
        }
        let rate = match entry.rate_per_second {
            None => None,
            Some(rate) => {
                Some(NonZeroU32::new(rate).ok_or_else(|| refuse("rate_per_second must be at least 1".into()))?)
            }
        };
        let principal = Principal {
            name: entry.name,
            scopes: entry.scopes,
            resource_prefix: entry.resource_prefix,
            rate: rate.map(Rate::new),
        };
        keys.push((digest, Arc::new(principal)));
    }
    Ok(KeySet { keys })
}

impl KeySet {
    /// The principal whose key is `token`. Every stored digest is compared,
    /// each in constant time, so the answer's timing says nothing about how
    /// close a guess came.
    pub fn find(&self, token: &str) -> Option<Arc<Principal>> {
        let presented = sha256(token.as_bytes());
        let mut found = None;
        for (digest, principal) in &self.keys {
            if bool::from(digest.ct_eq(&presented)) {
                found = Some(principal.clone());
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes.iter().flat_map(|b| [DIGITS[usize::from(b >> 4)] as char, DIGITS[usize::from(b & 15)] as char]).collect()
}

fn hex_digest(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &str) -> String {
        format!("keys:\n{entries}")
    }

    fn entry(name: &str, key: &str, extra: &str) -> String {
        format!("  - name: {name}\n    sha256: {}\n    scopes: [read, write]\n{extra}", hex(&sha256(key.as_bytes())))
    }

    #[test]
    fn a_key_is_found_by_its_digest_only() {
        let keys = parse(&file(&(entry("web", "s3cret", "") + &entry("batch", "other", "")))).expect("valid");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.find("s3cret").map(|p| p.name.clone()), Some("web".into()));
        assert_eq!(keys.find("other").map(|p| p.name.clone()), Some("batch".into()));
        assert!(keys.find("s3cre").is_none() && keys.find("").is_none());
        // The digest itself is not a key.
        assert!(keys.find(&hex(&sha256(b"s3cret"))).is_none());
    }

    #[test]
    fn options_are_read() {
        let extra = "    resource_prefix: \"post:\"\n    rate_per_second: 5\n";
        let keys = parse(&file(&entry("web", "k", extra))).expect("valid");
        let web = keys.find("k").expect("found");
        assert_eq!(web.resource_prefix.as_deref(), Some("post:"));
        assert_eq!(web.rate.as_ref().map(|r| r.per_second.get()), Some(5));
    }

    #[test]
    fn invalid_files_are_refused_whole() {
        let bad = |text: &str| parse(text).expect_err("refused");
        assert!(matches!(bad("keys: [1, 2"), KeysError::Syntax(_)));
        assert!(matches!(bad(&file(&entry("web", "k", "    colour: blue\n"))), KeysError::Syntax(_)), "unknown field");
        let short = "keys:\n  - name: web\n    sha256: abc\n    scopes: [read]\n";
        assert!(matches!(bad(short), KeysError::Entry { index: 0, .. }));
        assert!(matches!(
            bad(&file(&(entry("web", "a", "") + &entry("web", "b", "")))),
            KeysError::Entry { index: 1, .. }
        ));
        assert!(matches!(bad(&file(&(entry("a", "k", "") + &entry("b", "k", "")))), KeysError::Entry { index: 1, .. }));
        assert!(matches!(bad(&file(&entry("sp ace", "k", ""))), KeysError::Entry { .. }));
        assert!(matches!(bad(&file(&entry("web", "k", "    rate_per_second: 0\n"))), KeysError::Entry { .. }));
        let no_scope = format!("keys:\n  - name: web\n    sha256: {}\n    scopes: []\n", hex(&sha256(b"k")));
        assert!(matches!(bad(&no_scope), KeysError::Entry { .. }));
        let unknown_scope = format!("keys:\n  - name: web\n    sha256: {}\n    scopes: [admin]\n", hex(&sha256(b"k")));
        assert!(matches!(bad(&unknown_scope), KeysError::Syntax(_)));
    }

    #[test]
    fn hex_round_trips() {
        let digest = sha256(b"test");
        assert_eq!(hex(&digest), "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
        assert_eq!(hex_digest(&hex(&digest)), Some(digest));
        assert_eq!(hex_digest(&hex(&digest).to_uppercase()), Some(digest));
    }
}

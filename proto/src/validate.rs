//! Validation of client input: pure functions, shared by gateway and counter.
//!
//! Nothing reaches a store without passing through here, so a bad request is
//! rejected before anything is written.

use std::fmt;

/// The documented input limits (docs/api.md, "Limits").
pub mod limits {
    /// Longest `resource_id`, in bytes.
    pub const MAX_RESOURCE_ID_LEN: usize = 128;
    /// Longest `counter_type`, in bytes.
    pub const MAX_COUNTER_TYPE_LEN: usize = 64;
    /// Most operations in one batch increment, or items in one batch get.
    pub const MAX_BATCH_LEN: usize = 1000;
    /// Longest idempotency key, in bytes.
    pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
    /// Most counters one resource's listing returns; a resource holding
    /// more is refused rather than answered in part.
    pub const MAX_RESOURCE_COUNTERS: usize = 1000;
}

/// Why a request was rejected. Every variant is the client's fault
/// (gRPC `INVALID_ARGUMENT`; HTTP 400, or 413 for [`InvalidInput::BatchTooLarge`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes long; the limit is {max}")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("{field} contains {found:?} at byte {at}; allowed characters are {allowed}")]
    BadCharacter { field: &'static str, found: char, at: usize, allowed: &'static str },
    #[error("delta must not be 0")]
    ZeroDelta,
    #[error("{what} must contain at least one entry")]
    EmptyBatch { what: &'static str },
    #[error("{what} has {len} entries; the limit is {max}")]
    BatchTooLarge { what: &'static str, len: usize, max: usize },
    #[error("{what}[{index}]: {source}")]
    InBatch { what: &'static str, index: usize, source: Box<InvalidInput> },
}

impl InvalidInput {
    /// True when the request was rejected for its size alone (HTTP 413).
    pub fn is_too_large(&self) -> bool {
        matches!(self, InvalidInput::BatchTooLarge { .. })
    }

    /// Attaches the position of the offending entry within a batch.
    pub fn in_batch(self, what: &'static str, index: usize) -> Self {
        InvalidInput::InBatch { what, index, source: Box::new(self) }
    }
}

/// One counter: the pair every API call addresses. Only constructed through
/// [`CounterKey::new`], so holding one proves both parts are valid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    resource_id: String,
    counter_type: String,
}

impl CounterKey {
    pub fn new(resource_id: impl Into<String>, counter_type: impl Into<String>) -> Result<Self, InvalidInput> {
        let resource_id = resource_id.into();
        let counter_type = counter_type.into();
        CounterKey::check(&resource_id, &counter_type)?;
        Ok(CounterKey { resource_id, counter_type })
    }

    /// What [`CounterKey::new`] would say about these parts, without taking
    /// them: for callers that still need the raw parts when they are invalid.
    pub fn check(resource_id: &str, counter_type: &str) -> Result<(), InvalidInput> {
        self::resource_id(resource_id)?;
        self::counter_type(counter_type)
    }

    pub fn resource_id(&self) -> &str {
        &self.resource_id
    }

    pub fn counter_type(&self) -> &str {
        &self.counter_type
    }

    /// The two validated strings, moved out (no copy).
    pub fn into_parts(self) -> (String, String) {
        (self.resource_id, self.counter_type)
    }
}

impl fmt::Display for CounterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.resource_id, self.counter_type)
    }
}

/// A resource id alone (for the calls that address every counter of one).
pub fn resource_id(resource_id: &str) -> Result<(), InvalidInput> {
    check_field("resource_id", resource_id, limits::MAX_RESOURCE_ID_LEN, is_resource_id_char, "[A-Za-z0-9_.:@/-]")
}

/// A counter type alone (e.g. a field read back from the store).
pub fn counter_type(counter_type: &str) -> Result<(), InvalidInput> {
    check_field("counter_type", counter_type, limits::MAX_COUNTER_TYPE_LEN, is_counter_type_char, "[a-z0-9_]")
}

/// An omitted delta means 1; an explicit 0 is an error (it would be a write
/// that changes nothing, almost always a client bug).
pub fn delta_or_default(delta: Option<i64>) -> Result<i64, InvalidInput> {
    match delta {
        None => Ok(1),
        Some(0) => Err(InvalidInput::ZeroDelta),
        Some(d) => Ok(d),
    }
}

/// An idempotency key: empty means none; otherwise 1..=128 bytes of
/// `[A-Za-z0-9_.:@/+=-]` (UUIDs, ULIDs, base64url all fit).
pub fn idempotency_key(key: &str) -> Result<Option<&str>, InvalidInput> {
    if key.is_empty() {
        return Ok(None);
    }
    check_field(
        "idempotency_key",
        key,
        limits::MAX_IDEMPOTENCY_KEY_LEN,
        |b| is_resource_id_char(b) || b == b'+' || b == b'=',
        "[A-Za-z0-9_.:@/+=-]",
    )?;
    Ok(Some(key))
}

/// Checks the number of entries of a batch against [`limits::MAX_BATCH_LEN`].
pub fn batch_len(what: &'static str, len: usize) -> Result<(), InvalidInput> {
    match len {
        0 => Err(InvalidInput::EmptyBatch { what }),
        n if n > limits::MAX_BATCH_LEN => Err(InvalidInput::BatchTooLarge { what, len: n, max: limits::MAX_BATCH_LEN }),
        _ => Ok(()),
    }
}

fn check_field(
    field: &'static str,
    value: &str,
    max: usize,
    allowed_char: fn(u8) -> bool,
    allowed: &'static str,
) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(InvalidInput::Empty { field });
    }
    if value.len() > max {
        return Err(InvalidInput::TooLong { field, len: value.len(), max });
    }
    match value.bytes().position(|b| !allowed_char(b)) {
        None => Ok(()),
        Some(at) => {
            // `at` may sit inside a multi-byte character: report the whole character.
            let start = (0..=at).rev().find(|&i| value.is_char_boundary(i)).unwrap_or(0);
            let found = value[start..].chars().next().unwrap_or('\u{FFFD}');
            Err(InvalidInput::BadCharacter { field, found, at, allowed })
        }
    }
}

fn is_resource_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'/' | b'-')
}

fn is_counter_type_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_allowed_character() {
        let key = CounterKey::new("Post_1.a:b@c/d-e", "likes_2").expect("valid");
        assert_eq!(key.to_string(), "Post_1.a:b@c/d-e/likes_2");
    }

    #[test]
    fn rejects_bad_keys_with_precise_errors() {
        let long_id = "a".repeat(129);
        let long_type = "a".repeat(65);
        let cases: Vec<(&str, &str, InvalidInput)> = vec![
            ("", "likes", InvalidInput::Empty { field: "resource_id" }),
            ("p", "", InvalidInput::Empty { field: "counter_type" }),
            (&long_id, "likes", InvalidInput::TooLong { field: "resource_id", len: 129, max: 128 }),
            ("p", &long_type, InvalidInput::TooLong { field: "counter_type", len: 65, max: 64 }),
            (
                "a b",
                "likes",
                InvalidInput::BadCharacter { field: "resource_id", found: ' ', at: 1, allowed: "[A-Za-z0-9_.:@/-]" },
            ),
            (
                "p{1}",
                "likes",
                InvalidInput::BadCharacter { field: "resource_id", found: '{', at: 1, allowed: "[A-Za-z0-9_.:@/-]" },
            ),
            (
                "p",
                "Likes",
                InvalidInput::BadCharacter { field: "counter_type", found: 'L', at: 0, allowed: "[a-z0-9_]" },
            ),
            (
                "é",
                "likes",
                InvalidInput::BadCharacter { field: "resource_id", found: 'é', at: 0, allowed: "[A-Za-z0-9_.:@/-]" },
            ),
        ];
        for (id, ty, want) in cases {
            assert_eq!(CounterKey::new(id, ty), Err(want), "({id:?}, {ty:?})");
        }
    }

    #[test]
    fn limits_are_inclusive() {
        assert!(CounterKey::new("a".repeat(128), "b".repeat(64)).is_ok());
    }

    #[test]
    fn delta_defaults_to_one_and_rejects_zero() {
        assert_eq!(delta_or_default(None), Ok(1));
        assert_eq!(delta_or_default(Some(-7)), Ok(-7));
        assert_eq!(delta_or_default(Some(0)), Err(InvalidInput::ZeroDelta));
    }

    #[test]
    fn idempotency_keys() {
        assert_eq!(idempotency_key(""), Ok(None));
        assert_eq!(idempotency_key("3f2b-Aa_9+/="), Ok(Some("3f2b-Aa_9+/=")));
        assert!(matches!(idempotency_key("a b"), Err(InvalidInput::BadCharacter { field: "idempotency_key", .. })));
        assert!(matches!(idempotency_key(&"k".repeat(129)), Err(InvalidInput::TooLong { max: 128, .. })));
    }

    #[test]
    fn batch_length_bounds() {
        assert_eq!(batch_len("operations", 0), Err(InvalidInput::EmptyBatch { what: "operations" }));
        assert!(batch_len("operations", 1000).is_ok());
        let too_many = batch_len("operations", 1001).unwrap_err();
        assert!(too_many.is_too_large());
        assert!(!InvalidInput::ZeroDelta.in_batch("operations", 3).is_too_large());
        assert_eq!(InvalidInput::ZeroDelta.in_batch("operations", 3).to_string(), "operations[3]: delta must not be 0");
    }
}

//! The HTTP API's JSON request bodies, parsed and validated in one step:
//! bytes in, validated requests (or the reason they are refused) out. Pure
//! functions, shared by the gateway's handlers, the property tests and the
//! fuzz targets, so what is fuzzed is exactly what serves.
//!
//! Bodies reject fields they do not define: a typo such as `"dleta": 5`
//! would otherwise be applied as +1.

use serde::Deserialize;

use crate::validate::{self, CounterKey, InvalidInput};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncrementBody {
    resource_id: String,
    counter_type: String,
    /// Omitted (or null) means 1.
    #[serde(default)]
    delta: Option<i64>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchIncrementBody {
    operations: Vec<IncrementBody>,
    #[serde(default, rename = "async")]
    is_async: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CounterRefBody {
    resource_id: String,
    counter_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchGetBody {
    items: Vec<CounterRefBody>,
}

/// One validated increment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Increment {
    pub key: CounterKey,
    pub delta: i64,
    pub idempotency_key: Option<String>,
}

/// A validated batch increment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchIncrement {
    pub operations: Vec<Increment>,
    pub is_async: bool,
}

/// Why a body was refused (HTTP 400, or 413 for [`InvalidInput::is_too_large`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("invalid JSON body: {0}")]
    Json(String),
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
}

impl BodyError {
    pub fn is_too_large(&self) -> bool {
        matches!(self, BodyError::Invalid(err) if err.is_too_large())
    }
}

/// Longest JSON error message: serde_json quotes the offending value, which
/// may be most of a 1 MiB body.
const MAX_JSON_ERROR: usize = 200;

fn from_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, BodyError> {
    serde_json::from_slice(body).map_err(|err| BodyError::Json(bounded(err.to_string())))
}

/// `message` cut to [`MAX_JSON_ERROR`] bytes (on a character boundary).
fn bounded(mut message: String) -> String {
    if message.len() > MAX_JSON_ERROR {
        let cut = (0..=MAX_JSON_ERROR).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
        message.truncate(cut);
        message.push('…');
    }
    message
}

fn increment_of(body: IncrementBody) -> Result<Increment, InvalidInput> {
    let key = CounterKey::new(body.resource_id, body.counter_type)?;
    let delta = validate::delta_or_default(body.delta)?;
    let idempotency_key = validate::idempotency_key(body.idempotency_key.as_deref().unwrap_or_default())?;
    Ok(Increment { key, delta, idempotency_key: idempotency_key.map(str::to_string) })
}

/// `POST /api/v1/counter/increment`.
pub fn increment(body: &[u8]) -> Result<Increment, BodyError> {
    Ok(increment_of(from_json(body)?)?)
}

/// `POST /api/v1/counter/batch-increment`.
pub fn batch_increment(body: &[u8]) -> Result<BatchIncrement, BodyError> {
    let body: BatchIncrementBody = from_json(body)?;
    validate::batch_len("operations", body.operations.len())?;
    let operations = body
        .operations
        .into_iter()
        .enumerate()
        .map(|(i, op)| increment_of(op).map_err(|e| e.in_batch("operations", i)))
        .collect::<Result<_, _>>()?;
    Ok(BatchIncrement { operations, is_async: body.is_async })
}

/// `POST /api/v1/counter/batch`.
pub fn batch_get(body: &[u8]) -> Result<Vec<CounterKey>, BodyError> {
    let body: BatchGetBody = from_json(body)?;
    validate::batch_len("items", body.items.len())?;
    let keys = body
        .items
        .into_iter()
        .enumerate()
        .map(|(i, item)| CounterKey::new(item.resource_id, item.counter_type).map_err(|e| e.in_batch("items", i)))
        .collect::<Result<_, _>>()?;
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_increment_with_defaults() {
        let inc = increment(br#"{"resource_id":"p:1","counter_type":"likes"}"#).expect("valid");
        assert_eq!((inc.key.to_string(), inc.delta, inc.idempotency_key), ("p:1/likes".into(), 1, None));
        let keyed = increment(br#"{"resource_id":"p","counter_type":"likes","delta":-2,"idempotency_key":"k1"}"#);
        assert_eq!(keyed.map(|i| (i.delta, i.idempotency_key)), Ok((-2, Some("k1".into()))));
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = increment(br#"{"resource_id":"p","counter_type":"likes","dleta":5}"#).unwrap_err();
        assert!(matches!(&err, BodyError::Json(m) if m.contains("dleta")), "{err}");
        assert!(batch_increment(br#"{"operations":[],"asnyc":true}"#).is_err());
    }

    #[test]
    fn json_errors_do_not_repeat_long_input() {
        let long = "é".repeat(10_000);
        let err = increment(format!(r#"{{"resource_id":"p","counter_type":"likes","{long}":1}}"#).as_bytes());
        let message = err.unwrap_err().to_string();
        assert!(message.len() < 300, "{} bytes", message.len());
        let err = increment(format!(r#"{{"resource_id":"p","counter_type":"likes","delta":"{long}"}}"#).as_bytes());
        assert!(err.unwrap_err().to_string().len() < 300);
    }

    #[test]
    fn batches_say_which_entry_is_wrong() {
        let err = batch_increment(br#"{"operations":[{"resource_id":"p","counter_type":"likes","delta":0}]}"#);
        assert_eq!(err.unwrap_err().to_string(), "operations[0]: delta must not be 0");
        let items: String =
            (0..1001).map(|_| r#"{"resource_id":"p","counter_type":"c"}"#).collect::<Vec<_>>().join(",");
        assert!(batch_get(format!(r#"{{"items":[{items}]}}"#).as_bytes()).unwrap_err().is_too_large());
    }
}

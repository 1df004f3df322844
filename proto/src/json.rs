//! The HTTP API's JSON request bodies, parsed and validated in one step:
//! bytes in, validated requests (or the reason they are refused) out. Pure
//! functions, shared by the gateway's handlers, the property tests and the
//! fuzz targets, so what is fuzzed is exactly what serves.
//!
//! Bodies reject fields they do not define: a typo such as `"dleta": 5`
//! would otherwise be applied as +1.

use serde::de::{self, Deserialize, Deserializer, MapAccess};

use crate::fields::{self, Object, required, set_once};
use crate::validate::{self, CounterKey, InvalidInput};

// The bodies are decoded field by field (`crate::fields`): keys match the
// documented names as Go's encoding/json does (exact, else ignoring case),
// unknown keys are refused, a field given twice is refused.

#[derive(Debug)]
struct IncrementBody {
    resource_id: String,
    counter_type: String,
    /// Omitted (or null) means 1.
    delta: Option<i64>,
    idempotency_key: Option<String>,
}

#[derive(Debug)]
struct BatchIncrementBody {
    operations: Vec<IncrementBody>,
    is_async: bool,
}

#[derive(Debug)]
struct CounterRefBody {
    resource_id: String,
    counter_type: String,
}

#[derive(Debug)]
struct BatchGetBody {
    items: Vec<CounterRefBody>,
}

impl Object for IncrementBody {
    const FIELDS: &'static [&'static str] = &["resource_id", "counter_type", "delta", "idempotency_key"];
    const WHAT: &'static str = "an increment object";
    type Partial = (Option<String>, Option<String>, Option<Option<i64>>, Option<Option<String>>);

    fn read<'de, A: MapAccess<'de>>(p: &mut Self::Partial, index: usize, map: &mut A) -> Result<(), A::Error> {
        let name = Self::FIELDS[index];
        match index {
            0 => set_once(&mut p.0, map.next_value()?, name),
            1 => set_once(&mut p.1, map.next_value()?, name),
            2 => set_once(&mut p.2, map.next_value()?, name),
            _ => set_once(&mut p.3, map.next_value()?, name),
        }
    }

    fn finish<E: de::Error>(p: Self::Partial) -> Result<Self, E> {
        Ok(IncrementBody {
            resource_id: required(p.0, Self::FIELDS[0])?,
            counter_type: required(p.1, Self::FIELDS[1])?,
            delta: p.2.flatten(),
            idempotency_key: p.3.flatten(),
        })
    }
}

impl Object for BatchIncrementBody {
    const FIELDS: &'static [&'static str] = &["operations", "async"];
    const WHAT: &'static str = "a batch increment object";
    type Partial = (Option<Vec<IncrementBody>>, Option<bool>);

    fn read<'de, A: MapAccess<'de>>(p: &mut Self::Partial, index: usize, map: &mut A) -> Result<(), A::Error> {
        let name = Self::FIELDS[index];
        match index {
            0 => set_once(&mut p.0, map.next_value()?, name),
            _ => set_once(&mut p.1, map.next_value()?, name),
        }
    }

    fn finish<E: de::Error>(p: Self::Partial) -> Result<Self, E> {
        Ok(BatchIncrementBody { operations: required(p.0, Self::FIELDS[0])?, is_async: p.1.unwrap_or(false) })
    }
}

impl Object for CounterRefBody {
    const FIELDS: &'static [&'static str] = &["resource_id", "counter_type"];
    const WHAT: &'static str = "a counter object";
    type Partial = (Option<String>, Option<String>);

    fn read<'de, A: MapAccess<'de>>(p: &mut Self::Partial, index: usize, map: &mut A) -> Result<(), A::Error> {
        let name = Self::FIELDS[index];
        match index {
            0 => set_once(&mut p.0, map.next_value()?, name),
            _ => set_once(&mut p.1, map.next_value()?, name),
        }
    }

    fn finish<E: de::Error>(p: Self::Partial) -> Result<Self, E> {
        Ok(CounterRefBody {
            resource_id: required(p.0, Self::FIELDS[0])?,
            counter_type: required(p.1, Self::FIELDS[1])?,
        })
    }
}

impl Object for BatchGetBody {
    const FIELDS: &'static [&'static str] = &["items"];
    const WHAT: &'static str = "a batch get object";
    type Partial = Option<Vec<CounterRefBody>>;

    fn read<'de, A: MapAccess<'de>>(p: &mut Self::Partial, _: usize, map: &mut A) -> Result<(), A::Error> {
        set_once(p, map.next_value()?, Self::FIELDS[0])
    }

    fn finish<E: de::Error>(p: Self::Partial) -> Result<Self, E> {
        Ok(BatchGetBody { items: required(p, Self::FIELDS[0])? })
    }
}

// serde's entry points, through the one field-by-field decoder.
impl<'de> Deserialize<'de> for IncrementBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        fields::deserialize(deserializer)
    }
}

impl<'de> Deserialize<'de> for BatchIncrementBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        fields::deserialize(deserializer)
    }
}

impl<'de> Deserialize<'de> for CounterRefBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        fields::deserialize(deserializer)
    }
}

impl<'de> Deserialize<'de> for BatchGetBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        fields::deserialize(deserializer)
    }
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
    fn field_names_match_as_the_original_gos_decoder_matched_them() {
        // As the original's scripts send them: a capitalised `Items`, a trailing newline.
        let keys = batch_get(b"{\"Items\":[{\"Resource_ID\":\"p:1\",\"COUNTER_TYPE\":\"likes\"}]}\n").expect("valid");
        assert_eq!(keys[0].to_string(), "p:1/likes");
        let inc =
            increment(br#"{"RESOURCE_ID":"p","Counter_Type":"views","Delta":5,"Idempotency_Key":"k"}"#).expect("valid");
        assert_eq!((inc.key.to_string(), inc.delta, inc.idempotency_key.as_deref()), ("p/views".into(), 5, Some("k")));
        let batch = batch_increment(br#"{"Operations":[{"resource_id":"p","counter_type":"likes"}],"ASYNC":true}"#);
        assert!(batch.expect("valid").is_async);
        assert_eq!(increment(br#"{"resource_id":"p","counter_type":"likes","delta":null}"#).unwrap().delta, 1);
        // Still refused: a key naming no field, and one field given twice in two spellings.
        let unknown = increment(br#"{"resource_id":"p","counter_type":"likes","dleta":5}"#).unwrap_err();
        assert!(unknown.to_string().contains("unknown field `dleta`"), "{unknown}");
        let twice = increment(br#"{"resource_id":"p","Resource_Id":"q","counter_type":"likes"}"#).unwrap_err();
        assert!(twice.to_string().contains("duplicate field `resource_id`"), "{twice}");
        let missing = increment(br#"{"counter_type":"likes"}"#).unwrap_err();
        assert!(missing.to_string().contains("missing field `resource_id`"), "{missing}");
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

//! Request and response bodies of the HTTP API, wire-compatible with the
//! original project's clients and load scripts.
//!
//! Request bodies reject fields they do not define (`deny_unknown_fields`):
//! a typo such as `"dleta": 5` would otherwise be applied as +1.

use serde::{Deserialize, Serialize};

use super::error::ErrorBody;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncrementBody {
    pub resource_id: String,
    pub counter_type: String,
    /// Omitted (or null) means 1.
    #[serde(default)]
    pub delta: Option<i64>,
    /// Idempotency key of this operation (a single increment may send it
    /// in the `Idempotency-Key` header instead).
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchIncrementBody {
    pub operations: Vec<IncrementBody>,
    #[serde(default, rename = "async")]
    pub is_async: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterRefBody {
    pub resource_id: String,
    pub counter_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchGetBody {
    pub items: Vec<CounterRefBody>,
}

/// `{"status":"success","data":…}`
#[derive(Debug, Serialize)]
pub struct Success<T> {
    pub status: &'static str,
    pub data: T,
}

pub fn success<T>(data: T) -> Success<T> {
    Success { status: "success", data }
}

#[derive(Debug, Serialize)]
pub struct CounterValue {
    pub resource_id: String,
    pub counter_type: String,
    pub current_value: i64,
}

#[derive(Debug, Serialize)]
pub struct Incremented {
    pub resource_id: String,
    pub counter_type: String,
    pub delta: i64,
    pub current_value: i64,
    /// Present (true) when the idempotency key was seen before.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

/// One operation of a sync batch: applied (with its value) or not (with why).
#[derive(Debug, Serialize)]
pub struct OperationOutcome<'a> {
    pub resource_id: String,
    pub counter_type: String,
    pub delta: i64,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_value: Option<i64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody<'a>>,
}

#[derive(Debug, Serialize)]
pub struct BatchResults<'a> {
    pub results: Vec<OperationOutcome<'a>>,
    pub processed: usize,
    #[serde(rename = "async")]
    pub is_async: bool,
}

#[derive(Debug, Serialize)]
pub struct Accepted {
    pub accepted: usize,
    #[serde(rename = "async")]
    pub is_async: bool,
}

#[derive(Debug, Serialize)]
pub struct Values {
    pub results: Vec<CounterValue>,
}

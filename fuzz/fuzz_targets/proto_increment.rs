//! The `IncrementRequest` decoder and the validation the counter applies to it.
#![no_main]

use prost::Message;
use tally_proto::v1::IncrementRequest;
use tally_proto::{CounterKey, validate};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(request) = IncrementRequest::decode(data) {
        let _ = validate::delta_or_default(request.delta);
        let _ = validate::idempotency_key(&request.idempotency_key);
        let _ = CounterKey::new(request.resource_id, request.counter_type);
    }
});

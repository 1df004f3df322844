//! The `BatchIncrementRequest` decoder and the validation the counter applies to it.
#![no_main]

use prost::Message;
use tally_proto::v1::BatchIncrementRequest;
use tally_proto::{CounterKey, validate};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(request) = BatchIncrementRequest::decode(data) {
        let _ = validate::batch_len("operations", request.operations.len());
        for op in request.operations {
            let _ = validate::delta_or_default(op.delta);
            let _ = validate::idempotency_key(&op.idempotency_key);
            let _ = CounterKey::new(op.resource_id, op.counter_type);
        }
    }
});

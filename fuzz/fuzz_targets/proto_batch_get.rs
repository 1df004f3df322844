//! The `BatchGetRequest` decoder and the validation the counter applies to it.
#![no_main]

use prost::Message;
use tally_proto::v1::BatchGetRequest;
use tally_proto::{CounterKey, validate};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(request) = BatchGetRequest::decode(data) {
        let _ = validate::batch_len("items", request.items.len());
        for item in request.items {
            let _ = CounterKey::new(item.resource_id, item.counter_type);
        }
    }
});

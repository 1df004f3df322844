//! The `GetRequest` decoder and the validation the counter applies to it.
#![no_main]

use prost::Message;
use tally_proto::CounterKey;
use tally_proto::v1::GetRequest;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(request) = GetRequest::decode(data) {
        let _ = CounterKey::new(request.resource_id, request.counter_type);
    }
});

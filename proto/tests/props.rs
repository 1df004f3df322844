//! Property tests of everything that decodes client input: the HTTP JSON
//! bodies (`tally_proto::json`), the gRPC messages (prost decoders) and the
//! validation rules. Whatever the bytes, decoding answers Ok or a precise
//! error — never a panic — and what is accepted is exactly what the
//! documented rules accept. (The same decoders have `cargo fuzz` targets
//! under `fuzz/`.)

use proptest::prelude::*;
use prost::Message;
use tally_proto::json::{self, BodyError};
use tally_proto::v1::{BatchGetRequest, BatchIncrementRequest, GetRequest, IncrementOperation, IncrementRequest};
use tally_proto::{CounterKey, InvalidInput, limits, validate};

/// The documented rules, written independently of `validate`.
fn valid_resource_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= limits::MAX_RESOURCE_ID_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:@/-".contains(&b))
}

fn valid_counter_type(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= limits::MAX_COUNTER_TYPE_LEN
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Strings near the rules' edges: mostly allowed characters (with a few
/// that are not), lengths around the limits; or anything at all.
fn near_valid(allowed: &'static str, max: usize) -> BoxedStrategy<String> {
    let regex = format!("[{allowed}]{{0,{}}}", max + 2);
    prop_oneof![4 => proptest::string::string_regex(&regex).expect("regex"), 1 => any::<String>()].boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_a_json_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = json::increment(&bytes);
        let _ = json::batch_increment(&bytes);
        let _ = json::batch_get(&bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_proto_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(request) = IncrementRequest::decode(bytes.as_slice()) {
            let _ = CounterKey::new(request.resource_id, request.counter_type);
            let _ = validate::idempotency_key(&request.idempotency_key);
        }
        if let Ok(request) = BatchIncrementRequest::decode(bytes.as_slice()) {
            for op in request.operations {
                let _ = CounterKey::new(op.resource_id, op.counter_type);
            }
        }
        let _ = GetRequest::decode(bytes.as_slice());
        let _ = BatchGetRequest::decode(bytes.as_slice());
    }

    #[test]
    fn an_increment_body_is_accepted_exactly_when_the_rules_say(
        resource_id in near_valid("A-Za-z0-9_.:@/ -", limits::MAX_RESOURCE_ID_LEN),
        counter_type in near_valid("a-z0-9_A", limits::MAX_COUNTER_TYPE_LEN),
        delta in prop::option::of(prop_oneof![Just(0i64), any::<i64>()]),
        extra_field in prop::option::of(prop_oneof!["[a-z]{1,8}", "[a-z]{500,2000}"]),
    ) {
        let mut body = serde_json::json!({"resource_id": resource_id, "counter_type": counter_type});
        if let Some(delta) = delta {
            body["delta"] = delta.into();
        }
        let documented = ["resource_id", "counter_type", "delta", "idempotency_key"];
        let unknown_field = extra_field.as_ref().is_some_and(|f| !documented.contains(&f.as_str()));
        if let Some(field) = extra_field.as_ref().filter(|_| unknown_field) {
            body[field] = 1.into();
        }
        let expected =
            valid_resource_id(&resource_id) && valid_counter_type(&counter_type) && delta != Some(0) && !unknown_field;
        match json::increment(body.to_string().as_bytes()) {
            Ok(inc) => {
                prop_assert!(expected, "accepted {}", body);
                prop_assert_eq!(inc.key.resource_id(), resource_id.as_str());
                prop_assert_eq!(inc.key.counter_type(), counter_type.as_str());
                prop_assert_eq!(inc.delta, delta.unwrap_or(1));
            }
            Err(err) => {
                prop_assert!(!expected, "refused {}: {}", body, err);
                // A precise, bounded message: the input is never echoed back.
                prop_assert!(err.to_string().len() < 300, "{}", err);
                prop_assert!(!err.is_too_large());
            }
        }
    }

    #[test]
    fn proto_messages_round_trip(
        resource_id in ".{0,40}",
        counter_type in ".{0,20}",
        delta in prop::option::of(any::<i64>()),
        key in ".{0,20}",
        n in 0usize..20,
    ) {
        let request = IncrementRequest {
            resource_id: resource_id.clone(),
            counter_type: counter_type.clone(),
            delta,
            idempotency_key: key.clone(),
        };
        prop_assert_eq!(IncrementRequest::decode(request.encode_to_vec().as_slice()), Ok(request));
        let op = IncrementOperation { resource_id, counter_type, delta, idempotency_key: key };
        let batch = BatchIncrementRequest { operations: vec![op; n], r#async: n % 2 == 0, omit_names: false };
        prop_assert_eq!(BatchIncrementRequest::decode(batch.encode_to_vec().as_slice()), Ok(batch));
    }

    #[test]
    fn validation_errors_are_bounded_whatever_the_input(s in ".{0,3000}") {
        for result in [CounterKey::new(s.clone(), "likes").map(|_| ()), CounterKey::new("p", s.clone()).map(|_| ())] {
            if let Err(err) = result {
                prop_assert!(err.to_string().len() < 200, "{}", err);
            }
        }
        prop_assert_eq!(CounterKey::new(s.clone(), "likes").is_ok(), valid_resource_id(&s));
    }
}

proptest! {
    // Up to 1100 operations per case: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn batches_count_entries_and_name_the_bad_one(n in 0usize..1100, bad in prop::option::of(0usize..1100)) {
        let bad = bad.filter(|&b| b < n);
        let ops: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                let delta = if Some(i) == bad { 0 } else { 1 };
                serde_json::json!({"resource_id": "p", "counter_type": "c", "delta": delta})
            })
            .collect();
        let result = json::batch_increment(serde_json::json!({"operations": ops}).to_string().as_bytes());
        match (n, bad) {
            (0, _) => {
                let empty = BodyError::Invalid(InvalidInput::EmptyBatch { what: "operations" });
                prop_assert_eq!(result.unwrap_err(), empty);
            }
            (n, _) if n > limits::MAX_BATCH_LEN => prop_assert!(result.unwrap_err().is_too_large()),
            (_, Some(i)) => {
                let message = result.unwrap_err().to_string();
                prop_assert_eq!(message, format!("operations[{i}]: delta must not be 0"));
            }
            (n, None) => prop_assert_eq!(result.map(|b| b.operations.len()), Ok(n)),
        }
    }
}

//! The HTTP body decoder of `increment`: any bytes give Ok or a bounded error.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(err) = tally_proto::json::increment(data) {
        assert!(err.to_string().len() < 1024, "error messages never echo the input");
    }
});

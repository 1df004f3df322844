//! What a path under `/api/v1/counter/` addresses: one counter, or every
//! counter of a resource. Resource ids may contain `/`, so the split is
//! made on the path as sent, before percent-decoding: the last literal `/`
//! separates the counter type; with none, the whole path is a resource id
//! (a client lists a resource whose id contains `/` by sending it as `%2F`).

use percent_encoding::percent_decode_str;
use tally_proto::{CounterKey, validate};

use super::ApiError;

/// The target of a request under `/api/v1/counter/`.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// `/api/v1/counter/{resource_id}/{counter_type}`
    Counter(CounterKey),
    /// `/api/v1/counter/{resource_id}` (no literal `/` in it)
    Resource(String),
}

/// Parses `raw`, the request path after `/api/v1/counter/`, undecoded.
pub fn parse(raw: &str) -> Result<Target, ApiError> {
    match raw.rsplit_once('/') {
        Some((resource_id, counter_type)) => Ok(Target::Counter(CounterKey::new(
            decode(resource_id, "resource_id")?,
            decode(counter_type, "counter_type")?,
        )?)),
        None => {
            let resource_id = decode(raw, "resource_id")?;
            validate::resource_id(&resource_id)?;
            Ok(Target::Resource(resource_id))
        }
    }
}

/// The path of one counter only (routes that address no whole resource).
pub fn counter(raw: &str) -> Result<CounterKey, ApiError> {
    match parse(raw)? {
        Target::Counter(key) => Ok(key),
        Target::Resource(_) => Err(ApiError::not_found("expected /api/v1/counter/{resource_id}/{counter_type}")),
    }
}

fn decode(part: &str, field: &str) -> Result<String, ApiError> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| ApiError::bad_request(format!("{field} is not valid UTF-8 once percent-decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(resource_id: &str, counter_type: &str) -> Target {
        Target::Counter(CounterKey::new(resource_id, counter_type).expect("valid"))
    }

    #[test]
    fn the_last_literal_slash_separates_the_counter_type() {
        assert_eq!(parse("post:1/likes").expect("counter"), key("post:1", "likes"));
        assert_eq!(parse("a/b/c/likes").expect("counter"), key("a/b/c", "likes"));
        assert_eq!(parse("a%2Fb/likes").expect("counter"), key("a/b", "likes"));
    }

    #[test]
    fn no_literal_slash_is_a_whole_resource() {
        assert_eq!(parse("post:1").expect("resource"), Target::Resource("post:1".into()));
        assert_eq!(parse("a%2Fb").expect("resource"), Target::Resource("a/b".into()));
    }

    #[test]
    fn an_encoded_slash_never_moves_the_split() {
        // In the counter type it stays part of it (and is refused there).
        assert_eq!(parse("a/b%2Fc").map_err(|e| e.status.as_u16()), Err(400));
        assert_eq!(counter("post:1").map_err(|e| e.status.as_u16()), Err(404));
    }

    #[test]
    fn bad_parts_are_refused_with_400() {
        for raw in ["", "bad%20id", "post/Likes", "post/", "%FF/likes", "%FF"] {
            assert_eq!(parse(raw).map_err(|e| e.status.as_u16()), Err(400), "{raw}");
        }
    }
}

//! Every counter of one resource on Redis: the resource's hash read whole
//! (its fields are exactly its counter types, see the layout in
//! [`super`]), bounded so a resource with a huge number of counter types
//! cannot make one request move an unbounded answer.

use redis::aio::ConnectionLike;
use tally_proto::validate::{self, limits::MAX_RESOURCE_COUNTERS};

use super::{Listing, StoreError, hash_key};

/// `HLEN` first, then `HGETALL` only when within the bound, in one atomic
/// step. A refusal starts with `!`, which no counter type can.
const LIST: &str = r#"
-- KEYS[1] hash; ARGV[1] most fields
local n = redis.call('HLEN', KEYS[1])
if n > tonumber(ARGV[1]) then return {'!', tostring(n)} end
return redis.call('HGETALL', KEYS[1])
"#;

pub(super) async fn list<C: ConnectionLike>(conn: &mut C, resource_id: &str) -> Result<Listing, StoreError> {
    let reply: Vec<String> = redis::cmd("EVAL")
        .arg(LIST)
        .arg(1)
        .arg(hash_key(resource_id))
        .arg(MAX_RESOURCE_COUNTERS)
        .query_async(conn)
        .await
        .map_err(|e| StoreError::from_redis(&e))?;
    decode(reply)
}

/// The script's flat `[field, value, …]` as a sorted listing. Fields that
/// are not valid counter types were not written through tally and are left
/// out; a counter holding no integer fails the read, as a GET of it would.
fn decode(reply: Vec<String>) -> Result<Listing, StoreError> {
    if let [bang, count] = reply.as_slice()
        && bang == "!"
    {
        return Ok(Listing::TooMany(count.parse().unwrap_or(usize::MAX)));
    }
    let mut counters = Vec::with_capacity(reply.len() / 2);
    let mut fields = reply.into_iter();
    while let (Some(field), Some(value)) = (fields.next(), fields.next()) {
        if validate::counter_type(&field).is_err() {
            continue;
        }
        let value = value
            .parse::<i64>()
            .map_err(|_| StoreError::Rejected(format!("counter {field} holds {value:?}, not an integer")))?;
        counters.push((field, value));
    }
    counters.sort_unstable();
    Ok(Listing::Counters(counters))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_hash_decodes_to_sorted_counters() {
        let listing = decode(strings(&["views", "10", "likes", "-2", "Not-A-Type", "1"]));
        assert_eq!(listing, Ok(Listing::Counters(vec![("likes".into(), -2), ("views".into(), 10)])));
        assert_eq!(decode(Vec::new()), Ok(Listing::Counters(Vec::new())));
    }

    #[test]
    fn a_refusal_and_a_bad_value_are_told_apart_from_counters() {
        assert_eq!(decode(strings(&["!", "1001"])), Ok(Listing::TooMany(1001)));
        assert!(matches!(decode(strings(&["likes", "x"])), Err(StoreError::Rejected(_))));
    }
}

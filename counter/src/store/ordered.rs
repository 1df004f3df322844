//! The ordered path on Redis: one command per operation, in order, for
//! operations that cannot be summed — increments carrying idempotency keys
//! and resets. Each keyed operation's check and apply is one Lua script, so
//! concurrent duplicates from any number of gateways apply once.

use std::time::Duration;

use redis::{Pipeline, RedisResult, Value};

use super::error::is_overflow;
use super::{Change, KeyedCmd, Outcome, StoreError, hash_key, idempotency_marker};

/// Check-and-apply of one idempotent increment, atomic in Redis. The value
/// is read back with HGET (a bulk string) because Lua numbers are doubles and
/// would round counters beyond 2^53. A replay rewrites its marker unchanged:
/// a write, so a `WAIT` after it on any connection covers the first
/// application too ([`super::replication`]).
const INCR_ONCE: &str = r#"
-- KEYS[1] hash, KEYS[2] idempotency marker; ARGV field, delta, retention seconds
local first = redis.call('GET', KEYS[2])
if first then
  redis.call('SET', KEYS[2], first, 'KEEPTTL')
  return {1, first}
end
local r = redis.pcall('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
if type(r) == 'table' and r.err then return {2, r.err} end
local value = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], value, 'EX', ARGV[3])
return {0, value}
"#;

/// Reset of one counter, atomic in Redis: the value before (a bulk string,
/// as above), then the field deleted (a counter never written reads 0, and
/// the hash holds no zeros); a field holding no integer is refused and
/// left alone. With a marker key (`KEYS[2]`), a reset already
/// done under it answers with the first reset's value and changes nothing
/// but its marker, rewritten unchanged (as [`INCR_ONCE`]'s).
const RESET: &str = r#"
-- KEYS[1] hash, KEYS[2] idempotency marker (optional); ARGV field, retention seconds
if KEYS[2] then
  local first = redis.call('GET', KEYS[2])
  if first then
    redis.call('SET', KEYS[2], first, 'KEEPTTL')
    return {1, first}
  end
end
local before = redis.call('HGET', KEYS[1], ARGV[1]) or '0'
if not string.match(before, '^-?%d+$') then return {2, 'ERR hash value is not an integer'} end
redis.call('HDEL', KEYS[1], ARGV[1])
if KEYS[2] then redis.call('SET', KEYS[2], before, 'EX', ARGV[2]) end
return {0, before}
"#;

/// One command per operation, in order: a plain `HINCRBY` for an increment
/// without a key, a script ([`INCR_ONCE`], [`RESET`]) for the rest.
pub(super) fn each_pipeline<'a, 'k: 'a>(cmds: impl Iterator<Item = &'a KeyedCmd<'k>>, retention: Duration) -> Pipeline {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let seconds = retention.as_secs().max(1);
    for &(key, change, idempotency_key) in cmds {
        let hash = hash_key(key.resource_id());
        let marker = idempotency_key.map(|k| idempotency_marker(key, change, k));
        match (change, marker) {
            (Change::Add(delta), None) => pipe.cmd("HINCRBY").arg(hash).arg(key.counter_type()).arg(delta),
            (Change::Add(delta), Some(marker)) => pipe
                .cmd("EVAL")
                .arg(INCR_ONCE)
                .arg(2)
                .arg(hash)
                .arg(marker)
                .arg(key.counter_type())
                .arg(delta)
                .arg(seconds),
            (Change::Reset, None) => pipe.cmd("EVAL").arg(RESET).arg(1).arg(hash).arg(key.counter_type()).arg(seconds),
            (Change::Reset, Some(marker)) => {
                pipe.cmd("EVAL").arg(RESET).arg(2).arg(hash).arg(marker).arg(key.counter_type()).arg(seconds)
            }
        };
    }
    pipe
}

/// Decodes the replies of [`each_pipeline`]: a script's `{status, value or
/// error}`, or a plain `HINCRBY` result.
pub(super) fn each_outcomes<'a, 'k: 'a>(
    cmds: impl Iterator<Item = &'a KeyedCmd<'k>>,
    replies: Vec<RedisResult<Value>>,
    expected: usize,
) -> Vec<Outcome> {
    if replies.len() != expected {
        let err = StoreError::Unknown(format!("expected {expected} replies, got {}", replies.len()));
        return vec![Outcome::Failed(err); expected];
    }
    cmds.zip(replies)
        .map(|(&(_, change, idempotency_key), reply)| {
            let reply = match reply {
                Ok(reply) => reply,
                Err(err) if is_overflow(&err) => return Outcome::Overflow,
                Err(err) => return Outcome::Failed(StoreError::from_redis(&err)),
            };
            if matches!(change, Change::Add(_)) && idempotency_key.is_none() {
                return match redis::from_redis_value::<i64>(reply) {
                    Ok(value) => Outcome::Applied(value),
                    Err(err) => Outcome::Failed(StoreError::Unknown(err.to_string())),
                };
            }
            match redis::from_redis_value::<(i64, String)>(reply) {
                Ok((status, text)) => script_outcome(status, text),
                Err(err) => Outcome::Failed(StoreError::Unknown(err.to_string())),
            }
        })
        .collect()
}

/// A script's `{status, text}`: 0 applied, 1 replayed (text is the value),
/// 2 refused (text is Redis's error, e.g. an overflow).
fn script_outcome(status: i64, text: String) -> Outcome {
    match (status, text.parse::<i64>()) {
        (0, Ok(value)) => Outcome::Applied(value),
        (1, Ok(value)) => Outcome::Replayed(value),
        (2, _) if text.contains("overflow") => Outcome::Overflow,
        // `min-replicas-to-write`: refused before it ran.
        (2, _) if text.starts_with("NOREPLICAS") => Outcome::Failed(StoreError::NotApplied(text)),
        // e.g. a reset of a field that holds no integer: reported, not applied.
        _ => Outcome::Failed(StoreError::Rejected(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_replies_decode_to_outcomes() {
        assert_eq!(script_outcome(0, "12".into()), Outcome::Applied(12));
        assert_eq!(script_outcome(1, "-3".into()), Outcome::Replayed(-3));
        assert_eq!(script_outcome(2, "ERR increment or decrement would overflow".into()), Outcome::Overflow);
        let refused = script_outcome(2, "NOREPLICAS Not enough good replicas to write.".into());
        assert!(matches!(refused, Outcome::Failed(StoreError::NotApplied(_))), "{refused:?}");
        assert!(matches!(script_outcome(0, "abc".into()), Outcome::Failed(StoreError::Rejected(_))));
    }
}

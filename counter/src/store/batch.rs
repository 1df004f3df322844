//! Idempotent batch application for the write-behind buffer.
//!
//! A flush of buffered increments must survive an ambiguous failure (the
//! connection broke after sending: applied or not?) without losing or
//! doubling anything. So each flush gets an id, and is applied in chunks by a
//! Lua script that first claims a marker key `tally:batch:{<resource>}:<id>:<n>`
//! with `SET NX EX`: a resend of the same chunk finds the marker and applies
//! nothing, returning the first attempt's per-command failures (stored in the
//! marker). The flusher can therefore resend a failed flush until it succeeds.
//! A resend that finds the marker rewrites it unchanged, a write, so that a
//! `WAIT` after it covers the first attempt (see [`super::ReplicaWait`]).
//!
//! The marker carries the hash tag of the chunk's first resource, and in a
//! cluster a chunk never spans slots, so each script touches one slot.

use std::time::Duration;

use redis::{RedisResult, Value};

use super::{Cmd, Outcome, StoreError, hash_key};

/// Commands per script call: bounds how long one call holds Redis.
pub const CHUNK: usize = 512;

/// The default life of a batch marker (`TALLY_BATCH_MARKER_TTL_S`). A marker
/// is only needed while a flush may still be resent, and the flusher resends
/// for at most half of it (see [`resend_window`]); every flush leaves one
/// small key per chunk, so a long TTL costs Redis memory for nothing.
pub const DEFAULT_MARKER_TTL: Duration = Duration::from_secs(600);

/// How long after its first ambiguous failure a batch may still be resent
/// safely: half the marker's life, leaving the other half as margin for a
/// resend that reaches Redis late (a marker set by an attempt that was sent
/// at or after the first ambiguous one lives at least until then + TTL).
pub fn resend_window(marker_ttl: Duration) -> Duration {
    marker_ttl / 2
}

const APPLY_ONCE: &str = r#"
-- KEYS[1] marker; KEYS[2..] hashes; ARGV[1] ttl; then (field, delta) per hash.
if not redis.call('SET', KEYS[1], '', 'NX', 'EX', ARGV[1]) then
  local failed = redis.call('GET', KEYS[1]) or ''
  redis.call('SET', KEYS[1], failed, 'KEEPTTL')
  return {0, failed}
end
local failed = {}
for i = 2, #KEYS do
  local r = redis.pcall('HINCRBY', KEYS[i], ARGV[2 * i - 2], ARGV[2 * i - 1])
  if type(r) == 'table' and r.err then
    local kind = string.find(r.err, 'overflow', 1, true) and 'o' or 'e'
    failed[#failed + 1] = kind .. tostring(i - 2)
  end
end
local list = table.concat(failed, ',')
if #failed > 0 then redis.call('SET', KEYS[1], list, 'KEEPTTL') end
return {1, list}
"#;

/// The script call that applies one chunk (all commands on one cluster
/// slot; at least one) at most once for `batch_id`. `EVAL` with the
/// script's text, so a node that never saw it needs no `SCRIPT LOAD` and
/// the call can go in a pipeline (Redis keeps the compiled script by its
/// digest either way).
pub fn chunk_command(batch_id: &str, chunk_no: usize, cmds: &[&Cmd<'_>], marker_ttl: Duration) -> redis::Cmd {
    let first = cmds.first().map_or("", |(key, _)| key.resource_id());
    let mut call = redis::cmd("EVAL");
    call.arg(APPLY_ONCE).arg(1 + cmds.len()).arg(format!("tally:batch:{{{first}}}:{batch_id}:{chunk_no}"));
    for (key, _) in cmds {
        call.arg(hash_key(key.resource_id()));
    }
    call.arg(marker_ttl.as_secs().max(1));
    for (key, delta) in cmds.iter().copied() {
        call.arg(key.counter_type()).arg(*delta);
    }
    call
}

/// The outcomes of chunk `chunk_no` (`len` commands) from its script's
/// reply, or the error of the call as a whole (a Cluster redirect among
/// them: the script did not run).
pub fn chunk_outcomes(
    reply: RedisResult<Value>,
    len: usize,
    batch_id: &str,
    chunk_no: usize,
) -> RedisResult<Vec<Outcome>> {
    let (fresh, failures): (i64, String) = redis::from_redis_value(reply?)?;
    if fresh == 0 {
        tracing::info!(batch_id, chunk_no, "batch chunk was already applied by an earlier attempt");
    }
    Ok(outcomes(len, &failures))
}

/// Decodes the script's failure list (`o3,e7`: command 3 overflowed, 7 was refused).
fn outcomes(len: usize, failures: &str) -> Vec<Outcome> {
    let mut result = vec![Outcome::Applied(0); len];
    for entry in failures.split(',').filter(|e| !e.is_empty()) {
        let (kind, index) = entry.split_at(1);
        if let Some(slot) = index.parse::<usize>().ok().and_then(|i| result.get_mut(i)) {
            *slot = if kind == "o" {
                Outcome::Overflow
            } else {
                Outcome::Failed(StoreError::Rejected("hash field is not an integer".into()))
            };
        }
    }
    result
}

/// A fresh, unique batch id.
pub fn new_batch_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Splits command indices into chunks of at most [`CHUNK`]; deterministic,
/// so a resend of the same commands maps to the same markers.
pub fn chunks(indices: &[usize]) -> impl Iterator<Item = &[usize]> {
    indices.chunks(CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_failure_lists() {
        assert_eq!(outcomes(2, ""), vec![Outcome::Applied(0), Outcome::Applied(0)]);
        let decoded = outcomes(4, "o1,e3,o9");
        assert_eq!(decoded[0], Outcome::Applied(0));
        assert_eq!(decoded[1], Outcome::Overflow);
        assert!(matches!(decoded[3], Outcome::Failed(StoreError::Rejected(_))));
    }

    #[test]
    fn chunking_is_deterministic() {
        let indices: Vec<usize> = (0..1100).collect();
        let sizes: Vec<usize> = chunks(&indices).map(<[usize]>::len).collect();
        assert_eq!(sizes, vec![512, 512, 76]);
    }

    #[test]
    fn resends_stop_well_inside_the_marker_life() {
        assert_eq!(resend_window(DEFAULT_MARKER_TTL), Duration::from_secs(300));
        assert!(resend_window(Duration::from_secs(61)) < Duration::from_secs(61));
    }
}

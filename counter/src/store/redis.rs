//! Standalone Redis over one multiplexed connection (redis-rs
//! `ConnectionManager`): every concurrent flush is pipelined on it, and it
//! reconnects by itself after Redis comes back.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Pipeline, RedisResult, Value};
use tally_proto::CounterKey;

use futures_util::future::join_all;

use super::batch::{self, BatchOutcome};
use super::error::is_overflow;
use super::{Cmd, IdempotentOutcome, IncrOutcome, KeyedCmd, StoreError, StoreOptions, hash_key, idempotency_marker};

pub struct RedisStore {
    conn: ConnectionManager,
}

impl RedisStore {
    /// `rediss://` URLs speak TLS (rustls): the server's certificate must
    /// chain to the system's roots or to `options.tls.ca`, and a client
    /// certificate is presented when one is given.
    pub fn new(url: &str, options: &StoreOptions) -> Result<RedisStore, StoreError> {
        let timeouts = options.timeouts;
        let client = if !options.tls.is_empty() {
            redis::Client::build_with_tls(url, options.tls.certificates())
        } else {
            redis::Client::open(url)
        }
        .map_err(|e| StoreError::config(format!("{url}: {e}")))?;
        // One reconnect attempt per failed request keeps "Redis is down" fast
        // (connection refused → UNAVAILABLE) instead of queueing callers
        // behind a long backoff; the next request tries again.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeouts.connect))
            .set_response_timeout(Some(timeouts.response))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::config(format!("{url}: {e}")))?;
        Ok(RedisStore { conn })
    }

    pub async fn incr(&self, cmds: &[Cmd<'_>]) -> Vec<IncrOutcome> {
        let mut conn = self.conn.clone();
        let pipe = incr_pipeline(cmds.iter());
        match pipe.query_async::<Vec<RedisResult<i64>>>(&mut conn).await {
            Ok(replies) => outcomes(replies, cmds.len()),
            Err(err) => vec![IncrOutcome::Failed(StoreError::from_redis(&err)); cmds.len()],
        }
    }

    pub async fn incr_batch_once(&self, batch_id: &str, cmds: &[Cmd<'_>], marker_ttl: Duration) -> Vec<BatchOutcome> {
        let indices: Vec<usize> = (0..cmds.len()).collect();
        let runs = join_all(batch::chunks(&indices).enumerate().map(|(chunk_no, chunk)| {
            let mut conn = self.conn.clone();
            let chunk_cmds: Vec<&Cmd<'_>> = chunk.iter().map(|&i| &cmds[i]).collect();
            async move { batch::apply_chunk(&mut conn, batch_id, chunk_no, &chunk_cmds, marker_ttl).await }
        }))
        .await;
        runs.into_iter().flatten().collect()
    }

    pub async fn incr_each(&self, cmds: &[KeyedCmd<'_>], retention: Duration) -> Vec<IdempotentOutcome> {
        let mut conn = self.conn.clone();
        let pipe = each_pipeline(cmds.iter(), retention);
        match pipe.query_async::<Vec<RedisResult<Value>>>(&mut conn).await {
            Ok(replies) => each_outcomes(cmds.iter(), replies, cmds.len()),
            Err(err) => vec![IdempotentOutcome::Failed(StoreError::from_redis(&err)); cmds.len()],
        }
    }

    pub async fn get(&self, keys: &[CounterKey]) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.conn.clone();
        let replies: Vec<Option<i64>> =
            get_pipeline(keys.iter()).query_async(&mut conn).await.map_err(|e| StoreError::from_redis(&e))?;
        Ok(replies.into_iter().map(|v| v.unwrap_or(0)).collect())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await.map_err(|e| StoreError::from_redis(&e))
    }
}

/// One `HINCRBY` per command, in order, with per-command errors kept (so one
/// overflowing counter does not fail its neighbours).
pub(super) fn incr_pipeline<'a, 'k: 'a>(cmds: impl Iterator<Item = &'a Cmd<'k>>) -> Pipeline {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (key, delta) in cmds {
        pipe.cmd("HINCRBY").arg(hash_key(key.resource_id())).arg(key.counter_type()).arg(*delta);
    }
    pipe
}

/// Check-and-apply of one idempotent increment, atomic in Redis. The value
/// is read back with HGET (a bulk string) because Lua numbers are doubles and
/// would round counters beyond 2^53.
const INCR_ONCE: &str = r#"
-- KEYS[1] hash, KEYS[2] idempotency marker; ARGV field, delta, retention seconds
local first = redis.call('GET', KEYS[2])
if first then return {1, first} end
local r = redis.pcall('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
if type(r) == 'table' and r.err then return {2, r.err} end
local value = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], value, 'EX', ARGV[3])
return {0, value}
"#;

/// One command per increment, in order: `EVAL` of [`INCR_ONCE`] when it has
/// an idempotency key, a plain `HINCRBY` when not.
pub(super) fn each_pipeline<'a, 'k: 'a>(cmds: impl Iterator<Item = &'a KeyedCmd<'k>>, retention: Duration) -> Pipeline {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let seconds = retention.as_secs().max(1);
    for &(key, delta, idempotency_key) in cmds {
        match idempotency_key {
            Some(idempotency_key) => pipe
                .cmd("EVAL")
                .arg(INCR_ONCE)
                .arg(2)
                .arg(hash_key(key.resource_id()))
                .arg(idempotency_marker(key, idempotency_key))
                .arg(key.counter_type())
                .arg(delta)
                .arg(seconds),
            None => pipe.cmd("HINCRBY").arg(hash_key(key.resource_id())).arg(key.counter_type()).arg(delta),
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
) -> Vec<IdempotentOutcome> {
    if replies.len() != expected {
        let err = StoreError::Unknown(format!("expected {expected} replies, got {}", replies.len()));
        return vec![IdempotentOutcome::Failed(err); expected];
    }
    cmds.zip(replies)
        .map(|(&(_, _, idempotency_key), reply)| {
            let reply = match reply {
                Ok(reply) => reply,
                Err(err) if is_overflow(&err) => return IdempotentOutcome::Overflow,
                Err(err) => return IdempotentOutcome::Failed(StoreError::from_redis(&err)),
            };
            if idempotency_key.is_none() {
                return match redis::from_redis_value::<i64>(reply) {
                    Ok(value) => IdempotentOutcome::Applied(value),
                    Err(err) => IdempotentOutcome::Failed(StoreError::Unknown(err.to_string())),
                };
            }
            match redis::from_redis_value::<(i64, String)>(reply) {
                Ok((status, text)) => match (status, text.parse::<i64>()) {
                    (0, Ok(value)) => IdempotentOutcome::Applied(value),
                    (1, Ok(value)) => IdempotentOutcome::Replayed(value),
                    (2, _) if text.contains("overflow") => IdempotentOutcome::Overflow,
                    _ => IdempotentOutcome::Failed(StoreError::Rejected(text)),
                },
                Err(err) => IdempotentOutcome::Failed(StoreError::Unknown(err.to_string())),
            }
        })
        .collect()
}

pub(super) fn get_pipeline<'a>(keys: impl Iterator<Item = &'a CounterKey>) -> Pipeline {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("HGET").arg(hash_key(key.resource_id())).arg(key.counter_type());
    }
    pipe
}

/// Turns pipeline replies into outcomes. A reply count that does not match is
/// a protocol surprise: report every command as unknown rather than guess.
pub(super) fn outcomes(replies: Vec<RedisResult<i64>>, expected: usize) -> Vec<IncrOutcome> {
    if replies.len() != expected {
        let err = StoreError::Unknown(format!("expected {expected} replies, got {}", replies.len()));
        return vec![IncrOutcome::Failed(err); expected];
    }
    replies
        .into_iter()
        .map(|reply| match reply {
            Ok(value) => IncrOutcome::Applied(value),
            Err(err) if is_overflow(&err) => IncrOutcome::Overflow,
            Err(err) => IncrOutcome::Failed(StoreError::from_redis(&err)),
        })
        .collect()
}

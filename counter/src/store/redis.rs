//! Standalone Redis over one multiplexed connection (redis-rs
//! `ConnectionManager`): every concurrent flush is pipelined on it, and it
//! reconnects by itself after Redis comes back.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionInfo, IntoConnectionInfo, Pipeline, RedisResult, Value};
use tally_proto::CounterKey;

use super::batch;
use super::confirmed::{self, Confirmed};
use super::error::is_overflow;
use super::ordered::{each_outcomes, each_pipeline};
use super::replication::{self, ReplicaWait, Waited};
use super::{Cmd, KeyedCmd, Listing, Outcome, StoreError, StoreOptions, hash_key};

pub struct RedisStore {
    conn: ConnectionManager,
    /// Replicas every write waits for ([`super::replication`]).
    wait: Option<ReplicaWait>,
}

impl RedisStore {
    /// `rediss://` URLs speak TLS (rustls): the server's certificate must
    /// chain to the system's roots or to `options.tls.ca`, and a client
    /// certificate is presented when one is given.
    pub fn new(url: &str, options: &StoreOptions) -> Result<RedisStore, StoreError> {
        let timeouts = options.timeouts;
        let info = connection_info(url)?;
        let client = if !options.tls.is_empty() {
            redis::Client::build_with_tls(info, options.tls.certificates())
        } else {
            redis::Client::open(info)
        }
        .map_err(config_error(url))?;
        // One reconnect attempt per failed request keeps "Redis is down" fast
        // (connection refused → UNAVAILABLE) instead of queueing callers
        // behind a long backoff; the next request tries again.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeouts.connect))
            .set_response_timeout(Some(timeouts.response))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(config_error(url))?;
        Ok(RedisStore { conn, wait: options.wait })
    }

    pub async fn incr(&self, cmds: &[Cmd<'_>]) -> Vec<Outcome> {
        match self.incr_replies(cmds, false).await {
            Ok(replies) => replies.outcomes(cmds.len()),
            Err(err) => Outcome::all_failed(&err, cmds.len()),
        }
    }

    /// Each `HINCRBY`'s reply as Redis gave it ([`incr_pipeline`]; with
    /// `asking`, each after an `ASKING`, whose replies are left out), and
    /// when waiting for replicas, `WAIT`'s, sent last in the same pipeline
    /// (one round trip to the master fewer than a `WAIT` of its own); an
    /// error of the pipeline as a whole (a lost connection) is the `Err`.
    pub(super) async fn incr_replies(&self, cmds: &[Cmd<'_>], asking: bool) -> RedisResult<IncrReplies> {
        let mut conn = self.conn.clone();
        let mut pipe = incr_pipeline(cmds.iter(), asking);
        if let Some(wait) = self.wait {
            pipe.add_command(wait.command());
        }
        let mut replies: Vec<RedisResult<i64>> = if asking {
            // `ASKING`'s `OK`s are read as values, then left out below.
            let values = pipe.query_async::<Vec<RedisResult<Value>>>(&mut conn).await?;
            values.into_iter().map(|reply| reply.and_then(integer)).collect()
        } else {
            pipe.query_async(&mut conn).await?
        };
        let wait = self.wait.and_then(|wait| Some((wait, replies.pop()?)));
        let each = if asking { replies.into_iter().skip(1).step_by(2).collect() } else { replies };
        Ok(IncrReplies { each, wait })
    }

    /// Runs `pipe` as it is (a cluster store sends a pipeline a `MOVED`
    /// refused elsewhere once more here).
    pub(super) async fn query<T: redis::FromRedisValue>(&self, pipe: &Pipeline) -> RedisResult<T> {
        let mut conn = self.conn.clone();
        pipe.query_async(&mut conn).await
    }

    /// Runs `pipe` (writes: one command, or a transaction; after `ASKING`
    /// when `asking`) and, with replicas to wait for, `WAIT` in the same
    /// write on this connection ([`super::confirmed`]).
    pub(super) async fn query_confirmed(&self, pipe: &Pipeline, asking: bool) -> RedisResult<Confirmed> {
        let mut conn = self.conn.clone();
        // A transaction is spelled out even without a wait: redis-rs reads a
        // refused `EXEC` (a redirect after the commands were queued) as a
        // malformed reply, where the spelled-out form keeps the refusal.
        if !asking && self.wait.is_none() && !pipe.is_transaction() {
            return Ok(Confirmed { each: pipe.query_async(&mut conn).await?, wait: None });
        }
        let replies = confirmed::spelled_out(pipe, asking, self.wait.as_ref()).query_async(&mut conn).await?;
        confirmed::split(pipe, asking, self.wait, replies)
    }

    /// Every chunk's script in one pipeline, with the `WAIT` for them all.
    pub async fn incr_batch_once(&self, batch_id: &str, cmds: &[Cmd<'_>], marker_ttl: Duration) -> Vec<Outcome> {
        let indices: Vec<usize> = (0..cmds.len()).collect();
        let chunks: Vec<&[usize]> = batch::chunks(&indices).collect();
        let mut pipe = Pipeline::with_capacity(chunks.len());
        pipe.ignore_errors();
        for (chunk_no, chunk) in chunks.iter().enumerate() {
            let chunk_cmds: Vec<&Cmd<'_>> = chunk.iter().map(|&i| &cmds[i]).collect();
            pipe.add_command(batch::chunk_command(batch_id, chunk_no, &chunk_cmds, marker_ttl));
        }
        let replies = match self.query_confirmed(&pipe, false).await {
            Ok(replies) if replies.each.len() == chunks.len() => replies,
            Ok(replies) => {
                let err = StoreError::Unknown(format!("{} replies to {} chunks", replies.each.len(), chunks.len()));
                return vec![Outcome::Failed(err); cmds.len()];
            }
            Err(err) => return Outcome::all_failed(&err, cmds.len()),
        };
        let mut outcomes = Vec::with_capacity(cmds.len());
        for ((chunk_no, chunk), reply) in chunks.iter().enumerate().zip(replies.each) {
            let applied = batch::chunk_outcomes(reply, chunk.len(), batch_id, chunk_no);
            outcomes.extend(applied.unwrap_or_else(|err| Outcome::all_failed(&err, chunk.len())));
        }
        replication::settle(replies.wait, &mut outcomes);
        outcomes
    }

    /// With replicas to wait for, `WAIT` goes last in the same pipeline, so
    /// it runs on the connection that wrote even if that connection is
    /// replaced right after.
    pub async fn apply_ordered(&self, cmds: &[KeyedCmd<'_>], retention: Duration) -> Vec<Outcome> {
        match self.query_confirmed(&each_pipeline(cmds.iter(), retention), false).await {
            Ok(replies) => {
                let mut outcomes = each_outcomes(cmds.iter(), replies.each, cmds.len());
                replication::settle(replies.wait, &mut outcomes);
                outcomes
            }
            Err(err) => Outcome::all_failed(&err, cmds.len()),
        }
    }

    pub async fn get_resource(&self, resource_id: &str) -> Result<Listing, StoreError> {
        let mut conn = self.conn.clone();
        super::resource::list(&mut conn, resource_id).await
    }

    pub async fn get(&self, keys: &[CounterKey]) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.conn.clone();
        let replies: Vec<Option<i64>> =
            get_pipeline(keys.iter(), false).query_async(&mut conn).await.map_err(|e| StoreError::from_redis(&e))?;
        Ok(replies.into_iter().map(|v| v.unwrap_or(0)).collect())
    }

    /// Reads `keys` here, each after an `ASKING` with `asking` (a cluster's
    /// `ASK` redirect named this node); a counter never written reads 0.
    pub(super) async fn get_here(&self, keys: &[&CounterKey], asking: bool) -> RedisResult<Vec<i64>> {
        let mut conn = self.conn.clone();
        let replies: Vec<Value> = get_pipeline(keys.iter().copied(), asking).query_async(&mut conn).await?;
        let values = replies.into_iter().skip(usize::from(asking)).step_by(1 + usize::from(asking));
        values.map(|value| Ok(redis::from_redis_value::<Option<i64>>(value)?.unwrap_or(0))).collect()
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await.map_err(|e| StoreError::from_redis(&e))
    }
}

/// Where and how to connect: the URL's address and credentials, with the
/// store's socket settings ([`super::tcp_settings`]).
fn connection_info(url: &str) -> Result<ConnectionInfo, StoreError> {
    let info = url.into_connection_info().map_err(config_error(url))?;
    Ok(info.set_tcp_settings(super::tcp_settings()))
}

/// A configuration error about `url` (its password masked by [`StoreError::config`]).
fn config_error(url: &str) -> impl Fn(redis::RedisError) -> StoreError + '_ {
    move |e| StoreError::config(format!("{url}: {e}"))
}

/// An integer reply (`HINCRBY`'s, `WAIT`'s) out of a pipeline read as values.
pub(super) fn integer(value: Value) -> RedisResult<i64> {
    Ok(redis::from_redis_value(value)?)
}

/// The replies of one increment pipeline ([`RedisStore::incr_replies`]).
pub(super) struct IncrReplies {
    /// Each `HINCRBY`'s, in order.
    pub each: Vec<RedisResult<i64>>,
    /// The replicas waited for and `WAIT`'s reply.
    pub wait: Waited,
}

impl IncrReplies {
    /// The outcome of each of `expected` commands, those applied but not
    /// confirmed by the replicas waited for marked unknown.
    pub fn outcomes(self, expected: usize) -> Vec<Outcome> {
        let mut result = outcomes(self.each, expected);
        replication::settle(self.wait, &mut result);
        result
    }
}

/// One `HINCRBY` per command, in order, with per-command errors kept (so one
/// overflowing counter does not fail its neighbours). With `asking`, each
/// follows an `ASKING`: sent to the node a cluster's `ASK` redirect named,
/// for a slot it is importing.
pub(super) fn incr_pipeline<'a, 'k: 'a>(cmds: impl ExactSizeIterator<Item = &'a Cmd<'k>>, asking: bool) -> Pipeline {
    let mut pipe = Pipeline::with_capacity(cmds.len() * if asking { 2 } else { 1 });
    pipe.ignore_errors();
    for (key, delta) in cmds {
        if asking {
            pipe.add_command(redis::cmd("ASKING"));
        }
        let mut cmd = sized("HINCRBY", key, 4);
        cmd.arg(hash_key(key.resource_id())).arg(key.counter_type()).arg(*delta);
        pipe.add_command(cmd);
    }
    pipe
}

/// One `HGET` per key, in order; with `asking`, each after an `ASKING` (as
/// [`incr_pipeline`]).
pub(super) fn get_pipeline<'a>(keys: impl ExactSizeIterator<Item = &'a CounterKey>, asking: bool) -> Pipeline {
    let mut pipe = Pipeline::with_capacity(keys.len() * if asking { 2 } else { 1 });
    for key in keys {
        if asking {
            pipe.add_command(redis::cmd("ASKING"));
        }
        let mut cmd = sized("HGET", key, 3);
        cmd.arg(hash_key(key.resource_id())).arg(key.counter_type());
        pipe.add_command(cmd);
    }
    pipe
}

/// A command `name` on `key` of `args` arguments (the name included), its
/// buffers sized for them at once: built argument by argument from empty,
/// a command took three or four allocations (profile of the counter).
fn sized(name: &str, key: &CounterKey, args: usize) -> redis::Cmd {
    // The hash key's `tally:{…}`, and room for a delta.
    const ROOM: usize = 8 + 20;
    let mut cmd =
        redis::Cmd::with_capacity(args, name.len() + key.resource_id().len() + key.counter_type().len() + ROOM);
    cmd.arg(name);
    cmd
}

/// Turns pipeline replies into outcomes. A reply count that does not match is
/// a protocol surprise: report every command as unknown rather than guess.
pub(super) fn outcomes(replies: Vec<RedisResult<i64>>, expected: usize) -> Vec<Outcome> {
    if replies.len() != expected {
        let err = StoreError::Unknown(format!("expected {expected} replies, got {}", replies.len()));
        return vec![Outcome::Failed(err); expected];
    }
    replies.into_iter().map(outcome).collect()
}

/// The outcome of one `HINCRBY` reply.
pub(super) fn outcome(reply: RedisResult<i64>) -> Outcome {
    match reply {
        Ok(value) => Outcome::Applied(value),
        Err(err) if is_overflow(&err) => Outcome::Overflow,
        Err(err) => Outcome::Failed(StoreError::from_redis(&err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_turn_nagle_off() {
        for url in ["redis://127.0.0.1:6379/0", "rediss://:secret@redis.example:6380"] {
            let info = connection_info(url).expect("valid URL");
            assert!(info.tcp_settings().nodelay(), "{url}: TCP_NODELAY");
        }
    }

    #[test]
    fn a_bad_url_is_a_configuration_error_without_its_password() {
        let err = connection_info("redis://:secret@").expect_err("refused");
        assert!(matches!(err, StoreError::Config(_)), "{err:?}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}

//! A write and the `WAIT` that confirms it, in one pipeline on one
//! connection.
//!
//! `WAIT` counts the replicas holding what its own connection wrote. Sent
//! as a command of its own after the write's reply, it may go out on
//! another connection than the write's: a multiplexed connection replaced
//! in between (after a reset), where it says nothing documented about the
//! write (Redis versions differ in what a connection that wrote nothing
//! waits for). In the write's own pipeline it goes in the same write, on
//! the same connection, right after it. A transaction is spelled out
//! (`MULTI` … `EXEC`) so that `WAIT` follows `EXEC`: redis-rs's atomic
//! pipelines put every command inside, where `WAIT` would not wait.

use redis::{Pipeline, RedisResult, Value};

use super::error::unexpected;
use super::redis::integer;
use super::replication::{ReplicaWait, Waited};

/// A pipeline's replies, each as Redis gave it.
pub type Replies = Vec<RedisResult<Value>>;

/// A write's replies and, when it waited for replicas, `WAIT`'s.
pub struct Confirmed {
    /// Each command's reply, as the pipeline alone would have had them (a
    /// transaction's: each command's result in it).
    pub each: Replies,
    pub wait: Waited,
}

/// `pipe`'s commands, errors kept per command, a transaction spelled out
/// as `MULTI`, its commands, `EXEC`; after `ASKING` when `asking` (a Cluster
/// `ASK` redirect followed: one flag for the command after it, or for a
/// whole transaction), and then `WAIT` when waiting for replicas.
pub fn spelled_out(pipe: &Pipeline, asking: bool, wait: Option<&ReplicaWait>) -> Pipeline {
    let transaction = pipe.is_transaction();
    // `ASKING` holds for the next command only, or for a whole transaction.
    debug_assert!(!asking || transaction || pipe.len() == 1, "ASKING before several commands");
    let mut out = Pipeline::with_capacity(pipe.len() + 4);
    out.ignore_errors();
    if asking {
        out.add_command(redis::cmd("ASKING"));
    }
    if transaction {
        out.add_command(redis::cmd("MULTI"));
    }
    for cmd in pipe.cmd_iter() {
        out.add_command(cmd.clone());
    }
    if transaction {
        out.add_command(redis::cmd("EXEC"));
    }
    if let Some(wait) = wait {
        out.add_command(wait.command());
    }
    out
}

/// The replies of [`spelled_out`]`(pipe, asking, wait)` as `pipe`'s and
/// `WAIT`'s. A transaction that did not run (a command refused while
/// queued, so `EXEC` aborted it; or `EXEC` itself refused) is the first
/// refusal: a redirect among them is one the caller can follow.
pub fn split(pipe: &Pipeline, asking: bool, wait: Option<ReplicaWait>, mut replies: Replies) -> RedisResult<Confirmed> {
    let transaction = pipe.is_transaction();
    let expected = pipe.len() + usize::from(asking) + 2 * usize::from(transaction) + usize::from(wait.is_some());
    if replies.len() != expected {
        return Err(unexpected(format!("{} replies to a pipeline of {expected}", replies.len())));
    }
    let wait = wait.map(|wait| {
        (wait, replies.pop().map(|reply| reply.and_then(integer)).unwrap_or_else(|| Err(unexpected("no reply"))))
    });
    if asking {
        replies.remove(0)?;
    }
    if !transaction {
        return Ok(Confirmed { each: replies, wait });
    }
    let exec = replies.pop().unwrap_or_else(|| Err(unexpected("no reply to EXEC")));
    // After `MULTI`'s `OK`: each command's `QUEUED`, or its refusal.
    let refused = replies.into_iter().skip(1).find_map(Result::err);
    let each = match (exec, refused) {
        (Ok(Value::Array(results)), _) => results.into_iter().map(Value::extract_error).collect(),
        (_, Some(refusal)) | (Err(refusal), None) => return Err(refusal),
        (Ok(other), None) => return Err(unexpected(format!("EXEC answered {other:?}"))),
    };
    Ok(Confirmed { each, wait })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use redis::{ErrorKind, RedisError, ServerErrorKind};

    use super::*;

    const WAIT: ReplicaWait = ReplicaWait { replicas: 1, timeout: Duration::from_millis(100) };

    fn names(pipe: &Pipeline) -> Vec<String> {
        pipe.cmd_iter()
            .map(|cmd| String::from_utf8_lossy(cmd.args_iter().next().map(arg_bytes).unwrap_or_default()).into_owned())
            .collect()
    }

    fn arg_bytes(arg: redis::Arg<&[u8]>) -> &[u8] {
        match arg {
            redis::Arg::Simple(bytes) => bytes,
            _ => b"",
        }
    }

    fn two_increments(transaction: bool) -> Pipeline {
        let mut pipe = redis::pipe();
        pipe.cmd("HINCRBY").arg("h").arg("a").arg(1).cmd("HINCRBY").arg("h").arg("b").arg(1);
        if transaction {
            pipe.atomic();
        }
        pipe
    }

    fn refusal(kind: ServerErrorKind, detail: &str) -> RedisResult<Value> {
        Err(RedisError::from((ErrorKind::Server(kind), "refused", detail.to_string())))
    }

    #[test]
    fn the_wait_follows_the_write_and_a_transaction_s_exec() {
        assert_eq!(names(&spelled_out(&two_increments(false), false, Some(&WAIT))), ["HINCRBY", "HINCRBY", "WAIT"]);
        assert_eq!(
            names(&spelled_out(&two_increments(true), false, Some(&WAIT))),
            ["MULTI", "HINCRBY", "HINCRBY", "EXEC", "WAIT"]
        );
    }

    #[test]
    fn a_followed_ask_goes_first_and_its_reply_is_left_out() {
        let asked = spelled_out(&two_increments(true), true, None);
        assert_eq!(names(&asked), ["ASKING", "MULTI", "HINCRBY", "HINCRBY", "EXEC"]);
        let queued = || Ok(Value::SimpleString("QUEUED".into()));
        let exec = Ok(Value::Array(vec![Value::Int(1), Value::Int(2)]));
        let replies = vec![Ok(Value::Okay), Ok(Value::Okay), queued(), queued(), exec];
        let ran = split(&two_increments(true), true, None, replies).expect("ran where it was asked");
        assert_eq!(ran.each.len(), 2);
        assert!(ran.wait.is_none());
        let mut one = redis::pipe();
        one.cmd("HINCRBY").arg("h").arg("a").arg(1);
        assert_eq!(names(&spelled_out(&one, true, Some(&WAIT))), ["ASKING", "HINCRBY", "WAIT"]);
    }

    #[test]
    fn replies_are_the_pipeline_s_own_and_the_wait_s() {
        let plain = vec![Ok(Value::Int(3)), refusal(ServerErrorKind::ResponseError, "overflow"), Ok(Value::Int(1))];
        let confirmed = split(&two_increments(false), false, Some(WAIT), plain).expect("replies");
        assert_eq!(confirmed.each.len(), 2);
        assert_eq!(confirmed.each[0].as_ref().ok(), Some(&Value::Int(3)));
        assert!(confirmed.each[1].is_err(), "a command's own error stays its own");
        assert_eq!(confirmed.wait.map(|(_, reply)| reply.ok()), Some(Some(1)));

        let ok = || Ok(Value::Okay);
        let queued = || Ok(Value::SimpleString("QUEUED".into()));
        let exec = Ok(Value::Array(vec![Value::Int(4), Value::Int(5)]));
        let ran =
            split(&two_increments(true), false, Some(WAIT), vec![ok(), queued(), queued(), exec, Ok(Value::Int(0))])
                .expect("a transaction that ran");
        let values: Vec<Option<Value>> = ran.each.into_iter().map(Result::ok).collect();
        assert_eq!(values, [Some(Value::Int(4)), Some(Value::Int(5))]);
        assert_eq!(ran.wait.map(|(_, reply)| reply.ok()), Some(Some(0)), "the wait's own answer");
    }

    #[test]
    fn a_transaction_that_did_not_run_is_its_first_refusal() {
        let ok = || Ok(Value::Okay);
        let moved = refusal(ServerErrorKind::Moved, "1234 127.0.0.1:7002");
        let aborted = refusal(ServerErrorKind::ExecAbort, "Transaction discarded");
        let replies = vec![ok(), moved, Ok(Value::SimpleString("QUEUED".into())), aborted, Ok(Value::Int(1))];
        let err = split(&two_increments(true), false, Some(WAIT), replies).err().expect("not run");
        assert_eq!(err.kind(), ErrorKind::Server(ServerErrorKind::Moved), "the redirect, to follow: {err}");

        // Every command queued, then moved before `EXEC` (a `MIGRATE` in
        // between): `EXEC` itself is refused, and nothing ran.
        let queued = || Ok(Value::SimpleString("QUEUED".into()));
        let exec_moved = refusal(ServerErrorKind::Moved, "1234 127.0.0.1:7003");
        let err = split(&two_increments(true), false, None, vec![ok(), queued(), queued(), exec_moved]).err();
        let err = err.expect("EXEC refused");
        assert_eq!(err.kind(), ErrorKind::Server(ServerErrorKind::Moved), "{err}");

        let too_few =
            split(&two_increments(true), false, Some(WAIT), vec![ok(), Ok(Value::Int(1))]).err().expect("short");
        assert!(too_few.to_string().contains("2 replies to a pipeline of 5"), "{too_few}");
    }
}

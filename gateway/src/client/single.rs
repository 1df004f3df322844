//! Single increments and single reads as the handlers see them: coalesced
//! into batch calls ([`batching`](super::batching)), or one call each when
//! coalescing is off (`TALLY_COALESCE=false`).

use tally_proto::CounterKey;
use tally_proto::v1::{CounterRef, GetRequest, IncrementOperation, IncrementRequest};

use super::batching::{Coalescer, Increments, Reads};
use super::{Applied, CallError, ClientSettings, Counter};

/// Single increments: coalesced into batches, or one call each.
#[derive(Clone)]
pub enum Incrementer {
    Coalesced(Coalescer<Increments>),
    Direct(Counter),
}

impl Incrementer {
    pub fn new(counter: &Counter, settings: &ClientSettings) -> Incrementer {
        if settings.coalesce {
            Incrementer::Coalesced(Coalescer::start(counter.clone(), settings.request_timeout))
        } else {
            Incrementer::Direct(counter.clone())
        }
    }

    /// Applies one validated increment; the value right after it.
    pub async fn increment(&self, op: IncrementOperation) -> Result<Applied, CallError> {
        match self {
            Incrementer::Coalesced(coalescer) => {
                let result = coalescer.call(op).await?;
                match super::operation_error(&result) {
                    None => Ok(Applied { value: result.current_value, replayed: result.replayed }),
                    Some(err) => Err(err),
                }
            }
            Incrementer::Direct(counter) => {
                let IncrementOperation { resource_id, counter_type, delta, idempotency_key } = op;
                counter.increment(IncrementRequest { resource_id, counter_type, delta, idempotency_key }).await
            }
        }
    }
}

/// Single reads: coalesced into `BatchGet` calls, or one `Get` each.
#[derive(Clone)]
pub enum Reader {
    Coalesced(Coalescer<Reads>),
    Direct(Counter),
}

impl Reader {
    pub fn new(counter: &Counter, settings: &ClientSettings) -> Reader {
        if settings.coalesce {
            Reader::Coalesced(Coalescer::start(counter.clone(), settings.request_timeout))
        } else {
            Reader::Direct(counter.clone())
        }
    }

    /// The counter's current value.
    pub async fn get(&self, key: &CounterKey) -> Result<i64, CallError> {
        let (resource_id, counter_type) = (key.resource_id().to_string(), key.counter_type().to_string());
        match self {
            Reader::Coalesced(coalescer) => {
                Ok(coalescer.call(CounterRef { resource_id, counter_type }).await?.current_value)
            }
            Reader::Direct(counter) => Ok(counter.get(GetRequest { resource_id, counter_type }).await?.current_value),
        }
    }
}

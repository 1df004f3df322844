//! The batching loop the gateway's batcher and the counter's group committer
//! share: wait for the first queued item, then for a free slot (a call or
//! flush allowed in flight), then take whatever else is queued, up to a
//! bound, as one batch. An idle loop sends a lone item at once, so nothing
//! waits for a timer; under load, batches grow by themselves while every
//! slot is busy. A slot is never held while idle (another loop sharing the
//! slots may need it).

use std::future::Future;

use tokio::sync::mpsc;

/// A queue the loop takes items from: tokio's bounded and unbounded mpsc
/// receivers.
pub trait Queue<T> {
    /// The next item, waiting for one; `None` once every sender is gone.
    fn next(&mut self) -> impl Future<Output = Option<T>> + Send;
    /// The next item if one is queued now.
    fn next_now(&mut self) -> Option<T>;
}

impl<T: Send> Queue<T> for mpsc::Receiver<T> {
    fn next(&mut self) -> impl Future<Output = Option<T>> + Send {
        self.recv()
    }
    fn next_now(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

impl<T: Send> Queue<T> for mpsc::UnboundedReceiver<T> {
    fn next(&mut self) -> impl Future<Output = Option<T>> + Send {
        self.recv()
    }
    fn next_now(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

/// The next batch and the slot it holds: the first item queued, a slot
/// from `slot` (taken only once there is work), one pass of the other
/// tasks ready on this thread, then every item queued
/// meanwhile while the batch's `weight` stays under `max()` (at least one
/// item is always taken). `max` is read once the slot is held, so a bound
/// changed live while the loop waited applies to this batch. `None` when
/// the queue closed or no slot will come.
pub async fn next_batch<T, Q, S, F>(
    queue: &mut Q,
    slot: impl FnOnce() -> F,
    max: impl FnOnce() -> usize,
    weight: impl Fn(&T) -> usize,
) -> Option<(Vec<T>, S)>
where
    Q: Queue<T>,
    F: Future<Output = Option<S>>,
{
    let first = queue.next().await?;
    let slot = slot().await?;
    // Let the tasks that are ready on this thread run once first (and the
    // reactor be polled): under load they are requests about to queue an
    // item, which then join this batch rather than wait for the next one,
    // as Netty's flush consolidation ends a batch with the event-loop
    // iteration. An idle thread comes straight back.
    tokio::task::yield_now().await;
    let max = max();
    let mut taken = weight(&first);
    let mut batch = vec![first];
    while taken < max {
        let Some(item) = queue.next_now() else { break };
        taken += weight(&item);
        batch.push(item);
    }
    Some((batch, slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_takes_what_is_queued_up_to_its_weight() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for n in [3, 4, 5, 6] {
            tx.send(n).expect("send");
        }
        let slot = || async { Some("slot") };
        let (batch, held) = next_batch(&mut rx, slot, || 7, |n: &usize| *n).await.expect("batch");
        assert_eq!((batch, held), (vec![3, 4], "slot"), "stops once the weight reaches the bound");
        let (batch, _) = next_batch(&mut rx, slot, || 1, |n: &usize| *n).await.expect("batch");
        assert_eq!(batch, vec![5], "an item heavier than the bound still goes, alone");
        drop(tx);
        assert_eq!(next_batch(&mut rx, slot, || 7, |n: &usize| *n).await.map(|(b, _)| b), Some(vec![6]));
        assert!(next_batch(&mut rx, slot, || 7, |n: &usize| *n).await.is_none(), "closed and empty");
    }

    #[tokio::test]
    async fn no_slot_no_batch() {
        let (tx, mut rx) = mpsc::channel(4);
        tx.send(1).await.expect("send");
        let none = || async { None::<()> };
        assert!(next_batch(&mut rx, none, || 10, |_: &i32| 1).await.is_none());
    }
}

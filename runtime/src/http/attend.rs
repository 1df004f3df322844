//! A connection served with a side watch (the stop signal, the idle and
//! header timeouts) that is looked at only when it has news.
//!
//! `tokio::select!` over the connection and its watch polls every branch
//! each time the task wakes, and an HTTP connection's task wakes at least
//! twice per request (bytes arrived, answer ready): the stop signal's
//! `watch` and the watchdog's timer were polled for every request, measured
//! at 3 % of the gateway's CPU per request. Here the side future gets a
//! waker of its own, which notes that it fired before waking the task: the
//! side is polled the first time (so it registers) and after that only
//! when its waker fired — the way `FuturesUnordered` polls only the futures
//! that woke.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Which of the two finished first.
#[derive(Debug, PartialEq, Eq)]
pub enum Attended<M, S> {
    Main(M),
    Side(S),
}

/// Runs `main` until it or `side` finishes; `side` is polled only when
/// its own waker fired (and once at the start).
pub fn attend<M: Future + Unpin, S: Future>(main: M, side: S) -> Attend<M, S> {
    let wake = Arc::new(SideWake { fired: AtomicBool::new(true), task: AtomicWaker::new() });
    Attend { main, side: Box::pin(side), side_waker: Waker::from(wake.clone()), wake }
}

pub struct Attend<M, S> {
    main: M,
    /// Boxed once per call, so `Attend` is `Unpin` without unsafe pinning.
    side: Pin<Box<S>>,
    wake: Arc<SideWake>,
    /// The waker `side` is polled with (made once).
    side_waker: Waker,
}

/// The side's waker: records that the side has news, then wakes the task.
struct SideWake {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<M: Future + Unpin, S: Future> Future for Attend<M, S> {
    type Output = Attended<M::Output, S::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(done) = Pin::new(&mut this.main).poll(cx) {
            return Poll::Ready(Attended::Main(done));
        }
        // Registered before the flag is read: a side wake-up between the two
        // sets the flag and wakes this task again, so none is lost.
        this.wake.task.register(cx.waker());
        if this.wake.fired.swap(false, Ordering::AcqRel) {
            let mut side_cx = Context::from_waker(&this.side_waker);
            if let Poll::Ready(done) = this.side.as_mut().poll(&mut side_cx) {
                return Poll::Ready(Attended::Side(done));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::{mpsc, oneshot};

    use super::*;

    /// A side future that counts its polls and finishes when `done` fires.
    async fn counted(polls: Arc<AtomicUsize>, mut done: oneshot::Receiver<()>) -> &'static str {
        std::future::poll_fn(|cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut done).poll(cx).map(|_| "side")
        })
        .await
    }

    #[tokio::test]
    async fn the_main_future_finishing_ends_it() {
        let (_keep, side) = oneshot::channel::<()>();
        let polls = Arc::new(AtomicUsize::new(0));
        let got = attend(std::future::ready(7), counted(polls, side)).await;
        assert_eq!(got, Attended::Main(7));
    }

    #[tokio::test]
    async fn the_side_is_polled_only_when_it_woke() {
        let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
        let main = Box::pin(async move {
            let mut sum = 0;
            while let Some(n) = rx.recv().await {
                sum += n;
            }
            sum
        });
        let (fire, side) = oneshot::channel();
        let polls = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(attend(main, counted(polls.clone(), side)));
        // Each message wakes the task for the main future only.
        for n in 0..50 {
            tx.send(n).expect("main is running");
            tokio::task::yield_now().await;
        }
        let before = polls.load(Ordering::Relaxed);
        assert_eq!(before, 1, "polled once to register, not once per wake-up of the task");
        fire.send(()).expect("side is waiting");
        assert_eq!(finished(task).await, Attended::Side("side"));
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_side_wake_up_is_seen_while_the_main_future_is_idle() {
        let main = Box::pin(std::future::pending::<()>());
        let (fire, side) = oneshot::channel();
        let polls = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(attend(main, counted(polls, side)));
        tokio::task::yield_now().await;
        fire.send(()).expect("side is waiting");
        assert_eq!(finished(task).await, Attended::Side("side"));
    }

    /// The task's output; a lost wake-up fails here instead of hanging.
    async fn finished<T>(task: tokio::task::JoinHandle<T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("a wake-up was lost: the task never finished")
            .expect("no panic")
    }
}

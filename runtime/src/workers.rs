//! Thread-per-core serving: a fixed set of threads, each running its own
//! single-threaded tokio runtime, the shape of the fastest Rust HTTP servers
//! (actix-web's arbiters) and of Envoy's workers.
//!
//! Why: on a work-stealing runtime a request hops between threads (the
//! connection task, a coalescing loop, a client connection's task), and
//! every hop to a parked thread is a futex wake and a context switch.
//! Measured on the gateway's increment path (2 cores shared with Redis, the
//! counter and the load generator), those hops cost about a quarter of its
//! CPU per request. A worker keeps a request's tasks — and the client
//! connections they use ([`current`] says whose they are) — on one thread;
//! what workers share (caches, metrics, endpoint health) is plain
//! synchronised data, never a wake-up.

use std::cell::Cell;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker whose thread this is; `None` off the workers
/// (the control runtime, tests).
pub fn current() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// Running workers. Dropping this stops them: each finishes the task it is
/// polling and drops the rest.
pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` (at least one) worker threads named `<name>-<index>`.
    pub fn start(count: usize, name: &str) -> io::Result<Workers> {
        let mut workers = Workers { handles: Vec::new(), stops: Vec::new(), threads: Vec::new() };
        for index in 0..count.max(1) {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new().name(format!("{name}-{index}")).spawn(move || {
                INDEX.with(|cell| cell.set(Some(index)));
                let runtime = match Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = handle_tx.send(Err(err));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                // Drives every task spawned on this worker until told to stop.
                runtime.block_on(async move {
                    let _ = stop_rx.await;
                });
            })?;
            workers.threads.push(thread);
            workers.stops.push(stop_tx);
            let handle = handle_rx.recv().map_err(|_| io::Error::other("a worker thread died starting"))??;
            workers.handles.push(handle);
        }
        Ok(workers)
    }

    /// One runtime handle per worker, in index order: spawn on one to run a
    /// task on that worker, or enter it to create what its tasks will use.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        // Not joined: dropping may happen on an async thread, which must not
        // block; the threads end on their own once their runtime is dropped.
        self.threads.clear();
    }
}

/// Which worker a new connection goes to: the one with the fewest open
/// (actix-web's acceptor does the same). Shared by every thread-per-core
/// acceptor.
pub struct LeastBusy {
    open: Vec<Arc<AtomicUsize>>,
}

impl LeastBusy {
    /// For `workers` workers (at least one).
    pub fn new(workers: usize) -> LeastBusy {
        LeastBusy { open: (0..workers.max(1)).map(|_| Arc::default()).collect() }
    }

    /// The least busy worker's index, and its connection counted open
    /// until the returned guard drops.
    pub fn pick(&self) -> (usize, OpenConn) {
        let (index, open) = self
            .open
            .iter()
            .enumerate()
            .min_by_key(|(_, open)| open.load(Ordering::Relaxed))
            .unwrap_or((0, &self.open[0]));
        open.fetch_add(1, Ordering::Relaxed);
        (index, OpenConn(open.clone()))
    }
}

/// A connection counted open on its worker until dropped.
pub struct OpenConn(Arc<AtomicUsize>);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_their_own_worker_and_know_its_index() {
        let workers = Workers::start(2, "test-worker").expect("workers start");
        assert_eq!(workers.handles().len(), 2);
        assert_eq!(current(), None, "the test thread is no worker");
        let control = Builder::new_current_thread().build().expect("runtime");
        for (index, handle) in workers.handles().iter().enumerate() {
            let seen = control
                .block_on(handle.spawn(async { (current(), std::thread::current().name().map(str::to_string)) }));
            let (seen_index, thread) = seen.expect("the task ran");
            assert_eq!(seen_index, Some(index));
            assert_eq!(thread.as_deref(), Some(format!("test-worker-{index}").as_str()));
        }
    }

    #[test]
    fn connections_go_to_the_worker_with_the_fewest_open() {
        let busy = LeastBusy::new(2);
        let (a, first) = busy.pick();
        let (b, _second) = busy.pick();
        assert_ne!(a, b, "one each");
        drop(first);
        assert_eq!(busy.pick().0, a, "the worker whose connection closed is the least busy");
    }

    #[test]
    fn dropping_the_workers_stops_their_tasks() {
        let workers = Workers::start(1, "test-stop").expect("workers start");
        let task = workers.handles()[0].spawn(std::future::pending::<()>());
        drop(workers);
        let control = Builder::new_current_thread().build().expect("runtime");
        let outcome = control.block_on(task);
        assert!(outcome.is_err_and(|err| err.is_cancelled()), "the pending task was dropped with its runtime");
    }
}

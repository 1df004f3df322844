//! The tokio runtime of both services, with a tunable worker count.
//!
//! On a machine where the service shares few cores with its neighbours (a
//! small pod, or the 2-core benchmark box running Redis, counter, gateway
//! and the load generator), fewer worker threads mean fewer cross-thread
//! wake-ups; set `TALLY_WORKER_THREADS` to the pod's CPU limit.

use std::io;

/// A multi-threaded runtime with `worker_threads` workers (default: one per core).
pub fn build(worker_threads: Option<usize>) -> io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = worker_threads {
        builder.worker_threads(n.max(1));
    }
    builder.build()
}

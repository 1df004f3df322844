//! One endpoint's connections: `pool_size` lazily-connected tonic channels
//! (one HTTP/2 connection each, PING keep-alive on) used round-robin, so
//! load spreads over several connections and server worker threads. Under
//! thread-per-core serving the pool is split between the workers, each
//! owning its share (at least one), as Envoy's workers own their connection
//! pools: a call never wakes another thread.
//!
//! The size changes live ([`ChannelPool::resize`]): added channels connect
//! on first use; dropped ones close once the calls holding them finish.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tonic::transport::{Channel, Endpoint};

use super::ClientSettings;
use tally_runtime::tls::{Connector, UpstreamTls};

pub struct ChannelPool {
    endpoint: Endpoint,
    tls: Option<UpstreamTls>,
    workers: Vec<tokio::runtime::Handle>,
    /// One pool per worker ([`ClientSettings::workers`]), or a single pool.
    pools: ArcSwap<Vec<Vec<Channel>>>,
    next: AtomicUsize,
}

/// Channels each worker's share holds for a pool of `size`: at least one.
pub fn share(size: usize, workers: usize) -> usize {
    size.div_ceil(workers.max(1)).max(1)
}

impl ChannelPool {
    /// The pool for `dial` (a valid `http(s)://host:port`).
    pub fn new(dial: String, settings: &ClientSettings) -> Result<ChannelPool, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(dial)?
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(settings.keepalive)
            .keep_alive_timeout(settings.keepalive.min(Duration::from_secs(20)))
            .keep_alive_while_idle(true);
        let pool = ChannelPool {
            endpoint,
            tls: settings.tls.clone(),
            workers: settings.workers.clone(),
            pools: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
        };
        pool.resize(settings.pool_size);
        Ok(pool)
    }

    fn connect(&self) -> Channel {
        match &self.tls {
            Some(tls) => self.endpoint.connect_with_connector_lazy(Connector::new(tls.clone())),
            None => self.endpoint.connect_lazy(),
        }
    }

    /// Grows or shrinks every worker's share to hold `size` channels in all
    /// (at least one each); channels kept stay connected.
    pub fn resize(&self, size: usize) {
        let current = self.pools.load_full();
        let grow = |worker: usize, want: usize| -> Vec<Channel> {
            let mut channels: Vec<Channel> =
                current.get(worker).map(|c| c.iter().take(want).cloned().collect()).unwrap_or_default();
            while channels.len() < want {
                channels.push(self.connect());
            }
            channels
        };
        let next = if self.workers.is_empty() {
            vec![grow(0, size.max(1))]
        } else {
            let want = share(size, self.workers.len());
            // A channel's tasks run on the runtime it was made in: the worker's.
            self.workers
                .iter()
                .enumerate()
                .map(|(i, worker)| {
                    let _in_worker = worker.enter();
                    grow(i, want)
                })
                .collect()
        };
        self.pools.store(std::sync::Arc::new(next));
    }

    /// The next channel of the calling worker's share (off the workers: the
    /// first), round-robin.
    pub fn channel(&self) -> Channel {
        let pools = self.pools.load();
        let pool = &pools[tally_runtime::workers::current().unwrap_or(0) % pools.len()];
        let i = self.next.fetch_add(1, Ordering::Relaxed) % pool.len();
        pool[i].clone()
    }

    /// Channels in the pool, every worker's share counted.
    pub fn size(&self) -> usize {
        self.pools.load().iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_gets_a_share_of_at_least_one() {
        assert_eq!(share(20, 2), 10);
        assert_eq!(share(3, 2), 2);
        assert_eq!(share(1, 4), 1);
        assert_eq!(share(5, 0), 5);
    }

    #[tokio::test]
    async fn the_pool_grows_and_shrinks_in_place() {
        let settings = ClientSettings { pool_size: 3, ..crate::config::Config::defaults().client() };
        let pool = ChannelPool::new("http://127.0.0.1:1".into(), &settings).expect("valid");
        assert_eq!(pool.size(), 3);
        pool.resize(8);
        assert_eq!(pool.size(), 8);
        pool.resize(2);
        assert_eq!(pool.size(), 2);
        pool.resize(0);
        assert_eq!(pool.size(), 1, "never empty");
    }
}

//! Shared test harness: real processes, a gRPC client, and the store
//! backends every semantic test runs against.
#![allow(dead_code)] // each test binary uses a different part

pub mod procs;

use tally_proto::v1::counter_service_client::CounterServiceClient;
use tonic::transport::Channel;

pub use procs::{CounterProcess, RedisCluster, RedisServer};

/// The stores the shared suite runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Memory,
    Redis,
    Cluster,
}

/// A counter process on a backend (and the standalone Redis it owns, if any).
pub struct Stack {
    pub counter: CounterProcess,
    pub redis: Option<RedisServer>,
    pub backend: Backend,
}

/// A store URL for `backend`, with the standalone Redis it needs (if any).
pub fn store_url(backend: Backend) -> (Option<RedisServer>, String) {
    match backend {
        Backend::Memory => (None, "memory".to_string()),
        Backend::Redis => {
            let redis = RedisServer::start();
            let url = redis.url();
            (Some(redis), url)
        }
        Backend::Cluster => (None, RedisCluster::shared().url()),
    }
}

impl Stack {
    pub fn start(backend: Backend, env: &[(&str, &str)]) -> Stack {
        let (redis, url) = store_url(backend);
        let counter = CounterProcess::start(&url, env);
        Stack { counter, redis, backend }
    }

    pub async fn client(&self) -> CounterServiceClient<Channel> {
        client(&self.counter).await
    }
}

pub type Client = CounterServiceClient<Channel>;

pub async fn client(counter: &CounterProcess) -> Client {
    CounterServiceClient::connect(counter.endpoint()).await.expect("connect to tally-counter")
}

/// A resource id no other test (or earlier run against the shared cluster) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:x}", std::process::id(), rand::random::<u64>())
}

/// Runs an `async fn(Backend)` suite function once per store, as three tests
/// named after the backend, so one failing store is reported on its own.
#[macro_export]
macro_rules! on_every_store {
    ($($suite:ident),* $(,)?) => {$(
        mod $suite {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() { super::$suite($crate::common::Backend::Memory).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() { super::$suite($crate::common::Backend::Redis).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_cluster() { super::$suite($crate::common::Backend::Cluster).await }
        }
    )*};
}

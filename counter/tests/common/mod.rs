//! Shared test harness: real processes, a gRPC client, and the store
//! backends every semantic test runs against.
#![allow(dead_code)] // each test binary uses a different part

use tally_proto::v1::counter_service_client::CounterServiceClient;
use tonic::transport::Channel;

pub use tally_testkit::{RedisCluster, RedisServer, Service as CounterProcess, unique};

/// Starts the `tally-counter` binary of this crate on `store`.
pub fn start_counter(store: &str, env: &[(&str, &str)]) -> CounterProcess {
    let mut all = vec![("TALLY_STORE", store)];
    all.extend_from_slice(env);
    CounterProcess::start(std::path::Path::new(env!("CARGO_BIN_EXE_tally-counter")), &all)
}

/// The stores the shared suite runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Memory,
    Redis,
    Cluster,
}

/// One batch operation on `resource_id`/`counter_type`.
pub fn op(resource_id: &str, counter_type: &str, delta: i64) -> tally_proto::v1::IncrementOperation {
    tally_proto::v1::IncrementOperation {
        resource_id: resource_id.into(),
        counter_type: counter_type.into(),
        delta: Some(delta),
        ..Default::default()
    }
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
        let counter = start_counter(&url, env);
        Stack { counter, redis, backend }
    }

    pub async fn client(&self) -> CounterServiceClient<Channel> {
        client(&self.counter).await
    }
}

pub type Client = CounterServiceClient<Channel>;

pub async fn client(counter: &CounterProcess) -> Client {
    CounterServiceClient::connect(counter.grpc_endpoint()).await.expect("connect to tally-counter")
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

//! tally's wire API (`tally.counter.v1`) and the input rules every service
//! enforces, kept together so the gateway and the counter can never disagree
//! on what a valid counter is.

pub mod contract;
mod fields;
pub mod json;
pub mod validate;

pub use validate::{CounterKey, InvalidInput, limits};

/// The `grpc.health.v1` service names a counter reports, which gateways
/// (and Consul's check) ask.
pub mod health {
    /// Whether counters can be served: reads and sync writes, which need
    /// the store. SERVING while the store answers.
    pub const COUNTER_SERVICE: &str = crate::contract::SERVICE_NAME;
    /// Whether async writes are taken: SERVING from start until shutdown,
    /// store up or not (the write-behind buffer holds them until the store
    /// answers again).
    pub const ASYNC_WRITES: &str = "tally.counter.v1.CounterService.AsyncWrites";
}

/// Generated code for package `tally.counter.v1`.
pub mod v1 {
    tonic::include_proto!("tally.counter.v1");

    /// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tally_descriptor");
}

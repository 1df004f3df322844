//! tally's wire API (`tally.counter.v1`) and the input rules every service
//! enforces, kept together so the gateway and the counter can never disagree
//! on what a valid counter is.

mod fields;
pub mod json;
pub mod validate;

pub use validate::{CounterKey, InvalidInput, limits};

/// Generated code for package `tally.counter.v1`.
pub mod v1 {
    tonic::include_proto!("tally.counter.v1");

    /// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tally_descriptor");
}

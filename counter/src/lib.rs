//! tally's counter service: the gRPC API over a store, with group commit for
//! synchronous increments and a bounded write-behind buffer for async ones.
//! `main.rs` only wires; the parts live here so they can be tested alone.

pub mod admin;
pub mod batch_stream;
pub mod buffer;
pub mod commit;
pub mod config;
pub mod deadline;
pub mod group_sums;
pub mod grpc_serve;
pub mod incoming;
pub mod metrics;
pub mod registration;
pub mod server;
pub mod service;
pub mod spans;
pub mod status;
pub mod store;
pub mod stream;

//! tally's HTTP gateway: the JSON API of the original project, served over a
//! pooled, health-checked, coalescing gRPC client of the counter service,
//! with a read cache that sees the gateway's own writes.

pub mod api;
pub mod auth;
pub mod cache;
pub mod client;
pub mod config;
pub mod metrics;
pub mod server;
pub mod spans;

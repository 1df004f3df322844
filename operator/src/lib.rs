//! tally's Kubernetes operator: the `CounterCluster` CRD, pure builders of
//! the objects it owns, the reconciler, leader election and its metrics.

pub mod apply;
pub mod config;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod render;
pub mod resources;
pub mod server;
pub mod settings;
pub mod status;
pub mod validate;

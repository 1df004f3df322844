//! tally's Kubernetes operator (work in progress: the CRD and the pure
//! builders of the counter and gateway objects so far; the reconciler, RBAC,
//! PDBs, chart and images follow).

pub mod controller;
pub mod crd;
pub mod resources;
pub mod validate;

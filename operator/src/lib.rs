//! tally's Kubernetes operator (work in progress: the CRD so far; the
//! reconciler, builders and chart follow).

pub mod crd;

//! How many worker threads a service pod runs.
//!
//! Both services run one worker thread per core they may use, and count
//! those cores from the cgroup CPU quota. The operator sets no CPU limit by
//! default (a limit only throttles a latency service), so without this a pod
//! requesting 250m on a 64-core node would start 64 workers, each with its
//! own connections and share of the pools, mostly idle and all contending
//! for the quarter core it was scheduled for. The same sizing Istio uses
//! for its proxies: the CPU limit when there is one, else the request.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Most worker threads derived (the services accept up to 1024).
const MAX_WORKERS: u32 = 1024;

/// `TALLY_WORKER_THREADS` for a container with these resources: its CPU
/// limit, else its CPU request, rounded up to whole cores. `None` when
/// neither is set or readable, so the service counts its cores itself.
pub fn worker_threads(resources: &ResourceRequirements) -> Option<u32> {
    let cpu = |list: &Option<std::collections::BTreeMap<String, Quantity>>| {
        list.as_ref().and_then(|l| l.get("cpu")).and_then(|q| cores(&q.0))
    };
    let cores = cpu(&resources.limits).or_else(|| cpu(&resources.requests))?;
    Some((cores.ceil() as u32).clamp(1, MAX_WORKERS))
}

/// A CPU quantity in cores: `250m`, `2`, `1.5`; `None` for anything else.
fn cores(quantity: &str) -> Option<f64> {
    let value = match quantity.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok()? / 1000.0,
        None => quantity.parse::<f64>().ok()?,
    };
    (value.is_finite() && value > 0.0).then_some(value)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn with(requests: Option<&str>, limits: Option<&str>) -> ResourceRequirements {
        let list = |cpu: Option<&str>| cpu.map(|c| BTreeMap::from([("cpu".to_string(), Quantity(c.to_string()))]));
        ResourceRequirements { requests: list(requests), limits: list(limits), ..Default::default() }
    }

    #[test]
    fn the_request_rounded_up_to_whole_cores() {
        assert_eq!(worker_threads(&with(Some("250m"), None)), Some(1));
        assert_eq!(worker_threads(&with(Some("1"), None)), Some(1));
        assert_eq!(worker_threads(&with(Some("1500m"), None)), Some(2));
        assert_eq!(worker_threads(&with(Some("2.5"), None)), Some(3));
    }

    #[test]
    fn a_limit_wins_over_the_request() {
        assert_eq!(worker_threads(&with(Some("500m"), Some("4"))), Some(4));
    }

    #[test]
    fn nothing_to_go_by_leaves_it_to_the_service() {
        assert_eq!(worker_threads(&with(None, None)), None);
        assert_eq!(worker_threads(&with(Some("lots"), None)), None);
        assert_eq!(worker_threads(&with(Some("0"), None)), None);
        assert_eq!(worker_threads(&with(Some("100000"), None)), Some(MAX_WORKERS));
    }
}

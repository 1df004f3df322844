//! `kubernetes` discovery: the ready endpoints of the counter Service's
//! EndpointSlices, followed with kube-runtime's watcher. A watcher restart
//! (relist) replaces the whole set, so nothing missed while disconnected
//! lingers.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use super::backends::Backends;

/// The slices seen so far, folded from watcher events.
#[derive(Default)]
pub struct SliceSet {
    slices: BTreeMap<String, EndpointSlice>,
    relisting: Option<BTreeMap<String, EndpointSlice>>,
}

impl SliceSet {
    /// Applies one event; returns the new endpoint set when it may have changed.
    pub fn apply(&mut self, event: Event<EndpointSlice>, port_name: &str) -> Option<Vec<String>> {
        let name = |s: &EndpointSlice| s.metadata.name.clone().unwrap_or_default();
        match event {
            Event::Apply(slice) => {
                self.slices.insert(name(&slice), slice);
            }
            Event::Delete(slice) => {
                self.slices.remove(&name(&slice));
            }
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                return None;
            }
            Event::InitApply(slice) => {
                self.relisting.get_or_insert_default().insert(name(&slice), slice);
                return None;
            }
            Event::InitDone => self.slices = self.relisting.take().unwrap_or_default(),
        }
        Some(ready_uris(self.slices.values(), port_name))
    }
}

/// `http://addr:port` for every ready (and not terminating) endpoint.
pub fn ready_uris<'a>(slices: impl Iterator<Item = &'a EndpointSlice>, port_name: &str) -> Vec<String> {
    let mut uris = Vec::new();
    for slice in slices {
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = ports.iter().find(|p| p.name.as_deref() == Some(port_name)).or(ports.first()).and_then(|p| p.port);
        let Some(port) = port else { continue };
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.as_ref();
            // Kubernetes: a missing `ready` means ready.
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            if !ready || terminating {
                continue;
            }
            for address in &endpoint.addresses {
                let host = if address.contains(':') { format!("[{address}]") } else { address.clone() };
                uris.push(format!("http://{host}:{port}"));
            }
        }
    }
    uris.sort();
    uris.dedup();
    uris
}

/// Follows the EndpointSlices of `service` in `namespace`, forever (the
/// watcher reconnects with backoff by itself).
pub async fn kubernetes_loop(
    backends: Arc<Backends>,
    client: Client,
    namespace: String,
    service: String,
    port_name: String,
) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut set = SliceSet::default();
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                for err in set.apply(event, &port_name).map(|uris| backends.update(&uris)).unwrap_or_default() {
                    tracing::warn!(%err, "EndpointSlice endpoint not usable; skipped");
                }
            }
            Err(err) => tracing::warn!(%err, "EndpointSlice watch failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, endpoints: &[(&str, Option<bool>)]) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "addressType": "IPv4",
            "ports": [{"name": "grpc", "port": 9001}],
            "endpoints": endpoints.iter().map(|(ip, ready)| serde_json::json!({
                "addresses": [ip],
                "conditions": {"ready": ready},
            })).collect::<Vec<_>>(),
        }))
        .expect("slice")
    }

    #[test]
    fn only_ready_endpoints_and_full_resync_on_relist() {
        let mut set = SliceSet::default();
        let uris = set.apply(Event::Apply(slice("a", &[("10.0.0.1", Some(true)), ("10.0.0.2", Some(false))])), "grpc");
        assert_eq!(uris, Some(vec!["http://10.0.0.1:9001".to_string()]));
        let uris = set.apply(Event::Apply(slice("b", &[("10.0.0.3", None)])), "grpc");
        assert_eq!(uris.map(|u| u.len()), Some(2), "a missing ready condition counts as ready");

        // A relist replaces everything, dropping slices that vanished meanwhile.
        assert_eq!(set.apply(Event::Init, "grpc"), None);
        assert_eq!(set.apply(Event::InitApply(slice("b", &[("10.0.0.3", Some(true))])), "grpc"), None);
        assert_eq!(set.apply(Event::InitDone, "grpc"), Some(vec!["http://10.0.0.3:9001".to_string()]));

        assert_eq!(set.apply(Event::Delete(slice("b", &[])), "grpc"), Some(vec![]));
    }
}

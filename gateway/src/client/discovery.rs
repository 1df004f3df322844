//! Where counter endpoints come from. `static` is the fixed
//! `TALLY_COUNTER_ENDPOINTS`; `dns` resolves a name — in Kubernetes the
//! counter's headless Service, which answers with one address per ready
//! pod — every interval and hands the set to [`Backends::update`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_runtime::consul::{Consul, Instance, next_index};

use super::backends::Backends;

/// The endpoint URIs for a resolved address set, sorted and deduplicated.
pub fn uris_of(addrs: impl Iterator<Item = std::net::SocketAddr>) -> Vec<String> {
    let mut uris: Vec<String> = addrs.map(|a| format!("http://{a}")).collect();
    uris.sort();
    uris.dedup();
    uris
}

/// Resolves `name` (`host:port`) now and then every `interval`, forever.
/// A failed lookup keeps the current endpoints: a resolver hiccup must not
/// take every counter out of rotation.
pub async fn dns_loop(backends: Arc<Backends>, name: String, interval: Duration) {
    loop {
        match tokio::net::lookup_host(name.as_str()).await {
            Ok(addrs) => {
                let uris = uris_of(addrs);
                for err in backends.update(&uris) {
                    tracing::warn!(%err, %name, "DNS answer entry not usable; skipped");
                }
            }
            Err(err) => tracing::warn!(%err, %name, "DNS lookup failed; keeping the current endpoints"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Endpoint specs (`http://addr:port;weight=N`) for Consul instances.
pub fn uris_of_instances(instances: &[Instance]) -> Vec<String> {
    let mut uris: Vec<String> = instances
        .iter()
        .map(|i| {
            let host = if i.address.contains(':') { format!("[{}]", i.address) } else { i.address.clone() };
            format!("http://{host}:{};weight={}", i.port, i.weight.clamp(1, 1000))
        })
        .collect();
    uris.sort();
    uris.dedup();
    uris
}

/// Follows the passing instances of `service` in Consul with blocking
/// queries (`index`/`wait`), forever. The index resets when it goes
/// backwards; the loop never queries more than 10 times a second, and backs
/// off (up to 10 s) while Consul fails, keeping the current endpoints.
pub async fn consul_loop(
    backends: Arc<Backends>,
    consul: Consul,
    service: String,
    tag: Option<String>,
    wait: Duration,
) {
    const MIN_GAP: Duration = Duration::from_millis(100);
    let mut index = 0;
    let mut failures: u32 = 0;
    loop {
        let started = Instant::now();
        match consul.passing(&service, tag.as_deref(), index, wait).await {
            Ok((instances, returned)) => {
                failures = 0;
                if returned < index {
                    tracing::info!(previous = index, returned, "consul index went backwards; starting over");
                }
                index = next_index(index, returned);
                for err in backends.update(&uris_of_instances(&instances)) {
                    tracing::warn!(%err, "consul instance not usable; skipped");
                }
            }
            Err(err) => {
                failures += 1;
                let backoff = Duration::from_millis(200 * 2u64.pow(failures.min(6))).min(Duration::from_secs(10));
                tracing::warn!(%err, ?backoff, "consul query failed; keeping the current endpoints");
                tokio::time::sleep(backoff).await;
            }
        }
        if let Some(rest) = MIN_GAP.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_instances_become_weighted_uris() {
        let instances = [
            Instance { address: "10.0.0.2".into(), port: 9001, weight: 3 },
            Instance { address: "::1".into(), port: 9001, weight: 0 },
        ];
        assert_eq!(uris_of_instances(&instances), vec!["http://10.0.0.2:9001;weight=3", "http://[::1]:9001;weight=1"]);
    }

    #[test]
    fn addresses_become_sorted_unique_uris() {
        let addrs = ["10.0.0.2:9001", "10.0.0.1:9001", "10.0.0.2:9001", "[::1]:9001"].map(|a| a.parse().unwrap());
        assert_eq!(
            uris_of(addrs.into_iter()),
            vec!["http://10.0.0.1:9001", "http://10.0.0.2:9001", "http://[::1]:9001"]
        );
    }
}

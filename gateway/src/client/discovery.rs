//! Where counter endpoints come from (plan item 6). `static` is the fixed
//! `TALLY_COUNTER_ENDPOINTS`; `dns` resolves a name — in Kubernetes the
//! counter's headless Service, which answers with one address per ready
//! pod — every interval and hands the set to [`Backends::update`].

use std::sync::Arc;
use std::time::Duration;

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
                if let Err(err) = backends.update(&uris) {
                    tracing::warn!(%err, %name, "DNS answer not usable; keeping the current endpoints");
                }
            }
            Err(err) => tracing::warn!(%err, %name, "DNS lookup failed; keeping the current endpoints"),
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_sorted_unique_uris() {
        let addrs = ["10.0.0.2:9001", "10.0.0.1:9001", "10.0.0.2:9001", "[::1]:9001"].map(|a| a.parse().unwrap());
        assert_eq!(
            uris_of(addrs.into_iter()),
            vec!["http://10.0.0.1:9001", "http://10.0.0.2:9001", "http://[::1]:9001"]
        );
    }
}

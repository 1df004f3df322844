//! Spec checks the CRD schema cannot express. An invalid spec becomes a
//! `Degraded` condition with this message, not a crash loop.

use crate::crd::{CounterClusterSpec, DiscoveryMode};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSpec {
    #[error("spec.store: set one of url, urlSecret or managed: true")]
    NoStore,
    #[error("spec.store: url must start with redis://, rediss:// or redis+cluster:// (got {0:?})")]
    BadStoreUrl(String),
    #[error("spec.discovery: mode consul needs consulAddress")]
    ConsulWithoutAddress,
}

pub fn validate(spec: &CounterClusterSpec) -> Result<(), InvalidSpec> {
    let store = &spec.store;
    if store.url.is_none() && store.url_secret.is_none() && !store.managed {
        return Err(InvalidSpec::NoStore);
    }
    if let Some(url) = &store.url
        && !["redis://", "rediss://", "redis+cluster://"].iter().any(|p| url.starts_with(p))
    {
        return Err(InvalidSpec::BadStoreUrl(url.clone()));
    }
    if spec.discovery.mode == DiscoveryMode::Consul && spec.discovery.consul_address.is_none() {
        return Err(InvalidSpec::ConsulWithoutAddress);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> CounterClusterSpec {
        serde_json::from_value(json).expect("spec")
    }

    #[test]
    fn precise_messages_for_invalid_specs() {
        assert_eq!(validate(&spec(serde_json::json!({"store": {}}))), Err(InvalidSpec::NoStore));
        assert_eq!(
            validate(&spec(serde_json::json!({"store": {"url": "http://x"}}))),
            Err(InvalidSpec::BadStoreUrl("http://x".into()))
        );
        let consul = serde_json::json!({"store": {"managed": true}, "discovery": {"mode": "consul"}});
        assert_eq!(validate(&spec(consul)), Err(InvalidSpec::ConsulWithoutAddress));
        assert!(validate(&spec(serde_json::json!({"store": {"url": "redis+cluster://a:1,b:2"}}))).is_ok());
        assert_eq!(InvalidSpec::NoStore.to_string(), "spec.store: set one of url, urlSecret or managed: true");
    }
}

//! Spec validation at reconcile time. Ranges and patterns are in the CRD's
//! schema and the relations between fields are its CEL rules, both enforced
//! by the API server; the operator evaluates the same CEL rules (one
//! definition, from `crd.rs`) so an object stored before the rules existed,
//! or under a server that skips them, becomes a `Degraded` condition and an
//! Event with the rule's message instead of a crash loop.

use crate::crd::CounterCluster;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

pub fn validate(cc: &CounterCluster) -> Result<(), InvalidSpec> {
    cc.validate_cel().map_err(|errors| {
        let messages: Vec<String> = errors.into_vec().into_iter().map(|e| e.to_string()).collect();
        InvalidSpec(messages.join("; "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::sample;

    #[test]
    fn precise_messages_for_invalid_specs() {
        let none = validate(&sample(serde_json::json!({"store": {}}))).unwrap_err();
        assert_eq!(none.0, "spec.store: set exactly one of url, urlSecret or managed: true");
        let consul = sample(serde_json::json!({"store": {"managed": true}, "discovery": {"mode": "consul"}}));
        assert_eq!(validate(&consul).unwrap_err().0, "spec.discovery: mode consul needs consulAddress");
        let two = sample(serde_json::json!({
            "store": {},
            "gateway": {"connectTimeoutMs": 5000, "requestTimeoutMs": 100},
        }));
        let message = validate(&two).unwrap_err().0;
        assert!(message.contains("; "), "every broken rule is reported: {message}");
        assert!(message.contains("requestTimeoutMs must be at least connectTimeoutMs"), "{message}");
        assert!(validate(&sample(serde_json::json!({"store": {"url": "redis+cluster://a:1,b:2"}}))).is_ok());
    }
}

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
    })?;
    one_line_settings(cc)
}

/// Every setting fits on its line of the settings file: a value with a line
/// break (a log level, an endpoint) could otherwise add settings of its own.
fn one_line_settings(cc: &CounterCluster) -> Result<(), InvalidSpec> {
    let all = [crate::resources::counter::settings(cc), crate::resources::gateway::settings(cc)];
    match all.iter().flatten().find(|(_, value)| value.chars().any(char::is_control)) {
        Some((key, _)) => {
            Err(InvalidSpec(format!("{key}: a setting may not contain line breaks or control characters")))
        }
        None => Ok(()),
    }
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

    #[test]
    fn a_value_cannot_smuggle_a_setting_into_the_file() {
        let smuggled = sample(serde_json::json!({
            "store": {"managed": true},
            "telemetry": {"logLevel": "info\nTALLY_LISTEN=0.0.0.0:1"},
        }));
        assert_eq!(
            validate(&smuggled).unwrap_err().0,
            "RUST_LOG: a setting may not contain line breaks or control characters"
        );
    }
}

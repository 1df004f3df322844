//! `tally-operator render -f cc.yaml`: every object the operator would
//! apply for the CounterClusters in a file, as YAML, without a cluster —
//! for GitOps previews, reviews, and the manifest checks in CI. The spec is
//! checked by the same CEL rules the reconciler uses.

use kube::ResourceExt;
use serde::Deserialize;

use crate::crd::CounterCluster;
use crate::resources::desired;
use crate::validate::validate;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("not a CounterCluster manifest: {0}")]
    Parse(String),
    #[error("CounterCluster {name}: {message}")]
    Invalid { name: String, message: String },
    #[error("no CounterCluster in the input")]
    Empty,
}

/// The objects for every CounterCluster in `text` (one or more YAML
/// documents), as one YAML stream. A CounterCluster without a namespace is
/// rendered into `default_namespace`.
pub fn render(text: &str, default_namespace: &str) -> Result<String, RenderError> {
    let mut out = String::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value = serde_json::Value::deserialize(document).map_err(|e| RenderError::Parse(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let mut cc: CounterCluster = serde_json::from_value(value).map_err(|e| RenderError::Parse(e.to_string()))?;
        if cc.metadata.namespace.is_none() {
            cc.metadata.namespace = Some(default_namespace.to_string());
        }
        validate(&cc).map_err(|invalid| RenderError::Invalid { name: cc.name_any(), message: invalid.0 })?;
        out.push_str(&desired::to_yaml(&desired::desired(&cc)));
    }
    if out.is_empty() {
        return Err(RenderError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_renders_and_a_broken_spec_says_why() {
        let yaml = render(include_str!("../../deploy/samples/countercluster.yaml"), "default").expect("renders");
        assert!(yaml.contains("kind: \"StatefulSet\"") && yaml.contains("name: \"demo-gateway\""), "{yaml}");
        assert!(yaml.contains("namespace: \"tally\""));
        let broken = "apiVersion: tally.dev/v1alpha1\nkind: CounterCluster\nmetadata: {name: x}\nspec: {store: {}}\n";
        let err = render(broken, "default").unwrap_err();
        assert!(err.to_string().contains("exactly one of url"), "{err}");
        assert!(matches!(render("", "default"), Err(RenderError::Empty)));
        assert!(matches!(render("kind: [", "default"), Err(RenderError::Parse(_))));
    }
}

//! The YAML and JSON shipped under `deploy/` and `charts/`: every file parses,
//! every CounterCluster in them is valid, the chart's documented spec equals
//! the CRD's defaults, and — where `helm` is installed — the chart lints and
//! renders. (The chart's CRD equals the generated one: `crd_tests.rs`.)

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tally_operator::crd::{CounterCluster, CounterClusterSpec};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files(&path, extension));
        } else if path.extension().is_some_and(|e| e == extension) {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// Every document of a multi-document YAML text.
fn documents(text: &str) -> Result<Vec<Value>, serde_yaml_ng::Error> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(Value::deserialize)
        .filter(|doc| !matches!(doc, Ok(Value::Null)))
        .collect()
}

#[test]
fn every_manifest_under_deploy_parses_and_every_countercluster_is_valid() {
    let mut clusters = 0;
    for path in files(&repo().join("deploy"), "yaml") {
        let text = std::fs::read_to_string(&path).expect("readable");
        let docs = documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!docs.is_empty(), "{} is empty", path.display());
        for doc in docs {
            assert!(doc["apiVersion"].is_string() && doc["kind"].is_string(), "{}: {doc}", path.display());
            if doc["kind"] == "CounterCluster" {
                let cc: CounterCluster =
                    serde_json::from_value(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                tally_operator::validate::validate(&cc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                clusters += 1;
            }
        }
    }
    assert!(clusters >= 2, "the sample and the try-out CounterCluster");
}

#[test]
fn the_grafana_dashboard_is_json_with_panels() {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/tally-dashboard.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
}

/// A template with its Go-template actions blanked out: comments and lines
/// that are only an action (`{{- if … }}`, `{{- toYaml … | nindent 8 }}`)
/// dropped, inline expressions replaced by a scalar. Catches YAML slips in
/// the static parts only; what `toYaml | nindent` emits is checked by `helm
/// template` below, which runs where helm exists.
fn blank_template(text: &str) -> String {
    // Template comments first: `{{- /* … */ -}}`, possibly over many lines.
    let mut text = text.to_string();
    while let Some(start) = text.find("{{- /*").or_else(|| text.find("{{/*")) {
        let end = text[start..].find("*/").and_then(|c| text[start + c..].find("}}").map(|e| start + c + e + 2));
        text.replace_range(start..end.unwrap_or(text.len()), "");
    }
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("{{") && trimmed.ends_with("}}") {
            continue;
        }
        let mut rest = line;
        let mut rendered = String::new();
        while let Some(start) = rest.find("{{") {
            rendered.push_str(&rest[..start]);
            let end = rest[start..].find("}}").map(|e| start + e + 2).unwrap_or(rest.len());
            rendered.push_str("placeholder");
            rest = &rest[end..];
        }
        rendered.push_str(rest);
        out.push_str(&rendered);
        out.push('\n');
    }
    out
}

#[test]
fn chart_files_parse() {
    let chart = repo().join("charts/tally-operator");
    for name in ["Chart.yaml", "values.yaml"] {
        let text = std::fs::read_to_string(chart.join(name)).expect("readable");
        documents(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let templates = files(&chart.join("templates"), "yaml");
    assert!(templates.len() >= 6, "{templates:?}");
    for path in templates {
        let text = std::fs::read_to_string(&path).expect("readable");
        documents(&blank_template(&text)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn the_charts_documented_spec_equals_the_crd_defaults() {
    let text = std::fs::read_to_string(repo().join("charts/tally-operator/values.yaml")).expect("values");
    let values: Value = serde_yaml_ng::from_str(&text).expect("values parse");
    let documented = values["counterCluster"]["spec"].clone();
    let store = documented["store"].clone();
    let defaults: CounterClusterSpec = serde_json::from_value(serde_json::json!({"store": store})).expect("spec");
    let defaults = serde_json::to_value(defaults).expect("json");
    assert_eq!(documented, defaults, "values.yaml counterCluster.spec differs from the CRD defaults");
}

/// The real check, where helm is installed (not on the development machines).
#[test]
fn helm_lints_and_renders_the_chart() {
    if Command::new("helm").arg("version").output().is_err() {
        eprintln!("SKIPPED: helm is not installed; the chart was only parsed (chart_files_parse)");
        return;
    }
    let chart = repo().join("charts/tally-operator");
    let lint = Command::new("helm").arg("lint").arg(&chart).output().expect("helm lint");
    assert!(lint.status.success(), "helm lint: {}", String::from_utf8_lossy(&lint.stdout));
    let rendered = Command::new("helm")
        .args(["template", "tally-operator"])
        .arg(&chart)
        .args(["--set", "serviceMonitor.enabled=true", "--set", "counterCluster.create=true"])
        .output()
        .expect("helm template");
    assert!(rendered.status.success(), "helm template: {}", String::from_utf8_lossy(&rendered.stderr));
    let docs = documents(&String::from_utf8_lossy(&rendered.stdout)).expect("rendered YAML parses");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in
        ["Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ServiceMonitor", "CounterCluster"]
    {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
}

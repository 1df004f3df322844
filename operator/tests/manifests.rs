//! The YAML and JSON shipped under `deploy/` and `charts/`: every file parses,
//! every CounterCluster in them is valid, the chart's documented spec equals
//! the CRD's defaults, and — where `helm` is installed — the chart lints and
//! renders. (The chart's CRD equals the generated one: `operator/src/crd/tests.rs`.)

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

/// The chart rendered by the real helm, with `extra` values.
fn helm_template(helm: &Path, extra: &[&str]) -> String {
    let chart = repo().join("charts/tally-operator");
    let rendered =
        Command::new(helm).args(["template", "tally-operator"]).arg(&chart).args(extra).output().expect("helm");
    assert!(rendered.status.success(), "helm template {extra:?}: {}", String::from_utf8_lossy(&rendered.stderr));
    String::from_utf8_lossy(&rendered.stdout).into_owned()
}

/// Every option of the chart on.
const EVERY_OPTION: &[&str] = &[
    "--set",
    "serviceMonitor.enabled=true",
    "--set",
    "counterCluster.create=true",
    "--set",
    "watchNamespace=tally",
    "--set",
    "otlpEndpoint=https://collector:4317",
];

/// The real check with the real helm (installed by `make test`).
#[test]
fn helm_lints_and_renders_the_chart() {
    let Some(helm) = tally_testkit::tool("helm") else { return };
    let chart = repo().join("charts/tally-operator");
    let lint = Command::new(&helm).args(["lint", "--strict"]).arg(&chart).output().expect("helm lint");
    assert!(lint.status.success(), "helm lint --strict: {}", String::from_utf8_lossy(&lint.stdout));
    let kinds_of =
        |docs: &[Value]| docs.iter().filter_map(|d| d["kind"].as_str().map(str::to_string)).collect::<Vec<_>>();
    let default = kinds_of(&documents(&helm_template(&helm, &[])).expect("the default rendering parses"));
    for kind in ["Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"] {
        assert!(default.iter().any(|k| k == kind), "{kind} missing from {default:?}");
    }
    // With watchNamespace the operator's rights are a Role in that namespace only.
    let every = kinds_of(&documents(&helm_template(&helm, EVERY_OPTION)).expect("rendered YAML parses"));
    for kind in ["Deployment", "ServiceAccount", "Role", "RoleBinding", "ServiceMonitor", "CounterCluster"] {
        assert!(every.iter().any(|k| k == kind), "{kind} missing from {every:?}");
    }
    assert!(!every.iter().any(|k| k == "ClusterRole"), "no cluster-wide rights with watchNamespace: {every:?}");
}

/// Kubernetes releases the manifests are validated against: the oldest
/// supported, one in between, the newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.29.0", "1.32.0", "1.37.0"];

/// Kinds of other projects' CRDs, which kubernetes-validate has no schema for.
const FOREIGN_KINDS: &[&str] = &["CounterCluster", "ServiceMonitor", "PodMonitor"];

/// Runs `kubernetes-validate --strict` on every document of `streams`
/// (name, YAML stream) for each release; built-in kinds only.
fn kubernetes_validate(validate: &Path, streams: &[(String, String)]) {
    let dir = std::env::temp_dir().join(tally_testkit::unique("tally-validate"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (name, stream) in streams {
        // Each document as written (not re-serialized): how a YAML 1.1
        // reader takes the text is part of what is checked.
        let raw = format!("\n{stream}");
        for (i, text) in raw.split("\n---").enumerate() {
            let doc: Value = serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("{name} #{i}: {e}"));
            if doc.is_null() || FOREIGN_KINDS.contains(&doc["kind"].as_str().unwrap_or_default()) {
                continue;
            }
            let file = dir.join(format!("{name}-{i}.yaml"));
            std::fs::write(&file, text).unwrap();
            files.push(file);
        }
    }
    assert!(files.len() > 20, "only {} documents to validate", files.len());
    for version in KUBERNETES_VERSIONS {
        let out =
            Command::new(validate).args(["--strict", "--quiet", "-k", version]).args(&files).output().expect("run");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "Kubernetes {version} rejects:\n{text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A CounterCluster with every option the operator renders differently for.
const EVERY_OPTION_SPEC: &str = r#"
apiVersion: tally.dev/v1alpha1
kind: CounterCluster
metadata: {name: full, namespace: tally}
spec:
  store: {url: "rediss://redis.tally.svc:6380", tls: {secret: redis-ca, clientCertificate: true}}
  auth: {keysSecret: {name: tally-keys, key: keys.yaml}}
  tls: {counterSecret: counter-tls, gatewayClientSecret: gateway-client-tls, gatewaySecret: gateway-tls}
  discovery:
    mode: consul
    consulAddress: "https://consul.consul.svc:8501"
    consulCaSecret: consul-ca
    consulTokenSecret: {name: consul, key: token}
  telemetry: {otlpEndpoint: "https://collector:4317", otlpCaSecret: collector-ca, podMonitor: true}
  counter:
    resources: {requests: {cpu: "2"}, limits: {cpu: "4", memory: 1Gi}}
  gateway:
    autoscaling:
      minReplicas: 2
      maxReplicas: 10
      targetCpuUtilization: 60
      podsMetric: {name: tally_gateway_http_requests_in_flight, averageValue: "200"}
"#;

/// The CRD, `deploy/`, the chart (default values and every option) and what
/// `tally-operator render` makes of the samples pass the real OpenAPI
/// schemas of three Kubernetes releases, strictly (no unknown fields).
#[test]
fn every_manifest_passes_kubernetes_validate_for_three_releases() {
    let Some(validate) = tally_testkit::tool("kubernetes-validate") else { return };
    let read = |path: &str| std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let render = |name: &str, text: &str| {
        (
            format!("render-{name}"),
            tally_operator::render::render(text, "default").unwrap_or_else(|e| panic!("{name}: {e}")),
        )
    };
    let mut streams = vec![
        ("crd".to_string(), read("deploy/crds/countercluster.yaml")),
        render("sample", &read("deploy/samples/countercluster.yaml")),
        render("tryout", &read("deploy/tryout/countercluster.yaml")),
        render("every-option", EVERY_OPTION_SPEC),
    ];
    for file in ["00-namespace.yaml", "redis.yaml", "jaeger.yaml"] {
        streams.push((format!("tryout-{file}"), read(&format!("deploy/tryout/{file}"))));
    }
    if let Some(helm) = tally_testkit::tool("helm") {
        streams.push(("chart-default".into(), helm_template(&helm, &[])));
        streams.push(("chart-every-option".into(), helm_template(&helm, EVERY_OPTION)));
    }
    kubernetes_validate(&validate, &streams);
}

/// `tally-operator render -f` prints the objects, and says why when it cannot.
#[test]
fn the_render_command_prints_the_objects_or_the_reason() {
    let bin = env!("CARGO_BIN_EXE_tally-operator");
    let sample = repo().join("deploy/samples/countercluster.yaml");
    let out = Command::new(bin).arg("render").arg("-f").arg(&sample).output().expect("render");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs = documents(&String::from_utf8_lossy(&out.stdout)).expect("YAML");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert!(kinds.contains(&"StatefulSet") && kinds.contains(&"Deployment"), "{kinds:?}");
    let out = Command::new(bin).args(["render", "-f", "/nonexistent.yaml"]).output().expect("render");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.yaml"));
}

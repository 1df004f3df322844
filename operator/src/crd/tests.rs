//! The CRD against the services it configures, its CEL rules, and the
//! committed copies of it.

use std::collections::BTreeMap;

use clap::CommandFactory;

use super::*;
use crate::resources::{counter, gateway, sample};

/// `env var → default` of a service's settings, read from its clap definition.
fn service_defaults(command: clap::Command) -> BTreeMap<String, String> {
    command
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_string_lossy().into_owned();
            let default = arg.get_default_values().iter().map(|v| v.to_string_lossy()).collect::<Vec<_>>().join(",");
            Some((env, default))
        })
        .collect()
}

/// Numbers compare by value (`20` = `20.0`), everything else as text.
fn same_value(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Every service setting is either set by the operator from the spec, with
/// the service's own default when the spec leaves it out, or listed here
/// with the reason it is not part of the spec. A new setting in a service
/// fails this test until the CRD covers it or it is listed.
fn check_component(settings: BTreeMap<String, String>, command: clap::Command, not_in_spec: &[&str], set_by: &[&str]) {
    let defaults = service_defaults(command);
    for (env, default) in &defaults {
        if not_in_spec.contains(&env.as_str()) {
            continue;
        }
        let Some(value) = settings.get(env) else {
            panic!("{env} is a service setting the CounterCluster spec does not cover");
        };
        if !set_by.contains(&env.as_str()) {
            assert!(same_value(value, default), "{env}: CRD default {value:?}, service default {default:?}");
        }
    }
    for env in settings.keys().filter(|k| k.starts_with("TALLY_")) {
        assert!(defaults.contains_key(env), "the operator sets {env}, which the service does not read");
    }
}

#[test]
fn defaults_equal_the_services_defaults_and_every_tunable_is_covered() {
    let cc = sample(serde_json::json!({"store": {"managed": true}}));
    check_component(
        counter::settings(&cc),
        tally_counter::config::Config::command(),
        &[
            "TALLY_STORE",                           // from the store spec (env, may be a Secret)
            "TALLY_STORE_TLS_CA_FILE",               // the mounted store.tls Secret, when set
            "TALLY_STORE_TLS_CERT_FILE",             // idem, with clientCertificate
            "TALLY_STORE_TLS_KEY_FILE",              // idem
            "TALLY_TLS_CERT_FILE",                   // the mounted tls.counterSecret, when set
            "TALLY_TLS_KEY_FILE",                    // idem
            "TALLY_TLS_CLIENT_CA_FILE",              // idem (its ca.crt: mutual TLS)
            "TALLY_TLS_RELOAD_MS",                   // service default
            "TALLY_CONSUL_CA_FILE",                  // the mounted discovery.consulCaSecret, in consul mode
            "TALLY_CONSUL_TOKEN",                    // from discovery.consulTokenSecret (env from the Secret)
            "OTEL_EXPORTER_OTLP_CERTIFICATE",        // the mounted telemetry.otlpCaSecret, when set
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", // collectors requiring client certificates: not in the spec
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",         // idem
            "TALLY_WORKER_THREADS",                  // from the CPU limit, else request (resources/threads.rs)
            "TALLY_SHUTDOWN_DELAY_MS",               // the preStop sleep does it; consul mode: resources/counter.rs
            "TALLY_STREAM_WINDOW",                   // per-stream protocol detail, not a deployment tunable
            "TALLY_MAX_CONCURRENT_STREAMS",          // idem
            "TALLY_HTTP_HEADER_TIMEOUT_MS",          // admin port (probes, scrapes): service defaults
            "TALLY_HTTP_IDLE_TIMEOUT_MS",            // idem
            "TALLY_HTTP_MAX_CONNECTIONS",            // idem
            "TALLY_HTTP_MAX_HEADER_BYTES",           // idem
            "TALLY_HTTP2_MAX_CONCURRENT_STREAMS",    // idem
            "TALLY_HEALTH_INTERVAL_MS",              // store readiness probe period: fixed 1 s
            "TALLY_CONSUL_ADDR",                     // set from discovery.consulAddress in consul mode only
            "TALLY_CONSUL_SERVICE",                  // per CounterCluster, set in consul mode only
            "TALLY_CONSUL_SERVICE_ADDRESS",          // the pod IP, from the downward API
            "TALLY_CONSUL_TAGS",                     // service defaults
            "TALLY_CONSUL_CHECK_INTERVAL_S",         // idem
            "TALLY_CONSUL_DEREGISTER_AFTER_S",       // idem
            "OTEL_EXPORTER_OTLP_ENDPOINT",           // set when telemetry.otlpEndpoint is
            "TALLY_SETTINGS_FILE",                   // env var naming the mounted ConfigMap itself
            "TALLY_SETTINGS_RELOAD_MS",              // service default
        ],
        &["TALLY_LISTEN", "TALLY_ADMIN_LISTEN", "TALLY_LOG_FORMAT", "OTEL_SERVICE_NAME", "RUST_LOG"],
    );
    check_component(
        gateway::settings(&cc),
        tally_gateway::config::Config::command(),
        &[
            "TALLY_WORKER_THREADS",                  // from the CPU limit, else request (resources/threads.rs)
            "TALLY_SHUTDOWN_DELAY_MS",               // the pod's preStop sleep does it (resources/config.rs)
            "TALLY_AUTH",                            // api_keys when spec.auth is set
            "TALLY_AUTH_KEYS_FILE",                  // the mounted keys Secret, when spec.auth is set
            "TALLY_AUTH_RELOAD_MS",                  // service default
            "TALLY_COUNTER_TLS_CA_FILE",             // the mounted tls.gatewayClientSecret, when set
            "TALLY_COUNTER_TLS_CERT_FILE",           // idem
            "TALLY_COUNTER_TLS_KEY_FILE",            // idem
            "TALLY_COUNTER_TLS_SERVER_NAME",         // the counter Service's DNS name, with TLS
            "TALLY_TLS_CERT_FILE",                   // the mounted tls.gatewaySecret, when set
            "TALLY_TLS_KEY_FILE",                    // idem
            "TALLY_TLS_CLIENT_CA_FILE",              // client certificates at the edge: not in the spec
            "TALLY_TLS_RELOAD_MS",                   // service default
            "TALLY_CONSUL_CA_FILE",                  // the mounted discovery.consulCaSecret, in consul mode
            "TALLY_CONSUL_TOKEN",                    // from discovery.consulTokenSecret (env from the Secret)
            "OTEL_EXPORTER_OTLP_CERTIFICATE",        // the mounted telemetry.otlpCaSecret, when set
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", // not in the spec
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",         // idem
            "TALLY_COUNTER_ENDPOINTS",               // static discovery: outside Kubernetes only
            "TALLY_DNS_INTERVAL_MS",                 // service default
            "TALLY_K8S_NAMESPACE",                   // the pod's own namespace
            "TALLY_K8S_PORT_NAME",                   // the counter Service's port name, fixed
            "TALLY_CONSUL_SERVICE",                  // per CounterCluster, set in consul mode only
            "TALLY_CONSUL_TAG",                      // idem
            "TALLY_CONSUL_WAIT_S",                   // service default
            "TALLY_COALESCE_MAX_OPS",                // coalescing internals; `coalesce` turns it off
            "TALLY_COALESCE_MAX_INFLIGHT",           // idem
            "TALLY_DNS_NAME",                        // set in dns mode only
            "TALLY_CONSUL_ADDR",                     // set in consul mode only
            "OTEL_EXPORTER_OTLP_ENDPOINT",           // set when telemetry.otlpEndpoint is
            "TALLY_SETTINGS_FILE",                   // env var naming the mounted ConfigMap itself
            "TALLY_SETTINGS_RELOAD_MS",              // service default
        ],
        &[
            "RUST_LOG",
            "TALLY_LISTEN",
            "TALLY_ADMIN_LISTEN",
            "TALLY_LOG_FORMAT",
            "TALLY_DISCOVERY",
            "TALLY_K8S_SERVICE",
            "OTEL_SERVICE_NAME",
        ],
    );
}

#[test]
fn the_schema_carries_the_defaults() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(CounterCluster::crd()).expect("crd");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(spec["counter"]["properties"]["batchSize"]["default"], 100);
    assert_eq!(spec["gateway"]["properties"]["poolSize"]["default"], 20);
    assert_eq!(spec["gateway"]["properties"]["lbPolicy"]["default"], "round_robin");
    assert_eq!(spec["telemetry"]["properties"]["samplingRatio"]["default"], 0.1);
    assert_eq!(spec["counter"]["properties"]["batchSize"]["minimum"], 1.0);
}

/// The operator guide's table (`docs/operator.md`) names every field of
/// the spec, or an object holding it (`counter.autoscaling`, `store.tls`,
/// …), and gives each field the CRD's default and range.
#[test]
fn the_operator_guide_documents_every_field_with_its_default_and_range() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(CounterCluster::crd()).expect("crd");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let guide = include_str!("../../../docs/operator.md");
    // field → (default cell, allowed cell)
    let rows: BTreeMap<String, (String, String)> = guide
        .lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let field = tally_testkit::docs::backticked(cells.get(1)?).into_iter().next()?;
            Some((field, (cells.get(2)?.to_string(), cells.get(3)?.to_string())))
        })
        .collect();
    let mut problems = Vec::new();
    check_documented(spec, "", &rows, &mut problems);
    assert!(problems.is_empty(), "docs/operator.md: {problems:#?}");
}

/// [`the_operator_guide_documents_every_field_with_its_default_and_range`]
/// for the properties of `schema`, at `prefix`.
fn check_documented(
    schema: &serde_json::Value,
    prefix: &str,
    rows: &BTreeMap<String, (String, String)>,
    problems: &mut Vec<String>,
) {
    let Some(properties) = schema["properties"].as_object() else { return };
    for (name, property) in properties {
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        let Some((default, allowed)) = rows.get(&path) else {
            if property["properties"].is_object() {
                check_documented(property, &path, rows, problems);
            } else {
                problems.push(format!("{path} is not in the table"));
            }
            continue;
        };
        if let Some(want) = property.get("default").filter(|d| !d.is_object() && !d.is_null()) {
            let want = want.as_str().map(str::to_string).unwrap_or_else(|| want.to_string());
            if !tally_testkit::docs::backticked(default).iter().any(|d| same_value(d, &want)) {
                problems.push(format!("{path}: default {want} in the CRD, {default:?} in the table"));
            }
        }
        if let (Some(min), Some(max)) = (property["minimum"].as_f64(), property["maximum"].as_f64()) {
            let want = format!("{min}–{max}");
            if !allowed.contains(&want) {
                problems.push(format!("{path}: range {want} in the CRD, {allowed:?} in the table"));
            }
        }
    }
}

fn cel_errors(spec: serde_json::Value) -> String {
    crate::validate::validate(&sample(spec)).err().map(|e| e.0).unwrap_or_default()
}

#[test]
fn cel_rules_reject_contradictory_specs() {
    assert_eq!(cel_errors(serde_json::json!({"store": {"managed": true}})), "");
    assert_eq!(cel_errors(serde_json::json!({"store": {"url": "redis://r:6379"}})), "");
    let both = cel_errors(serde_json::json!({"store": {"url": "redis://r:6379", "managed": true}}));
    assert!(both.contains("exactly one"), "{both:?}");
    let breaker = cel_errors(serde_json::json!({
        "store": {"managed": true}, "gateway": {"breakerRecoveryMs": 5000, "breakerMaxRecoveryMs": 1000},
    }));
    assert!(breaker.contains("breakerMaxRecoveryMs must be at least"), "{breaker:?}");
    for url in ["redis://:s3cret@r:6379", "rediss://user:s3cret@r:6380/0", "redis+cluster://:pw@a:1,b:2"] {
        let password = cel_errors(serde_json::json!({"store": {"url": url}}));
        assert!(password.contains("may not carry a password"), "{url}: {password:?}");
    }
    for url in ["redis://r:6379", "rediss://user@r:6380/0", "redis+cluster://a:1,b:2", "rediss+cluster://a:1,b:2"] {
        assert_eq!(cel_errors(serde_json::json!({"store": {"url": url}})), "", "{url}");
    }
    let ca = serde_json::json!({"secret": "redis-ca"});
    let plain = cel_errors(serde_json::json!({"store": {"url": "redis://r:6379", "tls": ca}}));
    assert!(plain.contains("needs a rediss://"), "{plain:?}");
    let managed = cel_errors(serde_json::json!({"store": {"managed": true, "tls": ca}}));
    assert!(managed.contains("for your own Redis"), "{managed:?}");
    assert_eq!(cel_errors(serde_json::json!({"store": {"url": "rediss+cluster://a:1", "tls": ca}})), "");
    let one_sided = cel_errors(serde_json::json!({"store": {"managed": true}, "tls": {"counterSecret": "c"}}));
    assert!(one_sided.contains("mutual"), "{one_sided:?}");
    let scaling = serde_json::json!({"minReplicas": 5, "maxReplicas": 2});
    let inverted = cel_errors(serde_json::json!({"store": {"managed": true}, "gateway": {"autoscaling": scaling}}));
    assert!(inverted.contains("minReplicas must be at most maxReplicas"), "{inverted:?}");
    let both = serde_json::json!({"counterSecret": "c", "gatewayClientSecret": "g"});
    assert_eq!(cel_errors(serde_json::json!({"store": {"managed": true}, "tls": both})), "");
    let own_redis = serde_json::json!({"url": "redis+cluster://a:1,b:2"});
    let waiting = serde_json::json!({"storeWaitReplicas": 1, "storeWaitTimeoutMs": 100});
    assert_eq!(cel_errors(serde_json::json!({"store": own_redis, "counter": waiting})), "");
    let too_long = serde_json::json!({"storeWaitReplicas": 1, "storeWaitTimeoutMs": 501, "storeTimeoutMs": 1000});
    let long = cel_errors(serde_json::json!({"store": own_redis, "counter": too_long}));
    assert!(long.contains("at most half of storeTimeoutMs"), "{long:?}");
    let no_replicas = cel_errors(serde_json::json!({"store": {"managed": true}, "counter": waiting}));
    assert!(no_replicas.contains("the managed Redis has none"), "{no_replicas:?}");
}

#[test]
fn url_patterns_accept_only_what_the_services_support() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(CounterCluster::crd()).expect("crd");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(spec["store"]["properties"]["url"]["pattern"], r"^(redis|rediss|redis\+cluster|rediss\+cluster)://");
    assert_eq!(spec["telemetry"]["properties"]["otlpEndpoint"]["pattern"], "^https?://");
    assert_eq!(spec["discovery"]["properties"]["consulAddress"]["pattern"], "^https?://");
}

#[test]
fn the_committed_crds_match_the_rust_types() {
    let committed = include_str!("../../../deploy/crds/countercluster.yaml");
    // Not assert_eq: the whole CRD twice would bury the message.
    assert!(committed == crd_yaml(), "deploy/crds/countercluster.yaml drifted from crd.rs: run `make crd`");
    let in_chart = include_str!("../../../charts/tally-operator/crds/countercluster.yaml");
    assert!(in_chart == crd_yaml(), "the chart's CRD drifted from crd.rs: run `make crd`");
}

/// DNS-1035 label (Service names): lowercase alphanumerics and '-', starting
/// with a letter, ending alphanumeric, at most 63.
fn dns_1035_label(s: &str) -> bool {
    s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A label value: at most 63, alphanumerics, '-', '_', '.', alphanumeric at both ends.
fn label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
}

#[test]
fn the_longest_allowed_name_makes_valid_names_and_labels_and_longer_ones_are_refused() {
    let longest = format!("t{}", "x".repeat(45));
    let mut cc = sample(serde_json::json!({"store": {"managed": true}}));
    cc.metadata.name = Some(longest.clone());
    assert_eq!(crate::validate::validate(&cc).err().map(|e| e.0), None, "46 characters are allowed");
    for owned in crate::resources::desired::desired(&cc) {
        let object = owned.to_json();
        let (kind, name) = owned.key();
        assert!(dns_1035_label(&name), "{kind} {name}: not a DNS-1035 label");
        if kind == "StatefulSet" {
            assert!(name.len() <= 52, "{name}: a StatefulSet name over 52 breaks controller-revision-hash");
        }
        let mut labels: Vec<(String, serde_json::Value)> = Vec::new();
        for path in ["/metadata/labels", "/spec/template/metadata/labels", "/spec/selector/matchLabels"] {
            if let Some(map) = object.pointer(path).and_then(|v| v.as_object()) {
                labels.extend(map.clone());
            }
        }
        for (key, value) in labels {
            let value = value.as_str().unwrap_or_default();
            assert!(label_value(value), "{kind} {name}: label {key}={value} is not a valid label value");
        }
    }
    for (bad, why) in [
        (format!("t{}", "x".repeat(46)), "47 characters"),
        ("demo.tally".to_string(), "a dot"),
        ("Demo".to_string(), "upper case"),
        ("9demo".to_string(), "a leading digit"),
        ("demo-".to_string(), "a trailing '-'"),
    ] {
        let mut cc = sample(serde_json::json!({"store": {"managed": true}}));
        cc.metadata.name = Some(bad.clone());
        let err = crate::validate::validate(&cc).err().map(|e| e.0).unwrap_or_default();
        assert!(err.contains("metadata.name must be at most 46"), "{why} ({bad}): {err:?}");
    }
}

#[test]
fn the_schema_is_one_the_api_server_takes_without_warnings() {
    let yaml = crd_yaml();
    // Unsigned formats are not OpenAPI formats Kubernetes knows: 1.34+ warns on every apply.
    assert!(!yaml.contains("format: uint"), "an unsigned integer format in the CRD");
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(CounterCluster::crd()).expect("crd");
    assert_eq!(crd["spec"]["names"]["shortNames"], serde_json::json!(["tcc"]), "not `cc` (Cluster API's ClusterClass)");
    let status = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
    let conditions = &status["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], serde_json::json!(["type"]));
    assert!(conditions["maxItems"].as_f64().is_some_and(|n| n > 0.0));
}

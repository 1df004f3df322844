//! Whether the pods run the settings the operator wrote: the
//! `SettingsApplied` condition.
//!
//! A live setting changes only the ConfigMap: no rollout follows, so the
//! Deployment's status says nothing about it. Each service shows the
//! settings file it runs at `/api/v1/system/settings` on its admin port
//! ([`tally_runtime::live`]): the SHA-256 of the version in force, and why
//! the latest version was refused, if it was. The operator reads that from
//! every ready pod through the API server's pod proxy (RBAC `pods/proxy`
//! get, read-only; no route from the operator to the pods is needed) and
//! compares it with the digest of the file it wrote.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use tally_runtime::live::{SETTINGS_PATH, SettingsState};

/// What one pod said about its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSettings {
    pub pod: String,
    pub component: &'static str,
    /// The pod's view, or why it could not be read.
    pub report: Result<SettingsState, String>,
}

/// One component's pods and the digest of the settings file written for it.
pub struct Expected<'a> {
    pub component: &'static str,
    pub digest: String,
    pub pods: &'a [Pod],
    pub admin_port: i32,
}

/// The `SettingsApplied` condition: (status, reason, message).
pub fn condition_for(expected: &[(&'static str, String)], reports: &[PodSettings]) -> (bool, &'static str, String) {
    let refused: Vec<String> = reports
        .iter()
        .filter_map(|r| {
            let why = r.report.as_ref().ok()?.refused.as_ref()?;
            Some(format!("{} pod {}: {why}", r.component, r.pod))
        })
        .collect();
    if !refused.is_empty() {
        return (false, "SettingsRefused", format!("the settings in force stay: {}", refused.join("; ")));
    }
    let mut behind = Vec::new();
    for (component, digest) in expected {
        let pods: Vec<&PodSettings> = reports.iter().filter(|r| r.component == *component).collect();
        let current = pods
            .iter()
            .filter(|r| r.report.as_ref().is_ok_and(|s| s.in_force.as_deref() == Some(digest.as_str())))
            .count();
        if pods.is_empty() || current < pods.len() {
            behind.push(format!("{component}s {current}/{}", pods.len()));
        }
    }
    let unreadable: Vec<String> = reports
        .iter()
        .filter_map(|r| r.report.as_ref().err().map(|err| format!("{} pod {}: {err}", r.component, r.pod)))
        .collect();
    match (behind.is_empty(), unreadable.is_empty()) {
        (true, _) => (true, "SettingsApplied", "every ready pod runs the current settings".into()),
        (false, true) => (
            false,
            "SettingsPending",
            format!(
                "ready pods on the current settings: {} (the kubelet updates mounted ConfigMaps within about a minute)",
                behind.join(", ")
            ),
        ),
        (false, false) => (false, "SettingsUnknown", format!("{}; {}", behind.join(", "), unreadable.join("; "))),
    }
}

fn is_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// How long one pod may take to answer: a hung admin port must not stall
/// the reconcile (and so the status) for the API client's own timeouts.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// What one pod says, within [`ASK_TIMEOUT`].
async fn ask(client: &Client, path: String) -> Result<SettingsState, String> {
    let request = http::Request::get(path).body(Vec::new()).map_err(|err| err.to_string())?;
    match tokio::time::timeout(ASK_TIMEOUT, client.request::<SettingsState>(request)).await {
        Ok(answer) => answer.map_err(|err| err.to_string()),
        Err(_) => Err(format!("no answer within {} s", ASK_TIMEOUT.as_secs())),
    }
}

/// Asks every ready pod of each component for its settings view, all at once.
pub async fn observe(client: &Client, namespace: &str, components: &[Expected<'_>]) -> Vec<PodSettings> {
    let mut asks = Vec::new();
    for expected in components {
        for pod in expected.pods.iter().filter(|pod| is_ready(pod)) {
            let Some(name) = pod.metadata.name.clone() else { continue };
            let path =
                format!("/api/v1/namespaces/{namespace}/pods/{name}:{}/proxy{SETTINGS_PATH}", expected.admin_port);
            let component = expected.component;
            asks.push(async move { PodSettings { pod: name, component, report: ask(client, path).await } });
        }
    }
    futures_util::future::join_all(asks).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(in_force: &str, refused: Option<&str>) -> SettingsState {
        SettingsState {
            file: Some("/etc/tally/settings/settings.env".into()),
            in_force: Some(in_force.into()),
            refused: refused.map(str::to_string),
            restart_pending: Vec::new(),
            live: Vec::new(),
            ignored: Vec::new(),
        }
    }

    fn pod(name: &str, component: &'static str, report: Result<SettingsState, String>) -> PodSettings {
        PodSettings { pod: name.into(), component, report }
    }

    #[test]
    fn applied_when_every_ready_pod_runs_the_written_file() {
        let expected = [("counter", "c1".to_string()), ("gateway", "g1".to_string())];
        let reports = [pod("c-a", "counter", Ok(state("c1", None))), pod("g-a", "gateway", Ok(state("g1", None)))];
        assert_eq!(condition_for(&expected, &reports).1, "SettingsApplied");
    }

    #[test]
    fn a_pod_behind_is_pending_and_a_refusal_names_the_pod_and_the_reason() {
        let expected = [("counter", "c2".to_string()), ("gateway", "g1".to_string())];
        let behind = [pod("c-a", "counter", Ok(state("c1", None))), pod("g-a", "gateway", Ok(state("g1", None)))];
        let (ok, reason, message) = condition_for(&expected, &behind);
        assert_eq!((ok, reason), (false, "SettingsPending"));
        assert!(message.contains("counters 0/1"), "{message}");
        let refused = [pod("c-a", "counter", Ok(state("c1", Some("TALLY_BATCH_SIZE: invalid value '0'"))))];
        let (ok, reason, message) = condition_for(&expected, &refused);
        assert_eq!((ok, reason), (false, "SettingsRefused"));
        assert_eq!(message, "the settings in force stay: counter pod c-a: TALLY_BATCH_SIZE: invalid value '0'");
        let unreadable = [pod("c-a", "counter", Err("connection refused".into()))];
        assert_eq!(condition_for(&expected, &unreadable).1, "SettingsUnknown");
        assert_eq!(condition_for(&expected, &[]).1, "SettingsPending", "no ready pod yet");
    }
}

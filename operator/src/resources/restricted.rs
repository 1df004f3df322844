//! Pod Security Standards, profile "restricted" (Kubernetes 1.32), as a
//! check of a pod template: what the API server's `PodSecurity` admission
//! would reject in a namespace labelled
//! `pod-security.kubernetes.io/enforce: restricted`. Used by the tests of
//! every pod the operator renders.

use k8s_openapi::api::core::v1::{Container, PodSpec};

/// Volume kinds "restricted" allows.
const ALLOWED_VOLUMES: &[&str] =
    &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

/// Every rule `pod` breaks, in words; empty when it passes.
pub fn violations(pod: &PodSpec) -> Vec<String> {
    let mut found = Vec::new();
    let pod_sc = pod.security_context.clone().unwrap_or_default();
    for (flag, name) in [(pod.host_network, "hostNetwork"), (pod.host_pid, "hostPID"), (pod.host_ipc, "hostIPC")] {
        if flag == Some(true) {
            found.push(format!("{name} is set"));
        }
    }
    for volume in pod.volumes.iter().flatten() {
        let value = serde_json::to_value(volume).unwrap_or_default();
        let kinds: Vec<&String> =
            value.as_object().map(|o| o.keys().filter(|k| *k != "name").collect()).unwrap_or_default();
        for kind in kinds {
            if !ALLOWED_VOLUMES.contains(&kind.as_str()) {
                found.push(format!("volume {} is of kind {kind}", volume.name));
            }
        }
    }
    let pod_seccomp = pod_sc.seccomp_profile.as_ref().map(|p| p.type_.clone());
    let containers: Vec<&Container> = pod.containers.iter().chain(pod.init_containers.iter().flatten()).collect();
    for c in containers {
        let sc = c.security_context.clone().unwrap_or_default();
        let name = &c.name;
        if sc.privileged == Some(true) {
            found.push(format!("{name}: privileged"));
        }
        if sc.allow_privilege_escalation != Some(false) {
            found.push(format!("{name}: allowPrivilegeEscalation is not false"));
        }
        if sc.run_as_non_root.or(pod_sc.run_as_non_root) != Some(true) {
            found.push(format!("{name}: runAsNonRoot is not true"));
        }
        if sc.run_as_user.or(pod_sc.run_as_user) == Some(0) {
            found.push(format!("{name}: runAsUser is 0"));
        }
        let seccomp = sc.seccomp_profile.as_ref().map(|p| p.type_.clone()).or(pod_seccomp.clone());
        if !matches!(seccomp.as_deref(), Some("RuntimeDefault" | "Localhost")) {
            found.push(format!("{name}: seccompProfile is not RuntimeDefault or Localhost"));
        }
        let caps = sc.capabilities.unwrap_or_default();
        if !caps.drop.iter().flatten().any(|c| c == "ALL") {
            found.push(format!("{name}: capabilities do not drop ALL"));
        }
        for added in caps.add.iter().flatten().filter(|c| *c != "NET_BIND_SERVICE") {
            found.push(format!("{name}: adds capability {added}"));
        }
        for port in c.ports.iter().flatten().filter(|p| p.host_port.is_some_and(|h| h != 0)) {
            found.push(format!("{name}: hostPort {:?}", port.host_port));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{counter, gateway, redis, sample};

    #[test]
    fn the_check_catches_what_restricted_rejects() {
        let pod = PodSpec {
            containers: vec![Container { name: "c".into(), ..Container::default() }],
            host_network: Some(true),
            ..PodSpec::default()
        };
        let found = violations(&pod);
        for rule in ["hostNetwork", "allowPrivilegeEscalation", "runAsNonRoot", "seccompProfile", "drop ALL"] {
            assert!(found.iter().any(|f| f.contains(rule)), "{rule} not caught: {found:?}");
        }
    }

    #[test]
    fn every_pod_the_operator_makes_passes_restricted() {
        let specs = [
            serde_json::json!({"store": {"managed": true}}),
            serde_json::json!({
                "store": {"url": "rediss://r:6380", "tls": {"secret": "ca", "clientCertificate": true}},
                "auth": {"keysSecret": {"name": "keys", "key": "keys.yaml"}},
                "tls": {"counterSecret": "c", "gatewayClientSecret": "g", "gatewaySecret": "h"},
                "discovery": {"mode": "consul", "consulAddress": "https://consul:8501", "consulCaSecret": "cc"},
            }),
        ];
        for spec in specs {
            let cc = sample(spec);
            let pods = [
                ("counter", counter::deployment(&cc).spec.template.spec),
                ("gateway", gateway::deployment(&cc).spec.template.spec),
                ("redis", redis::stateful_set(&cc).spec.template.spec),
            ];
            for (what, pod) in pods {
                let pod = pod.expect("a pod template");
                assert_eq!(violations(&pod), Vec::<String>::new(), "{what}");
            }
        }
    }
}

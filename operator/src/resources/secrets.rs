//! Secrets the pods read as files: certificates (cert-manager's
//! `kubernetes.io/tls` layout: `tls.crt`, `tls.key`, `ca.crt`) and the API
//! keys. Each is a whole-Secret, read-only volume (no `subPath`), so the
//! kubelet updates it in place and the services re-read it without a
//! restart; the settings that point at the files go into the ConfigMap
//! (paths, not secrets). What the pods need as a value (Consul's token) is
//! an environment variable from the Secret, never in the ConfigMap.

use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, KeyToPath, SecretKeySelector, SecretVolumeSource, Volume, VolumeMount,
};
use kube::ResourceExt;

use super::config::Settings;
use crate::crd::{CounterCluster, DiscoveryMode, SecretKeyRef};

/// Volumes, their mounts, and the settings naming the mounted files.
#[derive(Debug, Default)]
pub struct Mounts {
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
    pub settings: Settings,
}

impl Mounts {
    /// Mounts Secret `secret` at `/etc/tally/<volume>` (only `items`, renamed, when given)
    /// and records `settings` as (setting, file name under that directory).
    fn add(&mut self, volume: &str, secret: &str, items: Option<Vec<KeyToPath>>, settings: &[(&str, &str)]) {
        let dir = format!("/etc/tally/{volume}");
        self.volumes.push(Volume {
            name: volume.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                items,
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        self.mounts.push(VolumeMount {
            name: volume.into(),
            mount_path: dir.clone(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        for (setting, file) in settings {
            self.settings.insert((*setting).to_string(), format!("{dir}/{file}"));
        }
    }

    /// `None` when nothing is mounted (the pod spec leaves the lists out).
    pub fn volumes(&self) -> Option<Vec<Volume>> {
        (!self.volumes.is_empty()).then(|| self.volumes.clone())
    }

    pub fn mounts(&self) -> Option<Vec<VolumeMount>> {
        (!self.mounts.is_empty()).then(|| self.mounts.clone())
    }
}

/// The CA files of the collector and of Consul, which both services read.
fn shared(cc: &CounterCluster, mounts: &mut Mounts) {
    if let Some(secret) = &cc.spec.telemetry.otlp_ca_secret {
        mounts.add("otlp-ca", secret, None, &[("OTEL_EXPORTER_OTLP_CERTIFICATE", "ca.crt")]);
    }
    if cc.spec.discovery.mode == DiscoveryMode::Consul
        && let Some(secret) = &cc.spec.discovery.consul_ca_secret
    {
        mounts.add("consul-ca", secret, None, &[("TALLY_CONSUL_CA_FILE", "ca.crt")]);
    }
}

/// What the counter pods mount: their serving certificate, the store's CA
/// (and client certificate), the collector's and Consul's CAs.
pub fn counter(cc: &CounterCluster) -> Mounts {
    let mut mounts = Mounts::default();
    if let Some(secret) = cc.spec.tls.as_ref().and_then(|tls| tls.counter_secret.as_ref()) {
        let files = [
            ("TALLY_TLS_CERT_FILE", "tls.crt"),
            ("TALLY_TLS_KEY_FILE", "tls.key"),
            ("TALLY_TLS_CLIENT_CA_FILE", "ca.crt"),
        ];
        mounts.add("tls", secret, None, &files);
    }
    if let Some(store) = &cc.spec.store.tls {
        let mut files = vec![("TALLY_STORE_TLS_CA_FILE", "ca.crt")];
        if store.client_certificate {
            files.extend([("TALLY_STORE_TLS_CERT_FILE", "tls.crt"), ("TALLY_STORE_TLS_KEY_FILE", "tls.key")]);
        }
        mounts.add("store-tls", &store.secret, None, &files);
    }
    shared(cc, &mut mounts);
    mounts
}

/// What the gateway pods mount: the API keys, their client certificate to
/// the counters, their HTTPS certificate, the collector's and Consul's CAs.
pub fn gateway(cc: &CounterCluster) -> Mounts {
    let mut mounts = Mounts::default();
    if let Some(auth) = &cc.spec.auth {
        let SecretKeyRef { name, key } = &auth.keys_secret;
        let items = vec![KeyToPath { key: key.clone(), path: "keys.yaml".into(), ..KeyToPath::default() }];
        mounts.add("auth", name, Some(items), &[("TALLY_AUTH_KEYS_FILE", "keys.yaml")]);
        mounts.settings.insert("TALLY_AUTH".into(), "api_keys".into());
    }
    let tls = cc.spec.tls.clone().unwrap_or_default();
    if let Some(secret) = &tls.gateway_client_secret {
        let files = [
            ("TALLY_COUNTER_TLS_CA_FILE", "ca.crt"),
            ("TALLY_COUNTER_TLS_CERT_FILE", "tls.crt"),
            ("TALLY_COUNTER_TLS_KEY_FILE", "tls.key"),
        ];
        mounts.add("upstream-tls", secret, None, &files);
        // Discovered counters are pod IPs; their certificate names the Service.
        let namespace = cc.namespace().unwrap_or_else(|| "default".into());
        mounts
            .settings
            .insert("TALLY_COUNTER_TLS_SERVER_NAME".into(), format!("{}.{namespace}.svc", super::counter::name(cc)));
    }
    if let Some(secret) = &tls.gateway_secret {
        mounts.add("tls", secret, None, &[("TALLY_TLS_CERT_FILE", "tls.crt"), ("TALLY_TLS_KEY_FILE", "tls.key")]);
    }
    shared(cc, &mut mounts);
    mounts
}

/// `TALLY_CONSUL_TOKEN` from its Secret, in consul mode.
pub fn consul_token(cc: &CounterCluster) -> Option<EnvVar> {
    if cc.spec.discovery.mode != DiscoveryMode::Consul {
        return None;
    }
    let SecretKeyRef { name, key } = cc.spec.discovery.consul_token_secret.as_ref()?;
    Some(EnvVar {
        name: "TALLY_CONSUL_TOKEN".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: name.clone(), key: key.clone(), optional: Some(false) }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::sample;

    fn paths(mounts: &Mounts) -> Vec<(String, String)> {
        let mut paths: Vec<_> = mounts.settings.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        paths.sort();
        paths
    }

    #[test]
    fn nothing_is_mounted_without_tls_keys_or_cas() {
        let cc = sample(serde_json::json!({"store": {"managed": true}}));
        for mounts in [counter(&cc), gateway(&cc)] {
            assert!(mounts.volumes().is_none() && mounts.mounts().is_none() && mounts.settings.is_empty());
        }
        assert!(consul_token(&cc).is_none());
    }

    #[test]
    fn certificates_are_mounted_whole_and_the_settings_name_the_files() {
        let cc = sample(serde_json::json!({
            "store": {"url": "rediss://redis.example:6380", "tls": {"secret": "redis-ca", "clientCertificate": true}},
            "tls": {"counterSecret": "counter-tls", "gatewayClientSecret": "gateway-client", "gatewaySecret": "gateway-tls"},
            "telemetry": {"otlpEndpoint": "https://collector:4317", "otlpCaSecret": "collector-ca"},
        }));
        let counter = counter(&cc);
        let secrets: Vec<_> = counter.volumes.iter().filter_map(|v| v.secret.as_ref()?.secret_name.clone()).collect();
        assert_eq!(secrets, ["counter-tls", "redis-ca", "collector-ca"]);
        assert!(
            counter.volumes.iter().all(|v| v.secret.as_ref().is_some_and(|s| s.items.is_none())),
            "whole Secrets, updated in place"
        );
        assert!(counter.mounts.iter().all(|m| m.read_only == Some(true) && m.sub_path.is_none()));
        assert_eq!(counter.settings["TALLY_TLS_CLIENT_CA_FILE"], "/etc/tally/tls/ca.crt");
        assert_eq!(counter.settings["TALLY_STORE_TLS_KEY_FILE"], "/etc/tally/store-tls/tls.key");
        assert_eq!(counter.settings["OTEL_EXPORTER_OTLP_CERTIFICATE"], "/etc/tally/otlp-ca/ca.crt");

        let gateway = gateway(&cc);
        assert_eq!(
            paths(&gateway)
                .iter()
                .filter(|(k, _)| k.starts_with("TALLY_COUNTER_TLS") || k.starts_with("TALLY_TLS"))
                .cloned()
                .collect::<Vec<_>>(),
            [
                ("TALLY_COUNTER_TLS_CA_FILE".into(), "/etc/tally/upstream-tls/ca.crt".into()),
                ("TALLY_COUNTER_TLS_CERT_FILE".into(), "/etc/tally/upstream-tls/tls.crt".into()),
                ("TALLY_COUNTER_TLS_KEY_FILE".into(), "/etc/tally/upstream-tls/tls.key".into()),
                ("TALLY_COUNTER_TLS_SERVER_NAME".into(), "demo-counter.tally.svc".into()),
                ("TALLY_TLS_CERT_FILE".into(), "/etc/tally/tls/tls.crt".into()),
                ("TALLY_TLS_KEY_FILE".into(), "/etc/tally/tls/tls.key".into()),
            ]
        );
    }

    #[test]
    fn consul_gets_its_ca_and_token_only_in_consul_mode() {
        let consul = serde_json::json!({
            "mode": "consul", "consulAddress": "https://consul:8501",
            "consulCaSecret": "consul-ca", "consulTokenSecret": {"name": "consul", "key": "token"},
        });
        let cc = sample(serde_json::json!({"store": {"managed": true}, "discovery": consul}));
        assert_eq!(counter(&cc).settings["TALLY_CONSUL_CA_FILE"], "/etc/tally/consul-ca/ca.crt");
        let token = consul_token(&cc).expect("a token variable");
        let from = token.value_from.and_then(|v| v.secret_key_ref).expect("from the Secret");
        assert_eq!((from.name.as_str(), from.key.as_str()), ("consul", "token"));
        let mut dns = consul.clone();
        dns["mode"] = "dns".into();
        let cc = sample(serde_json::json!({"store": {"managed": true}, "discovery": dns}));
        assert!(consul_token(&cc).is_none() && !counter(&cc).settings.contains_key("TALLY_CONSUL_CA_FILE"));
    }
}

//! The reconciler: thin apply steps around the pure builders.
//!
//! Every owned object is applied with server-side apply under one field
//! manager (`tally-operator`), so a second reconcile of an unchanged
//! resource changes nothing; the status reports what was observed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::{CounterCluster, CounterClusterStatus};
use crate::resources::{access, counter, gateway, redis};
use crate::validate::validate;

pub const FIELD_MANAGER: &str = "tally-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("CounterCluster has no namespace")]
    NoNamespace,
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

pub struct Context {
    pub client: Client,
}

async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.meta().name.clone().unwrap_or_default();
    Ok(api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object)).await?)
}

fn condition(kind: &str, ok: bool, reason: &str, message: String, generation: Option<i64>, now: &Time) -> Condition {
    Condition {
        type_: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// The status for what was observed: pure, so every condition is unit-tested.
pub fn status_for(
    cc: &CounterCluster,
    invalid: Option<String>,
    counter_ready: i32,
    gateway_ready: i32,
    now: Time,
) -> CounterClusterStatus {
    let generation = cc.metadata.generation;
    let want = (cc.spec.counter.replicas, cc.spec.gateway.replicas);
    let ready = invalid.is_none() && counter_ready >= want.0 && gateway_ready >= want.1;
    let conditions = match &invalid {
        Some(message) => vec![
            condition("Ready", false, "InvalidSpec", message.clone(), generation, &now),
            condition("Progressing", false, "InvalidSpec", message.clone(), generation, &now),
            condition("Degraded", true, "InvalidSpec", message.clone(), generation, &now),
        ],
        None => vec![
            condition(
                "Ready",
                ready,
                if ready { "AllReplicasReady" } else { "ReplicasNotReady" },
                format!("counters {counter_ready}/{}, gateways {gateway_ready}/{}", want.0, want.1),
                generation,
                &now,
            ),
            condition(
                "Progressing",
                !ready,
                if ready { "RolloutComplete" } else { "RollingOut" },
                String::new(),
                generation,
                &now,
            ),
            condition("Degraded", false, "AsExpected", String::new(), generation, &now),
        ],
    };
    CounterClusterStatus {
        observed_generation: generation,
        counter_ready_replicas: counter_ready,
        gateway_ready_replicas: gateway_ready,
        gateway_url: invalid.is_none().then(|| {
            format!("http://{}.{}.svc:{}", gateway::name(cc), cc.namespace().unwrap_or_default(), gateway::HTTP_PORT)
        }),
        conditions,
    }
}

pub async fn reconcile(cc: Arc<CounterCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = cc.namespace().ok_or(Error::NoNamespace)?;
    let client = &ctx.client;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = match validate(&cc.spec) {
        Err(invalid) => {
            tracing::warn!(name = %cc.name_any(), %invalid, "invalid CounterCluster spec");
            status_for(&cc, Some(invalid.to_string()), 0, 0, now)
        }
        Ok(()) => {
            if cc.spec.store.managed && cc.spec.store.url.is_none() && cc.spec.store.url_secret.is_none() {
                apply(client, &namespace, &redis::service(&cc)).await?;
                apply(client, &namespace, &redis::stateful_set(&cc)).await?;
            }
            apply(client, &namespace, &counter::service(&cc)).await?;
            let counters = apply(client, &namespace, &counter::deployment(&cc)).await?;
            apply(client, &namespace, &access::gateway_service_account(&cc)).await?;
            apply(client, &namespace, &access::gateway_role(&cc)).await?;
            apply(client, &namespace, &access::gateway_role_binding(&cc)).await?;
            apply(client, &namespace, &gateway::service(&cc)).await?;
            let gateways = apply(client, &namespace, &gateway::deployment(&cc)).await?;
            apply(client, &namespace, &access::pod_disruption_budget(&cc, "counter")).await?;
            apply(client, &namespace, &access::pod_disruption_budget(&cc, "gateway")).await?;
            apply(client, &namespace, &access::counter_network_policy(&cc)).await?;
            let ready = |d: &Deployment| d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
            status_for(&cc, None, ready(&counters), ready(&gateways), now)
        }
    };
    let api: Api<CounterCluster> = Api::namespaced(client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": "tally.dev/v1alpha1",
        "kind": "CounterCluster",
        "status": status,
    });
    api.patch_status(&cc.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Retry failed reconciles with a per-object pause (the controller's queue
/// deduplicates, so one object's errors never starve the others).
pub fn error_policy(cc: Arc<CounterCluster>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(name = %cc.name_any(), %err, "reconcile failed; retrying in 15 s");
    Action::requeue(Duration::from_secs(15))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::sample;

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
    }

    fn cond<'a>(s: &'a CounterClusterStatus, kind: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == kind).expect(kind)
    }

    #[test]
    fn ready_when_every_replica_is() {
        let mut cc = sample(serde_json::json!({"store": {"managed": true}}));
        cc.metadata.generation = Some(7);
        let rolling = status_for(&cc, None, 1, 2, now());
        assert_eq!(cond(&rolling, "Ready").status, "False");
        assert_eq!(cond(&rolling, "Progressing").status, "True");
        let done = status_for(&cc, None, 2, 2, now());
        assert_eq!((cond(&done, "Ready").status.as_str(), done.observed_generation), ("True", Some(7)));
        assert_eq!(done.gateway_url.as_deref(), Some("http://demo-gateway.tally.svc:8080"));
    }

    #[test]
    fn an_invalid_spec_is_degraded_with_the_message() {
        let cc = sample(serde_json::json!({"store": {}}));
        let s = status_for(&cc, Some("spec.store: set one of url, urlSecret or managed: true".into()), 0, 0, now());
        let degraded = cond(&s, "Degraded");
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "InvalidSpec"));
        assert!(degraded.message.contains("spec.store"));
        assert_eq!(cond(&s, "Ready").status, "False");
    }
}

//! The reconciler: thin apply steps around the pure builders.
//!
//! Every owned object is applied with server-side apply under one field
//! manager (`tally-operator`), so a second reconcile of an unchanged
//! resource changes nothing; the status reports what was observed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::CounterCluster;
use crate::metrics::Metrics;
use crate::resources::{access, counter, gateway, redis};
use crate::status::{Rollout, status_for};
use crate::validate::validate;

pub const FIELD_MANAGER: &str = "tally-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("CounterCluster has no namespace")]
    NoNamespace,
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the system's random number generator failed")]
    Random,
}

/// What every reconcile shares: the API client, the Event recorder and the
/// operator's metrics.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive failed reconciles per object, for [`backoff`].
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Context { recorder: Recorder::new(client.clone(), reporter), client, metrics, failures: Mutex::default() }
    }
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

/// Creates `object` unless it exists (an existing one is left as it is: a
/// generated password must not change on the next reconcile).
async fn create_once<K>(client: &Client, namespace: &str, object: &K) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api
        .create(&kube::api::PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, object)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// 32 random bytes, hex: the managed Redis's password.
fn new_password() -> Result<String, Error> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| Error::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Applies the desired objects for `cc` and reports what it saw.
///
/// Deletion needs no step here: every object carries a controller owner
/// reference, so the garbage collector removes them with the CounterCluster
/// (the managed Redis volume too, by its retention policy). A resource being
/// deleted is therefore left alone rather than re-applied.
#[tracing::instrument(skip_all, fields(name = %cc.name_any(), namespace = cc.namespace().unwrap_or_default(), generation = cc.metadata.generation))]
pub async fn reconcile(cc: Arc<CounterCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&cc, &ctx).await;
    if result.is_ok() {
        ctx.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&object_key(&cc));
    }
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    ctx.metrics.count(match &result {
        Ok(Outcome::Applied) => "applied",
        Ok(Outcome::Invalid) => "invalid",
        Ok(Outcome::Deleting) => "deleting",
        Err(_) => "error",
    });
    result.map(|outcome| match outcome {
        Outcome::Deleting => Action::await_change(),
        // Re-check now and then even without changes, so drift made by hand is undone.
        Outcome::Applied | Outcome::Invalid => Action::requeue(Duration::from_secs(300)),
    })
}

enum Outcome {
    Applied,
    Invalid,
    Deleting,
}

async fn reconcile_inner(cc: &CounterCluster, ctx: &Context) -> Result<Outcome, Error> {
    if cc.metadata.deletion_timestamp.is_some() {
        tracing::info!("being deleted; owned objects go with it");
        return Ok(Outcome::Deleting);
    }
    let namespace = cc.namespace().ok_or(Error::NoNamespace)?;
    let client = &ctx.client;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let reference = cc.object_ref(&());
    let (outcome, status) = match validate(cc) {
        Err(invalid) => {
            tracing::warn!(%invalid, "invalid CounterCluster spec");
            let event = Event {
                type_: EventType::Warning,
                reason: "InvalidSpec".into(),
                note: Some(invalid.to_string()),
                action: "Validate".into(),
                secondary: None,
            };
            ctx.recorder.publish(&event, &reference).await?;
            (Outcome::Invalid, status_for(cc, Some(invalid.to_string()), Rollout::default(), Rollout::default(), now))
        }
        Ok(()) => {
            if cc.spec.store.managed {
                create_once(client, &namespace, &redis::password_secret(cc, new_password()?)).await?;
                apply(client, &namespace, &redis::service(cc)).await?;
                apply(client, &namespace, &redis::stateful_set(cc)).await?;
                apply(client, &namespace, &redis::network_policy(cc)).await?;
            }
            apply(client, &namespace, &counter::config_map(cc)).await?;
            apply(client, &namespace, &counter::service(cc)).await?;
            let counters = apply(client, &namespace, &counter::deployment(cc)).await?;
            apply(client, &namespace, &access::gateway_service_account(cc)).await?;
            apply(client, &namespace, &access::gateway_role(cc)).await?;
            apply(client, &namespace, &access::gateway_role_binding(cc)).await?;
            apply(client, &namespace, &gateway::config_map(cc)).await?;
            apply(client, &namespace, &gateway::service(cc)).await?;
            let gateways = apply(client, &namespace, &gateway::deployment(cc)).await?;
            apply(client, &namespace, &access::pod_disruption_budget(cc, "counter")).await?;
            apply(client, &namespace, &access::pod_disruption_budget(cc, "gateway")).await?;
            apply(client, &namespace, &access::counter_network_policy(cc)).await?;
            let observed = cc.status.as_ref().and_then(|s| s.observed_generation);
            if observed != cc.metadata.generation {
                let event = Event {
                    type_: EventType::Normal,
                    reason: "Applied".into(),
                    note: Some(format!("applied generation {}", cc.metadata.generation.unwrap_or(0))),
                    action: "Apply".into(),
                    secondary: None,
                };
                ctx.recorder.publish(&event, &reference).await?;
            }
            (Outcome::Applied, status_for(cc, None, Rollout::of(&counters), Rollout::of(&gateways), now))
        }
    };
    let api: Api<CounterCluster> = Api::namespaced(client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": "tally.dev/v1alpha1",
        "kind": "CounterCluster",
        "status": status,
    });
    api.patch_status(&cc.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(outcome)
}

/// Retry failed reconciles with a per-object pause (the controller's queue
/// deduplicates, so one object's errors never starve the others).
pub fn error_policy(cc: Arc<CounterCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let n = failures.entry(object_key(&cc)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(failures);
    tracing::warn!(name = %cc.name_any(), %err, failures, retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

/// Per-object back-off after `failures` consecutive failed reconciles:
/// 5 s, 10 s, 20 s, … capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exponent).min(300))
}

fn object_key(cc: &CounterCluster) -> String {
    format!("{}/{}", cc.namespace().unwrap_or_default(), cc.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_exponentially_to_a_cap() {
        let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX).as_secs(), 300);
    }
}

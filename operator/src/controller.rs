//! The reconciler: thin apply steps around the pure builders.
//!
//! Every owned object is applied with server-side apply under one field
//! manager (`tally-operator`), so a second reconcile of an unchanged
//! resource changes nothing; the status reports what was observed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::CounterCluster;
use crate::metrics::Metrics;
use crate::resources::desired::{Owned, desired};
use crate::resources::{counter, monitoring, redis};
use crate::status::{Problem, Rollout, status_for};
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
    #[error("apply failed: {0}")]
    Apply(#[from] ApplyFailure),
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

/// Applies a Deployment or StatefulSet whose selector may differ from the
/// one it was created with (an operator upgrade narrowed selectors to the
/// instance and component). Kubernetes refuses to change a selector, so
/// the object is deleted with its pods orphaned — they keep serving — and
/// created again; the new one adopts them (their labels still match) and
/// rolls them as usual.
async fn apply_selecting<K>(client: &Client, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    match apply(client, namespace, object).await {
        Err(Error::Kube(kube::Error::Api(status)))
            if status.code == 422 && status.message.contains("selector") && status.message.contains("immutable") =>
        {
            let name = object.meta().name.clone().unwrap_or_default();
            tracing::info!(%name, "selector changed: recreating the object, its pods kept (orphaned, then adopted)");
            let api: Api<K> = Api::namespaced(client.clone(), namespace);
            let orphan = DeleteParams {
                propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
                ..DeleteParams::default()
            };
            api.delete(&name, &orphan).await?;
            apply(client, namespace, object).await
        }
        other => other,
    }
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
        Ok(Outcome::Applied | Outcome::RollingOut) => "applied",
        Ok(Outcome::Invalid) => "invalid",
        Ok(Outcome::Deleting) => "deleting",
        Err(_) => "error",
    });
    result.map(|outcome| match outcome {
        Outcome::Deleting => Action::await_change(),
        // Re-check now and then even without changes, so drift made by hand is undone.
        Outcome::Applied | Outcome::Invalid => Action::requeue(Duration::from_secs(300)),
        // Pods' states change without touching the Deployment: look again soon.
        Outcome::RollingOut => Action::requeue(Duration::from_secs(30)),
    })
}

enum Outcome {
    Applied,
    /// Applied, with a rollout still under way.
    RollingOut,
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
            publish_event(ctx, &reference, event).await;
            let problem = Problem { reason: "InvalidSpec", message: invalid.to_string() };
            (Outcome::Invalid, status_for(cc, Some(problem), &Rollout::default(), &Rollout::default(), now))
        }
        Ok(()) => match apply_all(cc, client, &namespace).await {
            Ok((counters, gateways)) => {
                let observed = cc.status.as_ref().and_then(|s| s.observed_generation);
                if observed != cc.metadata.generation {
                    let note = format!("applied generation {}", cc.metadata.generation.unwrap_or(0));
                    publish(ctx, &reference, EventType::Normal, "Applied", note).await;
                }
                let counters = rollout(client, &namespace, cc, "counter", &counters).await;
                let gateways = rollout(client, &namespace, cc, "gateway", &gateways).await;
                let settled = counters.done && gateways.done;
                let outcome = if settled { Outcome::Applied } else { Outcome::RollingOut };
                (outcome, status_for(cc, None, &counters, &gateways, now))
            }
            Err(failure) => {
                // Seen in the status and as an Event, then retried with back-off.
                tracing::warn!(%failure, "apply failed");
                publish(ctx, &reference, EventType::Warning, "ApplyFailed", failure.to_string()).await;
                let problem = Problem { reason: "ApplyFailed", message: failure.to_string() };
                let status = status_for(cc, Some(problem), &Rollout::default(), &Rollout::default(), now);
                patch_status(client, &namespace, cc, &status).await?;
                return Err(Error::Apply(failure));
            }
        },
    };
    patch_status(client, &namespace, cc, &status).await?;
    Ok(outcome)
}

async fn patch_status(
    client: &Client,
    namespace: &str,
    cc: &CounterCluster,
    status: &crate::crd::CounterClusterStatus,
) -> Result<(), Error> {
    let api: Api<CounterCluster> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": "tally.dev/v1alpha1",
        "kind": "CounterCluster",
        "status": status,
    });
    api.patch_status(&cc.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// An object the API server refused (or that could not be made), and why.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {name}: {reason}")]
pub struct ApplyFailure {
    kind: &'static str,
    name: String,
    reason: String,
}

impl ApplyFailure {
    fn new(kind: &'static str, name: &str, err: &Error) -> ApplyFailure {
        // The API server's own words (e.g. a 422's field errors), not kube's wrapping.
        let reason = match err {
            Error::Kube(kube::Error::Api(status)) => format!("{} ({} {})", status.message, status.code, status.reason),
            other => other.to_string(),
        };
        ApplyFailure { kind, name: name.to_string(), reason }
    }
}

/// Applies the desired set in order, then removes what this CounterCluster
/// owns but no longer wants. Returns the counter and gateway Deployments as
/// the API server answered them (for the status).
async fn apply_all(
    cc: &CounterCluster,
    client: &Client,
    namespace: &str,
) -> Result<(Deployment, Deployment), ApplyFailure> {
    let (mut counters, mut gateways) = (Deployment::default(), Deployment::default());
    let set = desired(cc);
    for owned in &set {
        let (kind, name) = owned.key();
        let failed = |err: Error| ApplyFailure::new(kind, &name, &err);
        match owned {
            Owned::PasswordSecret(_) => {
                let secret = redis::password_secret(cc, new_password().map_err(failed)?);
                create_once(client, namespace, &secret).await.map_err(failed)?
            }
            Owned::Service(o) => drop(apply(client, namespace, o).await.map_err(failed)?),
            Owned::StatefulSet(o) => drop(apply_selecting(client, namespace, o).await.map_err(failed)?),
            Owned::NetworkPolicy(o) => drop(apply(client, namespace, o).await.map_err(failed)?),
            Owned::ConfigMap(o) => drop(apply(client, namespace, o).await.map_err(failed)?),
            Owned::ServiceAccount(o) => drop(apply(client, namespace, o).await.map_err(failed)?),
            Owned::Role(o) => drop(apply(client, namespace, o).await.map_err(failed)?),
            Owned::RoleBinding(o) => drop(apply(client, namespace, o).await.map_err(failed)?),
            Owned::PodDisruptionBudget(o) => drop(apply(client, namespace, o).await.map_err(failed)?),
            Owned::HorizontalPodAutoscaler(o) => drop(apply(client, namespace, o).await.map_err(failed)?),
            Owned::PodMonitor(o) => {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), namespace, &monitoring::pod_monitor_resource());
                let params = PatchParams::apply(FIELD_MANAGER).force();
                api.patch(&name, &params, &Patch::Apply(o)).await.map_err(|e| failed(e.into()))?;
            }
            Owned::Deployment(o) => {
                let applied = apply_selecting(client, namespace, o).await.map_err(failed)?;
                if name == counter::name(cc) { counters = applied } else { gateways = applied }
            }
        }
    }
    prune(cc, client, namespace, &set).await?;
    Ok((counters, gateways))
}

/// Deletes what `cc` controls but `set` no longer has (a managed Redis
/// after `store.managed: false`, say). Only objects with this
/// CounterCluster as their controller are touched, found by the labels
/// every owned object carries. The managed Redis's password Secret is kept
/// (the operator may not read Secrets to check who owns one); it goes with
/// the CounterCluster.
async fn prune(cc: &CounterCluster, client: &Client, namespace: &str, set: &[Owned]) -> Result<(), ApplyFailure> {
    let keep: BTreeSet<(&str, String)> = set.iter().map(Owned::key).collect();
    let selector = format!("app.kubernetes.io/instance={},app.kubernetes.io/managed-by=tally-operator", cc.name_any());
    let target = Prune { cc, client, namespace, selector: &selector, keep: &keep };
    target.kind::<Service>("Service").await?;
    target.kind::<StatefulSet>("StatefulSet").await?;
    target.kind::<NetworkPolicy>("NetworkPolicy").await?;
    target.kind::<ConfigMap>("ConfigMap").await?;
    target.kind::<Deployment>("Deployment").await?;
    target.kind::<ServiceAccount>("ServiceAccount").await?;
    target.kind::<Role>("Role").await?;
    target.kind::<RoleBinding>("RoleBinding").await?;
    target.kind::<PodDisruptionBudget>("PodDisruptionBudget").await?;
    target.kind::<HorizontalPodAutoscaler>("HorizontalPodAutoscaler").await?;
    target.pod_monitors().await
}

struct Prune<'a> {
    cc: &'a CounterCluster,
    client: &'a Client,
    namespace: &'a str,
    selector: &'a str,
    keep: &'a BTreeSet<(&'a str, String)>,
}

impl Prune<'_> {
    /// PodMonitors, where their CRD is installed (without it there is none to prune).
    async fn pod_monitors(&self) -> Result<(), ApplyFailure> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), self.namespace, &monitoring::pod_monitor_resource());
        let failed = |name: &str, err: kube::Error| ApplyFailure::new("PodMonitor", name, &Error::Kube(err));
        let found = match api.list(&ListParams::default().labels(self.selector)).await {
            Ok(found) => found,
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(err) => return Err(failed("(list)", err)),
        };
        let uid = self.cc.metadata.uid.as_deref();
        for object in found {
            let name = object.name_any();
            let ours =
                object.owner_references().iter().any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid);
            if ours && !self.keep.contains(&("PodMonitor", name.clone())) {
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => tracing::info!(kind = "PodMonitor", %name, "pruned: no longer wanted"),
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(err) => return Err(failed(&name, err)),
                }
            }
        }
        Ok(())
    }

    async fn kind<K>(&self, kind: &'static str) -> Result<(), ApplyFailure>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        let failed = |name: &str, err: kube::Error| ApplyFailure::new(kind, name, &Error::Kube(err));
        let found = api.list(&ListParams::default().labels(self.selector)).await.map_err(|e| failed("(list)", e))?;
        let uid = self.cc.metadata.uid.as_deref();
        for object in found {
            let name = object.name_any();
            let ours =
                object.owner_references().iter().any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid);
            if !ours || self.keep.contains(&(kind, name.clone())) {
                continue;
            }
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => tracing::info!(kind, %name, "pruned: no longer wanted"),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => return Err(failed(&name, err)),
            }
        }
        Ok(())
    }
}

/// `component`'s rollout as its Deployment reports it and, while it is
/// not done, as its pods show it (an image that cannot be pulled, a crash
/// loop: known long before the Deployment's progress deadline). A failed
/// pod list only loses that detail.
async fn rollout(
    client: &Client,
    namespace: &str,
    cc: &CounterCluster,
    component: &str,
    deployment: &Deployment,
) -> Rollout {
    let rollout = Rollout::of(deployment);
    if rollout.done {
        return rollout;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("app.kubernetes.io/instance={},app.kubernetes.io/component={component}", cc.name_any());
    match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => rollout.with_pods(&list.items),
        Err(err) => {
            tracing::debug!(%err, component, "could not list pods");
            rollout
        }
    }
}

/// Publishes an Event; a failure to publish is logged, never fatal (the
/// status carries the same news).
async fn publish(ctx: &Context, reference: &ObjectReference, type_: EventType, reason: &str, note: String) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: reason.into(), secondary: None };
    publish_event(ctx, reference, event).await
}

async fn publish_event(ctx: &Context, reference: &ObjectReference, event: Event) {
    if let Err(err) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(%err, reason = %event.reason, "could not publish an Event");
    }
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

//! The apply steps of a reconcile, thin around the pure desired set
//! (`resources/desired.rs`): each object applied with server-side apply
//! (or created once), a refusal reported with the API server's own words,
//! a selector Kubernetes will not change handled by re-creation, and what
//! is no longer wanted pruned.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::CounterCluster;
use crate::resources::desired::{Owned, desired};
use crate::resources::{counter, monitoring, redis};

async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K, ObjectError>
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
async fn apply_selecting<K>(client: &Client, namespace: &str, object: &K) -> Result<K, ObjectError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    match apply(client, namespace, object).await {
        Err(ObjectError::Kube(kube::Error::Api(status)))
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
async fn create_once<K>(client: &Client, namespace: &str, object: &K) -> Result<(), ObjectError>
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
fn new_password() -> Result<String, ObjectError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| ObjectError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The field manager of every object the operator applies, and of the
/// status it writes.
pub const FIELD_MANAGER: &str = "tally-operator";

/// Why one object could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the system's random number generator failed")]
    Random,
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
    fn new(kind: &'static str, name: &str, err: &ObjectError) -> ApplyFailure {
        // The API server's own words (e.g. a 422's field errors), not kube's wrapping.
        let reason = match err {
            ObjectError::Kube(kube::Error::Api(status)) => {
                format!("{} ({} {})", status.message, status.code, status.reason)
            }
            other => other.to_string(),
        };
        ApplyFailure { kind, name: name.to_string(), reason }
    }
}

/// Applies the desired set in order, then removes what this CounterCluster
/// owns but no longer wants. Returns the counter and gateway Deployments as
/// the API server answered them (for the status).
pub async fn apply_all(
    cc: &CounterCluster,
    client: &Client,
    namespace: &str,
) -> Result<(Deployment, Deployment), ApplyFailure> {
    let (mut counters, mut gateways) = (Deployment::default(), Deployment::default());
    let set = desired(cc);
    for owned in &set {
        let (kind, name) = owned.key();
        let failed = |err: ObjectError| ApplyFailure::new(kind, &name, &err);
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
        let resource = monitoring::pod_monitor_resource();
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), self.namespace, &resource);
        self.prune_in(api, "PodMonitor", true).await
    }

    async fn kind<K>(&self, kind: &'static str) -> Result<(), ApplyFailure>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        self.prune_in(Api::<K>::namespaced(self.client.clone(), self.namespace), kind, false).await
    }

    /// Deletes what `api` lists under this CounterCluster's labels, is
    /// controlled by it, and is not kept. `optional_kind`: a 404 on the
    /// list (its CRD is not installed) means nothing to prune.
    async fn prune_in<K>(&self, api: Api<K>, kind: &'static str, optional_kind: bool) -> Result<(), ApplyFailure>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let failed = |name: &str, err: kube::Error| ApplyFailure::new(kind, name, &ObjectError::Kube(err));
        let found = match api.list(&ListParams::default().labels(self.selector)).await {
            Ok(found) => found,
            Err(kube::Error::Api(status)) if optional_kind && status.code == 404 => return Ok(()),
            Err(err) => return Err(failed("(list)", err)),
        };
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

//! The reconciler: thin apply steps around the pure builders.
//!
//! Every owned object is applied with server-side apply under one field
//! manager (`tally-operator`), so a second reconcile of an unchanged
//! resource changes nothing; the status reports what was observed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};

use crate::apply::{ApplyFailure, FIELD_MANAGER, apply_all};
use crate::crd::CounterCluster;
use crate::metrics::Metrics;
use crate::resources::{self, config};
use crate::settings;
use crate::status::{Problem, Rollout, add_condition, status_for};
use crate::validate::validate;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("CounterCluster has no namespace")]
    NoNamespace,
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
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
                let counter_pods = pods(client, &namespace, cc, "counter").await;
                let gateway_pods = pods(client, &namespace, cc, "gateway").await;
                let counters = Rollout::of(&counters).with_pods(&counter_pods);
                let gateways = Rollout::of(&gateways).with_pods(&gateway_pods);
                let expected = [
                    settings::Expected {
                        component: "counter",
                        digest: config::digest(&resources::counter::settings(cc)),
                        pods: &counter_pods,
                        admin_port: resources::counter::ADMIN_PORT,
                    },
                    settings::Expected {
                        component: "gateway",
                        digest: config::digest(&resources::gateway::settings(cc)),
                        pods: &gateway_pods,
                        admin_port: resources::gateway::ADMIN_PORT,
                    },
                ];
                let reports = settings::observe(client, &namespace, &expected).await;
                let digests: Vec<(&'static str, String)> =
                    expected.iter().map(|e| (e.component, e.digest.clone())).collect();
                let (applied, reason, message) = settings::condition_for(&digests, &reports);
                let settled = counters.done && gateways.done && applied;
                let outcome = if settled { Outcome::Applied } else { Outcome::RollingOut };
                let mut status = status_for(cc, None, &counters, &gateways, now.clone());
                add_condition(&mut status, cc, "SettingsApplied", applied, reason, message, now);
                (outcome, status)
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

/// `component`'s pods: what its rollout is stuck on (an image that cannot
/// be pulled, a crash loop: known long before the Deployment's progress
/// deadline) and whose settings to read. A failed list only loses that
/// detail.
async fn pods(client: &Client, namespace: &str, cc: &CounterCluster, component: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("app.kubernetes.io/instance={},app.kubernetes.io/component={component}", cc.name_any());
    match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list.items,
        Err(err) => {
            tracing::debug!(%err, component, "could not list pods");
            Vec::new()
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

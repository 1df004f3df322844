//! The CounterCluster's status, computed from what the apply step saw:
//! pure, so every condition is unit-tested.
//!
//! A component is rolled out when its Deployment controller has seen the
//! latest template (`observedGeneration`), and every wanted replica runs it
//! (`updatedReplicas`) and is available — ready pods of the *old* template
//! during a rollout do not count. A condition keeps its
//! `lastTransitionTime` while its status stays the same.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::crd::{CounterCluster, CounterClusterStatus};
use crate::resources::gateway;

/// What one Deployment reports about its rollout.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rollout {
    pub ready: i32,
    pub done: bool,
    /// Why the Deployment controller gave up on the rollout, when it did:
    /// `ProgressDeadlineExceeded` (pods that never become ready: an image
    /// that cannot be pulled, a crash loop) or a `ReplicaFailure` (pods that
    /// cannot be created: quota, admission).
    pub stuck: Option<String>,
}

impl Rollout {
    /// From a Deployment as the API server returned it.
    pub fn of(deployment: &Deployment) -> Rollout {
        let want = deployment.spec.replicas.unwrap_or(1);
        let Some(status) = &deployment.status else { return Rollout::default() };
        let current = status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0) >= want;
        let available = status.available_replicas.unwrap_or(0) >= want;
        // Old pods still terminating would make `replicas` exceed `want`.
        let settled = status.replicas.unwrap_or(0) <= want;
        let stuck = status.conditions.iter().flatten().find_map(|c| {
            let (kind, state, reason) = (c.type_.as_deref(), c.status.as_deref(), c.reason.as_deref());
            let gave_up = (kind, state, reason)
                == (Some("Progressing"), Some("False"), Some("ProgressDeadlineExceeded"))
                || (kind, state) == (Some("ReplicaFailure"), Some("True"));
            gave_up
                .then(|| format!("{}: {}", c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default()))
        });
        let done = current && updated && available && settled;
        Rollout { ready: status.ready_replicas.unwrap_or(0), done, stuck: stuck.filter(|_| !done) }
    }
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

/// Why a CounterCluster could not be brought to its desired state.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// `InvalidSpec` (the spec breaks a rule) or `ApplyFailed` (the API
    /// server refused an object).
    pub reason: &'static str,
    pub message: String,
}

/// The status for what was observed.
pub fn status_for(
    cc: &CounterCluster,
    problem: Option<Problem>,
    counters: &Rollout,
    gateways: &Rollout,
    now: Time,
) -> CounterClusterStatus {
    let generation = cc.metadata.generation;
    let want = (cc.spec.counter.replicas, cc.spec.gateway.replicas);
    // A rollout the Deployment controller gave up on is a problem too, not
    // "RollingOut" forever.
    let stuck: Vec<String> = [("counters", &counters.stuck), ("gateways", &gateways.stuck)]
        .into_iter()
        .filter_map(|(what, stuck)| stuck.as_ref().map(|why| format!("{what}: {why}")))
        .collect();
    let problem =
        problem.or_else(|| (!stuck.is_empty()).then(|| Problem { reason: "RolloutStuck", message: stuck.join("; ") }));
    let done = problem.is_none() && counters.done && gateways.done;
    let invalid = problem.as_ref().is_some_and(|p| p.reason == "InvalidSpec");
    let mut conditions = match &problem {
        Some(Problem { reason, message }) => vec![
            condition("Ready", false, reason, message.clone(), generation, &now),
            condition("Progressing", false, reason, message.clone(), generation, &now),
            condition("Degraded", true, reason, message.clone(), generation, &now),
        ],
        None => vec![
            condition(
                "Ready",
                done,
                if done { "AllReplicasReady" } else { "ReplicasNotReady" },
                format!("counters {}/{}, gateways {}/{}", counters.ready, want.0, gateways.ready, want.1),
                generation,
                &now,
            ),
            condition(
                "Progressing",
                !done,
                if done { "RolloutComplete" } else { "RollingOut" },
                String::new(),
                generation,
                &now,
            ),
            condition("Degraded", false, "AsExpected", String::new(), generation, &now),
        ],
    };
    if let Some(previous) = &cc.status {
        keep_transition_times(&mut conditions, &previous.conditions);
    }
    CounterClusterStatus {
        observed_generation: generation,
        counter_ready_replicas: counters.ready,
        gateway_ready_replicas: gateways.ready,
        gateway_url: (!invalid).then(|| {
            format!("http://{}.{}.svc:{}", gateway::name(cc), cc.namespace().unwrap_or_default(), gateway::HTTP_PORT)
        }),
        conditions,
    }
}

/// Adds condition `kind` to `status`, keeping its transition time from
/// `cc`'s current status while its value stays the same.
pub fn add_condition(
    status: &mut CounterClusterStatus,
    cc: &CounterCluster,
    kind: &str,
    ok: bool,
    reason: &str,
    message: String,
    now: Time,
) {
    let mut added = [condition(kind, ok, reason, message, cc.metadata.generation, &now)];
    if let Some(previous) = &cc.status {
        keep_transition_times(&mut added, &previous.conditions);
    }
    status.conditions.extend(added);
}

/// Container states that will not resolve by waiting: what a rollout is
/// stuck on long before the Deployment's progress deadline says so.
const STUCK_REASONS: &[&str] =
    &["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff", "CreateContainerConfigError"];

/// The first pod of `pods` whose container waits for a reason that will
/// not resolve by itself, as `pod <name>: <reason>: <message>`.
pub fn pod_problem(pods: &[Pod]) -> Option<String> {
    pods.iter().find_map(|pod| {
        let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
        statuses.iter().find_map(|status| {
            let waiting = status.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref().filter(|r| STUCK_REASONS.contains(r))?;
            let message = waiting.message.clone().unwrap_or_default();
            Some(format!("pod {}: {reason}: {message}", pod.metadata.name.clone().unwrap_or_default()))
        })
    })
}

impl Rollout {
    /// This rollout, also stuck when one of its pods is (see [`pod_problem`]).
    pub fn with_pods(mut self, pods: &[Pod]) -> Rollout {
        if !self.done && self.stuck.is_none() {
            self.stuck = pod_problem(pods);
        }
        self
    }
}

/// A condition whose status did not change keeps its transition time.
fn keep_transition_times(conditions: &mut [Condition], previous: &[Condition]) {
    for condition in conditions {
        if let Some(before) = previous.iter().find(|p| p.type_ == condition.type_ && p.status == condition.status) {
            condition.last_transition_time = before.last_transition_time.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};

    use super::*;
    use crate::resources::sample;

    fn at(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(second).unwrap())
    }

    fn cond<'a>(s: &'a CounterClusterStatus, kind: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == kind).expect(kind)
    }

    fn deployment(generation: i64, status: DeploymentStatus) -> Deployment {
        let mut d = Deployment {
            spec: DeploymentSpec { replicas: Some(2), ..DeploymentSpec::default() },
            status: Some(status),
            ..Deployment::default()
        };
        d.metadata.generation = Some(generation);
        d
    }

    fn reported(observed: i64, replicas: i32, updated: i32, available: i32) -> DeploymentStatus {
        DeploymentStatus {
            observed_generation: Some(observed),
            replicas: Some(replicas),
            updated_replicas: Some(updated),
            available_replicas: Some(available),
            ready_replicas: Some(available),
            ..DeploymentStatus::default()
        }
    }

    #[test]
    fn a_rollout_is_done_only_when_every_wanted_pod_runs_the_new_template() {
        assert!(Rollout::of(&deployment(3, reported(3, 2, 2, 2))).done);
        assert!(!Rollout::of(&deployment(4, reported(3, 2, 2, 2))).done, "new template not yet seen");
        assert!(!Rollout::of(&deployment(4, reported(4, 3, 1, 2))).done, "old pods still serve");
        assert!(!Rollout::of(&deployment(4, reported(4, 3, 2, 2))).done, "an old pod still terminating");
        assert!(!Rollout::of(&deployment(4, reported(4, 2, 2, 1))).done, "a new pod not yet available");
        assert_eq!(Rollout::of(&deployment(4, reported(4, 3, 1, 2))).ready, 2);
        assert_eq!(Rollout::of(&Deployment::default()), Rollout::default());
    }

    #[test]
    fn a_rollout_the_deployment_controller_gave_up_on_is_degraded_not_rolling_out_forever() {
        use k8s_openapi::api::apps::v1::DeploymentCondition;
        let mut status = reported(4, 2, 1, 1);
        status.conditions = Some(vec![DeploymentCondition {
            type_: Some("Progressing".into()),
            status: Some("False".into()),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet \"demo-counter-5d\" has timed out progressing.".into()),
            ..DeploymentCondition::default()
        }]);
        let counters = Rollout::of(&deployment(4, status));
        assert!(counters.stuck.as_deref().is_some_and(|s| s.contains("timed out progressing")), "{counters:?}");
        let cc = sample(serde_json::json!({"store": {"managed": true}}));
        let gateways = Rollout { ready: 2, done: true, stuck: None };
        let s = status_for(&cc, None, &counters, &gateways, at(0));
        assert_eq!(
            (cond(&s, "Degraded").status.as_str(), cond(&s, "Degraded").reason.as_str()),
            ("True", "RolloutStuck")
        );
        assert!(
            cond(&s, "Degraded").message.starts_with("counters: ProgressDeadlineExceeded"),
            "{}",
            cond(&s, "Degraded").message
        );
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "Progressing").status, "False");
        let mut failure = reported(4, 0, 0, 0);
        failure.conditions = Some(vec![DeploymentCondition {
            type_: Some("ReplicaFailure".into()),
            status: Some("True".into()),
            reason: Some("FailedCreate".into()),
            message: Some("pods \"demo-gateway-x\" is forbidden: violates PodSecurity".into()),
            ..DeploymentCondition::default()
        }]);
        assert!(Rollout::of(&deployment(4, failure)).stuck.is_some_and(|s| s.starts_with("FailedCreate")));
    }

    #[test]
    fn a_pod_that_cannot_pull_its_image_makes_the_rollout_stuck_at_once() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "demo-gateway-7f9-abc"},
            "status": {"containerStatuses": [{
                "name": "gateway", "image": "tally-gateway:typo", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"tally-gateway:typo\""}},
            }]},
        }))
        .unwrap();
        let healthy: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "demo-gateway-7f9-def"},
            "status": {"containerStatuses": [{
                "name": "gateway", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}},
            }]},
        }))
        .unwrap();
        assert_eq!(pod_problem(std::slice::from_ref(&healthy)), None, "still starting is not stuck");
        let rolling = Rollout { ready: 1, done: false, stuck: None };
        let stuck = rolling.clone().with_pods(&[healthy.clone(), pod.clone()]).stuck.expect("stuck");
        assert!(stuck.starts_with("pod demo-gateway-7f9-abc: ImagePullBackOff: Back-off pulling"), "{stuck}");
        let done = Rollout { ready: 2, done: true, stuck: None };
        assert_eq!(done.with_pods(&[pod]).stuck, None, "a finished rollout is not stuck on a leftover pod");
    }

    #[test]
    fn ready_when_both_rollouts_are_done() {
        let mut cc = sample(serde_json::json!({"store": {"managed": true}}));
        cc.metadata.generation = Some(7);
        let done = Rollout { ready: 2, done: true, stuck: None };
        let rolling = status_for(&cc, None, &Rollout { ready: 2, done: false, stuck: None }, &done, at(0));
        assert_eq!(cond(&rolling, "Ready").status, "False");
        assert_eq!(cond(&rolling, "Progressing").status, "True");
        let finished = status_for(&cc, None, &done, &done, at(0));
        assert_eq!((cond(&finished, "Ready").status.as_str(), finished.observed_generation), ("True", Some(7)));
        assert_eq!(finished.gateway_url.as_deref(), Some("http://demo-gateway.tally.svc:8080"));
    }

    #[test]
    fn transition_times_move_only_when_a_condition_changes() {
        let done = Rollout { ready: 2, done: true, stuck: None };
        let mut cc = sample(serde_json::json!({"store": {"managed": true}}));
        cc.status = Some(status_for(&cc, None, &done, &done, at(100)));
        let again = status_for(&cc, None, &done, &done, at(200));
        assert_eq!(cond(&again, "Ready").last_transition_time, at(100), "still ready: unchanged");
        let rolling = status_for(&cc, None, &Rollout { ready: 2, done: false, stuck: None }, &done, at(300));
        assert_eq!(cond(&rolling, "Ready").last_transition_time, at(300), "became not ready now");
        assert_eq!(cond(&rolling, "Degraded").last_transition_time, at(100), "still not degraded");
    }

    #[test]
    fn an_invalid_spec_is_degraded_with_the_message() {
        let cc = sample(serde_json::json!({"store": {}}));
        let message = "spec.store: set exactly one of url, urlSecret or managed: true";
        let s = status_for(
            &cc,
            Some(Problem { reason: "InvalidSpec", message: message.into() }),
            &Rollout::default(),
            &Rollout::default(),
            at(0),
        );
        let degraded = cond(&s, "Degraded");
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "InvalidSpec"));
        assert!(degraded.message.contains("spec.store"));
        assert_eq!(cond(&s, "Ready").status, "False");
    }
}

//! Leader election over a `coordination.k8s.io/v1` Lease (kube-lease-manager):
//! every replica runs, one reconciles. When the leader stops renewing (crash,
//! partition), a standby takes the Lease after it expires and starts its
//! controller. The leader also watches the Lease itself ([`until_lease_lost`]):
//! the lease manager keeps retrying through API errors without reporting
//! them, so a leader cut off from the API server stops reconciling once its
//! Lease could have expired, before a standby can take it over.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{Api, Client};
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;

/// Holds the Lease named `name` in `namespace` as `identity` while running;
/// the receiver says whether this replica leads.
pub async fn elect(
    client: Client,
    name: &str,
    namespace: &str,
    identity: &str,
    duration_s: u64,
) -> Result<
    (watch::Receiver<bool>, tokio::task::JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>),
    LeaseManagerError,
> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(duration_s)
        // Renew a third of the way before expiry.
        .with_grace((duration_s / 3).max(1))
        .with_field_manager(lease_field_manager(identity))
        .build()
        .await?;
    Ok(manager.watch().await)
}

/// The field manager of one replica's Lease writes. It must differ per
/// replica: taking the Lease is a server-side apply of `holderIdentity`
/// that the API server refuses (409) only when another *manager* owns the
/// field — under one shared manager every replica's apply would win.
pub fn lease_field_manager(identity: &str) -> String {
    format!("{}-lease-{identity}", crate::apply::FIELD_MANAGER)
}

/// This replica's identity: the pod name, else the host name, else one
/// made unique by the start time (never just the PID: it is 1 in every
/// container).
pub fn identity(pod_name: Option<&str>) -> String {
    if let Some(name) = pod_name.filter(|n| !n.is_empty()) {
        return name.to_string();
    }
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty());
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("tally-operator-{}-{started:x}-{made}", host.unwrap_or_else(|| "unknown".into()))
}

/// Whether `spec` shows `identity` holding the Lease at `now`: named as the
/// holder, and renewed less than a lease duration ago.
pub fn holds(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else { return false };
    let (Some(holder), Some(renewed), Some(seconds)) =
        (&spec.holder_identity, &spec.renew_time, spec.lease_duration_seconds)
    else {
        return false;
    };
    holder == identity && renewed.0 + SignedDuration::from_secs(i64::from(seconds)) > now
}

/// Resolves once this replica can no longer be sure it holds the Lease:
/// it names another holder or was not renewed in time, or it could not be
/// read for a whole `duration`. Checked every third of `duration`.
pub async fn until_lease_lost(api: Api<Lease>, name: String, identity: String, duration: Duration) {
    let mut confirmed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(duration / 3).await;
        match api.get(&name).await {
            Ok(lease) if holds(lease.spec.as_ref(), &identity, Timestamp::now()) => {
                confirmed = tokio::time::Instant::now();
            }
            Ok(_) => return,
            Err(err) => tracing::warn!(%err, "cannot read the leader Lease"),
        }
        if confirmed.elapsed() >= duration {
            return;
        }
    }
}

/// Resolves once the Lease shows this replica holding it (checked every
/// third of `duration`): the lease manager's word is confirmed before a
/// controller starts.
pub async fn until_lease_held(api: &Api<Lease>, name: &str, identity: &str, duration: Duration) {
    loop {
        if let Ok(lease) = api.get(name).await
            && holds(lease.spec.as_ref(), identity, Timestamp::now())
        {
            return;
        }
        tokio::time::sleep(duration / 3).await;
    }
}

/// Resolves when `leading` turns true (at once if it is).
pub async fn until_leading(leading: &mut watch::Receiver<bool>) -> bool {
    leading.wait_for(|l| *l).await.is_ok()
}

/// Resolves when `leading` turns false or the election ends.
pub async fn until_not_leading(mut leading: watch::Receiver<bool>) {
    let _ = leading.wait_for(|l| !*l).await;
}

/// Why standing for election stopped.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("leader election: {0}")]
    Lease(#[from] LeaseManagerError),
    #[error("the leader election stopped; restarting to stand again")]
    Ended,
}

/// The Lease this replica stands for.
#[derive(Debug, Clone)]
pub struct Election {
    pub lease: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
}

/// Stands for `election` until `shutdown`, running `run(stop)` while this
/// replica leads; `stop` resolves when it no longer does (the election
/// says so, or the Lease could have expired: see [`until_lease_lost`]),
/// after which the replica stands by for the next term. `leader` is the
/// 0/1 gauge of leadership. Dropping the election on the way out releases
/// the Lease, so a standby takes it at its next check.
pub async fn reconcile_while_leading<R, F>(
    client: Client,
    election: Election,
    leader: &prometheus_client::metrics::gauge::Gauge<i64, std::sync::atomic::AtomicI64>,
    shutdown: impl Future<Output = ()>,
    run: R,
) -> Result<(), ElectionError>
where
    R: Fn(Stop) -> F,
    F: Future<Output = ()>,
{
    let Election { lease, namespace, identity, duration } = election;
    let (mut leading, task) = elect(client.clone(), &lease, &namespace, &identity, duration.as_secs()).await?;
    let leases: Api<Lease> = Api::namespaced(client, &namespace);
    tracing::info!(%identity, %lease, "standing for election");
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            became = until_leading(&mut leading) => if !became {
                // The election task ended: exit, so the pod restarts and stands again.
                return Err(ElectionError::Ended);
            },
        }
        tokio::select! {
            _ = &mut shutdown => break,
            () = until_lease_held(&leases, &lease, &identity, duration) => {}
        }
        tracing::info!(%identity, "leading: reconciling");
        leader.set(1);
        // The watchdog runs as its own task (the controller's stop signal
        // must be Sync, an API call's future is not).
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
        let watchdog = tokio::spawn({
            let lost = until_lease_lost(leases.clone(), lease.clone(), identity.clone(), duration);
            async move {
                lost.await;
                let _ = lost_tx.send(());
            }
        });
        let not_leading = until_not_leading(leading.clone());
        let stop: Stop = Box::pin(async move {
            tokio::select! {
                _ = lost_rx => {}
                () = not_leading => {}
            }
        });
        let finished = tokio::select! {
            _ = &mut shutdown => false,
            () = run(stop) => true,
        };
        watchdog.abort();
        if !finished {
            break;
        }
        leader.set(0);
        tracing::warn!(%identity, "lost the lease: standing by");
    }
    drop(leading);
    let _ = task.await;
    Ok(())
}

/// Resolves when the controller must stop reconciling.
pub type Stop = std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync + 'static>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holding_means_named_and_renewed_within_the_duration() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let renewed = Timestamp::from_second(1_000_000).unwrap();
        let spec = LeaseSpec {
            holder_identity: Some("a".into()),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        };
        let at = |s: i64| renewed + SignedDuration::from_secs(s);
        assert!(holds(Some(&spec), "a", at(14)));
        assert!(!holds(Some(&spec), "a", at(15)), "expired");
        assert!(!holds(Some(&spec), "b", at(1)), "someone else's");
        assert!(!holds(Some(&LeaseSpec::default()), "a", at(1)), "released");
        assert!(!holds(None, "a", at(1)));
    }

    #[test]
    fn replicas_write_the_lease_under_distinct_field_managers() {
        assert_ne!(lease_field_manager("operator-a"), lease_field_manager("operator-b"));
        assert_eq!(identity(Some("tally-operator-7d9f-x2")), "tally-operator-7d9f-x2");
        assert_ne!(identity(None), identity(None), "made unique when the pod name is unknown");
    }

    #[tokio::test]
    async fn the_controller_runs_only_between_gaining_and_losing_the_lease() {
        let (tx, mut rx) = watch::channel(false);
        let waiting = tokio::spawn(async move {
            assert!(until_leading(&mut rx).await);
            rx
        });
        tx.send(true).expect("send");
        let rx = waiting.await.expect("became leader");
        let stop = tokio::spawn(until_not_leading(rx));
        // Still leading (the lease renewed): it keeps running.
        tx.send(true).expect("send");
        for _ in 0..10 {
            tokio::task::yield_now().await; // the spawned task sees the renewal
        }
        assert!(!stop.is_finished(), "stopped while still leading");
        tx.send(false).expect("send");
        stop.await.expect("stopped on losing the lease");
    }
}

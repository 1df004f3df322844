//! Leader election over a `coordination.k8s.io/v1` Lease (kube-lease-manager):
//! every replica runs, one reconciles. When the leader stops renewing (crash,
//! partition), a standby takes the Lease after it expires and starts its
//! controller; a leader that loses the Lease stops its controller at once.

use kube::Client;
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
        .with_field_manager(crate::controller::FIELD_MANAGER)
        .build()
        .await?;
    Ok(manager.watch().await)
}

/// Resolves when `leading` turns true (at once if it is).
pub async fn until_leading(leading: &mut watch::Receiver<bool>) -> bool {
    leading.wait_for(|l| *l).await.is_ok()
}

/// Resolves when `leading` turns false or the election ends.
pub async fn until_not_leading(mut leading: watch::Receiver<bool>) {
    let _ = leading.wait_for(|l| !*l).await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!stop.is_finished());
        tx.send(false).expect("send");
        stop.await.expect("stopped on losing the lease");
    }
}

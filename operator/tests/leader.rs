//! Leader election against a Lease **test double** (`tally_testkit::LeaseDouble`:
//! get/create/patch of one Lease with server-side-apply field ownership; no
//! API server can run here): two replicas started together, exactly one
//! leads; when it steps down the other takes over.

use std::time::Duration;

use kube::Client;
use tally_operator::leader;
use tally_testkit::LeaseDouble;
use tokio::sync::watch;

fn client(double: &LeaseDouble) -> Client {
    let url = format!("http://{}", double.addr).parse().expect("url");
    let mut config = kube::Config::new(url);
    config.default_namespace = "tally-system".into();
    Client::try_from(config).expect("client")
}

async fn leading(rx: &mut watch::Receiver<bool>, within: Duration) -> bool {
    tokio::time::timeout(within, leader::until_leading(rx)).await.unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_replica_leads_and_a_standby_takes_over_when_it_steps_down() {
    let double = LeaseDouble::start("tally-system").await;
    let elect = |identity: &'static str| leader::elect(client(&double), "tally-operator", "tally-system", identity, 2);
    let ((mut a, a_task), (mut b, b_task)) = match tokio::try_join!(elect("replica-a"), elect("replica-b")) {
        Ok(both) => both,
        Err(err) => panic!("election did not start: {err}"),
    };

    // One of them leads soon…
    let first = tokio::select! {
        won = leader::until_leading(&mut a) => { assert!(won); "replica-a" }
        won = leader::until_leading(&mut b) => { assert!(won); "replica-b" }
        _ = tokio::time::sleep(Duration::from_secs(15)) => panic!("nobody took the lease"),
    };
    assert_eq!(double.holder().as_deref(), Some(first));
    // …and over two lease durations of renewals the other never does.
    let (mut leader_rx, leader_task, mut standby_rx) =
        if first == "replica-a" { (a, a_task, b) } else { (b, b_task, a) };
    let standby_led = leading(&mut standby_rx, Duration::from_secs(4)).await;
    assert!(!standby_led, "two leaders at once");
    assert!(*leader_rx.borrow_and_update(), "the leader kept its lease");
    assert_eq!(double.holder().as_deref(), Some(first));

    // The leader steps down (its receiver dropped: it releases the lease).
    drop(leader_rx);
    let stepped_down = tokio::time::timeout(Duration::from_secs(10), leader_task).await;
    assert!(matches!(stepped_down, Ok(Ok(Ok(_)))), "the leader released cleanly: {stepped_down:?}");
    assert!(leading(&mut standby_rx, Duration::from_secs(15)).await, "the standby took over");
    let second = double.holder().expect("a holder");
    assert_ne!(second, first);

    // The old leader's own check of the Lease agrees it is no longer held.
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client(&double), "tally-system");
    let lost = leader::until_lease_lost(leases.clone(), "tally-operator".into(), first.into(), Duration::from_secs(2));
    assert!(tokio::time::timeout(Duration::from_secs(5), lost).await.is_ok(), "the watchdog sees the lease gone");
    let held = leader::until_lease_held(&leases, "tally-operator", &second, Duration::from_secs(2));
    assert!(tokio::time::timeout(Duration::from_secs(5), held).await.is_ok(), "and the new holder's check confirms it");
}

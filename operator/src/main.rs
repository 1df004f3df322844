//! `tally-operator`: wires the controller. (Leader election, metrics and the
//! Helm chart are still to come; run one replica.)

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use tally_operator::controller::{Context, error_policy, reconcile};
use tally_operator::crd::CounterCluster;

#[tokio::main]
async fn main() -> Result<(), kube::Error> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let client = Client::try_default().await?;
    let clusters: Api<CounterCluster> = Api::all(client.clone());
    tracing::info!("tally-operator watching CounterClusters");
    Controller::new(clusters, watcher::Config::default())
        .owns(Api::<Deployment>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Service>::all(client.clone()), watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, Arc::new(Context { client }))
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(name = %object.name, "reconciled"),
                Err(err) => tracing::warn!(%err, "reconcile error"),
            }
        })
        .await;
    Ok(())
}

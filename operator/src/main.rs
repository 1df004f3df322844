//! `tally-operator`: wires settings, the leader election, the controller and
//! the metrics endpoint. The work is in `controller.rs` and `resources/`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use tally_operator::config::{Command, Config};
use tally_operator::controller::{Context, error_policy, reconcile};
use tally_operator::crd::CounterCluster;
use tally_operator::metrics::Metrics;
use tally_operator::{leader, server};

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("cannot reach the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Election(#[from] leader::ElectionError),
    #[error("metrics endpoint: {0}")]
    Listen(#[from] std::io::Error),
}

fn main() -> ExitCode {
    let (config, _settings_file) = tally_runtime::settings_file::load::<Config>();
    if let Some(Command::Render { file, namespace }) = &config.command {
        return render(file, namespace);
    }
    tally_runtime::rt::run(&config.runtime.clone(), "tally-operator", run(config))
}

/// `tally-operator render`: the objects to standard output, or the reason to standard error.
fn render(file: &std::path::Path, namespace: &str) -> ExitCode {
    let text =
        if file.as_os_str() == "-" { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(file) };
    let rendered = text
        .map_err(|err| format!("{}: {err}", file.display()))
        .and_then(|text| tally_operator::render::render(&text, namespace).map_err(|err| err.to_string()));
    match rendered {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("tally-operator render: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), Error> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::new());
    let limits = tally_runtime::http::HttpLimits::from(&config.http);
    let http = tokio::spawn(server::serve(config.listen, limits, metrics.clone(), tally_runtime::signal::shutdown()));
    let context = Arc::new(Context::new(client.clone(), metrics.clone()));
    if !config.leader_election {
        metrics.leader.set(1);
        controller(&config, client, context, tally_runtime::signal::shutdown()).await;
        return Ok(http.await.map_err(std::io::Error::other)??);
    }
    let election = leader::Election {
        lease: config.lease_name.clone(),
        namespace: config.lease_namespace.clone(),
        identity: leader::identity(config.identity.as_deref()),
        duration: Duration::from_secs(config.lease_duration_s),
    };
    let run = |stop| controller(&config, client.clone(), context.clone(), stop);
    leader::reconcile_while_leading(client.clone(), election, &metrics.leader, tally_runtime::signal::shutdown(), run)
        .await?;
    Ok(http.await.map_err(std::io::Error::other)??)
}

/// Objects of kind `K` in `namespace`, or in every namespace: with
/// `TALLY_WATCH_NAMESPACE` the chart grants a Role in that namespace only,
/// so watching cluster-wide would be refused.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until `stop` resolves.
async fn controller(
    config: &Config,
    client: Client,
    context: Arc<Context>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let clusters: Api<CounterCluster> = match &config.watch_namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    // Owned objects carry the instance label; watching only those keeps the cache small.
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=tally-operator");
    let ns = config.watch_namespace.as_deref();
    Controller::new(clusters, watcher::Config::default())
        .owns(scoped::<Deployment>(&client, ns), owned.clone())
        .owns(scoped::<StatefulSet>(&client, ns), owned.clone())
        .owns(scoped::<Service>(&client, ns), owned.clone())
        .owns(scoped::<ConfigMap>(&client, ns), owned.clone())
        .owns(scoped::<ServiceAccount>(&client, ns), owned.clone())
        .owns(scoped::<Role>(&client, ns), owned.clone())
        .owns(scoped::<RoleBinding>(&client, ns), owned.clone())
        .owns(scoped::<PodDisruptionBudget>(&client, ns), owned.clone())
        .owns(scoped::<NetworkPolicy>(&client, ns), owned.clone())
        .owns(scoped::<HorizontalPodAutoscaler>(&client, ns), owned)
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(name = %object.name, "reconciled"),
                Err(err) => tracing::warn!(%err, "reconcile error"),
            }
        })
        .await;
}

//! The operator's settings (flags or environment).

use std::net::SocketAddr;

use clap::Parser;
use tally_runtime::http::HttpArgs;
use tally_runtime::rt::RuntimeArgs;

#[derive(Debug, Clone, Parser)]
#[command(name = "tally-operator", about = "Reconciles tally.dev CounterClusters", version)]
pub struct Config {
    /// Address of `/metrics`, `/health` and `/ready`.
    #[arg(long, env = "TALLY_OPERATOR_LISTEN", default_value = "[::]:8080")]
    pub listen: SocketAddr,

    /// Elect one active replica through a Lease; off only for a single
    /// replica run by hand (e.g. `cargo run` against a dev cluster).
    #[arg(long, env = "TALLY_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the Lease.
    #[arg(long, env = "TALLY_LEASE_NAME", default_value = "tally-operator")]
    pub lease_name: String,

    /// Namespace of the Lease (the operator's own, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// This replica's identity in the Lease (its pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds a Lease is valid without renewal: how long a dead leader
    /// blocks a standby.
    #[arg(long, env = "TALLY_LEASE_DURATION_S", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_duration_s: u64,

    /// Only watch CounterClusters in this namespace (default: all).
    #[arg(long, env = "TALLY_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Connection limits of the HTTP listener (`TALLY_HTTP_*`).
    #[command(flatten)]
    pub http: HttpArgs,

    #[command(flatten)]
    pub runtime: RuntimeArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print every object the operator would apply for the CounterClusters in a file, as YAML
    /// (no cluster needed).
    Render {
        /// The CounterCluster manifest (`-` for standard input).
        #[arg(short = 'f', long = "filename")]
        file: std::path::PathBuf,
        /// Namespace for CounterClusters that name none.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_documented_with_its_default() {
        tally_testkit::docs::assert_settings_documented(&<Config as clap::CommandFactory>::command());
    }
}

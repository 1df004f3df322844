use std::process::ExitCode;

use clap::Parser;
use tally_counter::{config::Config, server, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    telemetry::init(config.log_format);
    match server::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "tally-counter failed");
            ExitCode::FAILURE
        }
    }
}

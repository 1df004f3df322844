use std::process::ExitCode;

use clap::Parser;
use tally_gateway::{config::Config, server};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    tally_runtime::logging::init(config.log_format);
    match server::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "tally-gateway failed");
            ExitCode::FAILURE
        }
    }
}

use std::process::ExitCode;

use clap::Parser;
use tally_counter::{config::Config, server};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    tally_runtime::logging::init(config.log_format);
    match server::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "tally-counter failed");
            ExitCode::FAILURE
        }
    }
}

use std::process::ExitCode;

use clap::Parser;
use tally_counter::{config::Config, server};

fn main() -> ExitCode {
    let config = Config::parse();
    let runtime = match tally_runtime::rt::build(config.worker_threads.map(|n| n as usize)) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let _guard = runtime.enter();
    tally_runtime::logging::init(config.log_format);
    match runtime.block_on(server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "tally-counter failed");
            ExitCode::FAILURE
        }
    }
}

use std::process::ExitCode;

use clap::Parser;
use tally_counter::{config::Config, server};

fn main() -> ExitCode {
    let config = Config::parse();
    let runtime = config.runtime.clone();
    tally_runtime::rt::run(&runtime, "tally-counter", server::run(config))
}

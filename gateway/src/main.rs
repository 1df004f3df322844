use std::process::ExitCode;

use clap::Parser;
use tally_gateway::{config::Config, server};

/// mimalloc: the request path allocates small, short-lived buffers on
/// several threads, where glibc malloc showed up at ~12% of CPU in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    let runtime = config.runtime.clone();
    tally_runtime::rt::run_control(&runtime, "tally-gateway", server::run(config))
}

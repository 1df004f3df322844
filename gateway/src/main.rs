use std::process::ExitCode;

use tally_gateway::{config::Config, server};

/// mimalloc: the request path allocates small, short-lived buffers on
/// several threads, where glibc malloc showed up at ~12% of CPU in profiles.
/// Built without transparent huge pages (`no_thp`): with them, its 2 MiB
/// pages doubled the counter's peak RSS under `make bench-counter` (88 →
/// 44 MiB) for no measured CPU gain.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let (config, settings) = tally_runtime::settings_file::load::<Config>();
    let runtime = config.runtime.clone();
    tally_runtime::rt::run_control(&runtime, "tally-gateway", server::run(config, settings))
}

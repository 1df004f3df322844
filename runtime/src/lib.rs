//! Process glue shared by `tally-counter` and `tally-gateway`, so both start,
//! log, stop and expose metrics the same way.

pub mod batch_loop;
pub mod conn;
pub mod consul;
pub mod http;
pub mod live;
pub mod log_events;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod redact;
pub mod reload;
pub mod rt;
pub mod settings_file;
pub mod signal;
pub mod telemetry;
pub mod tls;
pub mod workers;

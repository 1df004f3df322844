//! The HTTP listener settings both services share (`TALLY_HTTP_*`).
//! Defaults follow what nginx, Go's `net/http` guidance and Envoy's edge
//! best practices use for the same protections (see docs).

use std::time::Duration;

use super::watchdog::Timeouts;

#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// HTTP listeners: time for a request head to arrive complete (and for a new connection's
    /// first request), in milliseconds.
    #[arg(long, env = "TALLY_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub http_header_timeout_ms: u64,

    /// HTTP listeners: a connection with no request in flight is closed after this long, in
    /// milliseconds.
    #[arg(long, env = "TALLY_HTTP_IDLE_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1_000..=86_400_000))]
    pub http_idle_timeout_ms: u64,

    /// HTTP listeners: most open connections per listener; more are closed at once.
    #[arg(long, env = "TALLY_HTTP_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub http_max_connections: u64,

    /// HTTP listeners: largest request head (request line and headers), in bytes.
    #[arg(long, env = "TALLY_HTTP_MAX_HEADER_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(8_192..=1_048_576))]
    pub http_max_header_bytes: u64,

    /// HTTP listeners: most concurrent HTTP/2 streams per connection.
    #[arg(long, env = "TALLY_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub http2_max_concurrent_streams: u32,
}

/// [`HttpArgs`] in the form the server uses.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_concurrent_streams: u32,
}

impl HttpLimits {
    pub fn timeouts(&self) -> Timeouts {
        Timeouts { header: self.header_timeout, idle: self.idle_timeout }
    }
}

impl From<&HttpArgs> for HttpLimits {
    fn from(args: &HttpArgs) -> Self {
        HttpLimits {
            header_timeout: Duration::from_millis(args.http_header_timeout_ms),
            idle_timeout: Duration::from_millis(args.http_idle_timeout_ms),
            max_connections: args.http_max_connections as usize,
            max_header_bytes: args.http_max_header_bytes as usize,
            max_concurrent_streams: args.http2_max_concurrent_streams,
        }
    }
}

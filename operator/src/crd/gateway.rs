//! The gateways' part of the spec: their replicas and resources, the
//! client behaviour towards the counters (pool, balancing, retries,
//! breakers, coalescing), the read cache and the public listener's bounds.

use k8s_openapi::api::core::v1::ResourceRequirements;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AutoscalingSpec, resources};

/// The HTTP gateway and its client behaviour towards the counters.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewaySpec {
    /// Gateway image; unset: the image of the operator's own release
    /// (`ghcr.io/tally-dev/tally-gateway:<operator version>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Gateway pods behind the gateway Service. Ignored with `autoscaling`.
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// Scale the gateways with a HorizontalPodAutoscaler instead of `replicas`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Requests and limits of the gateway container.
    pub resources: ResourceRequirements,
    /// HTTP/2 connections per counter endpoint (`TALLY_POOL_SIZE`).
    #[schemars(range(min = 1, max = 256))]
    pub pool_size: i32,
    /// HTTP/2 keep-alive ping interval, ms (`TALLY_KEEPALIVE_MS`).
    #[schemars(range(min = 1000, max = 3600000))]
    pub keepalive_ms: i32,
    /// Connect timeout, ms (`TALLY_CONNECT_TIMEOUT_MS`).
    #[schemars(range(min = 1, max = 60000))]
    pub connect_timeout_ms: i32,
    /// Per-call deadline, ms (`TALLY_REQUEST_TIMEOUT_MS`).
    #[schemars(range(min = 1, max = 600000))]
    pub request_timeout_ms: i32,
    /// Active health check interval, ms (`TALLY_HEALTH_INTERVAL_MS`).
    #[schemars(range(min = 10, max = 60000))]
    pub health_interval_ms: i32,
    /// Coalesce single increments into batch calls (`TALLY_COALESCE`).
    pub coalesce: bool,
    /// `round_robin`, `least_request` or `weighted` (`TALLY_LB_POLICY`).
    pub lb_policy: LbPolicy,
    /// Attempts per call, first included (`TALLY_RETRY_ATTEMPTS`).
    #[schemars(range(min = 1, max = 10))]
    pub retry_attempts: i32,
    /// Retries allowed as a percentage of calls, fractions allowed (`TALLY_RETRY_BUDGET_PERCENT`).
    #[schemars(range(min = 0, max = 1000))]
    pub retry_budget_percent: f64,
    /// Retries always allowed per second (`TALLY_RETRY_MIN_PER_SECOND`).
    #[schemars(range(min = 0, max = 100000))]
    pub retry_min_per_second: i32,
    /// Consecutive failures that open a breaker (`TALLY_BREAKER_FAILURES`).
    #[schemars(range(min = 1, max = 1000))]
    pub breaker_failures: i32,
    /// First open period, ms; doubles per reopen (`TALLY_BREAKER_RECOVERY_MS`).
    #[schemars(range(min = 1, max = 600000))]
    pub breaker_recovery_ms: i32,
    /// Longest open period, ms (`TALLY_BREAKER_MAX_RECOVERY_MS`).
    #[schemars(range(min = 1, max = 3600000))]
    pub breaker_max_recovery_ms: i32,
    /// Trial calls let through when half-open (`TALLY_BREAKER_HALF_OPEN_PROBES`).
    #[schemars(range(min = 1, max = 100))]
    pub breaker_half_open_probes: i32,
    /// Most endpoints ejected at once, percent (`TALLY_BREAKER_MAX_EJECTION_PERCENT`).
    #[schemars(range(min = 0, max = 100))]
    pub breaker_max_ejection_percent: i32,
    /// Read cache TTL, ms; 0 disables (`TALLY_CACHE_TTL_MS`).
    #[schemars(range(min = 0, max = 86400000))]
    pub cache_ttl_ms: i32,
    /// Read cache size (`TALLY_CACHE_MAX_ENTRIES`).
    #[schemars(range(min = 0, max = 100000000))]
    pub cache_max_entries: i32,
    /// Drain budget on SIGTERM, ms (`TALLY_SHUTDOWN_TIMEOUT_MS`).
    #[schemars(range(min = 1000, max = 600000))]
    pub shutdown_timeout_ms: i32,
    /// Increments waiting for a coalesced call at most (`TALLY_COALESCE_MAX_QUEUE`).
    #[schemars(range(min = 1, max = 1000000))]
    pub coalesce_max_queue: i32,
    /// Follow callers' `traceparent` sampled flags (`TALLY_TRACE_TRUST_CALLER`).
    pub trace_trust_caller: bool,
    /// Bounds of the public HTTP listener.
    pub listener: ListenerSpec,
}

/// What one client may hold of a gateway (`TALLY_HTTP_*`, `TALLY_MAX_IN_FLIGHT`,
/// `TALLY_MAX_BODY_BYTES_IN_FLIGHT`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ListenerSpec {
    /// Time for a request head, ms (`TALLY_HTTP_HEADER_TIMEOUT_MS`).
    #[schemars(range(min = 100, max = 600000))]
    pub header_timeout_ms: i32,
    /// Time for a request body, ms (`TALLY_HTTP_BODY_TIMEOUT_MS`).
    #[schemars(range(min = 100, max = 600000))]
    pub body_timeout_ms: i32,
    /// Idle connection timeout, ms (`TALLY_HTTP_IDLE_TIMEOUT_MS`).
    #[schemars(range(min = 1000, max = 86400000))]
    pub idle_timeout_ms: i32,
    /// Most open connections per pod (`TALLY_HTTP_MAX_CONNECTIONS`).
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: i32,
    /// Largest request head, bytes (`TALLY_HTTP_MAX_HEADER_BYTES`).
    #[schemars(range(min = 8192, max = 1048576))]
    pub max_header_bytes: i32,
    /// Concurrent HTTP/2 streams per connection (`TALLY_HTTP2_MAX_CONCURRENT_STREAMS`).
    #[schemars(range(min = 1, max = 10000))]
    pub http2_max_concurrent_streams: i32,
    /// Requests served at once per pod; more get 503 with Retry-After (`TALLY_MAX_IN_FLIGHT`).
    #[schemars(range(min = 1, max = 1000000))]
    pub max_in_flight: i32,
    /// Bytes the bodies of the requests in flight may hold together per pod; a body that would pass it
    /// gets 503 with Retry-After (`TALLY_MAX_BODY_BYTES_IN_FLIGHT`). Keep it well under the memory limit.
    #[schemars(range(min = 1048576, max = 1099511627776_i64))]
    pub max_body_bytes_in_flight: i64,
}

impl Default for ListenerSpec {
    fn default() -> Self {
        ListenerSpec {
            header_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 10_000,
            max_header_bytes: 65_536,
            http2_max_concurrent_streams: 100,
            max_in_flight: 4096,
            max_body_bytes_in_flight: 64 << 20,
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    LeastRequest,
    /// The seed plan's name for `least_request` (the same policy).
    LeastConn,
    Weighted,
}

impl Default for GatewaySpec {
    fn default() -> Self {
        GatewaySpec {
            autoscaling: None,
            image: None,
            replicas: 2,
            resources: resources("250m", "64Mi", "256Mi"),
            pool_size: 20,
            keepalive_ms: 30_000,
            connect_timeout_ms: 1000,
            request_timeout_ms: 3000,
            health_interval_ms: 1000,
            coalesce: true,
            lb_policy: LbPolicy::RoundRobin,
            retry_attempts: 3,
            retry_budget_percent: 20.0,
            retry_min_per_second: 10,
            breaker_failures: 5,
            breaker_recovery_ms: 1000,
            breaker_max_recovery_ms: 30_000,
            breaker_half_open_probes: 1,
            breaker_max_ejection_percent: 50,
            cache_ttl_ms: 5000,
            cache_max_entries: 10_000,
            shutdown_timeout_ms: 10_000,
            coalesce_max_queue: 4096,
            trace_trust_caller: false,
            listener: ListenerSpec::default(),
        }
    }
}

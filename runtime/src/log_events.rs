//! The log lines people alert on and tests wait for, spelled once: the
//! services log these messages, and the tests match on the same constants,
//! so rewording one cannot silently leave a test waiting for a line that no
//! longer comes.

/// The counter: its store answered a probe after not answering, or the
/// other way round (fields `store`, `up`, `reason`).
pub const STORE_READINESS_CHANGED: &str = "store readiness changed";
/// The counter on shutdown: every buffered async increment was applied.
pub const BUFFER_DRAINED: &str = "write-behind buffer drained";
/// The counter on shutdown: the store refused a flush; retrying until the deadline.
pub const DRAIN_RETRYING: &str = "store refused the flush; retrying drain of the write-behind buffer";
/// The counter at the shutdown deadline, once per acknowledged async delta
/// it could not apply (fields `key`, `delta`).
pub const UNCONFIRMED_AT_SHUTDOWN: &str =
    "shutdown deadline passed: acknowledged async increment not confirmed applied";
/// The gateway: a counter endpoint passed or failed its health check (field `healthy`).
pub const ENDPOINT_HEALTH_CHANGED: &str = "counter endpoint health changed";
/// The gateway: a counter endpoint started or stopped taking async writes (field `takes_async`).
pub const ENDPOINT_ASYNC_CHANGED: &str = "counter endpoint async writes changed";
/// The gateway: discovery found a counter endpoint.
pub const ENDPOINT_DISCOVERED: &str = "counter endpoint discovered; warming up";
/// The gateway: discovery dropped a counter endpoint.
pub const ENDPOINT_REMOVED: &str = "counter endpoint removed; draining";
/// The gateway: an endpoint's circuit breaker opened or closed (field `state`).
pub const BREAKER_CHANGED: &str = "circuit breaker changed state";
/// Either service: a new version of the settings file passed and its live
/// settings apply (fields `digest`, `applied`, `restart_pending`).
pub const SETTINGS_APPLIED: &str = "settings file reloaded";
/// Either service: a new version of the settings file was refused; the
/// settings in force stay (field `err`).
pub const SETTINGS_REFUSED: &str = "settings file refused; the settings in force stay";

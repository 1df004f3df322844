//! When an HTTP connection has been quiet or slow for too long: the decision
//! is a pure function of a connection's [`Activity`], so the timeouts are
//! unit-tested without sockets; [`Activity`] is fed by the connection's I/O
//! wrapper (bytes arrived) and its service wrapper (requests start and end).
//!
//! The rules (the same for HTTP/1.1 and HTTP/2 where they apply):
//! - a new connection must deliver its first complete request head within
//!   the header timeout (slowloris, and HTTP/2 clients that never send their
//!   preface and first request);
//! - on HTTP/1.1, once the first byte of a later request arrives, its head
//!   must be complete within the header timeout (Go's `ReadHeaderTimeout`);
//! - with no request in flight, a connection is closed after the idle
//!   timeout (nginx `keepalive_timeout`, Envoy `idle_timeout`);
//! - a request in flight is bounded by the service itself (body-read
//!   timeout, upstream deadline), not here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// "No time recorded".
const NONE: u64 = u64::MAX;

/// What happened on one connection, as atomics shared by its I/O wrapper,
/// its service wrapper and its watchdog. Times are milliseconds since the
/// connection was accepted.
pub struct Activity {
    accepted: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// When the last request finished (or the connection was accepted).
    idle_since: AtomicU64,
    /// When bytes of a not yet complete request head first arrived.
    reading_since: AtomicU64,
    http2: AtomicBool,
}

/// Why a connection was closed by its watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request head took longer than the header timeout.
    Header,
    /// No request for longer than the idle timeout.
    Idle,
}

impl Expiry {
    pub fn label(self) -> &'static str {
        match self {
            Expiry::Header => "header",
            Expiry::Idle => "idle",
        }
    }
}

/// The watchdog's next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Close(Expiry),
    /// Look again after this long.
    CheckIn(Duration),
}

/// The two connection timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            reading_since: AtomicU64::new(NONE),
            http2: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.accepted.elapsed().as_millis() as u64
    }

    /// The connection speaks HTTP/2 (its first bytes were the preface).
    pub fn set_http2(&self) {
        self.http2.store(true, Ordering::Relaxed);
    }

    pub fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// Bytes arrived from the client.
    pub fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 && self.reading_since.load(Ordering::Relaxed) == NONE {
            self.reading_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// A request head is complete and the request is being served.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.reading_since.store(NONE, Ordering::Relaxed);
    }

    /// A request was answered (or cancelled).
    pub fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(self.now_ms(), Ordering::Relaxed);
            self.reading_since.store(NONE, Ordering::Relaxed);
        }
    }

    /// What to do with the connection now.
    pub fn verdict(&self, timeouts: Timeouts) -> Verdict {
        let snapshot = Snapshot {
            now: self.now_ms(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            idle_since: self.idle_since.load(Ordering::Relaxed),
            reading_since: self.reading_since.load(Ordering::Relaxed),
            http2: self.http2.load(Ordering::Relaxed),
        };
        decide(&snapshot, timeouts)
    }
}

/// Completes when `activity`'s watchdog says to close its connection.
pub async fn expired(activity: &Activity, timeouts: Timeouts) -> Expiry {
    loop {
        match activity.verdict(timeouts) {
            Verdict::Close(expiry) => return expiry,
            Verdict::CheckIn(after) => tokio::time::sleep(after).await,
        }
    }
}

/// A request in flight on its connection until dropped (answered, or
/// cancelled; on the counter, until its response body ends).
pub struct InFlight(Arc<Activity>);

impl InFlight {
    pub fn new(activity: Arc<Activity>) -> InFlight {
        activity.request_started();
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// One reading of an [`Activity`].
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    now: u64,
    in_flight: usize,
    requests: u64,
    idle_since: u64,
    reading_since: u64,
    http2: bool,
}

fn decide(s: &Snapshot, t: Timeouts) -> Verdict {
    let ms = |d: Duration| d.as_millis() as u64;
    // The state changes between checks (a request ends, bytes arrive), so
    // look again at least this often: deadlines are met within a quarter
    // of the shorter timeout.
    let granularity = t.header.min(t.idle) / 4;
    if s.in_flight > 0 {
        return Verdict::CheckIn(granularity);
    }
    let (deadline, expiry) = if s.requests == 0 {
        (ms(t.header), Expiry::Header)
    } else if !s.http2 && s.reading_since != NONE {
        (s.reading_since.saturating_add(ms(t.header)), Expiry::Header)
    } else {
        (s.idle_since.saturating_add(ms(t.idle)), Expiry::Idle)
    };
    if s.now >= deadline {
        Verdict::Close(expiry)
    } else {
        Verdict::CheckIn(Duration::from_millis(deadline - s.now).min(granularity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts { header: Duration::from_secs(10), idle: Duration::from_secs(60) };

    fn snap(now: u64) -> Snapshot {
        Snapshot { now, in_flight: 0, requests: 0, idle_since: 0, reading_since: NONE, http2: false }
    }

    #[test]
    fn the_first_request_head_must_arrive_within_the_header_timeout() {
        assert_eq!(decide(&snap(9_999), T), Verdict::CheckIn(Duration::from_millis(1)));
        assert_eq!(decide(&snap(10_000), T), Verdict::Close(Expiry::Header));
        let h2 = Snapshot { http2: true, ..snap(10_000) };
        assert_eq!(decide(&h2, T), Verdict::Close(Expiry::Header), "an HTTP/2 preface alone is not a request");
    }

    #[test]
    fn a_slow_later_head_is_cut_on_http1() {
        let s = Snapshot { requests: 1, idle_since: 1_000, reading_since: 5_000, ..snap(15_000) };
        assert_eq!(decide(&s, T), Verdict::Close(Expiry::Header));
        let h2 = Snapshot { http2: true, ..s };
        assert!(matches!(decide(&h2, T), Verdict::CheckIn(_)), "HTTP/2 pings are not request heads");
    }

    #[test]
    fn idle_connections_are_closed_after_the_idle_timeout() {
        let s = Snapshot { requests: 3, idle_since: 1_000, ..snap(60_999) };
        assert_eq!(decide(&s, T), Verdict::CheckIn(Duration::from_millis(1)));
        assert_eq!(decide(&Snapshot { now: 61_000, ..s }, T), Verdict::Close(Expiry::Idle));
    }

    #[test]
    fn checks_come_often_enough_to_see_a_request_end() {
        // Fresh connection: its header deadline is 10 s away, but a request
        // may come and go meanwhile and start a 1 s idle period.
        let t = Timeouts { header: Duration::from_secs(10), idle: Duration::from_secs(1) };
        assert_eq!(decide(&snap(0), t), Verdict::CheckIn(Duration::from_millis(250)));
    }

    #[test]
    fn a_request_in_flight_is_never_cut_here() {
        let s = Snapshot { in_flight: 1, requests: 1, ..snap(1_000_000) };
        assert_eq!(decide(&s, T), Verdict::CheckIn(Duration::from_millis(2500)));
    }

    #[test]
    fn activity_tracks_requests() {
        let a = Activity::new();
        a.bytes_read();
        assert_ne!(a.reading_since.load(Ordering::Relaxed), NONE);
        a.request_started();
        assert_eq!(a.reading_since.load(Ordering::Relaxed), NONE);
        a.bytes_read(); // a pipelined request while one is in flight
        assert_eq!(a.reading_since.load(Ordering::Relaxed), NONE);
        assert!(matches!(a.verdict(T), Verdict::CheckIn(_)));
        a.request_finished();
        assert_eq!(a.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(a.verdict(Timeouts { header: T.header, idle: Duration::ZERO }), Verdict::Close(Expiry::Idle));
    }
}

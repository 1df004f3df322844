//! The watchdog's view of an HTTP connection, told when bytes arrive.

use std::sync::Arc;

use super::watchdog::Activity;
use crate::conn::Held;

/// How an HTTP/2 connection starts (RFC 9113 §3.4); no HTTP/1 method is `PRI`.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2";

pub struct Watched {
    activity: Arc<Activity>,
    /// Nothing read yet: the first bytes tell HTTP/2 (its preface) from HTTP/1.
    first_read: bool,
}

impl Watched {
    pub fn new(activity: Arc<Activity>) -> Watched {
        Watched { activity, first_read: true }
    }
}

impl Held for Watched {
    fn on_read(&mut self, bytes: &[u8]) {
        if self.first_read {
            self.first_read = false;
            let n = bytes.len().min(H2_PREFACE_START.len());
            if bytes[..n] == H2_PREFACE_START[..n] {
                self.activity.set_http2();
            }
        }
        self.activity.bytes_read();
    }
}

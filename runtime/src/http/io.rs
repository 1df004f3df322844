//! The watchdog's view of an HTTP connection, told when bytes arrive.

use std::sync::Arc;

use super::watchdog::Activity;
use crate::conn::Held;

/// How an HTTP/2 connection starts (RFC 9113 §3.4); no HTTP/1 method is `PRI`.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2";

pub struct Watched {
    activity: Arc<Activity>,
    /// The first bytes read, until they tell HTTP/2 (its preface) from
    /// HTTP/1: two suffice (`PR` against `PO`, `PU`, `PA`, `GE`, …).
    start: [u8; 2],
    seen: usize,
}

impl Watched {
    pub fn new(activity: Arc<Activity>) -> Watched {
        Watched { activity, start: [0; 2], seen: 0 }
    }
}

impl Held for Watched {
    fn on_read(&mut self, bytes: &[u8]) {
        if self.seen < self.start.len() {
            let take = bytes.len().min(self.start.len() - self.seen);
            self.start[self.seen..self.seen + take].copy_from_slice(&bytes[..take]);
            self.seen += take;
            if self.seen == self.start.len() && self.start[..] == H2_PREFACE_START[..self.start.len()] {
                self.activity.set_http2();
            }
        }
        self.activity.bytes_read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detects(reads: &[&[u8]]) -> bool {
        let activity = Arc::new(Activity::new());
        let mut watched = Watched::new(activity.clone());
        for read in reads {
            watched.on_read(read);
        }
        activity.is_http2()
    }

    #[test]
    fn http2_is_told_from_its_first_two_bytes_however_they_arrive() {
        assert!(detects(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]));
        assert!(detects(&[b"P", b"RI * HTTP/2.0"]));
        assert!(!detects(&[b"P", b"OST / HTTP/1.1\r\n"]), "a POST sent a byte at a time is HTTP/1");
        assert!(!detects(&[b"P"]), "undecided is HTTP/1");
        assert!(!detects(&[b"GET / HTTP/1.1\r\n"]));
    }
}

//! Slow clients (slowloris): raw TCP connections that start a request head
//! and then trickle one header byte every 500 ms, never finishing it. The
//! gateway must cut each within its header timeout; a connection it keeps
//! open is a slot an attacker holds for free. Raw sockets, because an HTTP
//! client library always sends a whole head.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngExt;
use rand::rngs::StdRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::load::{Load, Phase};
use crate::stack::HEADER_TIMEOUT;
use crate::stats::add;

/// Allowance on top of the header timeout for the gateway's watchdog to
/// notice and for a busy machine to schedule it.
pub const CLOSE_MARGIN: Duration = Duration::from_millis(1000);
/// A connection still open this long after connecting is given up on.
const GIVE_UP: Duration = Duration::from_secs(10);
const TRICKLE: Duration = Duration::from_millis(500);
/// Never completed: a header line with no end.
const HEAD: &[u8] = b"POST /api/v1/counter/increment HTTP/1.1\r\nHost: x\r\n";
const FILLER: &[u8] = b"X-Slow-Client: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// One slow connection after another while the faults run.
pub async fn slow_client(load: Arc<Load>, mut rng: StdRng) {
    while load.phase() == Phase::Faults {
        one(&load).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..=1000))).await;
    }
}

/// How a slow connection ended.
enum End {
    Closed(Duration),
    NeverClosed,
    ConnectFailed,
}

async fn one(load: &Load) {
    let slow = &load.stats.slow;
    add(&slow.started);
    match trickle(load.http_addr).await {
        End::ConnectFailed => add(&slow.connect_failed),
        End::NeverClosed => add(&slow.never_closed),
        End::Closed(after) => {
            slow.closed_after(after.as_millis() as u64);
            if after <= HEADER_TIMEOUT + CLOSE_MARGIN {
                add(&slow.closed_in_time);
            } else {
                add(&slow.closed_late);
            }
        }
    }
}

/// Connects, sends the partial head, trickles, and reports when the server
/// closed the connection (a read of 0 bytes, a reset, or a failed write).
/// Whatever the server answers before closing (a 408) is read and ignored.
async fn trickle(addr: std::net::SocketAddr) -> End {
    let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await else {
        return End::ConnectFailed;
    };
    let opened = Instant::now();
    let (mut rd, mut wr) = stream.split();
    if wr.write_all(HEAD).await.is_err() {
        return End::Closed(opened.elapsed());
    }
    let give_up = tokio::time::Instant::from_std(opened + GIVE_UP);
    let mut next_byte = tokio::time::Instant::now() + TRICKLE;
    let mut sent = 0usize;
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            read = rd.read(&mut buf) => match read {
                Ok(0) | Err(_) => return End::Closed(opened.elapsed()),
                Ok(_) => {}
            },
            _ = tokio::time::sleep_until(next_byte) => {
                let byte = FILLER.get(sent).copied().unwrap_or(b'a');
                sent += 1;
                if wr.write_all(&[byte]).await.is_err() {
                    return End::Closed(opened.elapsed());
                }
                next_byte += TRICKLE;
            }
            _ = tokio::time::sleep_until(give_up) => return End::NeverClosed,
        }
    }
}

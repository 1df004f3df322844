//! Loopback ports for the processes the tests start.

use std::net::TcpListener;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// A free loopback port for a process to bind later.
///
/// Chosen below the kernel's ephemeral range: a port the OS handed out for
/// `:0` is back in that pool once released, and the next outgoing
/// connection (a counter dialling Redis, say) may take it as its local port
/// before the process meant to listen on it binds it, which failed CI with
/// "Address already in use". The ports chosen end 10000 below the range, so
/// a Redis Cluster node's bus port (its port + 10000) stays out of it too.
/// Within this process each port is handed out once, from a starting point
/// that varies with the process id, and checked free by binding it first;
/// a listener of another program on it is the remaining chance of a clash.
pub fn free_port() -> u16 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let (low, high) = reserved_port_span();
    let span = u32::from(high - low);
    let next = NEXT.get_or_init(|| AtomicU32::new(std::process::id().wrapping_mul(7919) % span));
    for _ in 0..span {
        let offset = next.fetch_add(1, Ordering::Relaxed) % span;
        let port = low + offset as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// The ports `free_port` chooses from: from 10000 up to 10000 below the
/// start of the kernel's ephemeral range (32768 when it cannot be read), so
/// 10000..22768 by default. On a machine whose range starts below 21000 the
/// span is 10000..11000 and a bus port can fall in the range.
fn reserved_port_span() -> (u16, u16) {
    const LOW: u16 = 10_000;
    const BUS_OFFSET: u16 = 10_000;
    (LOW, ephemeral_start().saturating_sub(BUS_OFFSET).max(LOW + 1_000))
}

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_below_the_ephemeral_range() {
        let ephemeral_start = u32::from(ephemeral_start());
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port handed out twice: {ports:?}");
        if ephemeral_start >= 21_000 {
            let with_bus_port_below = |p: u16| u32::from(p) + 10_000 < ephemeral_start;
            assert!(ports.iter().all(|&p| with_bus_port_below(p)), "{ports:?}: + 10000 reaches {ephemeral_start}");
        }
        assert!(ports.iter().all(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok()));
    }
}

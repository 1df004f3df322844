//! Memory and liveness of the stack, sampled once a second from /proc: the
//! peak VmRSS of each process name (a counter's pid changes with each
//! restart: the current one is sampled), and any process found dead that
//! no fault had killed. A leak under faults (connections, retries, queued
//! work never released) shows as a peak that keeps rising with the run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::stack::Stack;

#[derive(Default)]
pub struct Memory {
    /// Peak VmRSS in KiB by process name.
    peak_kib: Mutex<BTreeMap<&'static str, u64>>,
    /// "counter-a (pid 123) exited" — processes found dead while current.
    pub unexpected_exits: Mutex<Vec<String>>,
    pub samples: Mutex<u64>,
}

impl Memory {
    pub fn peaks_kib(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.peak_kib).clone()
    }

    pub fn exits(&self) -> Vec<String> {
        lock(&self.unexpected_exits).clone()
    }

    /// Samples every process once.
    pub fn sample(&self, stack: &Stack) {
        for (name, pid) in stack.pids() {
            if pid == 0 {
                continue; // down for a fault
            }
            let Some(status) = read_status(pid) else {
                self.dead(stack, name, pid);
                continue;
            };
            if status.zombie {
                self.dead(stack, name, pid);
            } else if let Some(kib) = status.rss_kib {
                let mut peaks = lock(&self.peak_kib);
                let peak = peaks.entry(name).or_default();
                *peak = (*peak).max(kib);
            }
        }
        *lock(&self.samples) += 1;
    }

    /// A process is gone: unexpected unless a fault has meanwhile taken it
    /// out of the stack (its pid is no longer the current one).
    fn dead(&self, stack: &Stack, name: &'static str, pid: u32) {
        let still_current = stack.pids().iter().any(|&(n, p)| n == name && p == pid);
        let mut exits = lock(&self.unexpected_exits);
        let line = format!("{name} (pid {pid}) exited without a fault killing it");
        if still_current && !exits.contains(&line) {
            eprintln!("chaos: {line}");
            exits.push(line);
        }
    }
}

/// Samples once a second until `stop` is set.
pub async fn sampler(stack: Arc<Stack>, memory: Arc<Memory>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        memory.sample(&stack);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

struct Status {
    zombie: bool,
    rss_kib: Option<u64>,
}

fn read_status(pid: u32) -> Option<Status> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    Some(Status {
        zombie: field("State:").is_some_and(|s| s.starts_with('Z') || s.starts_with('X')),
        rss_kib: field("VmRSS:").and_then(|v| v.trim_end_matches("kB").trim().parse().ok()),
    })
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    pid != 0 && read_status(pid).is_some_and(|s| !s.zombie)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

//! Files earlier test processes left in the temporary directory.
//!
//! A Redis Cluster node's configuration file and a replica's sync directory
//! go when their server is dropped, but a server held in a `static` (a
//! cluster shared by a whole test binary) is never dropped, and a test
//! binary killed mid-run drops nothing. Their names carry the id of the
//! test process that made them, so the first server a test process starts
//! removes those of processes that are gone.

use std::path::Path;
use std::sync::Once;

/// Names of what the harness leaves, each followed by the id of the test
/// process that made it: `tally-test-cluster-<port>-<pid>.conf` and
/// `tally-test-replica-<pid>-<n>`.
fn maker_pid(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix("tally-test-cluster-") {
        let (_port, pid) = rest.strip_suffix(".conf")?.split_once('-')?;
        return pid.parse().ok();
    }
    let (pid, _n) = name.strip_prefix("tally-test-replica-")?.split_once('-')?;
    pid.parse().ok()
}

/// Removes, once per test process, what processes no longer running left.
pub(crate) fn sweep_once() {
    static SWEPT: Once = Once::new();
    SWEPT.call_once(|| sweep(&std::env::temp_dir(), |pid| Path::new(&format!("/proc/{pid}")).exists()));
}

fn sweep(dir: &Path, running: impl Fn(u32) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(maker_pid) else { continue };
        if pid == std::process::id() || running(pid) {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_the_process_that_made_them() {
        assert_eq!(maker_pid("tally-test-cluster-12001-4242.conf"), Some(4242));
        assert_eq!(maker_pid("tally-test-replica-4242-7"), Some(4242));
        assert_eq!(maker_pid("tally-test-cluster-12001.conf"), None);
        assert_eq!(maker_pid("tally-test-client.pem"), None);
        assert_eq!(maker_pid("other-4242"), None);
    }

    #[test]
    fn only_what_gone_processes_left_is_removed() {
        let dir = std::env::temp_dir().join(format!("tally-sweep-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("tally-test-replica-10-0")).expect("a gone process's sync dir");
        std::fs::write(dir.join("tally-test-replica-10-0/dump.rdb"), b"x").expect("a file in it");
        std::fs::write(dir.join("tally-test-cluster-7000-10.conf"), b"x").expect("a gone process's conf");
        std::fs::write(dir.join("tally-test-cluster-7001-20.conf"), b"x").expect("a running process's conf");
        std::fs::write(dir.join("unrelated-10.conf"), b"x").expect("someone else's file");

        sweep(&dir, |pid| pid == 20);

        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .expect("the directory")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["tally-test-cluster-7001-20.conf", "unrelated-10.conf"]);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

//! Running a binary that is expected to stop by itself (a startup refused),
//! within a bound: a regression that lets it run on shows as a failed test
//! rather than a hung one.

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// How long a refused startup may take.
pub const EXIT_LIMIT: Duration = Duration::from_secs(30);

/// Runs `cmd` (stdin closed) and returns its output once it exits; kills it
/// and fails the test if it is still running after [`EXIT_LIMIT`].
pub fn output_on_exit(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    // Waiting (and draining both pipes) on a thread, so the exit is an
    // event this thread can await with a bound.
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(EXIT_LIMIT) {
        Ok(output) => output.unwrap_or_else(|e| panic!("{cmd:?}: {e}")),
        Err(_) => {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            panic!("{cmd:?} was still running after {EXIT_LIMIT:?}: it was expected to stop by itself")
        }
    }
}

//! Real processes for the tests: `redis-server` on loopback ports (a
//! cluster of them in [`crate::cluster`]) and tally's own binaries.
//!
//! Readiness is awaited on the processes' own log lines, not with sleeps.
//! Redis runs under a small `sh` watchdog that kills it when the test binary
//! exits (its stdin closes), so no server outlives the tests, even the shared
//! cluster that lives in a static.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;

use crate::ports::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads a child's stdout on a thread, keeping every line for assertions.
struct LogTail {
    lines: Arc<Mutex<Vec<String>>>,
    rx: Mutex<Receiver<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl LogTail {
    fn follow(stdout: impl std::io::Read + Send + 'static) -> LogTail {
        let (tx, rx) = mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let keep = lines.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        LogTail { lines, rx: Mutex::new(rx), reader: Some(reader) }
    }

    /// Waits for the first new line matching `pred` and returns it.
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.lock().unwrap().recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the process exited before {what}; log:\n{}", self.lines.lock().unwrap().join("\n"))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("timed out waiting for {what}; log so far:\n{}", self.lines.lock().unwrap().join("\n"))
                }
            }
        }
    }
}

/// One `redis-server` on a loopback port.
pub struct RedisServer {
    pub port: u16,
    pid: u32,
    child: Child,
    /// Closing it tells the watchdog to kill redis-server.
    watchdog: Option<ChildStdin>,
    _log: LogTail,
    /// The arguments it was started with beyond the defaults, for a restart.
    extra: Vec<String>,
    /// Files and directories its arguments named (a cluster's node file, a
    /// replica's sync directory), removed once it is gone for good: kept
    /// across a restart, which needs them.
    leaves: Vec<PathBuf>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(Vec::new)
    }

    /// A server on a free port with the arguments `extra` gives; a port
    /// taken between choosing it and binding it (another test's process)
    /// means another try with new ports, not a failed test.
    pub fn start_with(extra: impl Fn() -> Vec<String>) -> RedisServer {
        for _ in 0..5 {
            let args = extra();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Some(server) = Self::try_start_on(free_port(), &args) {
                return server;
            }
        }
        panic!("redis-server found its ports taken five times in a row");
    }

    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        Self::try_start_on(port, extra)
            .unwrap_or_else(|| panic!("redis-server: port {port} (or another of its ports) is taken"))
    }

    /// `None` when a port it was given is already in use.
    pub(crate) fn try_start_on(port: u16, extra: &[&str]) -> Option<RedisServer> {
        crate::leftovers::sweep_once();
        let mut args = vec!["--port".to_string(), port.to_string(), "--bind".into(), "127.0.0.1".into()];
        args.extend(["--save", "", "--appendonly", "no", "--logfile", ""].map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"redis-server "$@" & pid=$!; exec 2>/dev/null; echo "watchdog pid=$pid"; read _; kill -9 $pid; wait $pid"#)
            .arg("redis-server")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let stdin = child.stdin.take().expect("stdin");
        let log = LogTail::follow(child.stdout.take().expect("stdout"));
        let pid_line = log.wait_for("redis watchdog", |l| l.starts_with("watchdog pid="));
        let pid = pid_line.trim_start_matches("watchdog pid=").trim().parse().expect("pid");
        let up = log.wait_for(&format!("redis-server on {port}"), |l| {
            l.contains("Ready to accept connections") || l.contains("Address already in use")
        });
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let server = RedisServer { port, pid, child, watchdog: Some(stdin), _log: log, extra, leaves: Vec::new() };
        if up.contains("Address already in use") {
            // Dropped: the watchdog kills what is left. A directory made for
            // this try (a replica's sync directory) is still empty, since
            // the ports are bound before anything is written; the next try
            // makes its own. `remove_dir` leaves a directory with files.
            if let Some(dir) = server.arg("--dir") {
                let _ = std::fs::remove_dir(dir);
            }
            return None;
        }
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The redis-server process's id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends a signal (`-KILL`, `-STOP`, `-CONT`, …) to redis-server itself.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(sig).arg(self.pid.to_string()).status().expect("kill").success();
        assert!(ok, "kill {sig} {}", self.pid);
    }

    /// Kills redis-server and waits until it is gone (its port is free again).
    pub fn kill(self) {
        drop(self);
    }

    /// Kills it (SIGKILL: no shutdown save) and starts it again on the same
    /// port with the same arguments, as a crash and a restart would; with
    /// `--appendonly yes --appendfsync always` it comes back with every
    /// write it acknowledged.
    pub fn restarted(self) -> RedisServer {
        self.restarted_after(Duration::ZERO)
    }

    /// [`RedisServer::restarted`], down for `down` between the kill and the start.
    pub fn restarted_after(mut self, down: Duration) -> RedisServer {
        let (port, extra, leaves) = (self.port, self.extra.clone(), std::mem::take(&mut self.leaves));
        drop(self);
        thread::sleep(down); // the outage itself
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut server = RedisServer::start_on(port, &extra);
        server.leaves = leaves;
        server
    }

    /// Removes `path` (a file, or a directory and what is in it) once this
    /// server is gone for good.
    pub(crate) fn remove_when_gone(&mut self, path: PathBuf) {
        self.leaves.push(path);
    }

    /// The value it was started with for `name` (`--dir`, …).
    pub(crate) fn arg(&self, name: &str) -> Option<&str> {
        let at = self.extra.iter().position(|arg| arg == name)?;
        self.extra.get(at + 1).map(String::as_str)
    }

    /// Arguments that make a server keep every acknowledged write across a
    /// crash (an fsync'ed append-only file in `dir`).
    pub fn durable_args(dir: &Path) -> Vec<String> {
        let dir = dir.to_string_lossy().to_string();
        ["--appendonly", "yes", "--appendfsync", "always", "--dir", &dir].map(String::from).to_vec()
    }

    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// Sends `commands` (one line each) on one redis-cli connection, for
    /// those that set up the next (`ASKING`, `READONLY`); each reply's
    /// lines, in order.
    pub fn cli_session(&self, commands: &[&str]) -> Vec<String> {
        let mut cli = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli");
        let mut stdin = cli.stdin.take().expect("redis-cli stdin");
        stdin.write_all(format!("{}\n", commands.join("\n")).as_bytes()).expect("write to redis-cli");
        drop(stdin);
        let out = cli.wait_with_output().expect("redis-cli output");
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Resume it first in case a test left it stopped, then let the
        // watchdog kill it and wait until it is gone.
        let _ = Command::new("kill").arg("-CONT").arg(self.pid.to_string()).status();
        drop(self.watchdog.take());
        let _ = self.child.wait();
        for path in &self.leaves {
            let _ = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
        }
    }
}

pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A running tally binary (`tally-counter` or `tally-gateway`).
pub struct Service {
    /// The `key=value` fields of its "listening" log line (`grpc`, `admin`, `http`).
    pub addrs: HashMap<String, SocketAddr>,
    child: Child,
    log: LogTail,
}

/// Path of a workspace binary (package and binary share the name), built (or
/// brought up to date) on first use,
/// so a test of one crate can start another crate's binary.
pub fn workspace_binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", name, "--bin", name]);
        // Without the variables cargo sets for this test process (its
        // package's name, manifest dir, …): build scripts that watch them
        // (ring's, via cc) would otherwise see a change, and this build and
        // the next plain one would rebuild each other's dependencies.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let per_package = key.starts_with("CARGO_") && !matches!(key.as_ref(), "CARGO_HOME" | "CARGO_TARGET_DIR");
            if per_package || key == "OUT_DIR" {
                build.env_remove(key.as_ref());
            }
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build --bin {name} failed");
        built.push(name.to_string());
    }
    // <target>/debug/deps/<test binary> → <target>/debug/<name>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir");
    dir.join(name)
}

impl Service {
    /// Starts `binary` with loopback listen addresses on free ports and waits
    /// for its "listening" log line.
    pub fn start(binary: &Path, env: &[(&str, &str)]) -> Service {
        let mut cmd = Command::new(binary);
        cmd.env("TALLY_LISTEN", "127.0.0.1:0")
            .env("TALLY_ADMIN_LISTEN", "127.0.0.1:0")
            .env("TALLY_LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let log = LogTail::follow(child.stdout.take().expect("stdout"));
        let line = log.wait_for("the listening line", |l| l.contains(" listening"));
        let addrs = fields(&line).into_iter().filter_map(|(k, v)| Some((k, v.parse().ok()?))).collect();
        Service { addrs, child, log }
    }

    /// The address logged as `name=…` (`grpc`, `admin`, `http`).
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self.addrs.get(name).unwrap_or_else(|| panic!("no {name}= address in {:?}", self.addrs))
    }

    /// `http://<grpc address>`, for gRPC clients of a counter.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.addr("grpc"))
    }

    /// `http://<admin address>`: probes, metrics (and a gateway's backend view).
    pub fn admin_base(&self) -> String {
        format!("http://{}", self.addr("admin"))
    }

    /// `http://<http address>`, for HTTP clients of a gateway.
    pub fn http_base(&self) -> String {
        format!("http://{}", self.addr("http"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process now, in bytes (`VmRSS`).
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid())
    }

    /// Sends a signal (`-TERM`, `-STOP`, …) to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(sig).arg(self.pid().to_string()).status().expect("kill").success();
        assert!(ok, "kill {sig}");
    }

    /// Waits for a log line (after those already waited for) matching `pred`.
    pub fn wait_for_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.log.wait_for(what, pred)
    }

    /// SIGTERM, then wait for the process to exit (bounded by its shutdown timeout).
    pub fn terminate(self) -> (ExitStatus, Vec<String>) {
        self.signal("-TERM");
        self.wait()
    }

    /// Waits for the process to exit; returns its status and whole log.
    pub fn wait(mut self) -> (ExitStatus, Vec<String>) {
        let status = self.child.wait().expect("wait");
        // The pipe is closed now: let the reader take the last lines.
        if let Some(reader) = self.log.reader.take() {
            let _ = reader.join();
        }
        let lines = self.log.lines.lock().unwrap().clone();
        (status, lines)
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lines.lock().unwrap().clone()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of process `pid` now, in bytes (`VmRSS` of
/// `/proc/<pid>/status`; 0 when the process is gone).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// `key=value` fields of a tracing text log line.
/// The fields of a log line: `key=value` tokens of the text format, or the
/// `fields` object of a JSON line (`TALLY_LOG_FORMAT=json`).
fn fields(line: &str) -> HashMap<String, String> {
    if let Ok(serde_json::Value::Object(json)) = serde_json::from_str::<serde_json::Value>(line) {
        let Some(serde_json::Value::Object(fields)) = json.get("fields") else { return HashMap::new() };
        return fields
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect();
    }
    line.split_whitespace()
        .filter_map(|token| token.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_that_finds_its_port_taken_leaves_no_directory_behind() {
        let running = RedisServer::start();
        let dir = std::env::temp_dir().join(format!("tally-test-port-taken-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for the try");
        let dir_arg = dir.to_string_lossy().to_string();
        let refused = RedisServer::try_start_on(running.port, &["--dir", &dir_arg]);
        assert!(refused.is_none(), "the port is taken");
        assert!(!dir.exists(), "the try's empty directory is removed");
    }
}

//! Shutdown signals: Kubernetes sends SIGTERM, a terminal sends SIGINT.

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(%err, "cannot watch SIGTERM; only Ctrl-C stops the service");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// `TALLY_SHUTDOWN_DELAY_MS`, the same setting in the gateway and the
/// counter (flattened into each one's config).
#[derive(Debug, Clone, clap::Args)]
pub struct ShutdownDelayArgs {
    /// On SIGTERM/SIGINT: how long to keep serving while reporting itself stopping (the
    /// counter's gRPC health NOT_SERVING and its Consul registration removed, the gateway's
    /// `/ready` 503) before closing the listeners, in milliseconds, so whatever checks it stops
    /// sending first. 0 where the platform already does it (Kubernetes: the pod's preStop sleep).
    #[arg(long, env = "TALLY_SHUTDOWN_DELAY_MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=300_000))]
    pub shutdown_delay_ms: u64,
}

impl ShutdownDelayArgs {
    /// Waits out the delay (after the first signal), cut short by another
    /// SIGTERM or SIGINT: whoever signals again wants the service gone now
    /// (Ctrl-C twice).
    pub async fn wait(&self) {
        if self.shutdown_delay_ms == 0 {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(self.shutdown_delay_ms)) => {}
            _ = shutdown() => tracing::info!("signalled again: the shutdown delay is cut short"),
        }
    }
}

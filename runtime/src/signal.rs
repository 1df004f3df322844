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

/// Waits out a shutdown delay (`TALLY_SHUTDOWN_DELAY_MS`, after the first
/// signal), cut short by another SIGTERM or SIGINT: whoever signals again
/// wants the service gone now (Ctrl-C twice).
pub async fn shutdown_delay(delay: std::time::Duration) {
    if delay.is_zero() {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown() => tracing::info!("signalled again: the shutdown delay is cut short"),
    }
}

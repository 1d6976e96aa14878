//! Logs: `tracing` with key=value fields to stderr, filtered by `RUST_LOG` (default info).

/// Installs the log subscriber once per process (call it in each worker after fork too: it
/// holds no thread, so it is safe before fork as well).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=warn"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

//! Logging setup: JSON lines to stderr, filtered by `TOLLGATE_LOG` or the configured level.

use tracing_subscriber::EnvFilter;

/// Installs the process-wide subscriber. Safe to call more than once (later calls do nothing).
pub fn init_logging(default_level: &str) {
    let filter = EnvFilter::try_from_env("TOLLGATE_LOG")
        .or_else(|_| EnvFilter::try_new(default_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .try_init();
}

//! The registry's sync task (with Redis only): every 250 ms one round trip
//! reads two version counters; the view reloads only what moved. With the
//! 1 s staleness bound this keeps every replica within 1 s of every change.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::registry::Registry;

pub const INTERVAL: Duration = Duration::from_millis(250);

/// Starts syncing `registry` until `stop`; None when there is nothing to sync.
pub fn spawn(registry: Arc<Registry>, stop: CancellationToken) -> Option<JoinHandle<()>> {
    if !registry.is_shared() {
        return None;
    }
    // Owned by the gateway runtime (kept with its pollers, aborted on drop).
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut healthy = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match registry.sync().await {
                Ok(()) if !healthy => {
                    tracing::info!("registry sync recovered");
                    healthy = true;
                }
                Ok(()) => {}
                Err(e) if healthy => {
                    tracing::warn!(error = %e, "registry sync failed; token checks fail closed after 1 s");
                    healthy = false;
                }
                Err(_) => {}
            }
        }
    }))
}

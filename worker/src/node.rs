//! A worker node: its shards, their watchers and its HTTP server, started and
//! drained as one.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate_shared::secret::Secret;

use crate::server::{NodeState, configure};
use crate::shard::Shard;

pub struct NodeSettings {
    pub id: String,
    pub shard_urls: Vec<String>,
    pub max_inflight_per_shard: u32,
    pub poll_interval: Duration,
    pub secret: Secret,
    pub shutdown_grace: Duration,
}

/// A running worker node. Dropping it stops the shard watchers.
pub struct WorkerNode {
    state: Arc<NodeState>,
    stop: CancellationToken,
    watchers: Vec<JoinHandle<()>>,
}

impl WorkerNode {
    /// Starts the shard watchers and returns the node with its (not yet awaited) server.
    pub fn start(
        settings: NodeSettings,
        listener: TcpListener,
    ) -> std::io::Result<(WorkerNode, Server)> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(std::io::Error::other)?;
        let shards: Vec<_> = settings
            .shard_urls
            .iter()
            .enumerate()
            .map(|(i, url)| Shard::new(i as u32, url, settings.max_inflight_per_shard))
            .collect();
        let stop = CancellationToken::new();
        let watchers = shards
            .iter()
            // Owned by the node: cancelled by `stop` and aborted on drop.
            .map(|s| {
                tokio::spawn(
                    s.clone()
                        .watch(http.clone(), settings.poll_interval, stop.clone()),
                )
            })
            .collect();
        let state = Arc::new(NodeState {
            id: settings.id,
            shards,
            secret: settings.secret,
            http,
            draining: Default::default(),
        });
        let app_state = state.clone();
        let server =
            HttpServer::new(move || App::new().configure(|c| configure(c, app_state.clone())))
                .listen(listener)?
                .disable_signals()
                .shutdown_timeout(settings.shutdown_grace.as_secs().max(1))
                .run();
        Ok((
            WorkerNode {
                state,
                stop,
                watchers,
            },
            server,
        ))
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// Stops taking new work; gateways see the node draining in its next load report.
    pub fn drain(&self) {
        self.state.draining.store(true, Ordering::Release);
    }

    pub fn shard_count(&self) -> usize {
        self.state.shards.len()
    }
}

impl Drop for WorkerNode {
    fn drop(&mut self) {
        self.stop.cancel();
        for w in &self.watchers {
            w.abort();
        }
    }
}

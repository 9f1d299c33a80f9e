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
use tollgate_shared::breaker::BreakerConfig;
use tollgate_shared::secret::Secret;
use tollgate_shared::store::Redis;
use tollgate_shared::worker_api::registry::WorkerRecord;

use crate::registration::Registration;
use crate::server::{NodeState, configure};
use crate::shard::Shard;

pub struct NodeSettings {
    pub id: String,
    pub shard_urls: Vec<String>,
    pub max_inflight_per_shard: u32,
    pub poll_interval: Duration,
    pub secret: Secret,
    pub shutdown_grace: Duration,
    /// Each shard's circuit breaker.
    pub breaker: BreakerConfig,
    /// Where to register for discovery, and the URL gateways reach this node
    /// at; `None`: gateways list the node in their static config.
    pub registry: Option<(Redis, String)>,
}

/// A running worker node. Dropping it stops the shard watchers and the heartbeat.
pub struct WorkerNode {
    state: Arc<NodeState>,
    stop: CancellationToken,
    watchers: Vec<JoinHandle<()>>,
    /// Cancelled when the node drains: the registration is deleted at once.
    deregister: CancellationToken,
    registration: Option<JoinHandle<()>>,
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
            .map(|(i, url)| {
                Shard::new(
                    i as u32,
                    url,
                    settings.max_inflight_per_shard,
                    settings.breaker,
                )
            })
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
        let deregister = CancellationToken::new();
        let registration = match settings.registry {
            Some((redis, url)) => {
                let record = WorkerRecord {
                    id: settings.id.clone(),
                    url: url.trim_end_matches('/').to_owned(),
                    shards: shards.len() as u32,
                };
                let reg = Registration::new(redis, record).map_err(std::io::Error::other)?;
                // Owned by the node: stopped by `deregister`, awaited in `shutdown`, aborted on drop.
                Some(tokio::spawn(reg.run(deregister.clone())))
            }
            None => None,
        };
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
                // Small answers and stream chunks go out at once (no Nagle delay).
                .tcp_nodelay(true)
                // A gateway that closed its connection has dropped the request:
                // the relay is dropped too, which aborts it in vLLM.
                .h1_allow_half_closed(false)
                .listen(listener)?
                .disable_signals()
                .shutdown_timeout(settings.shutdown_grace.as_secs().max(1))
                .run();
        Ok((
            WorkerNode {
                state,
                stop,
                watchers,
                deregister,
                registration,
            },
            server,
        ))
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// Stops taking new work and deregisters at once; gateways see the node
    /// draining in its next load report. In-flight requests go on.
    pub fn drain(&self) {
        self.state.draining.store(true, Ordering::Release);
        self.deregister.cancel();
    }

    /// After the server has stopped: waits (briefly) until the registration is
    /// deleted, so the process does not exit before Redis heard of it.
    pub async fn shutdown(mut self) {
        self.deregister.cancel();
        if let Some(task) = self.registration.take()
            && tokio::time::timeout(Duration::from_secs(3), task)
                .await
                .is_err()
        {
            tracing::warn!(id = %self.state.id, "deregistration did not finish in time");
        }
    }

    /// The node as a gateway in this process reaches it, without HTTP.
    pub fn local(&self) -> Arc<dyn tollgate_shared::worker_api::local::LocalWorker> {
        Arc::new(crate::local::Local(self.state.clone()))
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
        if let Some(r) = &self.registration {
            r.abort();
        }
    }
}

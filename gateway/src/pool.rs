//! The pool: the workers this gateway knows, their load, and the HTTP client
//! that dispatches to them. It feeds the scheduler with shard capacity.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate_scheduler::{SchedulerHandle, ShardCapacity, ShardId};
use tollgate_shared::ids::RequestId;
use tollgate_shared::secret::Secret;
use tollgate_shared::worker_api::{
    Endpoint, LOAD_PATH, REQUEST_ID_HEADER, TRACEPARENT_HEADER, WORKER_ERROR_HEADER,
    WorkerErrorKind, WorkerLoad, dispatch_path,
};

/// A report older than this counts as no capacity at all.
const STALE_AFTER: Duration = Duration::from_millis(750);

/// Why a dispatch did not reach vLLM.
#[derive(Debug)]
pub enum SendError {
    /// The shard is full or its worker is draining: try again later, maybe elsewhere.
    Busy,
    /// The worker or its shard could not serve the request; nothing was sent to vLLM.
    Unavailable(String),
}

struct Seen {
    load: WorkerLoad,
    at: Instant,
}

pub struct Pool {
    urls: Vec<Arc<str>>,
    http: reqwest::Client,
    secret: Secret,
    seen: RwLock<HashMap<Arc<str>, Seen>>,
}

impl Pool {
    pub fn new(urls: &[String], secret: Secret) -> Result<Pool, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Pool {
            urls: urls
                .iter()
                .map(|u| Arc::from(u.trim_end_matches('/')))
                .collect(),
            http,
            secret,
            seen: RwLock::new(HashMap::new()),
        })
    }

    /// Polls every worker's load every `interval` and reports it to the scheduler.
    pub fn watch(
        self: &Arc<Self>,
        scheduler: SchedulerHandle,
        interval: Duration,
        stop: CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        self.urls
            .iter()
            .map(|url| {
                let (pool, url, scheduler, stop) = (self.clone(), url.clone(), scheduler.clone(), stop.clone());
                // Owned by the gateway runtime: cancelled by `stop`, aborted on drop.
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut was_up = None;
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tick.tick() => {}
                        }
                        let load = pool.poll(&url).await;
                        let up = load.is_ok();
                        if was_up != Some(up) {
                            match &load {
                                Ok(l) => tracing::info!(worker = %url, worker_id = %l.worker_id, shards = l.shards.len(), "worker up"),
                                Err(e) => tracing::warn!(worker = %url, error = %e, "worker unreachable"),
                            }
                            was_up = Some(up);
                        }
                        scheduler.report(url.clone(), pool.record(&url, load.ok()));
                    }
                })
            })
            .collect()
    }

    async fn poll(&self, url: &str) -> Result<WorkerLoad, String> {
        let resp = self
            .http
            .get(format!("{url}{LOAD_PATH}"))
            .bearer_auth(self.secret.expose())
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("load report answered {}", resp.status()));
        }
        resp.json().await.map_err(|e| e.to_string())
    }

    /// Stores a report and turns it into scheduler capacity (none if the worker is down).
    fn record(&self, url: &Arc<str>, load: Option<WorkerLoad>) -> Vec<ShardCapacity> {
        let Ok(mut seen) = self.seen.write() else {
            return Vec::new();
        };
        let Some(load) = load else {
            seen.remove(url);
            return Vec::new();
        };
        let caps = load
            .shards
            .iter()
            .map(|s| ShardCapacity {
                id: ShardId {
                    worker: url.clone(),
                    index: s.index,
                },
                healthy: s.healthy && !load.draining,
                free_slots: s.free_slots,
                max_slots: s.max_inflight,
            })
            .collect();
        seen.insert(
            url.clone(),
            Seen {
                load,
                at: Instant::now(),
            },
        );
        caps
    }

    fn fresh(&self) -> Vec<WorkerLoad> {
        let Ok(seen) = self.seen.read() else {
            return Vec::new();
        };
        seen.values()
            .filter(|s| s.at.elapsed() < STALE_AFTER)
            .map(|s| s.load.clone())
            .collect()
    }

    /// Ready when at least one shard is healthy on a worker that reported recently.
    pub fn ready(&self) -> bool {
        self.fresh()
            .iter()
            .any(|w| !w.draining && w.shards.iter().any(|s| s.healthy))
    }

    /// The smallest `max_model_len` any healthy shard reports.
    pub fn max_model_len(&self) -> Option<u64> {
        self.fresh()
            .iter()
            .flat_map(|w| w.shards.iter())
            .filter(|s| s.healthy)
            .filter_map(|s| s.max_model_len)
            .min()
    }

    /// Sends a request to a shard. An `Ok` answer comes from vLLM (any status);
    /// an `Err` means vLLM never saw the request.
    pub async fn send(
        &self,
        shard: &ShardId,
        endpoint: Endpoint,
        body: Bytes,
        request_id: RequestId,
    ) -> Result<reqwest::Response, SendError> {
        let resp = self
            .http
            .post(format!(
                "{}{}",
                shard.worker,
                dispatch_path(shard.index, endpoint)
            ))
            .bearer_auth(self.secret.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(REQUEST_ID_HEADER, request_id.to_string())
            .header(TRACEPARENT_HEADER, request_id.traceparent())
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Unavailable(e.to_string()))?;
        let kind = resp
            .headers()
            .get(WORKER_ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(WorkerErrorKind::parse);
        match kind {
            None => Ok(resp),
            Some(WorkerErrorKind::Busy | WorkerErrorKind::Draining) => Err(SendError::Busy),
            Some(WorkerErrorKind::Unauthorized) => {
                tracing::error!(worker = %shard.worker, "worker refused the cluster credential: check cluster.secret");
                Err(SendError::Unavailable("cluster credential refused".into()))
            }
            Some(k @ (WorkerErrorKind::ShardUnavailable | WorkerErrorKind::UnknownShard)) => {
                Err(SendError::Unavailable(k.as_str().into()))
            }
        }
    }
}

//! The pool: the workers this gateway dispatches to, their load and health,
//! and the HTTP client that reaches them. It feeds the scheduler with shard
//! capacity. Which workers exist is `discovery`'s business; the pool watches
//! each one it is told of.
//!
//! Capacity is only granted on a recent report: when a worker's report is
//! older than [`STALE_AFTER`] (a poll hangs) or its poll failed, the
//! scheduler is told it has no capacity at all. Each worker has a circuit
//! breaker for reaching it (failed polls and transport errors open it; after a
//! cool-down a good poll half-opens it and one request closes it); each shard
//! that failed a request before vLLM produced anything gets no new grant from
//! this gateway for [`SHARD_PENALTY`], so the one retry goes elsewhere.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tollgate_scheduler::{SchedulerHandle, ShardCapacity, ShardId};
use tollgate_shared::breaker::{Admit, Breaker, BreakerConfig, BreakerState, Transition};
use tollgate_shared::http;
use tollgate_shared::ids::RequestId;
use tollgate_shared::secret::Secret;
use tollgate_shared::worker_api::local::{Body, BodyBroken, Dispatch, LocalLink, Relayed};
use tollgate_shared::worker_api::{
    Endpoint, GATEWAY_ID_HEADER, LOAD_PATH, REQUEST_ID_HEADER, ShardLoad, TRACEPARENT_HEADER,
    WORKER_ERROR_HEADER, WorkerErrorKind, WorkerLoad, dispatch_path,
};

/// A report older than this counts as no capacity at all.
pub const STALE_AFTER: Duration = Duration::from_millis(400);
/// How long one load poll may take before it counts as a failure (its
/// worker's capacity is withdrawn earlier, when the last report turns stale).
const POLL_TIMEOUT: Duration = Duration::from_secs(1);
/// Readiness and `max_model_len` accept reports up to this old.
const RECENT: Duration = Duration::from_secs(1);
/// How long a shard that failed before the first byte gets no new grant.
pub const SHARD_PENALTY: Duration = Duration::from_millis(500);

/// vLLM's answer as the worker passed it on, over HTTP or in-process.
pub struct Upstream {
    pub status: reqwest::StatusCode,
    pub body: Body,
}

impl Upstream {
    fn from_http(resp: reqwest::Response) -> Upstream {
        Upstream {
            status: resp.status(),
            body: Box::pin(resp.bytes_stream().map(|r| r.map_err(|_| BodyBroken))),
        }
    }

    fn from_local(r: Relayed) -> Upstream {
        Upstream {
            status: reqwest::StatusCode::from_u16(r.status)
                .unwrap_or(reqwest::StatusCode::BAD_GATEWAY),
            body: r.body,
        }
    }

    /// The whole body.
    pub async fn bytes(mut self) -> Result<Bytes, BodyBroken> {
        // The usual answer is one chunk: passed on without a copy.
        let Some(first) = self.body.next().await.transpose()? else {
            return Ok(Bytes::new());
        };
        let Some(second) = self.body.next().await.transpose()? else {
            return Ok(first);
        };
        let mut out = bytes::BytesMut::from(&first[..]);
        out.extend_from_slice(&second);
        while let Some(chunk) = self.body.next().await.transpose()? {
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }
}

/// Why a dispatch did not reach vLLM.
#[derive(Debug)]
pub enum SendError {
    /// The shard is full or its worker is draining: try again later, maybe elsewhere.
    Busy,
    /// The worker or its shard could not serve the request; nothing was sent to vLLM.
    Unavailable(String),
}

/// What the pool knows of one worker.
struct Tracked {
    /// The last good report and when it arrived.
    last: Option<(WorkerLoad, Instant)>,
    /// Reaching the worker: polls and dispatches.
    breaker: Breaker,
    /// Shards that failed a request before the first byte, and until when they rest.
    penalized: HashMap<u32, Instant>,
    /// Whether the last poll succeeded (for logging changes only).
    up: Option<bool>,
}

/// One worker as this gateway sees it (for admin views and tests).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WorkerView {
    pub url: String,
    pub worker_id: Option<String>,
    /// This gateway's breaker for reaching the worker.
    pub breaker: BreakerState,
    /// Milliseconds since the last good report.
    pub report_age_ms: Option<u64>,
    /// Whether the last poll succeeded (`None`: not polled yet).
    pub reachable: Option<bool>,
    pub draining: bool,
    pub shards: Vec<ShardLoad>,
}

pub struct Pool {
    /// Names this gateway to workers, which then report its own share of each
    /// shard's in-flight requests (see [`ShardCapacity::own_at_report`]).
    id: Arc<str>,
    secret: Secret,
    scheduler: SchedulerHandle,
    breaker: BreakerConfig,
    workers: RwLock<HashMap<Arc<str>, Tracked>>,
    /// A worker in this process, reached by a call instead of HTTP.
    local: Option<LocalLink>,
}

impl Pool {
    pub fn new(
        secret: Secret,
        scheduler: SchedulerHandle,
        local: Option<LocalLink>,
    ) -> Result<Pool, String> {
        // Fails here, at start, rather than on the first request.
        http::internal().map_err(|e| e.to_string())?;
        Ok(Pool {
            id: uuid::Uuid::new_v4().simple().to_string().into(),
            secret,
            scheduler,
            breaker: BreakerConfig::default(),
            workers: RwLock::new(HashMap::new()),
            local,
        })
    }

    /// Starts knowing `url` (its poller is started by the caller).
    pub fn track(&self, url: &Arc<str>) {
        if let Ok(mut w) = self.workers.write() {
            w.entry(url.clone()).or_insert_with(|| Tracked {
                last: None,
                breaker: Breaker::new(self.breaker),
                penalized: HashMap::new(),
                up: None,
            });
        }
    }

    /// Forgets `url`: the scheduler stops granting its shards. Requests in
    /// flight to it go on (their connections do not depend on the pool).
    pub fn untrack(&self, url: &Arc<str>) {
        if let Ok(mut w) = self.workers.write() {
            w.remove(url);
            // Under the lock, so no poller report can overtake this one.
            self.scheduler.report(url.clone(), Vec::new());
        }
    }

    /// Polls `url`'s load every `interval` and reports it to the scheduler until `stop`.
    pub async fn watch(
        self: Arc<Self>,
        url: Arc<str>,
        interval: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(stale_at) = self.poll_due(&url, Instant::now()) else {
                continue;
            };
            let poll = self.poll(&url);
            tokio::pin!(poll);
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = &mut poll => r,
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(stale_at)) => {
                    // The last report is too old to grant on: saturated until a fresh one.
                    self.publish(&url, |_| Vec::new());
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        r = &mut poll => r,
                    }
                }
            };
            let now = Instant::now();
            self.publish(&url, |t| record(&url, t, result, now));
        }
    }

    /// Whether to poll now (an open breaker waits for its cool-down), and
    /// when the current report turns stale.
    fn poll_due(&self, url: &str, now: Instant) -> Option<Instant> {
        let w = self.workers.read().ok()?;
        let t = w.get(url)?;
        if t.breaker.state() == BreakerState::Open && !t.breaker.probe_due(now) {
            return None;
        }
        Some(t.last.as_ref().map_or(now, |(_, at)| *at + STALE_AFTER))
    }

    /// Updates what is known of `url` and reports its capacity to the
    /// scheduler, both under the lock so reports reach the scheduler in the
    /// order they were made (see `untrack` and `shard_failed`).
    fn publish(&self, url: &Arc<str>, f: impl FnOnce(&mut Tracked) -> Vec<ShardCapacity>) {
        let Ok(mut w) = self.workers.write() else {
            return;
        };
        let Some(t) = w.get_mut(url) else {
            return;
        };
        let caps = f(t);
        self.scheduler.report(url.clone(), caps);
    }

    /// The worker at `url` when it lives in this process.
    fn local(&self, url: &str) -> Option<&LocalLink> {
        self.local.as_ref().filter(|l| &*l.url == url)
    }

    async fn poll(&self, url: &str) -> Result<WorkerLoad, String> {
        if let Some(l) = self.local(url) {
            return Ok(l.worker.load(&self.id));
        }
        let resp = http::internal()
            .map_err(|e| e.to_string())?
            .get(format!("{url}{LOAD_PATH}"))
            .bearer_auth(self.secret.expose())
            .header(GATEWAY_ID_HEADER, &*self.id)
            .timeout(POLL_TIMEOUT)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("load report answered {}", resp.status()));
        }
        resp.json().await.map_err(|e| e.to_string())
    }

    /// A request to `shard` failed before vLLM produced anything: this
    /// gateway grants it nothing for [`SHARD_PENALTY`]. Call before handing
    /// the grant back (`Lease::busy`, which marks the shard full): reports
    /// made before this call reach the scheduler before that mark, and later
    /// ones leave the shard out, so the retry cannot land on the same shard.
    pub fn shard_failed(&self, shard: &ShardId) {
        if let Ok(mut w) = self.workers.write()
            && let Some(t) = w.get_mut(&shard.worker)
        {
            t.penalized
                .insert(shard.index, Instant::now() + SHARD_PENALTY);
        }
    }

    /// Every worker as this gateway sees it.
    pub fn view(&self) -> Vec<WorkerView> {
        let Ok(w) = self.workers.read() else {
            return Vec::new();
        };
        let mut out: Vec<_> = w
            .iter()
            .map(|(url, t)| WorkerView {
                url: url.to_string(),
                worker_id: t.last.as_ref().map(|(l, _)| l.worker_id.clone()),
                breaker: t.breaker.state(),
                report_age_ms: t
                    .last
                    .as_ref()
                    .map(|(_, at)| at.elapsed().as_millis() as u64),
                reachable: t.up,
                draining: t.last.as_ref().is_some_and(|(l, _)| l.draining),
                shards: t
                    .last
                    .as_ref()
                    .map(|(l, _)| l.shards.clone())
                    .unwrap_or_default(),
            })
            .collect();
        out.sort_by(|a, b| a.url.cmp(&b.url));
        out
    }

    /// Reports of reachable workers that arrived within [`RECENT`].
    fn recent(&self) -> Vec<WorkerLoad> {
        let Ok(w) = self.workers.read() else {
            return Vec::new();
        };
        w.values()
            .filter(|t| t.breaker.state() != BreakerState::Open && t.up == Some(true))
            .filter_map(|t| t.last.as_ref())
            .filter(|(_, at)| at.elapsed() < RECENT)
            .map(|(l, _)| l.clone())
            .collect()
    }

    /// Ready when at least one shard is healthy on a worker that reported recently.
    pub fn ready(&self) -> bool {
        self.recent()
            .iter()
            .any(|w| !w.draining && w.shards.iter().any(|s| s.healthy))
    }

    /// The smallest `max_model_len` any healthy shard reports.
    pub fn max_model_len(&self) -> Option<u64> {
        self.recent()
            .iter()
            .flat_map(|w| w.shards.iter())
            .filter(|s| s.healthy)
            .filter_map(|s| s.max_model_len)
            .min()
    }

    /// Asks `worker`'s breaker whether a request may go.
    fn admit(&self, worker: &Arc<str>) -> Admit {
        let Ok(mut w) = self.workers.write() else {
            return Admit::Yes;
        };
        // A worker discovery just dropped can still finish a grant made before.
        w.get_mut(worker).map_or(Admit::Yes, |t| t.breaker.admit())
    }

    /// Tells `worker`'s breaker whether reaching it worked. A worker that
    /// could not be reached has no capacity until a poll says otherwise: the
    /// scheduler hears it at once, before the caller hands its grant back, so
    /// the retry cannot land on another shard of the same worker. Successes
    /// wait for the next poll (republishing an old report here would hand out
    /// again slots granted since).
    fn settle(&self, worker: &Arc<str>, trial: bool, reached: bool) {
        let Ok(mut w) = self.workers.write() else {
            return;
        };
        let Some(t) = w.get_mut(worker) else {
            return;
        };
        let tr = if reached {
            t.breaker.on_success(trial)
        } else {
            t.breaker.on_failure(trial, Instant::now())
        };
        log_transition(worker, tr);
        if !reached {
            self.scheduler.report(worker.clone(), Vec::new());
        }
    }

    /// Sends a request to a shard. An `Ok` answer comes from vLLM (any status);
    /// an `Err` means vLLM never saw the request.
    pub async fn send(
        &self,
        shard: &ShardId,
        endpoint: Endpoint,
        body: Bytes,
        request_id: RequestId,
    ) -> Result<Upstream, SendError> {
        let trial = match self.admit(&shard.worker) {
            Admit::Yes => false,
            Admit::Trial => true,
            Admit::No => {
                return Err(SendError::Unavailable(
                    "the worker's circuit breaker is open".into(),
                ));
            }
        };
        // If this future is dropped mid-send (the client left), a trial gives way to another.
        let mut pending = TrialGuard {
            pool: self,
            worker: &shard.worker,
            armed: trial,
        };
        let sent = match self.local(&shard.worker) {
            Some(l) => {
                let d = Dispatch {
                    shard: shard.index,
                    endpoint,
                    body,
                    gateway: self.id.clone(),
                    request_id: request_id.to_string(),
                    traceparent: crate::telemetry::traceparent(request_id),
                };
                Ok(l.worker
                    .dispatch(d)
                    .await
                    .map(Upstream::from_local)
                    .map_err(|r| r.kind))
            }
            None => self.send_http(shard, endpoint, body, request_id).await,
        };
        pending.armed = false;
        let answer = match sent {
            Ok(a) => a,
            Err(e) => {
                self.settle(&shard.worker, trial, false);
                return Err(SendError::Unavailable(e));
            }
        };
        // The worker answered: it is reachable, whatever it said.
        self.settle(&shard.worker, trial, true);
        match answer {
            Ok(upstream) => Ok(upstream),
            Err(WorkerErrorKind::Busy | WorkerErrorKind::Draining) => Err(SendError::Busy),
            Err(WorkerErrorKind::Unauthorized) => {
                tracing::error!(worker = %shard.worker, "worker refused the cluster credential: check cluster.secret");
                Err(SendError::Unavailable("cluster credential refused".into()))
            }
            Err(k @ (WorkerErrorKind::ShardUnavailable | WorkerErrorKind::UnknownShard)) => {
                Err(SendError::Unavailable(k.as_str().into()))
            }
        }
    }

    /// A dispatch over the internal HTTP API: `Err` when the worker could not
    /// be reached, else its answer or the error it raised itself.
    async fn send_http(
        &self,
        shard: &ShardId,
        endpoint: Endpoint,
        body: Bytes,
        request_id: RequestId,
    ) -> Result<Result<Upstream, WorkerErrorKind>, String> {
        let http = http::internal().map_err(|e| e.to_string())?;
        let resp = http
            .post(format!(
                "{}{}",
                shard.worker,
                dispatch_path(shard.index, endpoint)
            ))
            .bearer_auth(self.secret.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(REQUEST_ID_HEADER, request_id.to_string())
            .header(GATEWAY_ID_HEADER, &*self.id)
            .header(
                TRACEPARENT_HEADER,
                crate::telemetry::traceparent(request_id),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let kind = resp
            .headers()
            .get(WORKER_ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(WorkerErrorKind::parse);
        Ok(match kind {
            None => Ok(Upstream::from_http(resp)),
            Some(k) => Err(k),
        })
    }
}

/// Abandons a half-open breaker's trial whose request was dropped unsent.
struct TrialGuard<'a> {
    pool: &'a Pool,
    worker: &'a Arc<str>,
    armed: bool,
}

impl Drop for TrialGuard<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Ok(mut w) = self.pool.workers.write()
            && let Some(t) = w.get_mut(self.worker)
        {
            t.breaker.on_abandoned();
        }
    }
}

/// Applies a poll's result to what is known of `url`; returns its capacity.
fn record(
    url: &Arc<str>,
    t: &mut Tracked,
    result: Result<WorkerLoad, String>,
    now: Instant,
) -> Vec<ShardCapacity> {
    let up = result.is_ok();
    if t.up != Some(up) {
        match &result {
            Ok(l) => {
                tracing::info!(worker = %url, worker_id = %l.worker_id, shards = l.shards.len(), "worker up")
            }
            Err(e) => tracing::warn!(worker = %url, error = %e, "worker unreachable"),
        }
        t.up = Some(up);
    }
    let tr = match (&result, t.breaker.state()) {
        (Ok(_), BreakerState::Closed) => t.breaker.on_success(false),
        (Err(_), BreakerState::Closed) => t.breaker.on_failure(false, now),
        // While not closed, polls are the breaker's probes.
        (r, _) => t.breaker.on_probe(r.is_ok(), now),
    };
    log_transition(url, tr);
    match result {
        Ok(load) => {
            t.last = Some((load, now));
            capacities(url, t, now)
        }
        Err(_) => Vec::new(),
    }
}

/// The scheduler's view of `url`'s shards: the last report, less shards
/// resting after a failure, and at most one slot while the breaker is half-open.
fn capacities(url: &Arc<str>, t: &mut Tracked, now: Instant) -> Vec<ShardCapacity> {
    t.penalized.retain(|_, until| *until > now);
    let Some((load, _)) = &t.last else {
        return Vec::new();
    };
    let mut room = t.breaker.capacity();
    // A breaker's cap on slots would be undone by adding back our own requests.
    let exact = room.is_none();
    load.shards
        .iter()
        .map(|s| {
            let healthy = s.healthy && !load.draining && !t.penalized.contains_key(&s.index);
            let mut free = if healthy { s.free_slots } else { 0 };
            if let Some(r) = room.as_mut() {
                free = free.min(*r);
                *r -= free;
            }
            ShardCapacity {
                id: ShardId {
                    worker: url.clone(),
                    index: s.index,
                },
                healthy,
                free_slots: free,
                max_slots: s.max_inflight,
                inflight: s.inflight,
                running: s.running,
                waiting: s.waiting,
                kv_cache_usage: s.kv_cache_usage,
                granted: 0,
                own_at_report: s
                    .caller_inflight
                    .filter(|_| exact && s.breaker == BreakerState::Closed),
            }
        })
        .collect()
}

fn log_transition(url: &str, tr: Transition) {
    match tr {
        Transition::None => {}
        Transition::Opened => {
            tracing::warn!(worker = %url, breaker = "open", "worker circuit opened")
        }
        Transition::HalfOpened => {
            tracing::info!(worker = %url, breaker = "half_open", "worker circuit half-open")
        }
        Transition::Closed => {
            tracing::info!(worker = %url, breaker = "closed", "worker circuit closed")
        }
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;

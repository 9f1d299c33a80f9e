//! The internal gateway ↔ worker API (CONTRACT §4). Never exposed to clients.
//!
//! - `POST /internal/v1/shards/{index}/chat/completions` and `.../completions`:
//!   the body is the vLLM request as the gateway built it; the answer is vLLM's,
//!   streamed through unchanged. Closing the connection aborts the vLLM request.
//! - `GET /internal/v1/load`: [`WorkerLoad`].
//!
//! Every call carries `Authorization: Bearer <cluster secret>`, `x-request-id`
//! and W3C `traceparent`. Errors raised by the worker itself (not relayed from
//! vLLM) carry [`WORKER_ERROR_HEADER`] naming a [`WorkerErrorKind`].

use serde::{Deserialize, Serialize};

use crate::breaker::BreakerState;

pub const LOAD_PATH: &str = "/internal/v1/load";
pub const WORKER_ERROR_HEADER: &str = "x-tollgate-worker-error";
pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Names the gateway replica on dispatches and load polls, so a load report
/// can tell the caller which in-flight requests are its own.
pub const GATEWAY_ID_HEADER: &str = "x-tollgate-gateway";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    ChatCompletions,
    Completions,
}

impl Endpoint {
    /// The path below `/v1/` on vLLM and below the shard on the worker.
    pub fn suffix(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Completions => "completions",
        }
    }

    pub fn parse(suffix: &str) -> Option<Endpoint> {
        match suffix {
            "chat/completions" => Some(Endpoint::ChatCompletions),
            "completions" => Some(Endpoint::Completions),
            _ => None,
        }
    }
}

/// The worker path that relays `endpoint` to shard `index`.
pub fn dispatch_path(index: u32, endpoint: Endpoint) -> String {
    format!("/internal/v1/shards/{index}/{}", endpoint.suffix())
}

/// Why the worker itself refused or failed a dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerErrorKind {
    /// The shard is at its in-flight limit: requeue and try again later.
    Busy,
    /// The shard is unhealthy or its vLLM could not be reached before any byte was sent.
    ShardUnavailable,
    /// No such shard on this worker.
    UnknownShard,
    /// The worker is draining for shutdown.
    Draining,
    /// Bad or missing cluster credential.
    Unauthorized,
}

impl WorkerErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerErrorKind::Busy => "busy",
            WorkerErrorKind::ShardUnavailable => "shard_unavailable",
            WorkerErrorKind::UnknownShard => "unknown_shard",
            WorkerErrorKind::Draining => "draining",
            WorkerErrorKind::Unauthorized => "unauthorized",
        }
    }

    pub fn parse(s: &str) -> Option<WorkerErrorKind> {
        [
            WorkerErrorKind::Busy,
            WorkerErrorKind::ShardUnavailable,
            WorkerErrorKind::UnknownShard,
            WorkerErrorKind::Draining,
            WorkerErrorKind::Unauthorized,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A worker's report of its shards, polled by every gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerLoad {
    pub worker_id: String,
    pub draining: bool,
    pub shards: Vec<ShardLoad>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ShardLoad {
    pub index: u32,
    pub healthy: bool,
    /// The model vLLM serves, from `/v1/models`.
    pub model: Option<String>,
    /// `max_model_len` as vLLM reports it.
    pub max_model_len: Option<u64>,
    /// Sequences vLLM is running, from its `/metrics`.
    pub running: u32,
    /// Sequences waiting in vLLM's own queue.
    pub waiting: u32,
    /// Fraction of the KV cache in use, 0..=1.
    pub kv_cache_usage: f64,
    /// Requests this worker has in flight to the shard.
    pub inflight: u32,
    /// How many of `inflight` the polling gateway sent (absent when the poll
    /// named no gateway, or from older workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_inflight: Option<u32>,
    pub max_inflight: u32,
    /// Requests the worker would admit now.
    pub free_slots: u32,
    /// The worker's circuit breaker for this shard (absent from older workers: closed).
    #[serde(default)]
    pub breaker: BreakerState,
    /// Mean inter-token latency vLLM reported since the previous scrape
    /// (`vllm:inter_token_latency_seconds`, or V0's `time_per_output_token_seconds`).
    #[serde(default)]
    pub inter_token_latency_ms: Option<f64>,
}

/// How workers register themselves in Redis (when `redis.url` is set) so
/// gateways can find them: one key per worker holding a [`WorkerRecord`] with a
/// TTL that a heartbeat keeps refreshing, plus an index set of worker ids.
/// Every key carries the `{workers}` hash tag, so one atomic pipeline (and one
/// `MGET`) works on Redis Cluster too. Names go under the configured prefix.
pub mod registry {
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    /// The set of registered worker ids (entries may have expired since).
    pub const INDEX: &str = "{workers}:index";
    /// A registration lives this long unless refreshed.
    pub const TTL: Duration = Duration::from_secs(3);
    /// How often a worker refreshes its registration.
    pub const HEARTBEAT: Duration = Duration::from_secs(1);

    /// The key of worker `id`'s registration (below the prefix).
    pub fn key(id: &str) -> String {
        format!("{{workers}}:w:{id}")
    }

    /// What a worker registers: where gateways reach it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct WorkerRecord {
        pub id: String,
        /// The worker's advertised base URL, without a trailing slash.
        pub url: String,
        pub shards: u32,
    }
}

/// A worker in the gateway's own process (`tollgate up`): the gateway calls
/// it instead of crossing loopback HTTP to it. Admission, the shard's
/// breaker, the relay to vLLM and its span are the worker's, exactly as for
/// a dispatch over HTTP; only the gateway ↔ worker hop (its serialisation,
/// sockets and cluster credential, which guards a network boundary that is
/// not there) is left out.
pub mod local {
    use std::pin::Pin;
    use std::sync::Arc;

    use bytes::Bytes;
    use futures::Stream;
    use futures::future::BoxFuture;

    use super::{Endpoint, WorkerErrorKind, WorkerLoad};

    /// vLLM's answer broke off mid-body.
    #[derive(Debug, thiserror::Error)]
    #[error("the model server's answer broke off")]
    pub struct BodyBroken;

    /// An answer's body as it arrives.
    pub type Body = Pin<Box<dyn Stream<Item = Result<Bytes, BodyBroken>> + Send>>;

    /// vLLM's answer as the worker passes it on: its status and its body,
    /// which holds the shard's slot until it has been read to its end or dropped.
    pub struct Relayed {
        pub status: u16,
        pub body: Body,
    }

    /// Why the worker refused or failed a dispatch, as its HTTP API would say.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Refused {
        pub kind: WorkerErrorKind,
        pub message: &'static str,
    }

    /// One dispatch: what the HTTP API carries in its path, headers and body.
    pub struct Dispatch {
        pub shard: u32,
        pub endpoint: Endpoint,
        pub body: Bytes,
        /// The calling gateway (its own share of load reports).
        pub gateway: Arc<str>,
        pub request_id: String,
        pub traceparent: String,
    }

    pub trait LocalWorker: Send + Sync {
        /// The load report, telling `gateway` its own share.
        fn load(&self, gateway: &str) -> WorkerLoad;
        /// Admits and relays one request (the worker's dispatch route, called directly).
        fn dispatch(&self, d: Dispatch) -> BoxFuture<'static, Result<Relayed, Refused>>;
    }

    /// A local worker and the URL the gateway's pool knows it by.
    #[derive(Clone)]
    pub struct LocalLink {
        pub url: Arc<str>,
        pub worker: Arc<dyn LocalWorker>,
    }
}

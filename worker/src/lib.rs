//! A worker node drives the vLLM shards of one GPU node; also home of the vLLM simulator.
//!
//! - `node`: start and drain a worker (shards, watchers, HTTP server)
//! - `local`: the worker as a gateway in the same process calls it
//! - `server`: the internal API the gateways call, plus health
//! - `registration`: the node's entry in Redis (heartbeat, deregistration) for discovery
//! - `relay`: one request to one vLLM shard, streamed back unbuffered
//! - `shard`: a shard's health, load, in-flight admission and circuit breaker
//! - `vllm_metrics`: load figures read from vLLM's `/metrics`
//! - `telemetry`: the worker's `/metrics` and the span of each dispatch
//! - `sim`: the vLLM simulator (`tollgate sim`)

pub mod local;
pub mod node;
pub mod registration;
pub mod relay;
pub mod server;
pub mod shard;
pub mod sim;
pub mod telemetry;
pub mod vllm_metrics;

pub use node::{NodeSettings, WorkerNode};

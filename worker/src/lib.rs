//! A worker node drives the vLLM shards of one GPU node; also home of the vLLM simulator.
//!
//! - `node`: start and drain a worker (shards, watchers, HTTP server)
//! - `server`: the internal API the gateways call, plus health
//! - `relay`: one request to one vLLM shard, streamed back unbuffered
//! - `shard`: a shard's health, load and in-flight admission
//! - `vllm_metrics`: load figures read from vLLM's `/metrics`
//! - `sim`: the vLLM simulator (`tollgate sim`)

pub mod node;
pub mod relay;
pub mod server;
pub mod shard;
pub mod sim;
pub mod vllm_metrics;

pub use node::{NodeSettings, WorkerNode};

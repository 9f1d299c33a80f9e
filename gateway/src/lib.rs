//! The gateway: the OpenAI-compatible front door of a Tollgate cluster.
//!
//! - `audit`: the durable audit trail (rotating JSON lines, Redis stream)
//! - `telemetry`: request spans, metrics, the dashboard's figures
//! - `app`: shared state and assembly (registry, tokens, scheduler, pool, server)
//! - `http`: routes and handlers
//! - `auth`: authentication (JWT), authorization (scopes), the client registry
//! - `transport`: connection and request-head limits, TLS, body reading, SSE pacing
//! - `validate`: request checks and the body sent upstream
//! - `guard`: deny patterns, system-prompt policy, per-tenant cache salts
//! - `limits`: rate limits, token quotas, concurrency and usage metering
//! - `dispatch`: waiting for a shard and sending to it
//! - `tokenizer`: exact token counts from a tokenizer.json (byte-level BPE)
//! - `relay`: vLLM's answer turned into the client's
//! - `pool`: the workers, their load, the HTTP client to them
//! - `discovery`: which workers exist (static config and the Redis registry)
//! - `error`: the error type and its one mapping to HTTP

pub mod app;
pub mod audit;
pub mod auth;
pub mod discovery;
pub mod dispatch;
pub mod error;
pub mod guard;
pub mod http;
pub mod limits;
pub mod pool;
pub mod relay;
pub mod telemetry;
pub mod tokenizer;
pub mod transport;
pub mod validate;

pub use app::{Gateway, GatewayRuntime, start};

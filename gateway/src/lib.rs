//! The gateway: the OpenAI-compatible front door of a Tollgate cluster.
//!
//! - `audit`: the durable audit trail (JSON lines)
//! - `app`: shared state and assembly (registry, tokens, scheduler, pool, server)
//! - `http`: routes and handlers
//! - `auth`: authentication (JWT), authorization (scopes), the client registry
//! - `validate`: request checks and the body sent upstream
//! - `dispatch`: waiting for a shard and sending to it
//! - `relay`: vLLM's answer turned into the client's
//! - `pool`: the workers, their load, the HTTP client to them
//! - `error`: the error type and its one mapping to HTTP

pub mod app;
pub mod audit;
pub mod auth;
pub mod dispatch;
pub mod error;
pub mod http;
pub mod pool;
pub mod relay;
pub mod validate;

pub use app::{Gateway, GatewayRuntime, start};

//! What every Tollgate crate shares; depends on no other Tollgate crate.
//!
//! - `config`: TOML + env config, raw → validated, secrets masked
//! - `secret`: secret sources and a value type that never prints itself
//! - `openai`: OpenAI-compatible request/response wire types
//! - `integer`: integers read as JSON Schema has them (`17.0` is `17`)
//! - `worker_api`: the internal gateway ↔ worker API
//! - `breaker`: the circuit breaker state machine (pure)
//! - `ids`: request ids (W3C trace ids) and `traceparent`
//! - `inflight`: requests in flight per key
//! - `http`: the client of internal hops, one per thread
//! - `telemetry`: logs, OTLP traces and the Prometheus recorder, set up once
//! - `store`: the Redis access layer
//! - `testing`: a real redis-server per test (feature `test-support`)

pub mod breaker;
pub mod config;
pub mod hex;
pub mod http;
pub mod ids;
pub mod inflight;
pub mod integer;
pub mod openai;
pub mod secret;
pub mod store;
pub mod telemetry;
pub mod worker_api;

#[cfg(any(test, feature = "test-support"))]
pub mod testing;

//! The client-facing transport: what the gateway enforces on connections and
//! requests before and around a handler. What actix-http does by itself is
//! relied on and tested, not redone (see `framing`).
//!
//! - `tls`: rustls server config from PEM files; h2 and http/1.1 offered by ALPN
//! - `framing`: what actix-http refuses by itself, and the head-size bound (431)
//! - `body`: a request body read within its byte limit and its time limit
//! - `sse`: streaming answers: keep-alive comments, late failures as SSE
//!   error events, and the watchdog that aborts a stream nobody reads

mod body;
mod framing;
mod sse;
mod tls;

pub use body::read_body;
pub use framing::check_head;
pub use sse::{StreamTimers, respond as stream_response};
pub use tls::server_config as tls_config;

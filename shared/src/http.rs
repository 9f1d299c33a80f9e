//! The HTTP client of the internal hops (gateway → worker, worker → vLLM):
//! one per thread.
//!
//! Each actix worker thread runs its own single-threaded runtime, and hyper
//! drives a pooled connection on the runtime that opened it. A client shared
//! by every thread hands most requests to a connection owned by another
//! thread: two cross-thread wake-ups per hop, and the socket I/O done there.
//! A client per thread keeps each request, its connection and its answer on
//! the thread that serves the request.

use std::cell::OnceCell;
use std::time::Duration;

thread_local! {
    static CLIENT: OnceCell<reqwest::Client> = const { OnceCell::new() };
}

/// Connect timeout of internal hops: peers are near, a slow connect is a dead peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle pooled connections are closed after this long: before the servers
/// close them (uvicorn, which serves vLLM, and actix close idle keep-alive
/// connections after 5 s). A connection the server is closing as a request
/// goes out on it fails that request; the soak saw it happen.
const POOL_IDLE: Duration = Duration::from_secs(4);

fn build() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(POOL_IDLE)
        // Small answers and stream chunks go out at once (no Nagle delay).
        .tcp_nodelay(true)
        // Internal peers never redirect, and a request is never sent twice
        // behind the caller's back (the gateway decides about retries).
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
        .build()
}

/// This thread's internal client (a cheap handle; build errors, e.g. no TLS
/// roots, are returned rather than cached so a later call can retry).
pub fn internal() -> Result<reqwest::Client, reqwest::Error> {
    CLIENT.with(|cell| {
        if let Some(c) = cell.get() {
            return Ok(c.clone());
        }
        let c = build()?;
        Ok(cell.get_or_init(|| c).clone())
    })
}

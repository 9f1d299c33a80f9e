//! One Redis server (`redis.url`): the shared, self-healing connection and
//! the per-thread connections of single-threaded runtimes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncConnectionConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use tokio::runtime::{Handle, RuntimeFlavor};

use super::{CALL_TIMEOUT, CONNECT_TIMEOUT, Conn, MAX_IN_FLIGHT, StoreError, bounded};

/// Calls made on a single-threaded runtime (each HTTP worker thread runs
/// one) go over a connection of that thread's own once it is up, so a
/// call and its answer never wake another thread; until then, and on any
/// other runtime, they go over the one shared, self-healing connection.
#[derive(Clone)]
pub(super) struct Node {
    conn: ConnectionManager,
    client: redis::Client,
    /// Tells this handle's per-thread connections from other handles'.
    id: usize,
}

/// A thread's own connection to one Redis.
enum Local {
    Connecting,
    Up(MultiplexedConnection),
    /// Connecting failed; not tried again before then.
    Down(Instant),
}

thread_local! {
    static LOCAL: RefCell<HashMap<usize, Local>> = RefCell::new(HashMap::new());
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// How long a thread waits after its own connection failed before it
/// connects again (its calls go over the shared connection meanwhile).
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

impl Node {
    /// Must be called inside a tokio runtime.
    pub(super) fn new(url: &str) -> Result<Node, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Protocol(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200))
            .set_concurrency_limit(MAX_IN_FLIGHT);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Node {
            conn,
            client,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// This thread's own connection, if it is up; starts connecting it when
    /// there is none (on a single-threaded runtime only, where the
    /// connection's task runs on this thread).
    fn local(&self) -> Option<MultiplexedConnection> {
        let handle = Handle::try_current().ok()?;
        if handle.runtime_flavor() != RuntimeFlavor::CurrentThread {
            return None;
        }
        let mut connect = false;
        let up = LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            match l.get(&self.id) {
                Some(Local::Up(c)) => Some(c.clone()),
                Some(Local::Connecting) => None,
                Some(Local::Down(until)) if Instant::now() < *until => None,
                _ => {
                    l.insert(self.id, Local::Connecting);
                    connect = true;
                    None
                }
            }
        });
        if connect {
            let (client, id) = (self.client.clone(), self.id);
            // Ends when connected (the connection's own task then runs on
            // this thread) or failed; the entry says which.
            handle.spawn(async move {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(CALL_TIMEOUT))
                    .set_concurrency_limit(MAX_IN_FLIGHT);
                let state = match client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                {
                    Ok(c) => Local::Up(c),
                    Err(_) => Local::Down(Instant::now() + RECONNECT_PAUSE),
                };
                LOCAL.with(|l| l.borrow_mut().insert(id, state));
            });
        }
        up
    }

    /// Runs `call` on this thread's connection if it is up, else on the
    /// shared one. A connection error drops this thread's connection: calls
    /// go over the shared one for [`RECONNECT_PAUSE`], then connect again.
    pub(super) async fn call<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match self.local() {
            Some(c) => {
                let r = bounded(call(Conn::Local(c))).await;
                if matches!(r, Err(StoreError::Unavailable(_))) {
                    let id = self.id;
                    LOCAL.with(|l| {
                        l.borrow_mut()
                            .insert(id, Local::Down(Instant::now() + RECONNECT_PAUSE))
                    });
                }
                r
            }
            None => bounded(call(Conn::Shared(self.conn.clone()))).await,
        }
    }
}

//! The one Redis access layer: connection setup with short timeouts, key
//! naming under the configured prefix, and typed errors. Every piece of state
//! shared between gateway replicas goes through here.
//!
//! Keys that one script touches together carry one hash tag (`{tenant}`), so
//! the same scripts work on Redis Cluster.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, FromRedisValue, ToRedisArgs};
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::config::RedisConfig;

/// How long one Redis call may take before it counts as a failure.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Calls in flight on the multiplexed connection at once (the bound of the "pool").
pub const MAX_IN_FLIGHT: usize = 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    #[error("redis answered something unexpected: {0}")]
    Protocol(String),
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
        {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Protocol(e.to_string())
        }
    }
}

/// A handle on Redis; cheap to clone. Connects lazily and reconnects by itself,
/// so a gateway starts (and degrades as configured) while Redis is down.
///
/// Calls made on a single-threaded runtime (each HTTP worker thread runs
/// one) go over a connection of that thread's own once it is up, so a
/// call and its answer never wake another thread; until then, and on any
/// other runtime, they go over the one shared, self-healing connection.
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    client: redis::Client,
    /// Tells this handle's per-thread connections from other handles'.
    id: usize,
    prefix: String,
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

impl Redis {
    /// Must be called inside a tokio runtime.
    pub fn new(cfg: &RedisConfig) -> Result<Redis, StoreError> {
        let client = redis::Client::open(cfg.url.expose())
            .map_err(|e| StoreError::Protocol(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200))
            .set_concurrency_limit(MAX_IN_FLIGHT);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Redis {
            conn,
            client,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            prefix: cfg.key_prefix.clone(),
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
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
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

    /// The full key for `name`, under the configured prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Runs one command, bounded by [`CALL_TIMEOUT`].
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        self.call(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// Runs a pipeline (atomic when built with `.atomic()`), bounded by [`CALL_TIMEOUT`].
    pub async fn pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        self.call(|mut c| async move { pipe.query_async(&mut c).await })
            .await
    }

    /// Runs a Lua script by EVALSHA, loading it again if Redis answers NOSCRIPT.
    pub async fn script<T: FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[impl ToRedisArgs],
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
        for a in args {
            invocation.arg(a);
        }
        self.invoke(&invocation).await
    }

    /// Runs a prepared script call (keys and arguments of any types) by
    /// EVALSHA, loading it again if Redis answers NOSCRIPT.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await
    }

    /// True when Redis answers PING.
    pub async fn ping(&self) -> bool {
        self.query::<String>(&redis::cmd("PING")).await.is_ok()
    }
}

/// How long a thread waits after its own connection failed before it
/// connects again (its calls go over the shared connection meanwhile).
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// A connection a call goes over: this thread's or the shared one.
enum Conn {
    Local(MultiplexedConnection),
    Shared(ConnectionManager),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Local(c) => c.req_packed_command(cmd),
            Conn::Shared(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Local(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Shared(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Local(c) => c.get_db(),
            Conn::Shared(c) => c.get_db(),
        }
    }
}

async fn bounded<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
    // The connection has its own response timeout; this also bounds reconnect attempts.
    match tokio::time::timeout(CALL_TIMEOUT * 2, fut).await {
        Ok(r) => r.map_err(StoreError::from),
        Err(_) => Err(StoreError::Unavailable("timed out".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::RedisServer;

    async fn client_id(r: &Redis) -> Result<i64, StoreError> {
        r.query(redis::cmd("CLIENT").arg("ID")).await
    }

    /// The id of the connection calls go over once it is not `from`.
    async fn moves_off(r: &Redis, from: &[i64]) -> i64 {
        for _ in 0..300 {
            if let Ok(id) = client_id(r).await
                && !from.contains(&id)
            {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("calls never left connections {from:?}");
    }

    #[tokio::test]
    async fn a_single_threaded_runtime_gets_a_connection_of_its_own_and_heals_it() {
        let server = RedisServer::start();
        let r = Redis::new(&server.config("own:")).unwrap();
        // The first call goes over the shared connection while this thread's connects.
        let shared = client_id(&r).await.unwrap();
        let own = moves_off(&r, &[shared]).await;
        assert_eq!(client_id(&r).await.unwrap(), own, "it stays on its own");
        // Its connection is cut: calls go over the shared one, then a new own one.
        let admin = redis::Client::open(server.url()).unwrap();
        let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(own)
            .query_async(&mut admin)
            .await
            .unwrap();
        let mut after = Vec::new();
        for _ in 0..5 {
            if let Ok(id) = client_id(&r).await {
                after.push(id);
            }
        }
        assert!(after.contains(&shared), "back on the shared one: {after:?}");
        moves_off(&r, &[shared, own]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multi_threaded_runtime_uses_the_shared_connection() {
        let server = RedisServer::start();
        let r = Redis::new(&server.config("shared:")).unwrap();
        let first = client_id(&r).await.unwrap();
        for _ in 0..20 {
            assert_eq!(client_id(&r).await.unwrap(), first);
        }
    }

    #[tokio::test]
    async fn commands_scripts_and_recovery_against_a_real_server() {
        let mut server = RedisServer::start();
        let r = Redis::new(&server.config("t:")).unwrap();
        assert_eq!(r.key("x"), "t:x");
        let _: () = r
            .query(redis::cmd("SET").arg(r.key("x")).arg(5))
            .await
            .unwrap();
        let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
        let v: i64 = r.script(&script, &[r.key("x")], &[2]).await.unwrap();
        assert_eq!(v, 7);

        server.kill();
        let err = r
            .query::<i64>(redis::cmd("GET").arg(r.key("x")))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");

        server.restart();
        // Reconnects by itself; the script is loaded again after NOSCRIPT.
        let mut ok = None;
        for _ in 0..100 {
            if let Ok(v) = r.script::<i64>(&script, &[r.key("y")], &[1]).await {
                ok = Some(v);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(ok, Some(1));
    }
}

//! The one Redis access layer: connection setup with short timeouts, key
//! naming under the configured prefix, and typed errors. Every piece of state
//! shared between gateway replicas goes through here.
//!
//! Keys that one script touches together carry one hash tag (`{tenant}`), so
//! the same scripts work on Redis Cluster.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, ToRedisArgs};

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
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    prefix: String,
}

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
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Redis {
            conn,
            prefix: cfg.key_prefix.clone(),
        })
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
        let mut conn = self.conn.clone();
        bounded(cmd.query_async(&mut conn)).await
    }

    /// Runs a pipeline (atomic when built with `.atomic()`), bounded by [`CALL_TIMEOUT`].
    pub async fn pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        bounded(pipe.query_async(&mut conn)).await
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
        let mut conn = self.conn.clone();
        bounded(invocation.invoke_async(&mut conn)).await
    }

    /// True when Redis answers PING.
    pub async fn ping(&self) -> bool {
        self.query::<String>(&redis::cmd("PING")).await.is_ok()
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

//! The one Redis access layer: connection setup with short timeouts, key
//! naming under the configured prefix, and typed errors. Every piece of state
//! shared between gateway replicas goes through here.
//!
//! - `single`: one server (`redis.url`), with per-thread connections
//! - `cluster`: a Redis Cluster (`redis.cluster`), commands sent by slot
//!
//! Keys that one script or transaction touches together carry one hash tag
//! (`{tenant}`, `{reg}`, `{workers}`, `{<address>}`), so they share a
//! cluster slot and the same scripts run on one server and on a cluster.

mod cluster;
mod single;

use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, ToRedisArgs};

use crate::config::{RedisConfig, RedisTarget};

/// How long one Redis call may take before it counts as a failure.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Calls in flight on the multiplexed connection at once (the bound of the "pool").
pub const MAX_IN_FLIGHT: usize = 1024;
/// How long a replicated write waits for its replicas (`WAIT`).
pub const WAIT_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    #[error("redis answered something unexpected: {0}")]
    Protocol(String),
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        use redis::{ErrorKind, ServerErrorKind};
        // A cluster between a primary's loss and its replica's promotion
        // answers CLUSTERDOWN, TRYAGAIN or MASTERDOWN: down for now.
        let failing_over =
            e.is_cluster_error() || e.kind() == ErrorKind::Server(ServerErrorKind::MasterDown);
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || failing_over
        {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Protocol(e.to_string())
        }
    }
}

impl From<redis::ParsingError> for StoreError {
    fn from(e: redis::ParsingError) -> Self {
        StoreError::Protocol(e.to_string())
    }
}

/// What a write answered, and whether `redis.wait_replicas` replicas had it
/// in time ([`Redis::invoke_replicated`]).
#[derive(Debug)]
pub struct Written<T> {
    pub value: T,
    pub replicated: bool,
}

/// A handle on Redis; cheap to clone. Connects lazily and reconnects by itself,
/// so a gateway starts (and degrades as configured) while Redis is down.
#[derive(Clone)]
pub struct Redis {
    backend: Backend,
    prefix: String,
    /// Replicas a replicated write waits for (`redis.wait_replicas`).
    wait_replicas: u64,
}

#[derive(Clone)]
enum Backend {
    Node(single::Node),
    Cluster(cluster::Cluster),
}

impl Redis {
    /// Must be called inside a tokio runtime.
    pub fn new(cfg: &RedisConfig) -> Result<Redis, StoreError> {
        let backend = match &cfg.target {
            RedisTarget::Url(url) => Backend::Node(single::Node::new(url.expose())?),
            RedisTarget::Cluster(nodes) => {
                let nodes: Vec<&str> = nodes.iter().map(|n| n.expose()).collect();
                Backend::Cluster(cluster::Cluster::new(&nodes)?)
            }
        };
        Ok(Redis {
            backend,
            prefix: cfg.key_prefix.clone(),
            wait_replicas: cfg.wait_replicas,
        })
    }

    /// True when writes wait for replicas ([`Redis::invoke_replicated`]).
    pub fn waits_for_replicas(&self) -> bool {
        self.wait_replicas > 0
    }

    /// True when this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// Runs `call` on a connection, bounded by [`CALL_TIMEOUT`] (twice, to
    /// bound reconnecting as well).
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match &self.backend {
            Backend::Node(n) => n.call(call).await,
            Backend::Cluster(c) => {
                bounded(async move { call(Conn::Cluster(c.connection().await?)).await }).await
            }
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

    /// Runs a pipeline (atomic when built with `.atomic()`), bounded by
    /// [`CALL_TIMEOUT`]. On a cluster its keys must share a slot.
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
        self.invoke(&invocation(script, keys, args)).await
    }

    /// As [`Redis::script`], then waits for replicas as
    /// [`Redis::invoke_replicated`] does (its keys share a slot: the first
    /// names it); a write no replica has in time is an error
    /// ([`StoreError::Unavailable`]), for callers that may simply try again.
    pub async fn script_replicated<T: FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[impl ToRedisArgs],
    ) -> Result<T, StoreError> {
        let first = keys.first().map_or("", String::as_str);
        let w = self
            .invoke_replicated(&invocation(script, keys, args), first)
            .await?;
        if !w.replicated {
            return Err(StoreError::Unavailable(format!(
                "a write reached fewer than {} replicas within {} ms",
                self.wait_replicas,
                WAIT_TIMEOUT.as_millis()
            )));
        }
        Ok(w.value)
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

    /// As [`Redis::invoke`], then, with `redis.wait_replicas` set, waits
    /// (`WAIT`, at most [`WAIT_TIMEOUT`]) until that many replicas of the
    /// primary holding `key` have the write, over the connection it went
    /// by. The answer says whether they did: if not, the write is on a
    /// primary that answered, and would be lost only if it died before its
    /// replicas caught up. With 0 (one server by default) this is
    /// [`Redis::invoke`], always replicated.
    pub async fn invoke_replicated<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        key: &str,
    ) -> Result<Written<T>, StoreError> {
        let want = self.wait_replicas;
        if want == 0 {
            let value = self.invoke(invocation).await?;
            return Ok(Written {
                value,
                replicated: true,
            });
        }
        let timeout_ms = WAIT_TIMEOUT.as_millis() as u64;
        let (value, got) = self
            .call(|mut c| async move {
                let v = invocation.invoke_async(&mut c).await?;
                let got = c.wait(key, want, timeout_ms).await?;
                Ok((v, got))
            })
            .await?;
        Ok(Written {
            value,
            replicated: got >= want as i64,
        })
    }

    /// Every key matching `pattern` (a `SCAN MATCH` glob), on every primary
    /// of a cluster. For admin reads, not the request path.
    pub async fn scan(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        self.call(|c| async move {
            match c {
                Conn::Cluster(mut c) => cluster::scan(&mut c, pattern).await,
                mut c => {
                    let mut keys = Vec::new();
                    let mut cursor = 0u64;
                    loop {
                        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut c)
                            .await?;
                        keys.extend(found);
                        if next == 0 {
                            return Ok(keys);
                        }
                        cursor = next;
                    }
                }
            }
        })
        .await
    }

    /// True when Redis answers PING.
    pub async fn ping(&self) -> bool {
        self.query::<String>(&redis::cmd("PING")).await.is_ok()
    }
}

/// A connection a call goes over: a thread's own, the shared one, or the
/// cluster's.
enum Conn {
    Local(MultiplexedConnection),
    Shared(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// `WAIT replicas timeout_ms` for the writes sent over this connection
    /// (on a cluster, to the primary holding `key`).
    async fn wait(&mut self, key: &str, replicas: u64, timeout_ms: u64) -> redis::RedisResult<i64> {
        match self {
            Conn::Cluster(c) => cluster::wait(c, key, replicas, timeout_ms).await,
            c => {
                redis::cmd("WAIT")
                    .arg(replicas)
                    .arg(timeout_ms)
                    .query_async(c)
                    .await
            }
        }
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Local(c) => c.req_packed_command(cmd),
            Conn::Shared(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
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
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Local(c) => c.get_db(),
            Conn::Shared(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
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

/// `script` called with `keys` and `args`.
fn invocation<'a>(
    script: &'a redis::Script,
    keys: &[String],
    args: &[impl ToRedisArgs],
) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    for k in keys {
        invocation.key(k);
    }
    for a in args {
        invocation.arg(a);
    }
    invocation
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

#[cfg(test)]
mod cluster_tests {
    use super::*;
    use crate::testing::RedisCluster;

    #[tokio::test]
    async fn a_cluster_takes_commands_scripts_and_scans_on_every_primary_and_survives_a_failover() {
        let mut cluster = RedisCluster::start();
        let r = Redis::new(&cluster.config("t:")).unwrap();
        assert!(r.is_cluster());
        assert!(r.ping().await);
        // Keys of many tags spread over the three primaries; a scan finds them all.
        let keys: Vec<String> = (0..30).map(|i| r.key(&format!("{{k{i}}}:x"))).collect();
        for k in &keys {
            let _: () = r.query(redis::cmd("SET").arg(k).arg(1)).await.unwrap();
        }
        let owners: std::collections::HashSet<u16> =
            keys.iter().map(|k| cluster.primary_of(k)).collect();
        assert_eq!(owners.len(), 3, "the keys live on every primary");
        let mut found = r.scan("t:{*}:x").await.unwrap();
        found.sort();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(found, want);
        // A script and an atomic pipeline on keys of one slot.
        let script = redis::Script::new(
            "redis.call('INCRBY', KEYS[1], ARGV[1]) return redis.call('INCRBY', KEYS[2], ARGV[1])",
        );
        let (a, b) = (r.key("{acme}:a"), r.key("{acme}:b"));
        let mut call = script.prepare_invoke();
        call.key(&a).key(&b).arg(2);
        // Replicated in time unless the machine is very busy: then it is
        // on the primary only, which the next replicated write waits for too.
        let mut w = r.invoke_replicated::<i64>(&call, &a).await.unwrap();
        assert_eq!(w.value, 2);
        let mut incr = 2;
        while !w.replicated {
            incr += 2;
            w = r.invoke_replicated::<i64>(&call, &a).await.unwrap();
            assert_eq!(w.value, incr);
        }
        let (x, y): (i64, i64) = r
            .pipe(redis::pipe().atomic().get(&a).get(&b))
            .await
            .unwrap();
        assert_eq!((x, y), (incr, incr));
        // The primary of the slot dies; its replica has every replicated write.
        let (dead, promoted) = cluster.fail_over(&a);
        assert_ne!(dead, promoted);
        let mut after = None;
        for _ in 0..200 {
            if let Ok(v) = r.query::<i64>(redis::cmd("GET").arg(&b)).await {
                after = Some(v);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(after, Some(incr), "the write acknowledged by WAIT survived");
        // The script is loaded again on the new primary (NOSCRIPT there).
        let v: i64 = r.invoke(&call).await.unwrap();
        assert_eq!(v, incr + 2);
        // The promoted primary has no replica: a write is done, not replicated.
        let w = r.invoke_replicated::<i64>(&call, &a).await.unwrap();
        assert_eq!((w.value, w.replicated), (incr + 4, false));
        let s = redis::Script::new("return redis.call('INCR', KEYS[1])");
        let err = r
            .script_replicated::<i64>(&s, std::slice::from_ref(&a), &[0])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        // The dead primary's slots are on the new one: the scan still finds everything.
        let found = r.scan("t:{*}:x").await.unwrap();
        assert_eq!(found.len(), keys.len());
    }
}

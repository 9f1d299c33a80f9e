//! Which workers this gateway dispatches to: the static `gateway.workers`
//! plus, when Redis is configured, every worker registered there (see
//! `tollgate_shared::worker_api::registry`). Each worker gets one poller in
//! the pool, started when the worker appears and stopped when it goes: when
//! its registration is deleted (it drained) or expired (it died).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate_shared::store::{Redis, StoreError};
use tollgate_shared::worker_api::registry::{self, WorkerRecord};

use crate::pool::Pool;

/// How often the registry is read.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_millis(250);

/// The pollers, one per worker; dropping the set stops them all.
#[derive(Default)]
struct Pollers(HashMap<Arc<str>, JoinHandle<()>>);

impl Drop for Pollers {
    fn drop(&mut self) {
        for p in self.0.values() {
            p.abort();
        }
    }
}

/// Starts the discovery task. It owns the pollers: aborting or stopping it stops them.
pub fn spawn(
    pool: Arc<Pool>,
    statics: &[String],
    redis: Option<Redis>,
    poll_interval: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let statics: Vec<Arc<str>> = statics.iter().map(|u| normalize(u)).collect();
    // Owned by the gateway runtime: cancelled by `stop`, aborted on drop.
    tokio::spawn(run(pool, statics, redis, poll_interval, stop))
}

fn normalize(url: &str) -> Arc<str> {
    Arc::from(url.trim_end_matches('/'))
}

async fn run(
    pool: Arc<Pool>,
    statics: Vec<Arc<str>>,
    redis: Option<Redis>,
    poll_interval: Duration,
    stop: CancellationToken,
) {
    let mut pollers = Pollers::default();
    let statics: HashSet<Arc<str>> = statics.into_iter().collect();
    reconcile(
        &pool,
        &mut pollers,
        &statics,
        &HashSet::new(),
        poll_interval,
        &stop,
    );
    let Some(redis) = redis else {
        // The static list never changes: keep the pollers until told to stop.
        stop.cancelled().await;
        return;
    };
    let mut registered = HashSet::new();
    let mut registry_ok = None;
    let mut tick = tokio::time::interval(DISCOVERY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let read = read_registry(&redis).await;
        if registry_ok != Some(read.is_ok()) {
            match &read {
                Ok(_) => tracing::info!("reading the worker registry in Redis"),
                // Keep the workers known so far: a Redis outage must not empty the fleet.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the worker registry; keeping the workers known")
                }
            }
            registry_ok = Some(read.is_ok());
        }
        if let Ok(now) = read {
            registered = now;
        }
        reconcile(
            &pool,
            &mut pollers,
            &statics,
            &registered,
            poll_interval,
            &stop,
        );
    }
}

/// Starts pollers for workers that appeared and stops those of workers that went.
fn reconcile(
    pool: &Arc<Pool>,
    pollers: &mut Pollers,
    statics: &HashSet<Arc<str>>,
    registered: &HashSet<Arc<str>>,
    poll_interval: Duration,
    stop: &CancellationToken,
) {
    let wanted: HashSet<&Arc<str>> = statics.iter().chain(registered.iter()).collect();
    let gone: Vec<Arc<str>> = pollers
        .0
        .keys()
        .filter(|u| !wanted.contains(u))
        .cloned()
        .collect();
    for url in gone {
        if let Some(p) = pollers.0.remove(&url) {
            p.abort();
        }
        pool.untrack(&url);
        tracing::info!(worker = %url, "worker left the registry");
    }
    for url in wanted {
        if pollers.0.contains_key(url) {
            continue;
        }
        pool.track(url);
        let task = pool
            .clone()
            .watch(url.clone(), poll_interval, stop.child_token());
        // Owned by `pollers`: aborted when the worker goes or discovery stops.
        pollers.0.insert(url.clone(), tokio::spawn(task));
        let source = if statics.contains(url) {
            "static"
        } else {
            "registry"
        };
        tracing::info!(worker = %url, source, "worker discovered");
    }
}

/// The URLs of the workers registered now. Index entries whose registration
/// expired are removed (a worker's next heartbeat adds itself back).
async fn read_registry(redis: &Redis) -> Result<HashSet<Arc<str>>, StoreError> {
    let ids: Vec<String> = redis
        .query(redis::cmd("SMEMBERS").arg(redis.key(registry::INDEX)))
        .await?;
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| redis.key(&registry::key(id))).collect();
    let values: Vec<Option<String>> = redis.query(redis::cmd("MGET").arg(&keys)).await?;
    let mut urls = HashSet::new();
    let mut expired = Vec::new();
    for (id, value) in ids.iter().zip(values) {
        match value.map(|v| serde_json::from_str::<WorkerRecord>(&v)) {
            Some(Ok(r)) => {
                urls.insert(normalize(&r.url));
            }
            Some(Err(e)) => {
                tracing::warn!(id = %id, error = %e, "unreadable worker registration ignored")
            }
            None => expired.push(id.clone()),
        }
    }
    if !expired.is_empty() {
        let _ = redis
            .query::<i64>(
                redis::cmd("SREM")
                    .arg(redis.key(registry::INDEX))
                    .arg(&expired),
            )
            .await;
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_shared::testing::RedisServer;

    #[tokio::test]
    async fn the_registry_lists_live_workers_and_sheds_expired_ones() {
        let server = RedisServer::start();
        lists_and_sheds(Redis::new(&server.config("t:")).unwrap()).await;
    }

    #[tokio::test]
    async fn the_registry_is_read_the_same_on_a_redis_cluster() {
        // Every registry key carries the {workers} tag: the MGET goes to one node.
        let cluster = tollgate_shared::testing::RedisCluster::start();
        lists_and_sheds(Redis::new(&cluster.config("t:")).unwrap()).await;
    }

    async fn lists_and_sheds(redis: Redis) {
        assert!(read_registry(&redis).await.unwrap().is_empty());
        let record = WorkerRecord {
            id: "w1".into(),
            url: "http://127.0.0.1:9100/".into(),
            shards: 2,
        };
        let _: () = redis
            .query(
                redis::cmd("SET")
                    .arg(redis.key(&registry::key("w1")))
                    .arg(serde_json::to_string(&record).unwrap()),
            )
            .await
            .unwrap();
        let _: i64 = redis
            .query(
                redis::cmd("SADD")
                    .arg(redis.key(registry::INDEX))
                    .arg("w1")
                    .arg("gone"),
            )
            .await
            .unwrap();
        let urls = read_registry(&redis).await.unwrap();
        assert_eq!(urls, HashSet::from([Arc::from("http://127.0.0.1:9100")]));
        let index: Vec<String> = redis
            .query(redis::cmd("SMEMBERS").arg(redis.key(registry::INDEX)))
            .await
            .unwrap();
        assert_eq!(index, vec!["w1".to_owned()], "the expired entry is dropped");
    }
}

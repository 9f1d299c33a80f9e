//! The worker's registration in Redis, so gateways find it without static
//! config: a key holding its [`WorkerRecord`] with a TTL, refreshed by a
//! heartbeat; deleted at once when the worker starts draining. A worker that
//! dies without deregistering disappears when its key expires.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tollgate_shared::store::{Redis, StoreError};
use tollgate_shared::worker_api::registry::{self, WorkerRecord};

/// Deletes the registration only if it is still this worker's: a newer
/// process registered under the same id must not be removed by an old one.
const DEREGISTER: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
return 0
";

pub struct Registration {
    redis: Redis,
    record: WorkerRecord,
    value: String,
}

impl Registration {
    pub fn new(redis: Redis, record: WorkerRecord) -> Result<Registration, serde_json::Error> {
        let value = serde_json::to_string(&record)?;
        Ok(Registration {
            redis,
            record,
            value,
        })
    }

    fn key(&self) -> String {
        self.redis.key(&registry::key(&self.record.id))
    }

    async fn register(&self) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.key())
            .arg(&self.value)
            .arg("PX")
            .arg(registry::TTL.as_millis() as u64)
            .ignore()
            .cmd("SADD")
            .arg(self.redis.key(registry::INDEX))
            .arg(&self.record.id)
            .ignore();
        self.redis.pipe::<()>(&pipe).await
    }

    async fn deregister(&self) -> Result<bool, StoreError> {
        let script = redis::Script::new(DEREGISTER);
        let keys = [self.key(), self.redis.key(registry::INDEX)];
        let removed: i64 = self
            .redis
            .script(&script, &keys, &[&self.value, &self.record.id])
            .await?;
        Ok(removed == 1)
    }

    /// Registers and refreshes the registration every heartbeat until `stop`
    /// fires, then deregisters (bounded: a worker whose Redis is down still
    /// shuts down, and its key expires by itself).
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(registry::HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut registered = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let result = self.register().await;
            let ok = result.is_ok();
            if registered != Some(ok) {
                match result {
                    Ok(()) => {
                        tracing::info!(id = %self.record.id, url = %self.record.url, "registered in Redis")
                    }
                    Err(e) => {
                        tracing::warn!(id = %self.record.id, error = %e, "cannot register in Redis; retrying")
                    }
                }
                registered = Some(ok);
            }
        }
        match tokio::time::timeout(Duration::from_secs(2), self.deregister()).await {
            Ok(Ok(true)) => tracing::info!(id = %self.record.id, "deregistered from Redis"),
            Ok(Ok(false)) => tracing::info!(id = %self.record.id, "registration already gone"),
            Ok(Err(e)) => {
                tracing::warn!(id = %self.record.id, error = %e, "cannot deregister; the registration will expire")
            }
            Err(_) => {
                tracing::warn!(id = %self.record.id, "deregistering timed out; the registration will expire")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_shared::testing::RedisServer;

    async fn record_of(redis: &Redis, id: &str) -> Option<WorkerRecord> {
        let v: Option<String> = redis
            .query(redis::cmd("GET").arg(redis.key(&registry::key(id))))
            .await
            .unwrap();
        v.map(|v| serde_json::from_str(&v).unwrap())
    }

    async fn index(redis: &Redis) -> Vec<String> {
        redis
            .query(redis::cmd("SMEMBERS").arg(redis.key(registry::INDEX)))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn registers_with_a_ttl_and_deregisters_only_its_own_record() {
        let server = RedisServer::start();
        registers_and_deregisters(Redis::new(&server.config("t:")).unwrap()).await;
    }

    #[tokio::test]
    async fn registers_and_deregisters_on_a_redis_cluster() {
        // The record and the index share the {workers} slot: one transaction, one script.
        let cluster = tollgate_shared::testing::RedisCluster::start();
        registers_and_deregisters(Redis::new(&cluster.config("t:")).unwrap()).await;
    }

    async fn registers_and_deregisters(redis: Redis) {
        let record = WorkerRecord {
            id: "w1".into(),
            url: "http://127.0.0.1:9100".into(),
            shards: 2,
        };
        let reg = Registration::new(redis.clone(), record.clone()).unwrap();
        reg.register().await.unwrap();
        assert_eq!(record_of(&redis, "w1").await, Some(record.clone()));
        assert_eq!(index(&redis).await, vec!["w1".to_owned()]);
        let ttl: i64 = redis
            .query(redis::cmd("PTTL").arg(redis.key(&registry::key("w1"))))
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= registry::TTL.as_millis() as i64, "{ttl}");

        // A newer process took the id over: the old one's deregistration leaves it alone.
        let newer = WorkerRecord {
            url: "http://127.0.0.1:9200".into(),
            ..record.clone()
        };
        let newer_reg = Registration::new(redis.clone(), newer.clone()).unwrap();
        newer_reg.register().await.unwrap();
        assert!(!reg.deregister().await.unwrap());
        assert_eq!(record_of(&redis, "w1").await, Some(newer));
        assert!(newer_reg.deregister().await.unwrap());
        assert_eq!(record_of(&redis, "w1").await, None);
        assert!(index(&redis).await.is_empty());
    }

    #[tokio::test]
    async fn run_registers_at_once_and_deregisters_when_stopped() {
        let server = RedisServer::start();
        let redis = Redis::new(&server.config("t:")).unwrap();
        let record = WorkerRecord {
            id: "w2".into(),
            url: "http://127.0.0.1:9100".into(),
            shards: 1,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            Registration::new(redis.clone(), record)
                .unwrap()
                .run(stop.clone()),
        );
        let mut seen = false;
        for _ in 0..200 {
            if record_of(&redis, "w2").await.is_some() {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(seen, "never registered");
        stop.cancel();
        task.await.unwrap();
        assert_eq!(record_of(&redis, "w2").await, None);
        assert!(index(&redis).await.is_empty());
    }
}

//! The registry in Redis: key layout, the compare-and-set and revocation
//! scripts, the loads a sync makes, and seeding from the config. Every key
//! carries the `{reg}` hash tag, so the scripts also run on Redis Cluster.
//!
//! - `{reg}:tenants`, `{reg}:clients`: hashes of id → record (JSON)
//! - `{reg}:version`: moves on every registry write
//! - `{reg}:revoked`: sorted set of jti by expiry; `{reg}:revoked:<jti>`: one
//!   key per revoked token, with TTL = the token's remaining lifetime
//! - `{reg}:revoked_version`: moves on every revocation

use std::collections::HashMap;

use tollgate_shared::store::{Redis, StoreError};

use super::registry::Kind;

const CAS: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur == false then cur = '' end
if cur ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return redis.call('INCR', KEYS[2])
";

const REVOKE: &str = r"
redis.call('SET', KEYS[2], '1', 'EX', ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
return redis.call('INCR', KEYS[3])
";

const VERSION: &str = "{reg}:version";
const REVOKED: &str = "{reg}:revoked";
const REVOKED_VERSION: &str = "{reg}:revoked_version";

fn hash(kind: Kind) -> &'static str {
    match kind {
        Kind::Tenant => "{reg}:tenants",
        Kind::Client => "{reg}:clients",
    }
}

/// Tenants and clients as stored (id → JSON), with the version they were read at.
pub type Loaded = (
    HashMap<String, String>,
    HashMap<String, String>,
    Option<u64>,
);

pub struct SharedStore {
    redis: Redis,
    cas: redis::Script,
    revoke: redis::Script,
    /// Config entries, written where absent (at start, and after Redis lost its data).
    seeds: Vec<(Kind, String, String)>,
    /// One sync at a time, so an older load never overwrites a newer one.
    pub syncing: tokio::sync::Mutex<()>,
}

impl SharedStore {
    pub fn new(redis: Redis, seeds: Vec<(Kind, String, String)>) -> SharedStore {
        SharedStore {
            redis,
            cas: redis::Script::new(CAS),
            revoke: redis::Script::new(REVOKE),
            seeds,
            syncing: tokio::sync::Mutex::new(()),
        }
    }

    /// The stored text of one record (tombstones included).
    pub async fn get(&self, kind: Kind, id: &str) -> Result<Option<String>, StoreError> {
        let r = &self.redis;
        r.query(redis::cmd("HGET").arg(r.key(hash(kind))).arg(id))
            .await
    }

    /// Writes `new` where `expected` (None: nothing) is still stored. False when it moved.
    pub async fn compare_and_set(
        &self,
        kind: Kind,
        id: &str,
        expected: Option<&str>,
        new: &str,
    ) -> Result<bool, StoreError> {
        let r = &self.redis;
        let keys = [r.key(hash(kind)), r.key(VERSION)];
        let args = [id, expected.unwrap_or(""), new];
        // A registry write (a client disabled, a secret rotated) must outlive
        // a failover, as a revocation must.
        let v: u64 = r.script_replicated(&self.cas, &keys, &args).await?;
        Ok(v > 0)
    }

    pub async fn revoke(&self, jti: &str, exp: u64, now: u64) -> Result<(), StoreError> {
        let r = &self.redis;
        let keys = [
            r.key(REVOKED),
            r.key(&format!("{REVOKED}:{jti}")),
            r.key(REVOKED_VERSION),
        ];
        // A verified token lives a day at most; the clamp keeps Redis's EX in range.
        let ttl = exp.saturating_sub(now).clamp(1, 2 * 86_400);
        let args = [
            jti.to_owned(),
            exp.to_string(),
            now.to_string(),
            ttl.to_string(),
        ];
        r.script_replicated::<u64>(&self.revoke, &keys, &args)
            .await?;
        Ok(())
    }

    /// The registry's and the revocation list's versions (None: never written, or data lost).
    pub async fn versions(&self) -> Result<(Option<u64>, Option<u64>), StoreError> {
        let r = &self.redis;
        r.pipe(
            redis::pipe()
                .get(r.key(VERSION))
                .get(r.key(REVOKED_VERSION)),
        )
        .await
    }

    pub async fn load_registry(&self) -> Result<Loaded, StoreError> {
        let r = &self.redis;
        r.pipe(
            redis::pipe()
                .atomic()
                .hgetall(r.key(hash(Kind::Tenant)))
                .hgetall(r.key(hash(Kind::Client)))
                .get(r.key(VERSION)),
        )
        .await
    }

    /// Revoked jtis still unexpired at `now`, with their expiry, and the version read.
    pub async fn load_revoked(
        &self,
        now: u64,
    ) -> Result<(Vec<(String, u64)>, Option<u64>), StoreError> {
        let r = &self.redis;
        r.pipe(
            redis::pipe()
                .atomic()
                .zrangebyscore_withscores(r.key(REVOKED), now, "+inf")
                .get(r.key(REVOKED_VERSION)),
        )
        .await
    }

    /// Writes the config's entries where no record (not even a tombstone) exists.
    pub async fn seed(&self) -> Result<(), StoreError> {
        let r = &self.redis;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (kind, id, raw) in &self.seeds {
            pipe.hset_nx(r.key(hash(*kind)), id, raw).ignore();
        }
        pipe.incr(r.key(VERSION), 1).ignore();
        r.pipe::<()>(&pipe).await?;
        tracing::info!(
            entries = self.seeds.len(),
            "registry seeded from the config"
        );
        Ok(())
    }

    /// True when `jti` is revoked, asked of Redis itself (one round trip; the
    /// request path uses the synced view instead, this is for comparison).
    pub async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let r = &self.redis;
        r.query(redis::cmd("EXISTS").arg(r.key(&format!("{REVOKED}:{jti}"))))
            .await
    }
}

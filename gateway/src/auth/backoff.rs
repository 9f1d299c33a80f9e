//! Brute-force protection of the token endpoint. Failed credential checks
//! are counted per (client id, address) pair and per address; past a few
//! free failures each further attempt must wait twice as long as the last,
//! up to a minute, and a quiet quarter hour forgets the count. A success
//! clears the pair. An attacker is slowed to a crawl, while the real client,
//! from its own address, is never locked out for good.
//!
//! Parallel guesses: a check runs only inside one of the few argon2 slots
//! (one per core, see `secret::Slots`), and the wait is checked after the
//! slot is taken, so at most one slot's worth of attempts per replica can be
//! in flight past a count.
//!
//! The policy is pure ([`Policy`], [`waiting`], [`failed`]); counts live in
//! Redis when configured (so all replicas share them, each key expiring) or
//! in memory, in a table of fixed size (see [`make_room`]).

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use tollgate_shared::store::{Redis, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures allowed without any wait.
    pub free: u64,
    pub base_ms: u64,
    pub max_ms: u64,
    /// A key with no failure for this long starts again from zero.
    pub forget_ms: u64,
}

/// Per (client id, address).
pub const PAIR: Policy = Policy {
    free: 5,
    base_ms: 1_000,
    max_ms: 60_000,
    forget_ms: 15 * 60_000,
};

/// Per address, over all client ids (credential stuffing).
pub const ADDRESS: Policy = Policy {
    free: 30,
    base_ms: 1_000,
    max_ms: 60_000,
    forget_ms: 15 * 60_000,
};

impl Policy {
    /// How long the next attempt must wait after `failures`.
    pub fn delay_ms(&self, failures: u64) -> u64 {
        if failures < self.free {
            return 0;
        }
        let doublings = (failures - self.free).min(32) as u32;
        self.base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_ms)
    }

    /// The delays by count, 0..=n where the cap is reached: what the Redis script indexes.
    fn table(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut n = 0;
        loop {
            let d = self.delay_ms(n);
            out.push(d);
            if d >= self.max_ms {
                return out;
            }
            n += 1;
        }
    }
}

/// One key's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub failures: u64,
    pub until_ms: u64,
    pub last_ms: u64,
}

/// The wait left at `now_ms`, if any.
pub fn waiting(count: Count, now_ms: u64) -> Option<u64> {
    (count.until_ms > now_ms).then(|| count.until_ms - now_ms)
}

/// The count after a failure at `now_ms`.
pub fn failed(policy: &Policy, count: Count, now_ms: u64) -> Count {
    let before = if now_ms.saturating_sub(count.last_ms) >= policy.forget_ms {
        0
    } else {
        count.failures
    };
    let failures = before + 1;
    Count {
        failures,
        until_ms: now_ms + policy.delay_ms(failures),
        last_ms: now_ms,
    }
}

/// The Redis twin of [`failed`] for both keys; the delays come from [`Policy::table`].
const FAILED: &str = r"
local now = tonumber(ARGV[1])
local offset = 3
for i, key in ipairs(KEYS) do
  local n = tonumber(ARGV[offset])
  local f = redis.call('HINCRBY', key, 'f', 1)
  local d = tonumber(ARGV[offset + 1 + math.max(0, math.min(f, n - 1))])
  redis.call('HSET', key, 'until', now + d)
  redis.call('PEXPIRE', key, ARGV[2])
  offset = offset + n + 1
end
return 0
";

/// Bound on the in-memory table: about 60 bytes a key, 6 MB when full.
const MAX_MEMORY_KEYS: usize = 100_000;

/// A key of the in-memory table: a digest of its Redis name, so an entry has
/// one small fixed size whatever address or id it counts.
type MemoryKey = [u8; 16];

fn memory_key(key: &str) -> MemoryKey {
    let mut k = [0u8; 16];
    k.copy_from_slice(&Sha256::digest(key.as_bytes())[..16]);
    k
}

/// Makes room for two more keys when the table is at `cap`. Every key is
/// presented by whoever asks for a token, so the table must not grow with
/// them. First the forgotten keys go; if that is not enough, down to 90 % of
/// `cap`, those with no wait running, least recent first, and only then (a
/// flood of failures within a minute) the least recent waiting ones. An
/// evicted key starts again from zero: to clear a count of their own an
/// attacker must fail a check for each of `cap` other keys first.
fn make_room(map: &mut HashMap<MemoryKey, Count>, now_ms: u64, cap: usize) {
    if map.len() + 2 <= cap {
        return;
    }
    let forget_ms = PAIR.forget_ms.min(ADDRESS.forget_ms);
    map.retain(|_, c| now_ms.saturating_sub(c.last_ms) < forget_ms);
    let keep = cap * 9 / 10;
    if map.len() <= keep {
        return;
    }
    let excess = map.len() - keep;
    let mut order: Vec<(bool, u64, MemoryKey)> = map
        .iter()
        .map(|(k, c)| (c.until_ms > now_ms, c.last_ms, *k))
        .collect();
    order.select_nth_unstable(excess - 1);
    for (_, _, k) in &order[..excess] {
        map.remove(k);
    }
}

enum Store {
    Memory(Mutex<HashMap<MemoryKey, Count>>),
    Redis { redis: Redis, failed: redis::Script },
}

/// The token endpoint's guard: failure counting.
pub struct Logins {
    store: Store,
}

/// Keys never carry the presented id itself (any string an attacker likes);
/// both keys of one address share a hash tag, for Redis Cluster.
fn keys(client_id: &str, ip: &str) -> (String, String) {
    let digest = Sha256::digest(client_id.as_bytes());
    let id = tollgate_shared::hex::lower(&digest[..12]);
    (format!("login:{{{ip}}}:{id}"), format!("login:{{{ip}}}:*"))
}

fn poisoned() -> StoreError {
    StoreError::Unavailable("login counts lock poisoned".into())
}

impl Logins {
    pub fn new(redis: Option<Redis>) -> Logins {
        Logins {
            store: match redis {
                Some(redis) => Store::Redis {
                    redis,
                    failed: redis::Script::new(FAILED),
                },
                None => Store::Memory(Mutex::new(HashMap::new())),
            },
        }
    }

    /// Ok, or the whole seconds to wait before this pair or address may try again.
    pub async fn check(
        &self,
        client_id: &str,
        ip: &str,
        now_ms: u64,
    ) -> Result<Result<(), u64>, StoreError> {
        let (pair, address) = keys(client_id, ip);
        let (p, a) = match &self.store {
            Store::Memory(map) => {
                let map = map.lock().map_err(|_| poisoned())?;
                let get = |k: &str| map.get(&memory_key(k)).copied().unwrap_or_default();
                (get(&pair), get(&address))
            }
            Store::Redis { redis, .. } => {
                let (p, a): (Option<u64>, Option<u64>) = redis
                    .pipe(
                        redis::pipe()
                            .hget(redis.key(&pair), "until")
                            .hget(redis.key(&address), "until"),
                    )
                    .await?;
                let until = |u: Option<u64>| Count {
                    until_ms: u.unwrap_or(0),
                    ..Count::default()
                };
                (until(p), until(a))
            }
        };
        let wait = waiting(p, now_ms).max(waiting(a, now_ms));
        Ok(match wait {
            Some(ms) => Err(ms.div_ceil(1000)),
            None => Ok(()),
        })
    }

    /// Counts a failed check.
    pub async fn failed(&self, client_id: &str, ip: &str, now_ms: u64) -> Result<(), StoreError> {
        let (pair, address) = keys(client_id, ip);
        match &self.store {
            Store::Memory(map) => {
                let mut map = map.lock().map_err(|_| poisoned())?;
                make_room(&mut map, now_ms, MAX_MEMORY_KEYS);
                for (key, policy) in [(pair, PAIR), (address, ADDRESS)] {
                    let key = memory_key(&key);
                    let c = map.get(&key).copied().unwrap_or_default();
                    map.insert(key, failed(&policy, c, now_ms));
                }
                Ok(())
            }
            Store::Redis { redis, failed } => {
                let mut args: Vec<u64> = vec![now_ms, PAIR.forget_ms.max(ADDRESS.forget_ms)];
                for policy in [PAIR, ADDRESS] {
                    let table = policy.table();
                    args.push(table.len() as u64);
                    args.extend(table);
                }
                let keys = [redis.key(&pair), redis.key(&address)];
                redis.script::<i64>(failed, &keys, &args).await?;
                Ok(())
            }
        }
    }

    /// The secret was right: the pair starts again from zero.
    pub async fn succeeded(&self, client_id: &str, ip: &str) -> Result<(), StoreError> {
        let (pair, _) = keys(client_id, ip);
        match &self.store {
            Store::Memory(map) => {
                map.lock()
                    .map_err(|_| poisoned())?
                    .remove(&memory_key(&pair));
                Ok(())
            }
            Store::Redis { redis, .. } => {
                redis.query(redis::cmd("DEL").arg(redis.key(&pair))).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_shared::testing::RedisServer;

    #[test]
    fn delays_start_after_the_free_failures_double_and_cap() {
        let d: Vec<u64> = (0..14).map(|n| PAIR.delay_ms(n)).collect();
        assert_eq!(
            d,
            [
                0, 0, 0, 0, 0, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000
            ]
        );
        assert_eq!(PAIR.table(), d[..12]);
        assert_eq!(PAIR.delay_ms(u64::MAX), 60_000);
    }

    #[test]
    fn attempts_wait_after_failures_and_quiet_forgets() {
        let mut c = Count::default();
        let mut now = 1_000_000;
        for _ in 0..5 {
            assert_eq!(waiting(c, now), None);
            c = failed(&PAIR, c, now);
        }
        assert_eq!(
            c.until_ms,
            now + 1_000,
            "the fifth failure sets the first wait"
        );
        assert_eq!(waiting(c, now + 400), Some(600));
        now += 1_000;
        assert_eq!(waiting(c, now), None);
        c = failed(&PAIR, c, now);
        assert_eq!(c.until_ms, now + 2_000);
        let later = failed(&PAIR, c, now + PAIR.forget_ms);
        assert_eq!(later.failures, 1, "a quiet quarter hour forgets");
    }

    async fn exercise(logins: &Logins) {
        let now = 5_000_000;
        for _ in 0..5 {
            assert_eq!(
                logins.check("victim", "10.0.0.1", now).await.unwrap(),
                Ok(())
            );
            logins.failed("victim", "10.0.0.1", now).await.unwrap();
        }
        assert_eq!(
            logins.check("victim", "10.0.0.1", now).await.unwrap(),
            Err(1)
        );
        // Another address is not slowed by the first one's failures.
        assert_eq!(
            logins.check("victim", "10.0.0.2", now).await.unwrap(),
            Ok(())
        );
        // After the wait, another try; the right secret then clears the pair.
        assert_eq!(
            logins
                .check("victim", "10.0.0.1", now + 1_000)
                .await
                .unwrap(),
            Ok(())
        );
        logins.succeeded("victim", "10.0.0.1").await.unwrap();
        logins
            .failed("victim", "10.0.0.1", now + 1_000)
            .await
            .unwrap();
        assert_eq!(
            logins
                .check("victim", "10.0.0.1", now + 1_000)
                .await
                .unwrap(),
            Ok(())
        );
        // Many ids from one address: the address count stops them too.
        for i in 0..ADDRESS.free {
            logins
                .failed(&format!("id{i}"), "10.0.0.9", now)
                .await
                .unwrap();
        }
        assert_eq!(
            logins.check("fresh-id", "10.0.0.9", now).await.unwrap(),
            Err(1)
        );
    }

    #[test]
    fn the_memory_table_stays_under_its_cap_and_keeps_running_waits() {
        let cap = 1_000;
        let mut map = HashMap::new();
        let mut now = 10_000_000;
        // A victim's pair, slowed down, then a flood of distinct keys (ids,
        // addresses) each failing once, a few a millisecond.
        let victim = memory_key("login:{10.0.0.1}:victim");
        let mut c = Count::default();
        for _ in 0..8 {
            c = failed(&PAIR, c, now);
        }
        map.insert(victim, c);
        for i in 0..20 * cap {
            make_room(&mut map, now, cap);
            let key = memory_key(&format!("login:{{10.1.{}.{}}}:*", i / 250, i % 250));
            let c = map.get(&key).copied().unwrap_or_default();
            map.insert(key, failed(&ADDRESS, c, now));
            assert!(map.len() <= cap, "{} keys", map.len());
            now += (i % 4 == 0) as u64;
        }
        assert_eq!(
            map.get(&victim).map(|c| c.failures),
            Some(8),
            "a running wait outlives the flood"
        );
        // Past its wait and forgotten, the victim's key may go like any other.
        now += PAIR.forget_ms;
        let full = map.len();
        make_room(&mut map, now, full);
        assert!(!map.contains_key(&victim));
    }

    #[tokio::test]
    async fn memory_store_follows_the_policy() {
        exercise(&Logins::new(None)).await;
    }

    #[tokio::test]
    async fn redis_store_follows_the_same_policy() {
        let server = RedisServer::start();
        let redis = Redis::new(&server.config("t:")).unwrap();
        exercise(&Logins::new(Some(redis))).await;
    }

    #[tokio::test]
    async fn a_redis_cluster_store_follows_the_same_policy() {
        // A pair's and its address's counts share the address's slot.
        let cluster = tollgate_shared::testing::RedisCluster::start();
        let redis = Redis::new(&cluster.config("t:")).unwrap();
        exercise(&Logins::new(Some(redis))).await;
    }
}

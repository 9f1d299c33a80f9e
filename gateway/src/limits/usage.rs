//! Usage metering for billing: requests, prompt and completion tokens per
//! tenant, client and UTC day. In Redis (written by the settle script) when
//! configured; in memory otherwise, and for requests settled while Redis was down.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tollgate_shared::openai::Usage;
use tollgate_shared::store::{Redis, StoreError};

use crate::audit::utc_date;

pub fn day_of(second: u64) -> u64 {
    second / 86_400
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
    }
}

/// One tenant's usage on one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DayUsage {
    pub tenant: String,
    pub date: String,
    #[serde(flatten)]
    pub total: Counts,
    pub clients: BTreeMap<String, Counts>,
}

/// A tenant's totals for one day and each of its clients'.
type DayRow = (Counts, BTreeMap<String, Counts>);

pub struct UsageBook {
    redis: Option<Redis>,
    retention: Duration,
    /// (tenant, day) → usage metered here (without Redis, or while it was down).
    local: Mutex<BTreeMap<(String, u64), DayRow>>,
}

impl UsageBook {
    pub fn new(redis: Option<Redis>, retention: Duration) -> Self {
        UsageBook {
            redis,
            retention,
            local: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// The Redis key of a tenant's usage on a day (hash-tagged with the tenant).
    pub fn key(prefix: &str, tenant: &str, day: u64) -> String {
        format!("{prefix}{{{tenant}}}:usage:{}", utc_date(day))
    }

    pub fn record_local(&self, tenant: &str, client: &str, second: u64, usage: &Usage) {
        let c = Counts {
            requests: 1,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        };
        if let Ok(mut m) = self.local.lock() {
            let (total, clients) = m.entry((tenant.to_owned(), day_of(second))).or_default();
            total.add(&c);
            clients.entry(client.to_owned()).or_default().add(&c);
        }
    }

    /// Usage of `tenant` (or of every tenant) for the days `since..=until`, oldest first.
    pub async fn query(
        &self,
        tenant: Option<&str>,
        since: u64,
        until: u64,
    ) -> Result<Vec<DayUsage>, StoreError> {
        let mut rows: BTreeMap<(String, u64), DayUsage> = BTreeMap::new();
        if let Ok(m) = self.local.lock() {
            for ((t, day), (total, clients)) in m.iter() {
                if (since..=until).contains(day) && tenant.is_none_or(|want| want == t) {
                    merge(&mut rows, t, *day, total, clients.iter());
                }
            }
        }
        if let Some(redis) = &self.redis {
            for (t, day) in self.redis_keys(redis, tenant, since, until).await? {
                let fields: Vec<(String, u64)> = redis
                    .query(redis::cmd("HGETALL").arg(Self::key(redis.prefix(), &t, day)))
                    .await?;
                let (total, clients) = parse_fields(&fields);
                merge(&mut rows, &t, day, &total, clients.iter());
            }
        }
        Ok(rows.into_values().collect())
    }

    /// The (tenant, day) pairs stored in Redis within the range.
    async fn redis_keys(
        &self,
        redis: &Redis,
        tenant: Option<&str>,
        since: u64,
        until: u64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        if let Some(t) = tenant {
            return Ok((since..=until.min(since + 3660))
                .map(|d| (t.to_owned(), d))
                .collect());
        }
        // Every tenant: find the usage keys (an admin query, not on the
        // request path; on a cluster, on every primary).
        let pattern = format!("{}{{*}}:usage:*", redis.prefix());
        Ok(redis
            .scan(&pattern)
            .await?
            .into_iter()
            .filter_map(|k| parse_key(redis.prefix(), &k))
            .filter(|(_, day)| (since..=until).contains(day))
            .collect())
    }
}

fn parse_key(prefix: &str, key: &str) -> Option<(String, u64)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('{')?;
    let (tenant, rest) = rest.split_once('}')?;
    let date = rest.strip_prefix(":usage:")?;
    Some((tenant.to_owned(), crate::audit::parse_utc_date(date)?))
}

fn parse_fields(fields: &[(String, u64)]) -> (Counts, BTreeMap<String, Counts>) {
    let mut total = Counts::default();
    let mut clients: BTreeMap<String, Counts> = BTreeMap::new();
    for (name, v) in fields {
        let (counts, field) = match name.strip_prefix("c:").and_then(|r| r.rsplit_once(':')) {
            Some((client, field)) => (clients.entry(client.to_owned()).or_default(), field),
            None => (&mut total, name.as_str()),
        };
        match field {
            "requests" => counts.requests += v,
            "prompt_tokens" => counts.prompt_tokens += v,
            "completion_tokens" => counts.completion_tokens += v,
            _ => {}
        }
    }
    (total, clients)
}

fn merge<'a>(
    rows: &mut BTreeMap<(String, u64), DayUsage>,
    tenant: &str,
    day: u64,
    total: &Counts,
    clients: impl Iterator<Item = (&'a String, &'a Counts)>,
) {
    if total.requests == 0 {
        return;
    }
    let row = rows
        .entry((tenant.to_owned(), day))
        .or_insert_with(|| DayUsage {
            tenant: tenant.to_owned(),
            date: utc_date(day),
            ..Default::default()
        });
    row.total.add(total);
    for (c, n) in clients {
        row.clients.entry(c.clone()).or_default().add(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_fields_round_trip() {
        let k = UsageBook::key("tg:", "acme", 20_417);
        assert_eq!(k, "tg:{acme}:usage:2025-11-25");
        assert_eq!(parse_key("tg:", &k), Some(("acme".into(), 20_417)));
        let (total, clients) = parse_fields(&[
            ("requests".into(), 3),
            ("prompt_tokens".into(), 30),
            ("c:app:1:requests".into(), 2),
            ("c:app:1:completion_tokens".into(), 7),
        ]);
        assert_eq!(total.requests, 3);
        assert_eq!(clients["app:1"].requests, 2);
        assert_eq!(clients["app:1"].completion_tokens, 7);
    }
}

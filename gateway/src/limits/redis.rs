//! The limiter's Redis side: one script call to admit, one to settle, both
//! on the tenant's one hash of limiter state (see `policy` for its layout).

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use tollgate_shared::openai::Usage;
use tollgate_shared::store::{Redis, StoreError};

use super::Ticket;
use super::policy::{Dim, Headroom, LimitKind, Remaining, Verdict, subjects};
use super::usage::UsageBook;

// Both scripts read and write subjects the same way: state.lua comes first in each.
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("state.lua"),
        include_str!("admit.lua")
    ))
});
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("state.lua"),
        include_str!("settle.lua")
    ))
});

fn remaining(limit: i64, remaining: i64, reset: i64) -> Option<Remaining> {
    (limit >= 0).then(|| Remaining {
        limit: limit as u64,
        remaining: remaining.max(0) as u64,
        reset_ms: reset.max(0) as u64,
    })
}

pub async fn admit(
    redis: &Redis,
    key: &str,
    dims: &[Dim],
    tokens: u64,
    ttl_ms: u64,
) -> Result<Verdict, StoreError> {
    let mut args: Vec<String> = vec![tokens.to_string(), ttl_ms.to_string()];
    for d in dims {
        args.push(d.subject.clone());
        args.push(d.kind.letter().to_owned());
        args.push(d.limit.to_string());
    }
    let r: Vec<i64> = redis.script(&ADMIT, &[key.to_owned()], &args).await?;
    let bad = || StoreError::Protocol(format!("unexpected admission answer {r:?}"));
    if r.len() < 9 {
        return Err(bad());
    }
    let (h, rest) = if r[0] == 1 {
        (&r[2..8], None)
    } else {
        (&r[3..9], Some((r[1], r[2])))
    };
    let headroom = Headroom {
        requests: remaining(h[0], h[1], h[2]),
        tokens: remaining(h[3], h[4], h[5]),
    };
    Ok(match rest {
        None => Verdict::Admitted {
            second: r[1].max(0) as u64,
            deadline_ms: r[8].max(0) as u64,
            headroom,
        },
        Some((i, retry)) => {
            let kind = dims
                .get((i as usize).wrapping_sub(1))
                .map(|d| d.kind)
                .ok_or_else(bad)?;
            Verdict::Limited {
                kind,
                retry_after_ms: (retry >= 0).then_some(retry as u64),
                headroom,
            }
        }
    })
}

pub async fn settle(
    redis: &Redis,
    t: &Ticket,
    day: u64,
    usage: &Usage,
    retention: Duration,
) -> Result<(), StoreError> {
    let keys = [
        t.state_key.clone(),
        UsageBook::key(redis.prefix(), &t.tenant, day),
    ];
    let delta = usage.total_tokens as i64 - t.reserved as i64;
    let mut args: Vec<String> = vec![
        t.lease_deadline_ms.to_string(),
        t.second.to_string(),
        delta.to_string(),
        t.client.clone(),
        usage.prompt_tokens.to_string(),
        usage.completion_tokens.to_string(),
        retention.as_secs().max(1).to_string(),
    ];
    for s in subjects(&t.dims) {
        let leased = t
            .dims
            .iter()
            .any(|d| d.subject == s && d.kind == LimitKind::Concurrency);
        args.push(if leased {
            format!("+{s}")
        } else {
            s.to_owned()
        });
    }
    let _: i64 = redis.script(&SETTLE, &keys, &args).await?;
    Ok(())
}

//! The limiter's Redis side: one script, `step.lua`, on the tenant's one
//! hash of limiter state (see `policy` for its layout), carrying any number
//! of settlements and admissions in one call. `steps` decides what goes into
//! each call.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use tollgate_shared::openai::Usage;
use tollgate_shared::store::{Redis, StoreError};

use super::Ticket;
use super::policy::{Dim, Headroom, Remaining, Verdict};
use super::usage::{self, UsageBook};

// state.lua reads and writes a subject; step.lua works with it.
static STEP: LazyLock<Script> =
    LazyLock::new(|| Script::new(concat!(include_str!("state.lua"), include_str!("step.lua"))));

/// Integers the script answers per admission.
const ANSWER: usize = 9;

/// How long the script remembers the settlements it counted, when writes
/// wait for replicas: longer than a settlement is sent again
/// ([`super::steps`] gives up after about 10 s and meters it here).
pub const SETTLED_IDS_KEPT: Duration = Duration::from_secs(20);

/// The key of a tenant's recently counted settlements, beside its state.
fn settled_key(prefix: &str, tenant: &str) -> String {
    format!("{prefix}{{{tenant}}}:settled")
}

fn remaining(limit: i64, remaining: i64, reset: i64) -> Option<Remaining> {
    (limit >= 0).then(|| Remaining {
        limit: limit as u64,
        remaining: remaining.max(0) as u64,
        reset_ms: reset.max(0) as u64,
    })
}

/// One call on the state of one tenant (`key`): first the settlements, with
/// what each request used, then the admissions, each a request's limits and
/// the tokens it reserves. Answers one verdict per admission, in order, and
/// whether the call's writes reached the replicas `redis.wait_replicas`
/// asks for (always, without a wait).
pub async fn step<'a>(
    redis: &Redis,
    key: &str,
    settlements: &[(&'a Ticket, &Usage)],
    admissions: &[(&'a [Dim], u64)],
    ttl_ms: u64,
    retention: Duration,
) -> Result<(Vec<Verdict>, bool), StoreError> {
    let mut call = STEP.prepare_invoke();
    call.key(key);
    // The usage hashes the settlements go to: one per day among them.
    // Per settlement, which of the usage hashes (j of KEYS[1+j]) it goes to.
    let mut days: Vec<u64> = Vec::with_capacity(1);
    let mut usage_of: Vec<usize> = Vec::with_capacity(settlements.len());
    for (t, _) in settlements {
        let day = usage::day_of(t.second);
        let j = match days.iter().position(|d| *d == day) {
            Some(i) => i + 1,
            None => {
                days.push(day);
                call.key(UsageBook::key(redis.prefix(), &t.tenant, day));
                days.len()
            }
        };
        usage_of.push(j);
    }
    // The limits of each client once; every request names its set.
    let mut sets: Vec<&[Dim]> = Vec::with_capacity(1);
    let mut set_of = |dims: &'a [Dim]| match sets.iter().position(|s| *s == dims) {
        Some(i) => i + 1,
        None => {
            sets.push(dims);
            sets.len()
        }
    };
    let settling: Vec<usize> = settlements.iter().map(|(t, _)| set_of(&t.dims)).collect();
    let admitting: Vec<usize> = admissions.iter().map(|(d, _)| set_of(d)).collect();
    // Where a write waits for replicas, a call whose answer was lost (a
    // primary failing over) may have been counted: its settlements are sent
    // again with their ids, and the script counts each id once.
    let ids = redis.waits_for_replicas() && !settlements.is_empty();
    let keep_ms = if ids {
        call.key(settled_key(redis.prefix(), &settlements[0].0.tenant));
        SETTLED_IDS_KEPT.as_millis() as u64
    } else {
        0
    };
    call.arg(ttl_ms)
        .arg(retention.as_secs().max(1))
        .arg(sets.len())
        .arg(settlements.len())
        .arg(admissions.len())
        .arg(keep_ms);
    for dims in &sets {
        call.arg(dims.len());
        for d in *dims {
            call.arg(&d.subject).arg(d.kind.letter()).arg(d.limit);
        }
    }
    for (((t, u), set), j) in settlements.iter().zip(settling).zip(usage_of) {
        call.arg(t.lease_deadline_ms)
            .arg(t.second)
            .arg(u.total_tokens as i64 - t.reserved as i64)
            .arg(&t.client)
            .arg(u.prompt_tokens)
            .arg(u.completion_tokens)
            .arg(j)
            .arg(set);
        if ids {
            call.arg(t.id);
        }
    }
    for ((_, tokens), set) in admissions.iter().zip(admitting) {
        call.arg(*tokens).arg(set);
    }
    // Replicated before it counts (on a cluster): an admission or usage the
    // primary acknowledged must not vanish with it in a failover.
    let written = redis.invoke_replicated::<Vec<i64>>(&call, key).await?;
    let r = written.value;
    if r.len() != admissions.len() * ANSWER {
        return Err(StoreError::Protocol(format!(
            "{} integers answering {} admissions",
            r.len(),
            admissions.len()
        )));
    }
    let verdicts = r
        .chunks(ANSWER)
        .zip(admissions)
        .map(|(a, (dims, _))| verdict(a, dims))
        .collect::<Result<_, _>>()?;
    Ok((verdicts, written.replicated))
}

/// The verdict in one admission's nine integers.
fn verdict(r: &[i64], dims: &[Dim]) -> Result<Verdict, StoreError> {
    let bad = || StoreError::Protocol(format!("unexpected admission answer {r:?}"));
    let (h, refused) = if r[0] == 1 {
        (&r[2..8], None)
    } else {
        (&r[3..9], Some((r[1], r[2])))
    };
    let headroom = Headroom {
        requests: remaining(h[0], h[1], h[2]),
        tokens: remaining(h[3], h[4], h[5]),
    };
    Ok(match refused {
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

//! Limiter arithmetic, pure: no I/O, time passed in as milliseconds.
//!
//! - Requests and tokens per minute: a sliding window of 60 one-second
//!   buckets. At most `limit` units are admitted in any window; a bucket's
//!   units come back 60 s after the second they were admitted in.
//! - Concurrency: leases that end when the request ends, or by themselves
//!   when their deadline passes (a gateway died holding them).
//! - Daily tokens: a counter per UTC day.
//!
//! The Redis script (`admit.lua`) implements exactly this; one test suite
//! runs against both backends.

use std::collections::{BTreeMap, HashMap};

pub const WINDOW_SECS: u64 = 60;
pub const DAY_SECS: u64 = 86_400;

/// Which limit a request hit, named as in the 429's `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    RequestsPerMinute,
    TokensPerMinute,
    Concurrency,
    DailyTokens,
}

impl LimitKind {
    pub fn code(self) -> &'static str {
        match self {
            LimitKind::RequestsPerMinute => "requests_per_minute",
            LimitKind::TokensPerMinute => "tokens_per_minute",
            LimitKind::Concurrency => "concurrency",
            LimitKind::DailyTokens => "daily_tokens",
        }
    }

    /// The letter the Redis script knows the kind by.
    pub fn letter(self) -> &'static str {
        match self {
            LimitKind::RequestsPerMinute => "r",
            LimitKind::TokensPerMinute => "t",
            LimitKind::Concurrency => "c",
            LimitKind::DailyTokens => "d",
        }
    }
}

/// One limit to check: a counter (`key`) of a kind with its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dim {
    pub key: String,
    pub kind: LimitKind,
    pub limit: u64,
}

/// Remaining capacity of the tightest requests and tokens windows, for the
/// `x-ratelimit-*` headers. `None` where no such limit applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Headroom {
    pub requests: Option<Remaining>,
    pub tokens: Option<Remaining>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    pub limit: u64,
    pub remaining: u64,
    /// Milliseconds until the window is whole again.
    pub reset_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted; `second` is the window bucket the request was charged to.
    Admitted { second: u64, headroom: Headroom },
    /// Refused; `retry_after_ms` is when it could pass (`None`: never, the
    /// request alone is larger than the limit).
    Limited {
        kind: LimitKind,
        retry_after_ms: Option<u64>,
        headroom: Headroom,
    },
}

/// A sliding window of one-second buckets.
#[derive(Debug, Default, Clone)]
pub struct Window {
    buckets: BTreeMap<u64, u64>,
}

impl Window {
    fn prune(&mut self, now_s: u64) {
        let keep_from = now_s.saturating_sub(WINDOW_SECS - 1);
        self.buckets = self.buckets.split_off(&keep_from);
    }

    fn total(&self) -> u64 {
        self.buckets.values().sum()
    }

    /// When `amount` more would fit under `limit`; `None` if it never will.
    fn retry_after_ms(&self, now_ms: u64, limit: u64, amount: u64) -> Option<u64> {
        if amount > limit {
            return None;
        }
        let total = self.total();
        let mut freed = 0;
        for (sec, v) in &self.buckets {
            freed += v;
            if total - freed + amount <= limit {
                return Some(((sec + WINDOW_SECS) * 1000).saturating_sub(now_ms).max(1));
            }
        }
        Some(1)
    }

    /// Milliseconds until every unit now in the window has left it.
    fn reset_ms(&self, now_ms: u64) -> u64 {
        self.buckets
            .keys()
            .next_back()
            .map_or(0, |sec| ((sec + WINDOW_SECS) * 1000).saturating_sub(now_ms))
    }

    fn adjust(&mut self, second: u64, delta: i64) {
        let v = self.buckets.entry(second).or_default();
        *v = v.saturating_add_signed(delta);
    }
}

/// Every counter of one backend's memory: the in-memory limiter, and the
/// model the Redis script follows.
#[derive(Debug, Default)]
pub struct Counters {
    windows: HashMap<String, Window>,
    leases: HashMap<String, HashMap<String, u64>>,
    daily: HashMap<String, (u64, u64)>,
}

impl Counters {
    /// Checks every dimension, then debits all of them, or none.
    pub fn admit(
        &mut self,
        now_ms: u64,
        dims: &[Dim],
        lease_id: &str,
        tokens: u64,
        lease_ttl_ms: u64,
    ) -> Verdict {
        let now_s = now_ms / 1000;
        let today = now_s / DAY_SECS;
        for d in dims {
            let refused = match d.kind {
                LimitKind::RequestsPerMinute | LimitKind::TokensPerMinute => {
                    let w = self.windows.entry(d.key.clone()).or_default();
                    w.prune(now_s);
                    let amount = if d.kind == LimitKind::RequestsPerMinute {
                        1
                    } else {
                        tokens
                    };
                    (w.total() + amount > d.limit)
                        .then(|| w.retry_after_ms(now_ms, d.limit, amount))
                }
                LimitKind::Concurrency => {
                    let held = self.leases.entry(d.key.clone()).or_default();
                    held.retain(|_, until| *until > now_ms);
                    (held.len() as u64 + 1 > d.limit).then_some(Some(1000))
                }
                LimitKind::DailyTokens => {
                    let (day, used) = self.daily.get(&d.key).copied().unwrap_or((today, 0));
                    let used = if day == today { used } else { 0 };
                    let until_midnight = ((today + 1) * DAY_SECS * 1000).saturating_sub(now_ms);
                    (used + tokens > d.limit).then(|| (tokens <= d.limit).then_some(until_midnight))
                }
            };
            if let Some(retry_after_ms) = refused {
                return Verdict::Limited {
                    kind: d.kind,
                    retry_after_ms,
                    headroom: self.headroom(now_ms, dims),
                };
            }
        }
        for d in dims {
            match d.kind {
                LimitKind::RequestsPerMinute => self
                    .windows
                    .entry(d.key.clone())
                    .or_default()
                    .adjust(now_s, 1),
                LimitKind::TokensPerMinute => self
                    .windows
                    .entry(d.key.clone())
                    .or_default()
                    .adjust(now_s, tokens as i64),
                LimitKind::Concurrency => {
                    self.leases
                        .entry(d.key.clone())
                        .or_default()
                        .insert(lease_id.to_owned(), now_ms + lease_ttl_ms);
                }
                LimitKind::DailyTokens => {
                    let e = self.daily.entry(d.key.clone()).or_insert((today, 0));
                    if e.0 != today {
                        *e = (today, 0);
                    }
                    e.1 += tokens;
                }
            }
        }
        Verdict::Admitted {
            second: now_s,
            headroom: self.headroom(now_ms, dims),
        }
    }

    /// The request ended: corrects its token charge by `delta` (actual −
    /// reserved) in the bucket it was charged to, and gives its leases back.
    pub fn settle(&mut self, dims: &[Dim], lease_id: &str, second: u64, delta: i64) {
        for d in dims {
            match d.kind {
                LimitKind::RequestsPerMinute => {}
                LimitKind::TokensPerMinute => {
                    if let Some(w) = self.windows.get_mut(&d.key) {
                        w.adjust(second, delta);
                    }
                }
                LimitKind::Concurrency => {
                    if let Some(held) = self.leases.get_mut(&d.key) {
                        held.remove(lease_id);
                    }
                }
                LimitKind::DailyTokens => {
                    if let Some(e) = self.daily.get_mut(&d.key)
                        && e.0 == second / DAY_SECS
                    {
                        e.1 = e.1.saturating_add_signed(delta);
                    }
                }
            }
        }
    }

    fn headroom(&self, now_ms: u64, dims: &[Dim]) -> Headroom {
        let mut h = Headroom::default();
        for d in dims {
            let slot = match d.kind {
                LimitKind::RequestsPerMinute => &mut h.requests,
                LimitKind::TokensPerMinute => &mut h.tokens,
                LimitKind::Concurrency | LimitKind::DailyTokens => continue,
            };
            let (used, reset_ms) = self
                .windows
                .get(&d.key)
                .map_or((0, 0), |w| (w.total(), w.reset_ms(now_ms)));
            let r = Remaining {
                limit: d.limit,
                remaining: d.limit.saturating_sub(used),
                reset_ms,
            };
            if slot.is_none_or(|s| r.remaining < s.remaining) {
                *slot = Some(r);
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dim(key: &str, kind: LimitKind, limit: u64) -> Dim {
        Dim {
            key: key.into(),
            kind,
            limit,
        }
    }

    #[test]
    fn requests_window_admits_exactly_the_limit_and_reopens_a_minute_later() {
        let mut c = Counters::default();
        let dims = [dim("c", LimitKind::RequestsPerMinute, 3)];
        let t0 = 1_000_000_500;
        for i in 0..3 {
            assert!(matches!(
                c.admit(t0 + i, &dims, "x", 0, 1000),
                Verdict::Admitted { .. }
            ));
        }
        match c.admit(t0 + 10, &dims, "x", 0, 1000) {
            Verdict::Limited {
                kind,
                retry_after_ms,
                headroom,
            } => {
                assert_eq!(kind, LimitKind::RequestsPerMinute);
                // The bucket of second 1_000_000 frees at 1_000_060.000 s.
                assert_eq!(retry_after_ms, Some(59_490));
                assert_eq!(headroom.requests.unwrap().remaining, 0);
            }
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            c.admit(t0 + 59_499, &dims, "x", 0, 1000),
            Verdict::Limited { .. }
        ));
        assert!(matches!(
            c.admit(t0 + 59_500, &dims, "x", 0, 1000),
            Verdict::Admitted { .. }
        ));
    }

    #[test]
    fn one_refused_dimension_debits_none() {
        let mut c = Counters::default();
        let dims = [
            dim("c-rpm", LimitKind::RequestsPerMinute, 10),
            dim("t-tpm", LimitKind::TokensPerMinute, 100),
        ];
        assert!(matches!(
            c.admit(0, &dims, "a", 80, 1000),
            Verdict::Admitted { .. }
        ));
        assert!(matches!(
            c.admit(1, &dims, "b", 30, 1000),
            Verdict::Limited {
                kind: LimitKind::TokensPerMinute,
                ..
            }
        ));
        let Verdict::Admitted { headroom, .. } = c.admit(2, &dims, "c", 20, 1000) else {
            panic!()
        };
        assert_eq!(
            headroom.requests.unwrap().remaining,
            8,
            "the refused request was not counted"
        );
        assert_eq!(headroom.tokens.unwrap().remaining, 0);
    }

    #[test]
    fn settling_returns_unused_tokens_to_their_bucket() {
        let mut c = Counters::default();
        let dims = [
            dim("t", LimitKind::TokensPerMinute, 100),
            dim("d", LimitKind::DailyTokens, 1000),
        ];
        let Verdict::Admitted { second, .. } = c.admit(5_000, &dims, "a", 90, 1000) else {
            panic!()
        };
        assert!(matches!(
            c.admit(6_000, &dims, "b", 20, 1000),
            Verdict::Limited { .. }
        ));
        c.settle(&dims, "a", second, -85);
        assert!(matches!(
            c.admit(7_000, &dims, "b", 20, 1000),
            Verdict::Admitted { .. }
        ));
    }

    #[test]
    fn a_request_larger_than_the_limit_is_never_admitted() {
        let mut c = Counters::default();
        let dims = [dim("t", LimitKind::TokensPerMinute, 100)];
        assert!(matches!(
            c.admit(0, &dims, "a", 101, 1000),
            Verdict::Limited {
                retry_after_ms: None,
                ..
            }
        ));
    }

    #[test]
    fn leases_end_with_the_request_or_by_their_deadline() {
        let mut c = Counters::default();
        let dims = [dim("c", LimitKind::Concurrency, 1)];
        assert!(matches!(
            c.admit(0, &dims, "a", 0, 1000),
            Verdict::Admitted { .. }
        ));
        assert!(matches!(
            c.admit(10, &dims, "b", 0, 1000),
            Verdict::Limited {
                kind: LimitKind::Concurrency,
                ..
            }
        ));
        c.settle(&dims, "a", 0, 0);
        assert!(matches!(
            c.admit(20, &dims, "b", 0, 1000),
            Verdict::Admitted { .. }
        ));
        // "b" is never settled (its gateway died): the lease lapses at 1020 ms.
        assert!(matches!(
            c.admit(1019, &dims, "c", 0, 1000),
            Verdict::Limited { .. }
        ));
        assert!(matches!(
            c.admit(1021, &dims, "c", 0, 1000),
            Verdict::Admitted { .. }
        ));
    }

    #[test]
    fn daily_budget_resets_at_utc_midnight() {
        let mut c = Counters::default();
        let dims = [dim("d", LimitKind::DailyTokens, 100)];
        let late = DAY_SECS * 1000 - 10_000;
        assert!(matches!(
            c.admit(late, &dims, "a", 100, 1),
            Verdict::Admitted { .. }
        ));
        match c.admit(late + 1, &dims, "b", 1, 1) {
            Verdict::Limited { retry_after_ms, .. } => assert_eq!(retry_after_ms, Some(9_999)),
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            c.admit(DAY_SECS * 1000, &dims, "b", 1, 1),
            Verdict::Admitted { .. }
        ));
    }
}

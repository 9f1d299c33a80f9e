//! The live figures behind `/dashboard`: per tenant, over the last
//! [`WINDOW_SECS`] seconds of this gateway's traffic, requests per second,
//! error and rate-limited shares, and latency and time-to-first-token
//! percentiles. Pure bookkeeping: the caller passes the time in.
//!
//! Each tenant has one slot per second of the window; a slot holds counts
//! and two log-scale histograms (each bucket 25 % wider than the last), so
//! percentiles are exact to within a bucket and memory does not grow with
//! traffic.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

pub const WINDOW_SECS: u64 = 60;
/// Histogram buckets: upper bounds `0.5 ms × 1.25^i`, the last about 10 minutes.
const BUCKETS: usize = 64;

fn upper_bound_ms(i: usize) -> f64 {
    0.5 * 1.25f64.powi(i as i32)
}

fn bucket_of(ms: f64) -> usize {
    (0..BUCKETS)
        .find(|&i| ms <= upper_bound_ms(i))
        .unwrap_or(BUCKETS - 1)
}

#[derive(Clone)]
struct Hist([u32; BUCKETS]);

impl Default for Hist {
    fn default() -> Self {
        Hist([0; BUCKETS])
    }
}

impl Hist {
    fn add(&mut self, ms: f64) {
        self.0[bucket_of(ms)] += 1;
    }

    fn merge(&mut self, other: &Hist) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }

    /// The `q` quantile (0..1), interpolated inside its bucket; `None` when empty.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.0.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0);
        let mut seen = 0.0;
        for (i, &c) in self.0.iter().enumerate() {
            let c = f64::from(c);
            if seen + c >= rank {
                let lower = if i == 0 { 0.0 } else { upper_bound_ms(i - 1) };
                let upper = upper_bound_ms(i);
                return Some(lower + (upper - lower) * ((rank - seen) / c));
            }
            seen += c;
        }
        Some(upper_bound_ms(BUCKETS - 1))
    }
}

#[derive(Clone, Default)]
struct Slot {
    second: u64,
    requests: u64,
    /// 5xx answers and streams that broke.
    errors: u64,
    /// 429 answers.
    ratelimited: u64,
    latency: Hist,
    ttft: Hist,
}

/// One finished request, as the window counts it.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    pub tenant: &'a str,
    pub status: u16,
    /// The answer was a success but broke on the way (a stream's error).
    pub broken: bool,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Quantiles {
    pub p50: f64,
    pub p99: f64,
}

/// A tenant's figures over the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TenantStats {
    pub tenant: String,
    pub requests: u64,
    pub requests_per_sec: f64,
    pub error_rate: f64,
    pub ratelimited_rate: f64,
    pub latency_ms: Option<Quantiles>,
    pub ttft_ms: Option<Quantiles>,
}

#[derive(Default)]
pub struct Stats {
    tenants: Mutex<HashMap<String, Vec<Slot>>>,
}

impl Stats {
    pub fn record(&self, now_secs: u64, s: Sample<'_>) {
        let Ok(mut tenants) = self.tenants.lock() else {
            return;
        };
        let slots = match tenants.get_mut(s.tenant) {
            Some(slots) => slots,
            None => tenants
                .entry(s.tenant.to_owned())
                .or_insert_with(|| vec![Slot::default(); WINDOW_SECS as usize]),
        };
        let slot = &mut slots[(now_secs % WINDOW_SECS) as usize];
        if slot.second != now_secs {
            *slot = Slot {
                second: now_secs,
                ..Slot::default()
            };
        }
        slot.requests += 1;
        if s.status >= 500 || s.broken {
            slot.errors += 1;
        }
        if s.status == 429 {
            slot.ratelimited += 1;
        }
        slot.latency.add(s.latency_ms);
        if let Some(t) = s.ttft_ms {
            slot.ttft.add(t);
        }
    }

    /// Every tenant with traffic in the window ending at `now_secs`, by name.
    /// Tenants without any are forgotten.
    pub fn snapshot(&self, now_secs: u64) -> Vec<TenantStats> {
        let Ok(mut tenants) = self.tenants.lock() else {
            return Vec::new();
        };
        let recent =
            |slot: &Slot| slot.requests > 0 && now_secs.saturating_sub(slot.second) < WINDOW_SECS;
        tenants.retain(|_, slots| slots.iter().any(recent));
        let mut out: Vec<TenantStats> = tenants
            .iter()
            .map(|(tenant, slots)| {
                let mut total = Slot::default();
                for s in slots.iter().filter(|s| recent(s)) {
                    total.requests += s.requests;
                    total.errors += s.errors;
                    total.ratelimited += s.ratelimited;
                    total.latency.merge(&s.latency);
                    total.ttft.merge(&s.ttft);
                }
                let share = |n: u64| n as f64 / total.requests.max(1) as f64;
                let quantiles = |h: &Hist| {
                    Some(Quantiles {
                        p50: h.quantile(0.5)?,
                        p99: h.quantile(0.99)?,
                    })
                };
                TenantStats {
                    tenant: tenant.clone(),
                    requests: total.requests,
                    requests_per_sec: total.requests as f64 / WINDOW_SECS as f64,
                    error_rate: share(total.errors),
                    ratelimited_rate: share(total.ratelimited),
                    latency_ms: quantiles(&total.latency),
                    ttft_ms: quantiles(&total.ttft),
                }
            })
            .collect();
        out.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(tenant: &str, latency_ms: f64) -> Sample<'_> {
        Sample {
            tenant,
            status: 200,
            broken: false,
            latency_ms,
            ttft_ms: None,
        }
    }

    #[test]
    fn rates_and_percentiles_over_the_window() {
        let stats = Stats::default();
        let t0 = 1_000_000;
        for i in 0..100u64 {
            stats.record(t0 + i % 10, ok("acme", (i + 1) as f64));
        }
        stats.record(
            t0,
            Sample {
                status: 429,
                ..ok("acme", 1.0)
            },
        );
        stats.record(
            t0,
            Sample {
                status: 503,
                ..ok("acme", 1.0)
            },
        );
        stats.record(
            t0,
            Sample {
                broken: true,
                ttft_ms: Some(40.0),
                ..ok("acme", 1.0)
            },
        );
        let snap = stats.snapshot(t0 + 10);
        assert_eq!(snap.len(), 1);
        let a = &snap[0];
        assert_eq!(a.requests, 103);
        assert!((a.error_rate - 2.0 / 103.0).abs() < 1e-9);
        assert!((a.ratelimited_rate - 1.0 / 103.0).abs() < 1e-9);
        let l = a.latency_ms.unwrap();
        // Exact to within one bucket (25 %).
        assert!((40.0..=62.5).contains(&l.p50), "{l:?}");
        assert!((78.0..=125.0).contains(&l.p99), "{l:?}");
        let t = a.ttft_ms.unwrap();
        assert!((32.0..=50.0).contains(&t.p50), "{t:?}");
    }

    #[test]
    fn old_seconds_fall_out_and_idle_tenants_are_forgotten() {
        let stats = Stats::default();
        stats.record(100, ok("old", 5.0));
        stats.record(150, ok("new", 5.0));
        let snap = stats.snapshot(170);
        assert_eq!(
            snap.iter().map(|t| t.tenant.as_str()).collect::<Vec<_>>(),
            ["new"]
        );
        // A slot reused a window later starts from zero.
        stats.record(150 + WINDOW_SECS, ok("new", 5.0));
        assert_eq!(stats.snapshot(150 + WINDOW_SECS)[0].requests, 1);
    }
}

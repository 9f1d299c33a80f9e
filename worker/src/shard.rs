//! A shard: one vLLM server on this node. It tracks health and load (scraped
//! from vLLM), admits requests up to `max_inflight`, and keeps a circuit
//! breaker that relay failures open and a health probe plus one trial
//! request close again.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tollgate_shared::breaker::{Admit, Breaker, BreakerConfig, BreakerState, Transition};
use tollgate_shared::inflight::InFlight;
use tollgate_shared::worker_api::Endpoint;
use tollgate_shared::worker_api::ShardLoad;

use crate::vllm_metrics;

pub struct Shard {
    pub index: u32,
    /// Base URL of the vLLM server, without a trailing slash.
    pub url: String,
    /// vLLM's chat and completions URLs, parsed once (a parse per request
    /// showed in profiles); `None` if `url` does not parse.
    targets: Option<[reqwest::Url; 2]>,
    max_inflight: u32,
    inflight: AtomicU32,
    /// In-flight requests per gateway that named itself, so each gateway can
    /// tell its own requests from the others' in a load report.
    by_gateway: Mutex<InFlight<Arc<str>>>,
    healthy: AtomicBool,
    running: AtomicU32,
    waiting: AtomicU32,
    kv_usage_bits: AtomicU64,
    /// Mean inter-token latency (ms) between the last two scrapes; NaN: no tokens.
    itl_ms_bits: AtomicU64,
    /// The ITL histogram's (sum, count) at the last scrape.
    itl_seen: Mutex<(f64, f64)>,
    max_model_len: AtomicU64,
    model: Mutex<Option<String>>,
    breaker: Mutex<Breaker>,
    /// Woken whenever a permit frees its slot.
    freed: tokio::sync::Notify,
}

/// Why a shard did not admit a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot is taken.
    Busy,
    /// The circuit breaker is open (or its one trial is under way).
    CircuitOpen,
}

/// A slot on a shard; dropping it frees the slot. Its holder tells how the
/// request went ([`Permit::settle`]), which feeds the breaker.
pub struct Permit {
    shard: Arc<Shard>,
    gateway: Option<Arc<str>>,
    trial: bool,
    settled: bool,
}

impl Permit {
    /// Reports the request's result to the breaker (once; later calls are ignored).
    pub fn settle(&mut self, ok: bool) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        self.shard.record(ok, self.trial);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled && self.trial {
            // The gateway left before the trial told anything: let another request try.
            self.shard.with_breaker(|b| {
                b.on_abandoned();
                Transition::None
            });
        }
        if let (Some(g), Ok(mut m)) = (&self.gateway, self.shard.by_gateway.lock()) {
            m.end(g);
        }
        self.shard.inflight.fetch_sub(1, Ordering::AcqRel);
        self.shard.freed.notify_waiters();
    }
}

impl Shard {
    pub fn new(index: u32, url: &str, max_inflight: u32, breaker: BreakerConfig) -> Arc<Shard> {
        let url = url.trim_end_matches('/').to_owned();
        let target = |e: Endpoint| reqwest::Url::parse(&format!("{url}/v1/{}", e.suffix())).ok();
        let targets = target(Endpoint::ChatCompletions).zip(target(Endpoint::Completions));
        Arc::new(Shard {
            index,
            targets: targets.map(|(c, t)| [c, t]),
            url,
            max_inflight,
            inflight: AtomicU32::new(0),
            by_gateway: Mutex::new(InFlight::default()),
            healthy: AtomicBool::new(false),
            running: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            kv_usage_bits: AtomicU64::new(0),
            itl_ms_bits: AtomicU64::new(f64::NAN.to_bits()),
            itl_seen: Mutex::new((0.0, 0.0)),
            max_model_len: AtomicU64::new(0),
            model: Mutex::new(None),
            breaker: Mutex::new(Breaker::new(breaker)),
            freed: tokio::sync::Notify::new(),
        })
    }

    /// Where `endpoint` is on this shard's vLLM.
    pub fn target(&self, endpoint: Endpoint) -> Option<reqwest::Url> {
        let [chat, completions] = self.targets.as_ref()?;
        Some(match endpoint {
            Endpoint::ChatCompletions => chat.clone(),
            Endpoint::Completions => completions.clone(),
        })
    }

    /// Health as `/health` last answered (the breaker aside).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker
            .lock()
            .map(|b| b.state())
            .unwrap_or(BreakerState::Open)
    }

    /// Like [`Shard::try_admit`], but a full shard may free a slot within
    /// `grace`. A gateway hands a slot on as soon as the answer reached it,
    /// which can be a moment before this worker's relay of that answer ends;
    /// without the grace the next request would bounce as busy and wait for
    /// a load report.
    pub async fn admit_within(
        self: &Arc<Self>,
        grace: Duration,
        gateway: Option<&Arc<str>>,
    ) -> Result<Permit, Refusal> {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a slot freed in between is not missed.
            freed.as_mut().enable();
            match self.try_admit(gateway) {
                Err(Refusal::Busy) => {}
                other => return other,
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(Refusal::Busy);
            }
        }
    }

    /// Takes a slot if one is free and the breaker lets the request through:
    /// the worker is the authoritative admission point. `gateway` names the
    /// sender, whose in-flight count the load report then shows it.
    pub fn try_admit(self: &Arc<Self>, gateway: Option<&Arc<str>>) -> Result<Permit, Refusal> {
        self.inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_inflight).then_some(n + 1)
            })
            .map_err(|_| Refusal::Busy)?;
        // The slot is taken first so a refused breaker never strands a trial.
        if let (Some(g), Ok(mut m)) = (gateway, self.by_gateway.lock()) {
            m.start(g.clone());
        }
        let mut permit = Permit {
            shard: self.clone(),
            gateway: gateway.cloned(),
            trial: false,
            settled: false,
        };
        let admit = self
            .breaker
            .lock()
            .map(|mut b| b.admit())
            .unwrap_or(Admit::No);
        match admit {
            Admit::Yes => Ok(permit),
            Admit::Trial => {
                permit.trial = true;
                tracing::info!(shard = self.index, url = %self.url, "circuit half-open: sending a trial request");
                Ok(permit)
            }
            Admit::No => {
                // Not a verdict: dropping the permit only frees the slot.
                permit.settled = true;
                Err(Refusal::CircuitOpen)
            }
        }
    }

    fn record(&self, ok: bool, trial: bool) {
        let now = Instant::now();
        self.with_breaker(|b| {
            if ok {
                b.on_success(trial)
            } else {
                b.on_failure(trial, now)
            }
        });
    }

    /// Runs `f` on the breaker and logs the transition it reports.
    fn with_breaker(&self, f: impl FnOnce(&mut Breaker) -> Transition) {
        let Ok(mut b) = self.breaker.lock() else {
            return;
        };
        match f(&mut b) {
            Transition::None => {}
            Transition::Opened => {
                tracing::warn!(shard = self.index, url = %self.url, breaker = "open", "shard circuit opened")
            }
            Transition::HalfOpened => {
                tracing::info!(shard = self.index, url = %self.url, breaker = "half_open", "shard circuit half-open")
            }
            Transition::Closed => {
                tracing::info!(shard = self.index, url = %self.url, breaker = "closed", "shard circuit closed")
            }
        }
    }

    /// The shard's load report; `gateway` (the caller) also learns how many
    /// of the in-flight requests are its own.
    pub fn load(&self, draining: bool, gateway: Option<&str>) -> ShardLoad {
        // A permit counts its gateway after taking the slot and uncounts it
        // before freeing the slot, so the caller's count never exceeds `inflight`.
        let counts = self.by_gateway.lock().ok();
        let inflight = self.inflight.load(Ordering::Acquire);
        let caller_inflight = gateway.map(|g| counts.as_ref().map_or(0, |m| m.get(g)));
        drop(counts);
        let (breaker, breaker_room) = self
            .breaker
            .lock()
            .map(|b| (b.state(), b.capacity()))
            .unwrap_or((BreakerState::Open, Some(0)));
        // An open breaker takes the shard out, whatever `/health` says.
        let healthy = self.healthy() && breaker != BreakerState::Open;
        let max_model_len = self.max_model_len.load(Ordering::Acquire);
        let free_slots = if healthy && !draining {
            let room = self.max_inflight.saturating_sub(inflight);
            breaker_room.map_or(room, |b| room.min(b))
        } else {
            0
        };
        ShardLoad {
            index: self.index,
            healthy,
            model: self.model.lock().ok().and_then(|m| m.clone()),
            max_model_len: (max_model_len > 0).then_some(max_model_len),
            running: self.running.load(Ordering::Acquire),
            waiting: self.waiting.load(Ordering::Acquire),
            kv_cache_usage: f64::from_bits(self.kv_usage_bits.load(Ordering::Acquire)),
            inflight,
            caller_inflight,
            max_inflight: self.max_inflight,
            free_slots,
            breaker,
            inter_token_latency_ms: Some(f64::from_bits(self.itl_ms_bits.load(Ordering::Acquire)))
                .filter(|v| v.is_finite()),
        }
    }

    /// Scrapes health and load every `interval` until `stop` fires; the
    /// health check doubles as the breaker's probe once its cool-down is over.
    pub async fn watch(
        self: Arc<Self>,
        http: reqwest::Client,
        interval: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let ok = self
                .scrape(&http, interval.max(Duration::from_millis(500)))
                .await;
            let was = self.healthy.swap(ok, Ordering::AcqRel);
            if was != ok {
                tracing::info!(shard = self.index, url = %self.url, healthy = ok, "shard health changed");
            }
            let now = Instant::now();
            self.with_breaker(|b| {
                if b.probe_due(now) || b.state() == BreakerState::HalfOpen {
                    b.on_probe(ok, now)
                } else {
                    Transition::None
                }
            });
        }
    }

    async fn scrape(&self, http: &reqwest::Client, timeout: Duration) -> bool {
        let health = http
            .get(format!("{}/health", self.url))
            .timeout(timeout)
            .send()
            .await;
        if !health.is_ok_and(|r| r.status().is_success()) {
            return false;
        }
        if self.max_model_len.load(Ordering::Acquire) == 0 && !self.read_models(http, timeout).await
        {
            return false;
        }
        let Ok(resp) = http
            .get(format!("{}/metrics", self.url))
            .timeout(timeout)
            .send()
            .await
        else {
            return false;
        };
        let Ok(text) = resp.text().await else {
            return false;
        };
        let load = vllm_metrics::parse(&text);
        self.running.store(load.running as u32, Ordering::Release);
        self.waiting.store(load.waiting as u32, Ordering::Release);
        self.kv_usage_bits.store(
            load.kv_cache_usage.clamp(0.0, 1.0).to_bits(),
            Ordering::Release,
        );
        if let Ok(mut seen) = self.itl_seen.lock() {
            let itl = recent_mean_ms(*seen, (load.itl_sum, load.itl_count));
            self.itl_ms_bits
                .store(itl.unwrap_or(f64::NAN).to_bits(), Ordering::Release);
            *seen = (load.itl_sum, load.itl_count);
        }
        true
    }

    /// Reads the served model and its `max_model_len` from `/v1/models`.
    async fn read_models(&self, http: &reqwest::Client, timeout: Duration) -> bool {
        #[derive(Deserialize)]
        struct Models {
            data: Vec<Model>,
        }
        #[derive(Deserialize)]
        struct Model {
            id: String,
            max_model_len: Option<u64>,
        }
        let Ok(resp) = http
            .get(format!("{}/v1/models", self.url))
            .timeout(timeout)
            .send()
            .await
        else {
            return false;
        };
        let Ok(models) = resp.json::<Models>().await else {
            return false;
        };
        let Some(first) = models.data.into_iter().next() else {
            return false;
        };
        self.max_model_len
            .store(first.max_model_len.unwrap_or(0), Ordering::Release);
        if let Ok(mut m) = self.model.lock() {
            *m = Some(first.id);
        }
        true
    }
}

/// The mean of a histogram's samples between two scrapes, in ms; `None`
/// when nothing was observed in between (or vLLM restarted and its counters
/// went back to zero).
fn recent_mean_ms((sum0, count0): (f64, f64), (sum1, count1): (f64, f64)) -> Option<f64> {
    let n = count1 - count0;
    (n > 0.0 && sum1 >= sum0).then(|| (sum1 - sum0) / n * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(max: u32) -> Arc<Shard> {
        let s = Shard::new(
            0,
            "http://127.0.0.1:1/",
            max,
            BreakerConfig {
                failure_threshold: 2,
                cool_down: Duration::ZERO,
            },
        );
        s.healthy.store(true, Ordering::Release);
        s
    }

    #[test]
    fn admission_stops_at_max_inflight_and_permits_free_slots() {
        let s = shard(2);
        assert_eq!(s.url, "http://127.0.0.1:1");
        let a = s.try_admit(None).unwrap();
        let _b = s.try_admit(None).unwrap();
        assert_eq!(s.try_admit(None).err(), Some(Refusal::Busy));
        drop(a);
        assert!(s.try_admit(None).is_ok());
    }

    #[test]
    fn a_load_report_tells_the_caller_its_own_share() {
        let s = shard(4);
        let (g1, g2): (Arc<str>, Arc<str>) = ("g1".into(), "g2".into());
        let a = s.try_admit(Some(&g1)).unwrap();
        let b = s.try_admit(Some(&g1)).unwrap();
        let _c = s.try_admit(Some(&g2)).unwrap();
        let _anonymous = s.try_admit(None).unwrap();
        let of = |g: Option<&str>| {
            let l = s.load(false, g);
            (l.inflight, l.caller_inflight)
        };
        assert_eq!(of(Some("g1")), (4, Some(2)));
        assert_eq!(of(Some("g2")), (4, Some(1)));
        assert_eq!(of(Some("g3")), (4, Some(0)));
        assert_eq!(of(None), (4, None));
        drop(a);
        drop(b);
        assert_eq!(of(Some("g1")), (2, Some(0)));
        assert_eq!(
            s.by_gateway.lock().unwrap().keys(),
            1,
            "g1 is forgotten at zero"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_freed_within_the_grace_admits_instead_of_busy() {
        let s = shard(1);
        let held = s.try_admit(None).unwrap();
        let waiting = tokio::spawn({
            let s = s.clone();
            async move {
                s.admit_within(Duration::from_millis(20), None)
                    .await
                    .is_ok()
            }
        });
        tokio::task::yield_now().await;
        drop(held);
        assert!(waiting.await.unwrap(), "the freed slot went to the waiter");
        // Nobody frees one: busy once the grace is over.
        let _held = s.try_admit(None).unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(
            s.admit_within(Duration::from_millis(20), None).await.err(),
            Some(Refusal::Busy)
        );
        assert_eq!(started.elapsed(), Duration::from_millis(20));
    }

    #[test]
    fn inter_token_latency_is_the_mean_between_two_scrapes() {
        assert_eq!(recent_mean_ms((1.0, 100.0), (1.5, 200.0)), Some(5.0));
        assert_eq!(recent_mean_ms((1.0, 100.0), (1.0, 100.0)), None, "idle");
        assert_eq!(recent_mean_ms((1.0, 100.0), (0.1, 10.0)), None, "restarted");
    }

    #[test]
    fn unhealthy_or_draining_shards_offer_no_slots() {
        let s = Shard::new(0, "http://x", 4, BreakerConfig::default());
        assert_eq!(s.load(false, None).free_slots, 0, "not yet seen healthy");
        s.healthy.store(true, Ordering::Release);
        assert_eq!(s.load(false, None).free_slots, 4);
        assert_eq!(s.load(true, None).free_slots, 0);
    }

    #[test]
    fn relay_failures_open_the_breaker_and_a_trial_closes_it() {
        let s = shard(4);
        for _ in 0..2 {
            s.try_admit(None).unwrap().settle(false);
        }
        let load = s.load(false, None);
        assert_eq!(load.breaker, BreakerState::Open);
        assert!(!load.healthy, "an open breaker reports the shard unhealthy");
        assert_eq!(load.free_slots, 0);
        assert_eq!(s.try_admit(None).err(), Some(Refusal::CircuitOpen));
        assert_eq!(
            s.load(false, None).inflight,
            0,
            "a refused admission frees its slot"
        );

        // The health probe after the cool-down half-opens it: one trial slot.
        s.with_breaker(|b| b.on_probe(true, Instant::now()));
        let load = s.load(false, None);
        assert_eq!((load.breaker, load.free_slots), (BreakerState::HalfOpen, 1));
        let trial = s.try_admit(None).unwrap();
        assert_eq!(s.try_admit(None).err(), Some(Refusal::CircuitOpen));
        // A trial the gateway abandoned lets the next request try instead.
        drop(trial);
        let mut trial = s.try_admit(None).unwrap();
        trial.settle(true);
        trial.settle(false); // only the first verdict counts
        drop(trial);
        let load = s.load(false, None);
        assert_eq!((load.breaker, load.free_slots), (BreakerState::Closed, 4));
    }
}

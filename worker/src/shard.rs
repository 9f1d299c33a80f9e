//! A shard: one vLLM server on this node. It tracks health and load (scraped
//! from vLLM) and admits requests up to `max_inflight`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tollgate_shared::worker_api::ShardLoad;

use crate::vllm_metrics;

pub struct Shard {
    pub index: u32,
    /// Base URL of the vLLM server, without a trailing slash.
    pub url: String,
    max_inflight: u32,
    inflight: AtomicU32,
    healthy: AtomicBool,
    running: AtomicU32,
    waiting: AtomicU32,
    kv_usage_bits: AtomicU64,
    max_model_len: AtomicU64,
    model: Mutex<Option<String>>,
}

/// A slot on a shard; dropping it frees the slot.
pub struct Permit(Arc<Shard>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shard {
    pub fn new(index: u32, url: &str, max_inflight: u32) -> Arc<Shard> {
        Arc::new(Shard {
            index,
            url: url.trim_end_matches('/').to_owned(),
            max_inflight,
            inflight: AtomicU32::new(0),
            healthy: AtomicBool::new(false),
            running: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            kv_usage_bits: AtomicU64::new(0),
            max_model_len: AtomicU64::new(0),
            model: Mutex::new(None),
        })
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Takes a slot if one is free: the worker is the authoritative admission point.
    pub fn try_admit(self: &Arc<Self>) -> Option<Permit> {
        self.inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_inflight).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(self.clone()))
    }

    pub fn load(&self, draining: bool) -> ShardLoad {
        let inflight = self.inflight.load(Ordering::Acquire);
        let healthy = self.healthy();
        let max_model_len = self.max_model_len.load(Ordering::Acquire);
        ShardLoad {
            index: self.index,
            healthy,
            model: self.model.lock().ok().and_then(|m| m.clone()),
            max_model_len: (max_model_len > 0).then_some(max_model_len),
            running: self.running.load(Ordering::Acquire),
            waiting: self.waiting.load(Ordering::Acquire),
            kv_cache_usage: f64::from_bits(self.kv_usage_bits.load(Ordering::Acquire)),
            inflight,
            max_inflight: self.max_inflight,
            free_slots: if healthy && !draining {
                self.max_inflight.saturating_sub(inflight)
            } else {
                0
            },
        }
    }

    /// Scrapes health and load every `interval` until `stop` fires.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_stops_at_max_inflight_and_permits_free_slots() {
        let s = Shard::new(0, "http://127.0.0.1:1/", 2);
        assert_eq!(s.url, "http://127.0.0.1:1");
        let a = s.try_admit().unwrap();
        let _b = s.try_admit().unwrap();
        assert!(s.try_admit().is_none());
        drop(a);
        assert!(s.try_admit().is_some());
    }

    #[test]
    fn unhealthy_or_draining_shards_offer_no_slots() {
        let s = Shard::new(0, "http://x", 4);
        assert_eq!(s.load(false).free_slots, 0, "not yet seen healthy");
        s.healthy.store(true, Ordering::Release);
        assert_eq!(s.load(false).free_slots, 4);
        assert_eq!(s.load(true).free_slots, 0);
    }
}

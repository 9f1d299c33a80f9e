//! What a bench run measured, per tenant: counts, tokens, latency
//! percentiles, service over time and Jain's fairness index; as JSON and as
//! an SVG chart of service rate per tenant over time.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use super::percentile;

/// How one request ended. `status` 0: the connection failed or the stream broke.
#[derive(Debug, Default)]
pub struct Outcome {
    pub status: u16,
    pub ttft: Option<Duration>,
    pub e2e: Option<Duration>,
    pub queue_ms: Option<f64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Outcome {
    pub fn failed(status: u16) -> Self {
        Outcome {
            status,
            ..Default::default()
        }
    }
}

#[derive(Default)]
struct Tenant {
    sent: u64,
    ok: u64,
    rate_limited: u64,
    overloaded: u64,
    failed: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    ttft: Vec<Duration>,
    e2e: Vec<Duration>,
    queue: Vec<Duration>,
    /// Service (input + 2 × output tokens) per time bucket.
    service: Vec<f64>,
    /// How requests ended, per time bucket of their end.
    ended: Ended,
}

/// Requests that ended in each time bucket, by how they ended.
#[derive(Default, Clone, Serialize)]
pub struct Ended {
    ok: Vec<u64>,
    /// 429: a rate limit or quota.
    rate_limited: Vec<u64>,
    /// Any 5xx (503 overloaded included).
    server_errors: Vec<u64>,
    /// Any other 4xx.
    client_errors: Vec<u64>,
    /// No answer: the connection failed or the stream broke.
    failed: Vec<u64>,
}

impl Ended {
    fn count(&mut self, bucket: usize, status: u16) {
        let v = match status {
            200 => &mut self.ok,
            429 => &mut self.rate_limited,
            500..=599 => &mut self.server_errors,
            400..=499 => &mut self.client_errors,
            _ => &mut self.failed,
        };
        if v.len() <= bucket {
            v.resize(bucket + 1, 0);
        }
        v[bucket] += 1;
    }
}

pub struct Recorder {
    names: Vec<String>,
    weights: Vec<f64>,
    bucket: Duration,
    tenants: Mutex<Vec<Tenant>>,
}

#[derive(Serialize)]
pub struct TenantReport {
    name: String,
    weight: f64,
    sent: u64,
    ok: u64,
    rate_limited: u64,
    overloaded: u64,
    failed: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// Mean service (input + 2 × output tokens) per second while arrivals ran.
    service_per_sec: f64,
    ttft_p50_ms: f64,
    ttft_p99_ms: f64,
    e2e_p50_ms: f64,
    e2e_p99_ms: f64,
    queue_wait_p50_ms: f64,
    queue_wait_p99_ms: f64,
    /// Service per bucket, from the start.
    service_over_time: Vec<f64>,
    /// Requests that ended in each bucket, by how they ended.
    ended_over_time: Ended,
}

#[derive(Serialize)]
pub struct Report {
    seconds: f64,
    bucket_secs: f64,
    /// Jain's index of weighted service rates: 1 = perfectly fair, 1/n = one tenant got all.
    jain_fairness_index: f64,
    tenants: Vec<TenantReport>,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "Jain's fairness index {:.3} over {:.0}s\n",
            self.jain_fairness_index, self.seconds
        );
        for t in &self.tenants {
            let _ = writeln!(
                s,
                "  {:<12} ok {:>6}  429 {:>5}  503 {:>5}  failed {:>4}  service/s {:>9.1}  ttft p50 {:>8.1} ms p99 {:>8.1} ms  e2e p99 {:>8.1} ms",
                t.name,
                t.ok,
                t.rate_limited,
                t.overloaded,
                t.failed,
                t.service_per_sec,
                t.ttft_p50_ms,
                t.ttft_p99_ms,
                t.e2e_p99_ms
            );
        }
        s
    }
}

/// Jain's fairness index of `x`: (Σx)² / (n · Σx²).
pub fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let sq: f64 = x.iter().map(|v| v * v).sum();
    if sq == 0.0 {
        1.0
    } else {
        sum * sum / (x.len() as f64 * sq)
    }
}

impl Recorder {
    pub fn new(names: Vec<String>, weights: Vec<f64>, bucket: Duration) -> Recorder {
        let tenants = names.iter().map(|_| Tenant::default()).collect();
        Recorder {
            names,
            weights,
            bucket,
            tenants: Mutex::new(tenants),
        }
    }

    pub fn sent(&self, i: usize) {
        if let Ok(mut t) = self.tenants.lock() {
            t[i].sent += 1;
        }
    }

    fn bucket_of(&self, at: Duration) -> usize {
        (at.as_secs_f64() / self.bucket.as_secs_f64()) as usize
    }

    /// Credits `units` of service to tenant `i` at `at` since the start.
    pub fn credit(&self, i: usize, at: Duration, units: u64) {
        let b = self.bucket_of(at);
        if let Ok(mut t) = self.tenants.lock() {
            let s = &mut t[i].service;
            if s.len() <= b {
                s.resize(b + 1, 0.0);
            }
            s[b] += units as f64;
        }
    }

    /// Counts an answer that ended at `at` since the start; its latencies
    /// only when `measured` (sent after the warm-up).
    pub fn done(&self, i: usize, measured: bool, at: Duration, o: Outcome) {
        let bucket = self.bucket_of(at);
        let Ok(mut all) = self.tenants.lock() else {
            return;
        };
        let t = &mut all[i];
        t.ended.count(bucket, o.status);
        match o.status {
            200 => t.ok += 1,
            429 => t.rate_limited += 1,
            503 => t.overloaded += 1,
            _ => t.failed += 1,
        }
        t.prompt_tokens += o.prompt_tokens;
        t.completion_tokens += o.completion_tokens;
        if measured {
            t.ttft.extend(o.ttft);
            t.e2e.extend(o.e2e.filter(|_| o.status == 200));
            t.queue
                .extend(o.queue_ms.map(|ms| Duration::from_secs_f64(ms / 1000.0)));
        }
    }

    pub fn progress(&self) -> String {
        let Ok(all) = self.tenants.lock() else {
            return String::new();
        };
        self.names
            .iter()
            .zip(all.iter())
            .map(|(n, t)| {
                format!(
                    "{n}: sent {} ok {} 429 {} 503 {}",
                    t.sent, t.ok, t.rate_limited, t.overloaded
                )
            })
            .collect::<Vec<_>>()
            .join("  |  ")
    }

    /// The report; service rates are taken over the arrival period `load`.
    pub fn report(&self, elapsed: Duration, load: Duration) -> Report {
        let Ok(mut all) = self.tenants.lock() else {
            return Report {
                seconds: 0.0,
                bucket_secs: 0.0,
                jain_fairness_index: 0.0,
                tenants: Vec::new(),
            };
        };
        let load_buckets = (load.as_secs_f64() / self.bucket.as_secs_f64()).ceil() as usize;
        let mut tenants = Vec::new();
        for ((name, weight), t) in self.names.iter().zip(&self.weights).zip(all.iter_mut()) {
            for v in [&mut t.ttft, &mut t.e2e, &mut t.queue] {
                v.sort();
            }
            let served: f64 = t.service.iter().take(load_buckets).sum();
            tenants.push(TenantReport {
                name: name.clone(),
                weight: *weight,
                sent: t.sent,
                ok: t.ok,
                rate_limited: t.rate_limited,
                overloaded: t.overloaded,
                failed: t.failed,
                prompt_tokens: t.prompt_tokens,
                completion_tokens: t.completion_tokens,
                service_per_sec: served / load.as_secs_f64().max(1e-9),
                ttft_p50_ms: percentile(&t.ttft, 50.0),
                ttft_p99_ms: percentile(&t.ttft, 99.0),
                e2e_p50_ms: percentile(&t.e2e, 50.0),
                e2e_p99_ms: percentile(&t.e2e, 99.0),
                queue_wait_p50_ms: percentile(&t.queue, 50.0),
                queue_wait_p99_ms: percentile(&t.queue, 99.0),
                service_over_time: t
                    .service
                    .iter()
                    .map(|s| s / self.bucket.as_secs_f64())
                    .collect(),
                ended_over_time: t.ended.clone(),
            });
        }
        let weighted: Vec<f64> = tenants
            .iter()
            .map(|t| t.service_per_sec / t.weight.max(1e-9))
            .collect();
        Report {
            seconds: elapsed.as_secs_f64(),
            bucket_secs: self.bucket.as_secs_f64(),
            jain_fairness_index: jain(&weighted),
            tenants,
        }
    }

    /// An SVG line chart of service rate per tenant over time.
    pub fn svg(&self, load: Duration) -> String {
        const W: f64 = 800.0;
        const H: f64 = 400.0;
        const PAD: f64 = 50.0;
        const COLORS: &[&str] = &[
            "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
        ];
        let Ok(all) = self.tenants.lock() else {
            return String::new();
        };
        let secs = self.bucket.as_secs_f64();
        let buckets = all
            .iter()
            .map(|t| t.service.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let peak = all
            .iter()
            .flat_map(|t| t.service.iter())
            .fold(0.0f64, |m, v| m.max(v / secs))
            .max(1.0);
        let x = |b: usize| PAD + (b as f64 + 0.5) / buckets as f64 * (W - 2.0 * PAD);
        let y = |v: f64| H - PAD - v / peak * (H - 2.0 * PAD);
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{PAD}\" y=\"20\" font-size=\"14\">service rate per tenant (input + 2 × output tokens / s)</text>\n\
             <line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{}\" stroke=\"black\"/>\n\
             <text x=\"5\" y=\"{}\">{peak:.0}</text><text x=\"5\" y=\"{}\">0</text>\n\
             <text x=\"{}\" y=\"{}\">{:.0} s</text>\n",
            H - PAD,
            W - PAD,
            H - PAD,
            H - PAD,
            PAD + 4.0,
            H - PAD,
            W - PAD - 30.0,
            H - PAD + 20.0,
            buckets as f64 * secs
        );
        let load_x =
            PAD + (load.as_secs_f64() / (buckets as f64 * secs)).min(1.0) * (W - 2.0 * PAD);
        let _ = writeln!(
            s,
            "<line x1=\"{load_x:.1}\" y1=\"{PAD}\" x2=\"{load_x:.1}\" y2=\"{}\" stroke=\"#999\" stroke-dasharray=\"4\"/>",
            H - PAD
        );
        for (i, (t, name)) in all.iter().zip(&self.names).enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<String> = (0..buckets)
                .map(|b| {
                    format!(
                        "{:.1},{:.1}",
                        x(b),
                        y(t.service.get(b).copied().unwrap_or(0.0) / secs)
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                points.join(" ")
            );
            let _ = writeln!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{}</text>",
                W - 150.0,
                PAD + 18.0 * i as f64,
                W - 133.0,
                PAD + 10.0 + 18.0 * i as f64,
                xml_escape(name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_index_bounds() {
        assert!((jain(&[1.0, 1.0, 1.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[1.0, 0.0]) - 0.5).abs() < 1e-12);
        assert!((jain(&[1.0, 2.0]) - 0.9).abs() < 1e-12);
    }

    #[test]
    fn service_is_bucketed_and_charted() {
        let r = Recorder::new(
            vec!["a".into(), "b<".into()],
            vec![1.0, 2.0],
            Duration::from_secs(1),
        );
        r.credit(0, Duration::from_millis(500), 10);
        r.credit(0, Duration::from_millis(1500), 30);
        r.credit(1, Duration::from_millis(1500), 80);
        r.done(
            0,
            true,
            Duration::from_millis(600),
            Outcome {
                status: 200,
                e2e: Some(Duration::from_millis(5)),
                ..Default::default()
            },
        );
        // Sent during the warm-up: counted, but its latency is not.
        r.done(
            0,
            false,
            Duration::from_millis(1200),
            Outcome {
                status: 200,
                e2e: Some(Duration::from_secs(9)),
                ..Default::default()
            },
        );
        r.done(1, true, Duration::from_millis(1900), Outcome::failed(429));
        r.done(1, true, Duration::from_millis(1950), Outcome::failed(503));
        r.done(1, true, Duration::from_millis(100), Outcome::failed(0));
        let rep = r.report(Duration::from_secs(2), Duration::from_secs(2));
        assert_eq!(rep.tenants[0].service_over_time, vec![10.0, 30.0]);
        assert_eq!(rep.tenants[0].service_per_sec, 20.0);
        assert_eq!(rep.tenants[1].rate_limited, 1);
        assert_eq!(rep.tenants[0].ok, 2);
        // How requests ended, by the second they ended in.
        assert_eq!(rep.tenants[0].ended_over_time.ok, vec![1, 1]);
        let b = &rep.tenants[1].ended_over_time;
        assert_eq!(b.rate_limited, vec![0, 1]);
        assert_eq!(b.server_errors, vec![0, 1]);
        assert_eq!(b.failed, vec![1]);
        assert!(b.ok.is_empty() && b.client_errors.is_empty());
        assert_eq!(
            rep.tenants[0].e2e_p99_ms, 5.0,
            "the warm-up answer is left out"
        );
        // Weighted rates 20 and 40/2 = 20: perfectly fair.
        assert!((rep.jain_fairness_index - 1.0).abs() < 1e-9);
        let svg = r.svg(Duration::from_secs(2));
        assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.contains("b&lt;"));
    }
}

//! The engine's statistics and their Prometheus text, with vLLM V1's metric
//! names, help texts, labels (`engine`, `model_name`) and histogram buckets.
//! Label names are written sorted and numbers as Python floats, as
//! `prometheus_client` writes them. Times are simulated seconds.

use std::fmt::Write;

use super::engine::FinishReason;

pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
pub const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
pub const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.count
    }

    #[cfg(test)]
    pub fn sum(&self) -> f64 {
        self.sum
    }
}

/// Cumulative counters and latency histograms of one engine.
#[derive(Debug, Clone)]
pub struct Stats {
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub preemptions: u64,
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    /// Finished requests by reason, indexed by [`FinishReason::index`].
    pub finished: [u64; FinishReason::ALL.len()],
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            prompt_tokens: 0,
            generation_tokens: 0,
            preemptions: 0,
            prefix_cache_queries: 0,
            prefix_cache_hits: 0,
            finished: [0; FinishReason::ALL.len()],
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(REQUEST_LATENCY_BUCKETS),
            queue: Histogram::new(REQUEST_LATENCY_BUCKETS),
        }
    }
}

/// The engine's state at one instant, for `/metrics`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub stats: Stats,
    pub running: usize,
    pub waiting: usize,
    pub kv_cache_usage: f64,
}

/// Static facts for `vllm:cache_config_info`.
#[derive(Debug, Clone)]
pub struct CacheInfo {
    pub block_size: u32,
    pub num_gpu_blocks: u32,
}

/// Prometheus text of a snapshot.
pub fn render(s: &Snapshot, model: &str, cache: &CacheInfo) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let labels = format!("engine=\"0\",model_name=\"{}\"", escape(model));
    let st = &s.stats;

    let info = [
        ("block_size", cache.block_size.to_string()),
        ("cache_dtype", "auto".to_owned()),
        ("enable_prefix_caching", "True".to_owned()),
        ("engine", "0".to_owned()),
        ("gpu_memory_utilization", "0.9".to_owned()),
        ("num_cpu_blocks", "None".to_owned()),
        ("num_gpu_blocks", cache.num_gpu_blocks.to_string()),
        ("num_gpu_blocks_override", "None".to_owned()),
        ("prefix_caching_hash_algo", "sha256".to_owned()),
        ("sliding_window", "None".to_owned()),
        ("swap_space", "4".to_owned()),
    ];
    let info_labels: Vec<String> = info.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    header(
        &mut out,
        "vllm:cache_config_info",
        "gauge",
        "Information of the LLMEngine CacheConfig",
    );
    let _ = writeln!(
        out,
        "vllm:cache_config_info{{{}}} 1.0",
        info_labels.join(",")
    );

    let gauges = [
        (
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            s.running as f64,
        ),
        (
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            s.waiting as f64,
        ),
        (
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            s.kv_cache_usage,
        ),
    ];
    for (name, help, v) in gauges {
        header(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name}{{{labels}}} {}", num(v));
    }

    let counters = [
        (
            "vllm:prefix_cache_queries_total",
            "Prefix cache queries, in terms of number of queried tokens.",
            st.prefix_cache_queries,
        ),
        (
            "vllm:prefix_cache_hits_total",
            "Prefix cache hits, in terms of number of cached tokens.",
            st.prefix_cache_hits,
        ),
        (
            "vllm:num_preemptions_total",
            "Cumulative number of preemption from the engine.",
            st.preemptions,
        ),
        (
            "vllm:prompt_tokens_total",
            "Number of prefill tokens processed.",
            st.prompt_tokens,
        ),
        (
            "vllm:generation_tokens_total",
            "Number of generation tokens processed.",
            st.generation_tokens,
        ),
    ];
    for (name, help, v) in counters {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name}{{{labels}}} {}", num(v as f64));
    }

    let name = "vllm:request_success_total";
    header(
        &mut out,
        name,
        "counter",
        "Count of successfully processed requests.",
    );
    for reason in FinishReason::ALL {
        let _ = writeln!(
            out,
            "{name}{{engine=\"0\",finished_reason=\"{}\",model_name=\"{}\"}} {}",
            reason.as_str(),
            escape(model),
            num(st.finished[reason.index()] as f64)
        );
    }

    let histograms = [
        (
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            &st.ttft,
        ),
        (
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            &st.itl,
        ),
        (
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            &st.e2e,
        ),
        (
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            &st.queue,
        ),
    ];
    for (name, help, h) in histograms {
        header(&mut out, name, "histogram", help);
        let mut cumulative = 0;
        for (i, c) in h.counts.iter().enumerate() {
            cumulative += c;
            let le = h
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| num(*b));
            let _ = writeln!(
                out,
                "{name}_bucket{{engine=\"0\",le=\"{le}\",model_name=\"{}\"}} {}",
                escape(model),
                num(cumulative as f64)
            );
        }
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", num(h.count as f64));
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", num(h.sum));
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A number as Python's `repr(float)` writes it: `3.0`, `0.25`, `1e-05`.
fn num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v:.1}")
    } else if v != 0.0 && v.abs() < 1e-4 {
        let text = format!("{v:e}");
        match text.split_once("e-") {
            Some((mantissa, exp)) if exp.len() == 1 => format!("{mantissa}e-0{exp}"),
            _ => text,
        }
    } else {
        format!("{v}")
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_upper_inclusive() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 1.0, 3.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, [2, 2, 1]);
        assert_eq!(h.count(), 5);
    }

    #[test]
    fn numbers_look_like_python() {
        assert_eq!(num(3.0), "3.0");
        assert_eq!(num(0.25), "0.25");
        assert_eq!(num(2560.0), "2560.0");
        assert_eq!(num(0.00001), "1e-05");
    }

    #[test]
    fn renders_vllm_names_and_labels() {
        let mut stats = Stats::default();
        stats.ttft.observe(0.03);
        stats.finished[FinishReason::Length.index()] = 2;
        let text = render(
            &Snapshot {
                stats,
                running: 3,
                waiting: 1,
                kv_cache_usage: 0.5,
            },
            "Qwen/Qwen2.5-7B-Instruct",
            &CacheInfo {
                block_size: 16,
                num_gpu_blocks: 100,
            },
        );
        let l = r#"engine="0",model_name="Qwen/Qwen2.5-7B-Instruct""#;
        for line in [
            format!("vllm:num_requests_running{{{l}}} 3.0"),
            format!("vllm:num_requests_waiting{{{l}}} 1.0"),
            format!("vllm:kv_cache_usage_perc{{{l}}} 0.5"),
            "# TYPE vllm:prompt_tokens_total counter".to_owned(),
            r#"vllm:request_success_total{engine="0",finished_reason="length",model_name="Qwen/Qwen2.5-7B-Instruct"} 2.0"#.to_owned(),
            r#"vllm:time_to_first_token_seconds_bucket{engine="0",le="0.02",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.0"#.to_owned(),
            r#"vllm:time_to_first_token_seconds_bucket{engine="0",le="0.04",model_name="Qwen/Qwen2.5-7B-Instruct"} 1.0"#.to_owned(),
            r#"vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="Qwen/Qwen2.5-7B-Instruct"} 1.0"#.to_owned(),
            format!("vllm:time_to_first_token_seconds_count{{{l}}} 1.0"),
            "# TYPE vllm:request_queue_time_seconds histogram".to_owned(),
        ] {
            assert!(text.lines().any(|x| x == line), "missing {line}\n{text}");
        }
        assert!(text.contains(r#"vllm:cache_config_info{block_size="16",cache_dtype="auto""#));
        assert!(text.contains(r#"num_gpu_blocks="100""#));
    }
}

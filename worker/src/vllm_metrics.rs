//! Reads the load figures a worker needs out of vLLM's Prometheus `/metrics` text.
//! Accepts vLLM V1 names and the older V0 ones.

/// Load of one vLLM server as its metrics tell it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VllmLoad {
    pub running: f64,
    pub waiting: f64,
    /// 0..=1
    pub kv_cache_usage: f64,
    /// Inter-token latency histogram: total seconds and samples since vLLM
    /// started (the mean over an interval is the difference of two scrapes).
    pub itl_sum: f64,
    pub itl_count: f64,
}

const RUNNING: &[&str] = &["vllm:num_requests_running"];
const WAITING: &[&str] = &["vllm:num_requests_waiting"];
const KV_USAGE: &[&str] = &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"];
/// Inter-token latency: V1's name first; V0's (which some releases export
/// beside V1's, with the same samples) only when V1's is absent.
const ITL: [&str; 2] = [
    "vllm:inter_token_latency_seconds",
    "vllm:time_per_output_token_seconds",
];

/// Parses the exposition text. A metric given for several label sets (several
/// engines) is summed; KV usage is averaged. Missing metrics read as 0.
pub fn parse(text: &str) -> VllmLoad {
    let mut load = VllmLoad::default();
    let mut kv_samples = 0u32;
    // (sum, count) per name in `ITL`.
    let mut itl = [(0.0, 0.0); 2];
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = sample(line) else {
            continue;
        };
        if RUNNING.contains(&name) {
            load.running += value;
        } else if WAITING.contains(&name) {
            load.waiting += value;
        } else if KV_USAGE.contains(&name) {
            load.kv_cache_usage += value;
            kv_samples += 1;
        } else if let Some((base, sum)) = name
            .strip_suffix("_sum")
            .map(|b| (b, true))
            .or(name.strip_suffix("_count").map(|b| (b, false)))
            && let Some(i) = ITL.iter().position(|n| *n == base)
        {
            if sum {
                itl[i].0 += value;
            } else {
                itl[i].1 += value;
            }
        }
    }
    (load.itl_sum, load.itl_count) = if itl[0].1 > 0.0 { itl[0] } else { itl[1] };
    if kv_samples > 1 {
        load.kv_cache_usage /= f64::from(kv_samples);
    }
    load
}

/// `name{labels} value [timestamp]` → (name, value).
fn sample(line: &str) -> Option<(&str, f64)> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => {
            let close = line[i..].find('}')? + i;
            (&line[..i], &line[close + 1..])
        }
        Some(i) => (&line[..i], &line[i..]),
        None => return None,
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v1_names() {
        let text = r#"
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 3.0
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 7.0
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.25
vllm:inter_token_latency_seconds_bucket{le="0.01",model_name="m"} 4.0
vllm:inter_token_latency_seconds_sum{engine="0",model_name="m"} 0.5
vllm:inter_token_latency_seconds_count{engine="0",model_name="m"} 100.0
"#;
        assert_eq!(
            parse(text),
            VllmLoad {
                running: 3.0,
                waiting: 7.0,
                kv_cache_usage: 0.25,
                itl_sum: 0.5,
                itl_count: 100.0,
            }
        );
    }

    #[test]
    fn reads_v0_names_and_sums_engines() {
        let text = "vllm:num_requests_running{engine=\"0\"} 1\nvllm:num_requests_running{engine=\"1\"} 2\nvllm:gpu_cache_usage_perc{engine=\"0\"} 0.5\nvllm:gpu_cache_usage_perc{engine=\"1\"} 0.1\nvllm:time_per_output_token_seconds_sum{engine=\"0\"} 1.5\nvllm:time_per_output_token_seconds_count{engine=\"0\"} 30\n";
        let l = parse(text);
        assert_eq!(l.running, 3.0);
        assert!((l.kv_cache_usage - 0.3).abs() < 1e-9);
        assert_eq!((l.itl_sum, l.itl_count), (1.5, 30.0));
    }

    #[test]
    fn garbage_reads_as_zero() {
        assert_eq!(parse("not metrics at all\n{}\nx y z"), VllmLoad::default());
    }
}

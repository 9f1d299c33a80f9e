//! The timing model: how long one engine step takes, and the KV-cache size,
//! derived from Qwen2.5-7B-Instruct's shape and the GPU of a preset.
//! docs/simulator.md walks through the same arithmetic.

use std::time::Duration;

/// Qwen2.5-7B-Instruct (bf16): what the timing depends on.
pub mod qwen25_7b {
    /// Parameters, embeddings included (7.07 B non-embedding).
    pub const PARAMS: f64 = 7.615e9;
    /// Weights in bf16: two bytes a parameter.
    pub const WEIGHT_BYTES: f64 = PARAMS * 2.0;
    pub const LAYERS: u64 = 28;
    pub const KV_HEADS: u64 = 4;
    pub const HEAD_DIM: u64 = 128;
    /// K and V, every layer, bf16: 2 · 28 · 4 · 128 · 2 = 57 344 bytes (56 KiB).
    pub const KV_BYTES_PER_TOKEN: u64 = 2 * LAYERS * KV_HEADS * HEAD_DIM * 2;
    /// A forward pass costs about two FLOPs per parameter per token.
    pub const FLOPS_PER_TOKEN: f64 = 2.0 * PARAMS;
}

/// Share of peak HBM bandwidth a decode step achieves streaming weights and KV.
const BANDWIDTH_EFFICIENCY: f64 = 0.8;
/// Model FLOPs utilisation of prefill (large GEMMs, flash attention).
const PREFILL_MFU: f64 = 0.4;
/// Fixed per-step cost outside the GPU's arithmetic: scheduling, input
/// preparation, kernel launches, sampling.
const STEP_OVERHEAD_MS: f64 = 0.8;
/// vLLM's default `--gpu-memory-utilization`.
const GPU_MEMORY_UTILIZATION: f64 = 0.9;
/// Memory vLLM's profiling run keeps out of the KV cache besides the weights:
/// peak activations for a full token budget, CUDA graphs, non-torch allocations.
const NON_KV_RESERVE_BYTES: f64 = 3.0e9;

/// The GPU the simulated vLLM runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    H200,
    H100,
}

impl Preset {
    pub fn parse(s: &str) -> Option<Preset> {
        match s.to_ascii_lowercase().as_str() {
            "h200" => Some(Preset::H200),
            "h100" => Some(Preset::H100),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Preset::H200 => "h200",
            Preset::H100 => "h100",
        }
    }

    /// Memory as the driver reports it (`nvidia-smi`), in bytes.
    fn memory_bytes(self) -> f64 {
        let mib = match self {
            Preset::H200 => 143_771.0,
            Preset::H100 => 81_559.0,
        };
        mib * 1024.0 * 1024.0
    }

    /// Peak HBM bandwidth, bytes/s.
    fn bandwidth(self) -> f64 {
        match self {
            Preset::H200 => 4.8e12,
            Preset::H100 => 3.35e12,
        }
    }

    /// Dense bf16 tensor-core peak, FLOP/s (the same silicon on both).
    fn peak_flops(self) -> f64 {
        989e12
    }

    fn effective_bandwidth(self) -> f64 {
        self.bandwidth() * BANDWIDTH_EFFICIENCY
    }

    /// Step constants of this preset.
    pub fn timing(self) -> StepTiming {
        let ms = 1e3;
        let per_token_ms = qwen25_7b::FLOPS_PER_TOKEN / (self.peak_flops() * PREFILL_MFU) * ms;
        StepTiming {
            // Every step streams all weights once: a decode step cannot be faster.
            base_ms: qwen25_7b::WEIGHT_BYTES / self.effective_bandwidth() * ms + STEP_OVERHEAD_MS,
            prefill_ms_per_token: per_token_ms,
            // Attention reads each context token's K and V once per step.
            context_ms_per_token: qwen25_7b::KV_BYTES_PER_TOKEN as f64 / self.effective_bandwidth()
                * ms,
            // A decoded token costs the same 2·N FLOPs as a prefilled one.
            decode_ms_per_seq: per_token_ms,
        }
    }

    /// KV-cache capacity in tokens, rounded down to whole blocks.
    pub fn kv_cache_tokens(self, block_size: u32) -> u64 {
        let bytes = self.memory_bytes() * GPU_MEMORY_UTILIZATION
            - qwen25_7b::WEIGHT_BYTES
            - NON_KV_RESERVE_BYTES;
        let tokens = (bytes / qwen25_7b::KV_BYTES_PER_TOKEN as f64).max(0.0) as u64;
        let block = u64::from(block_size.max(1));
        tokens / block * block
    }
}

/// Constants of the step-time formula, in milliseconds of simulated time:
/// `base + prefill·(prefill tokens) + context·(Σ context tokens) + decode·(decode seqs)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTiming {
    pub base_ms: f64,
    pub prefill_ms_per_token: f64,
    pub context_ms_per_token: f64,
    pub decode_ms_per_seq: f64,
}

/// What one step computes, as far as its duration is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepLoad {
    /// Prompt (or recomputed) tokens prefilled in the step.
    pub prefill_tokens: u64,
    /// Context every scheduled sequence attends to, summed.
    pub context_tokens: u64,
    /// Sequences decoding one token.
    pub decode_seqs: u64,
}

impl StepTiming {
    /// Simulated milliseconds one step takes.
    pub fn step_ms(&self, load: StepLoad) -> f64 {
        self.base_ms
            + self.prefill_ms_per_token * load.prefill_tokens as f64
            + self.context_ms_per_token * load.context_tokens as f64
            + self.decode_ms_per_seq * load.decode_seqs as f64
    }

    /// Wall-clock time of one step: simulated time divided by `time_scale`.
    pub fn step_duration(&self, load: StepLoad, time_scale: f64) -> Duration {
        let secs = self.step_ms(load) / 1e3 / time_scale;
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO)
    }

    pub fn validate(&self) -> Result<(), String> {
        let fields = [
            ("step-base-ms", self.base_ms),
            ("prefill-ms-per-token", self.prefill_ms_per_token),
            ("context-ms-per-token", self.context_ms_per_token),
            ("decode-ms-per-seq", self.decode_ms_per_seq),
        ];
        for (name, v) in fields {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{name} must be a finite number >= 0, got {v}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_bytes_per_token_is_56_kib() {
        assert_eq!(qwen25_7b::KV_BYTES_PER_TOKEN, 56 * 1024);
    }

    #[test]
    fn decode_step_is_bounded_by_the_weight_stream() {
        // 15.2 GB of weights at 4.8 TB/s is 3.2 ms; at 3.35 TB/s 4.5 ms.
        let h200 = Preset::H200.timing();
        let h100 = Preset::H100.timing();
        assert!(h200.base_ms > 3.2 && h200.base_ms < 6.0, "{}", h200.base_ms);
        assert!(h100.base_ms > 4.5 && h100.base_ms < 8.0, "{}", h100.base_ms);
        assert!(h100.context_ms_per_token > h200.context_ms_per_token);
    }

    #[test]
    fn kv_capacity_follows_memory() {
        let h200 = Preset::H200.kv_cache_tokens(16);
        let h100 = Preset::H100.kv_cache_tokens(16);
        assert_eq!(h200 % 16, 0);
        assert!((1_900_000..2_200_000).contains(&h200), "{h200}");
        assert!((900_000..1_100_000).contains(&h100), "{h100}");
    }

    #[test]
    fn step_time_formula() {
        let t = StepTiming {
            base_ms: 5.0,
            prefill_ms_per_token: 0.5,
            context_ms_per_token: 0.01,
            decode_ms_per_seq: 0.25,
        };
        let load = StepLoad {
            prefill_tokens: 10,
            context_tokens: 1000,
            decode_seqs: 4,
        };
        assert_eq!(t.step_ms(load), 5.0 + 5.0 + 10.0 + 1.0);
        assert_eq!(t.step_duration(load, 1.0), Duration::from_millis(21));
        assert_eq!(t.step_duration(load, 1000.0), Duration::from_micros(21));
    }
}

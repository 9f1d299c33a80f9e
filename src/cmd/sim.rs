//! `tollgate sim`: the vLLM simulator as an HTTP server (CONTRACT §6).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

use anyhow::anyhow;
use tollgate_shared::config::Role;
use tollgate_worker::sim::{self, ExitHook, Preset, SchedulingPolicy, SimOptions};

use super::{CmdResult, Failure, Running, bind, load, serve_until_signal};

/// Flags override the `[sim]` section of the config; timing constants and
/// the KV-cache size default to the preset's.
#[derive(clap::Args, Debug, Default)]
pub struct SimArgs {
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on [default: 8000].
    #[arg(long)]
    pub port: Option<u16>,
    /// Served model name [default: Qwen/Qwen2.5-7B-Instruct].
    #[arg(long)]
    pub model: Option<String>,
    /// GPU the timing model follows: h200 or h100 [default: h200].
    #[arg(long)]
    pub preset: Option<String>,
    /// Context length the server accepts [default: 32768].
    #[arg(long)]
    pub max_model_len: Option<u32>,
    /// Sequences in the running batch at most [default: 256].
    #[arg(long)]
    pub max_num_seqs: Option<u32>,
    /// Tokens computed per engine step at most [default: 8192].
    #[arg(long)]
    pub max_num_batched_tokens: Option<u32>,
    /// KV-cache capacity in tokens [default: from the preset].
    #[arg(long)]
    pub kv_cache_tokens: Option<u64>,
    /// Tokens per KV-cache block [default: 16].
    #[arg(long)]
    pub block_size: Option<u32>,
    /// Waiting-queue order: fcfs or priority [default: fcfs].
    #[arg(long)]
    pub scheduling_policy: Option<String>,
    /// Simulated seconds per real second; > 1 runs faster [default: 1].
    #[arg(long)]
    pub time_scale: Option<f64>,
    /// Seed of the generated text [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Answer with the prompt as rendered (what reached vLLM).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub echo: Option<bool>,
    /// Fixed cost of an engine step, ms [default: from the preset].
    #[arg(long)]
    pub step_base_ms: Option<f64>,
    /// Cost of each prefilled token, ms [default: from the preset].
    #[arg(long)]
    pub prefill_ms_per_token: Option<f64>,
    /// Cost of each context token attended to in a step, ms [default: from the preset].
    #[arg(long)]
    pub context_ms_per_token: Option<f64>,
    /// Cost of each decoding sequence in a step, ms [default: from the preset].
    #[arg(long)]
    pub decode_ms_per_seq: Option<f64>,
    /// Fail this share (0..=1) of inference requests, deterministically by seed.
    #[arg(long)]
    pub fail_rate: Option<f64>,
    /// HTTP status of injected failures [default: 500].
    #[arg(long)]
    pub fail_status: Option<u16>,
    /// Stop sending after N tokens, keeping the connection open.
    #[arg(long)]
    pub stall_after_tokens: Option<u32>,
    /// Cut the connection after N tokens.
    #[arg(long)]
    pub drop_after_tokens: Option<u32>,
    /// Exit with code 1 when N inference requests have arrived.
    #[arg(long)]
    pub exit_after_requests: Option<u64>,
    /// Answer 503 on /health for the first S seconds.
    #[arg(long)]
    pub unhealthy_secs: Option<f64>,
    /// HTTP worker threads [default: 2].
    #[arg(long)]
    pub http_workers: Option<usize>,
}

impl SimArgs {
    /// Lays the flags over `o`.
    pub fn apply(&self, o: &mut SimOptions) -> Result<(), String> {
        if let Some(p) = &self.preset {
            o.preset =
                Preset::parse(p).ok_or_else(|| format!("--preset {p}: must be h200 or h100"))?;
        }
        if let Some(p) = &self.scheduling_policy {
            o.scheduling_policy = SchedulingPolicy::parse(p)
                .ok_or_else(|| format!("--scheduling-policy {p}: must be fcfs or priority"))?;
        }
        set(&mut o.model, self.model.clone());
        set(&mut o.max_model_len, self.max_model_len);
        set(&mut o.max_num_seqs, self.max_num_seqs);
        set(&mut o.max_num_batched_tokens, self.max_num_batched_tokens);
        set(&mut o.block_size, self.block_size);
        set(&mut o.time_scale, self.time_scale);
        set(&mut o.seed, self.seed);
        set(&mut o.echo, self.echo);
        set(&mut o.http_workers, self.http_workers);
        o.kv_cache_tokens = self.kv_cache_tokens.or(o.kv_cache_tokens);
        o.step_base_ms = self.step_base_ms.or(o.step_base_ms);
        o.prefill_ms_per_token = self.prefill_ms_per_token.or(o.prefill_ms_per_token);
        o.context_ms_per_token = self.context_ms_per_token.or(o.context_ms_per_token);
        o.decode_ms_per_seq = self.decode_ms_per_seq.or(o.decode_ms_per_seq);
        let f = &mut o.faults;
        set(&mut f.fail_rate, self.fail_rate);
        set(&mut f.fail_status, self.fail_status);
        set(&mut f.unhealthy_secs, self.unhealthy_secs);
        f.stall_after_tokens = self.stall_after_tokens.or(f.stall_after_tokens);
        f.drop_after_tokens = self.drop_after_tokens.or(f.drop_after_tokens);
        f.exit_after_requests = self.exit_after_requests.or(f.exit_after_requests);
        o.validate()
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

pub async fn run(config: Option<&Path>, args: SimArgs) -> CmdResult {
    let config = load(config, Role::Standalone)?;
    let invalid = |e: String| Failure::Other(anyhow!("invalid simulator settings: {e}"));
    let mut opts = SimOptions::from_config(&config.sim).map_err(invalid)?;
    args.apply(&mut opts).map_err(invalid)?;
    opts.shutdown_timeout = config.shutdown_grace;
    opts.faults.on_exit = Some(ExitHook(Arc::new(|| {
        tracing::error!("exiting with code 1 (--exit-after-requests)");
        std::process::exit(1)
    })));

    let host = args
        .host
        .or(config.sim.host.clone())
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let port = args.port.or(config.sim.port).unwrap_or(8000);
    let listener = bind(resolve(&host, port)?)?;
    let addr = listener.local_addr()?;
    let (model, preset, kv_tokens) = (opts.model.clone(), opts.preset, opts.kv_cache_tokens());
    let server = sim::start(opts, listener)?;
    tracing::info!(
        role = "sim",
        addr = %addr,
        model = %model,
        preset = preset.as_str(),
        kv_cache_tokens = kv_tokens,
        "listening"
    );
    serve_until_signal(
        vec![Running::spawn("sim", server)],
        config.shutdown_grace,
        || {},
    )
    .await
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, Failure> {
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            Failure::Other(anyhow!(
                "--host {host}: not an address this machine can listen on"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_and_validate() {
        let mut o = SimOptions::default();
        let args = SimArgs {
            preset: Some("h100".into()),
            max_num_seqs: Some(8),
            echo: Some(true),
            fail_rate: Some(0.5),
            ..SimArgs::default()
        };
        args.apply(&mut o).unwrap();
        assert_eq!((o.preset, o.max_num_seqs, o.echo), (Preset::H100, 8, true));
        assert_eq!(o.faults.fail_rate, 0.5);

        let bad = SimArgs {
            time_scale: Some(0.0),
            ..SimArgs::default()
        };
        assert!(
            bad.apply(&mut SimOptions::default())
                .unwrap_err()
                .contains("time-scale")
        );
        let bad = SimArgs {
            preset: Some("a100".into()),
            ..SimArgs::default()
        };
        assert!(
            bad.apply(&mut SimOptions::default())
                .unwrap_err()
                .contains("--preset")
        );
    }
}

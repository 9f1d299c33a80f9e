//! `tollgate worker`: a worker node driving this GPU node's vLLM shards.

use std::net::SocketAddr;
use std::path::Path;

use tollgate_shared::breaker::BreakerConfig;
use tollgate_shared::config::Role;
use tollgate_shared::store::Redis;
use tollgate_worker::{NodeSettings, WorkerNode};

use super::{CmdResult, Failure, Running, bind, serve_until_signal, start_sims, telemetry};

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// A vLLM server URL (repeatable; overrides worker.shards).
    #[arg(long = "shard")]
    shards: Vec<String>,
    /// Run N simulated vLLM shards in-process instead of real ones.
    #[arg(long, conflicts_with = "shards")]
    sim: Option<u32>,
    /// Address to listen on (overrides worker.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// This worker's id in reports and logs (overrides worker.id).
    #[arg(long)]
    id: Option<String>,
    /// The URL gateways reach this worker at, registered in Redis (overrides
    /// worker.advertise_url; default: http:// + the listening address).
    #[arg(long)]
    advertise_url: Option<String>,
}

pub async fn run(path: Option<&Path>, args: WorkerArgs) -> CmdResult {
    let config = tollgate_shared::config::load(path, Role::Worker)?;
    let telemetry = telemetry(&config, "worker")?;
    let (shard_urls, mut servers) = match args.sim {
        Some(n) => start_sims(&config.sim, n)?,
        None if !args.shards.is_empty() => (args.shards, Vec::new()),
        None => (config.worker.shards.clone(), Vec::new()),
    };
    if shard_urls.is_empty() {
        return Err(Failure::Other(anyhow::anyhow!(
            "no shards: give --shard URL (repeatable), --sim N, or worker.shards in the config"
        )));
    }
    let listener = bind(args.listen.unwrap_or(config.worker.listen))?;
    let addr = listener.local_addr()?;
    let secret = config
        .cluster
        .secret
        .clone()
        .ok_or_else(|| Failure::Other(anyhow::anyhow!("cluster.secret is required")))?;
    let advertise_url = match args.advertise_url.or(config.worker.advertise_url.clone()) {
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
            u.trim_end_matches('/').to_owned()
        }
        Some(u) => {
            return Err(Failure::Other(anyhow::anyhow!(
                "--advertise-url {u}: must be an http:// or https:// URL"
            )));
        }
        None => {
            if addr.ip().is_unspecified() && config.redis.is_some() {
                tracing::warn!(addr = %addr, "listening on all interfaces: set worker.advertise_url to an address gateways can reach");
            }
            format!("http://{addr}")
        }
    };
    let registry = match &config.redis {
        Some(r) => Some((
            Redis::new(r).map_err(|e| Failure::Other(anyhow::anyhow!("redis: {e}")))?,
            advertise_url.clone(),
        )),
        None => None,
    };
    let settings = NodeSettings {
        id: args
            .id
            .or(config.worker.id.clone())
            // Unique across the fleet: the address gateways reach this worker at.
            .unwrap_or_else(|| {
                let authority = advertise_url.split_once("://").map_or("", |(_, a)| a);
                format!("worker-{authority}")
            }),
        shard_urls,
        max_inflight_per_shard: config.worker.max_inflight_per_shard,
        poll_interval: config.worker.poll_interval,
        secret,
        shutdown_grace: config.shutdown_grace,
        breaker: BreakerConfig {
            failure_threshold: config.worker.breaker_failures,
            cool_down: config.worker.breaker_cooldown,
        },
        registry,
    };
    let (node, server) = WorkerNode::start(settings, listener)?;
    tracing::info!(role = "worker", addr = %addr, id = node.id(), url = %advertise_url, shards = node.shard_count(), "listening");
    // The worker drains (and deregisters) first; simulated shards stop after it.
    servers.insert(0, Running::spawn("worker", server));
    let result = serve_until_signal(servers, config.shutdown_grace, || node.drain()).await;
    node.shutdown().await;
    telemetry.shutdown().await;
    result
}

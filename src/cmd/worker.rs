//! `tollgate worker`: a worker node driving this GPU node's vLLM shards.

use std::net::SocketAddr;
use std::path::Path;

use tollgate_shared::config::Role;
use tollgate_worker::{NodeSettings, WorkerNode};

use super::{CmdResult, Failure, Running, bind, load, serve_until_signal, start_sims};

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
}

pub async fn run(path: Option<&Path>, args: WorkerArgs) -> CmdResult {
    let config = load(path, Role::Worker)?;
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
    let settings = NodeSettings {
        id: args
            .id
            .or(config.worker.id.clone())
            .unwrap_or_else(|| format!("worker-{addr}")),
        shard_urls,
        max_inflight_per_shard: config.worker.max_inflight_per_shard,
        poll_interval: config.worker.poll_interval,
        secret,
        shutdown_grace: config.shutdown_grace,
    };
    let (node, server) = WorkerNode::start(settings, listener)?;
    tracing::info!(role = "worker", addr = %addr, id = node.id(), shards = node.shard_count(), "listening");
    // The worker drains first; simulated shards stop after it.
    servers.insert(0, Running::spawn("worker", server));
    serve_until_signal(servers, config.shutdown_grace, || node.drain()).await
}

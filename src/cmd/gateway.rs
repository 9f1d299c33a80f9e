//! `tollgate gateway`: one gateway replica, the scheduler inside it.

use std::net::SocketAddr;
use std::path::Path;

use tollgate_shared::config::Role;

use super::{CmdResult, Failure, Running, bind, serve_until_signal, telemetry};

#[derive(clap::Args)]
pub struct GatewayArgs {
    /// Address to listen on (overrides gateway.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A worker URL (repeatable; overrides gateway.workers).
    #[arg(long = "worker")]
    workers: Vec<String>,
}

pub async fn run(path: Option<&Path>, args: GatewayArgs) -> CmdResult {
    let mut config = tollgate_shared::config::load(path, Role::Gateway)?;
    let telemetry = telemetry(&config, "gateway")?;
    if let Some(listen) = args.listen {
        config.gateway.listen = listen;
    }
    if !args.workers.is_empty() {
        config.gateway.workers = args.workers;
    }
    let grace = config.shutdown_grace;
    let listener = bind(config.gateway.listen)?;
    let addr = listener.local_addr()?;
    let (runtime, server) = tollgate_gateway::start(config, listener, None)
        .map_err(|e| Failure::Other(anyhow::anyhow!(e)))?;
    tracing::info!(role = "gateway", addr = %addr, "listening");
    let result = serve_until_signal(vec![Running::spawn("gateway", server)], grace, || {}).await;
    runtime.shutdown().await;
    telemetry.shutdown().await;
    result
}

//! `tollgate up`: the whole cluster in one process on this machine — gateway
//! (with its scheduler), one worker and simulated vLLM shards, in-memory stores.
//! With no config it creates a demo tenant and two clients.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tollgate_shared::config::raw::{RawClient, RawTenant};
use tollgate_shared::config::{self, Role};
use tollgate_shared::secret::SecretSource;
use tollgate_worker::{NodeSettings, WorkerNode};

use super::{CmdResult, Failure, Running, bind, serve_until_signal, start_sims};

#[derive(clap::Args)]
pub struct UpArgs {
    /// Number of simulated vLLM shards.
    #[arg(long, default_value_t = 2)]
    shards: u32,
    /// Drive these vLLM servers instead of simulated shards (repeatable).
    #[arg(long = "vllm")]
    vllm: Vec<String>,
    /// Address the gateway listens on (overrides gateway.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where demo credentials and the generated signing key are kept.
    #[arg(long, default_value = ".tollgate")]
    state_dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct DemoCredentials {
    tenant: String,
    clients: Vec<DemoClient>,
}

#[derive(Serialize, Deserialize)]
struct DemoClient {
    client_id: String,
    client_secret: String,
    scopes: Vec<String>,
}

fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Writes `contents` to `path`, readable by its owner only.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(contents.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn create_state_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The signing key survives restarts, so tokens do too.
fn signing_key(dir: &Path) -> std::io::Result<String> {
    let path = dir.join("jwt.secret");
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => Ok(s.trim().to_owned()),
        _ => {
            let s = random_secret();
            write_private(&path, &s)?;
            Ok(s)
        }
    }
}

/// Loads the demo credentials, or creates them. The bool tells whether they are new.
fn demo_credentials(dir: &Path) -> Result<(DemoCredentials, bool), Failure> {
    let path = dir.join("credentials.json");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(c) = serde_json::from_str::<DemoCredentials>(&text)
    {
        return Ok((c, false));
    }
    let creds = DemoCredentials {
        tenant: "demo".into(),
        clients: vec![
            DemoClient {
                client_id: "demo-infer".into(),
                client_secret: random_secret(),
                scopes: vec!["infer".into()],
            },
            DemoClient {
                client_id: "demo-admin".into(),
                client_secret: random_secret(),
                scopes: vec!["infer".into(), "admin".into()],
            },
        ],
    };
    let text = serde_json::to_string_pretty(&creds).map_err(|e| Failure::Other(e.into()))?;
    write_private(&path, &text)?;
    Ok((creds, true))
}

pub async fn run(path: Option<&Path>, args: UpArgs) -> CmdResult {
    let mut raw = config::read_raw(path)?;
    create_state_dir(&args.state_dir)?;
    if raw.auth.hs256_secret.is_none() {
        raw.auth.hs256_secret = Some(SecretSource::literal(signing_key(&args.state_dir)?));
    }
    if raw.cluster.secret.is_none() {
        // Only this process talks gateway ↔ worker: a fresh secret each run.
        raw.cluster.secret = Some(SecretSource::literal(random_secret()));
    }
    let demo = if raw.tenants.is_empty() && raw.clients.is_empty() {
        let (creds, fresh) = demo_credentials(&args.state_dir)?;
        raw.tenants.push(RawTenant {
            id: creds.tenant.clone(),
            priority: None,
            weight: None,
            rpm: None,
            tpm: None,
            max_concurrency: None,
            daily_tokens: None,
        });
        for c in &creds.clients {
            raw.clients.push(RawClient {
                id: c.client_id.clone(),
                secret: Some(SecretSource::literal(c.client_secret.clone())),
                secret_hash: None,
                tenant: creds.tenant.clone(),
                scopes: Some(c.scopes.clone()),
                rpm: None,
                tpm: None,
                max_concurrency: None,
                daily_tokens: None,
                disabled: None,
            });
        }
        Some((creds, fresh))
    } else {
        None
    };
    let mut config = config::validate(raw, Role::Embedded)?;
    let telemetry = super::telemetry(&config, "up")?;
    if let Some(listen) = args.listen {
        config.gateway.listen = listen;
    }
    if config.telemetry.audit_log.is_none() {
        config.telemetry.audit_log = Some(args.state_dir.join("audit.jsonl"));
    }

    let (shard_urls, sims) = if args.vllm.is_empty() {
        start_sims(&config.sim, args.shards.max(1))?
    } else {
        (args.vllm.clone(), Vec::new())
    };
    let worker_listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let worker_addr = worker_listener.local_addr()?;
    let secret = config
        .cluster
        .secret
        .clone()
        .ok_or_else(|| Failure::Other(anyhow::anyhow!("cluster secret missing")))?;
    let (node, worker_server) = WorkerNode::start(
        NodeSettings {
            id: "local".into(),
            shard_urls,
            max_inflight_per_shard: config.worker.max_inflight_per_shard,
            poll_interval: config.worker.poll_interval,
            secret,
            shutdown_grace: config.shutdown_grace,
            breaker: tollgate_shared::breaker::BreakerConfig {
                failure_threshold: config.worker.breaker_failures,
                cool_down: config.worker.breaker_cooldown,
            },
            // The embedded gateway lists this worker statically.
            registry: None,
        },
        worker_listener,
    )?;
    tracing::info!(role = "worker", addr = %worker_addr, shards = node.shard_count(), "listening");
    let worker_url = format!("http://{worker_addr}");
    config.gateway.workers = vec![worker_url.clone()];
    // The gateway calls this worker directly; its HTTP server stays up for
    // its probes and `/metrics`, as a separate worker's would.
    let local = tollgate_shared::worker_api::local::LocalLink {
        url: worker_url.into(),
        worker: node.local(),
    };

    let grace = config.shutdown_grace;
    let gateway_listener = bind(config.gateway.listen)?;
    let gateway_addr = gateway_listener.local_addr()?;
    let (runtime, gateway_server) = tollgate_gateway::start(config, gateway_listener, Some(local))
        .map_err(|e| Failure::Other(anyhow::anyhow!(e)))?;
    tracing::info!(role = "gateway", addr = %gateway_addr, "listening");
    announce(gateway_addr, &args.state_dir, demo.as_ref())?;

    // Stop order: the gateway drains its clients first, then the worker, then the shards.
    let mut servers = vec![
        Running::spawn("gateway", gateway_server),
        Running::spawn("worker", worker_server),
    ];
    servers.extend(sims);
    let result = serve_until_signal(servers, grace, || node.drain()).await;
    runtime.shutdown().await;
    telemetry.shutdown().await;
    result
}

/// Tells the person at the terminal where Tollgate is and how to get in.
fn announce(
    addr: SocketAddr,
    dir: &Path,
    demo: Option<&(DemoCredentials, bool)>,
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Tollgate is up: http://{addr}  (OpenAI base URL: http://{addr}/v1)"
    )?;
    match demo {
        Some((creds, true)) => {
            writeln!(
                out,
                "Demo tenant `{}` with two clients (shown once; also in {}):",
                creds.tenant,
                dir.join("credentials.json").display()
            )?;
            for c in &creds.clients {
                writeln!(
                    out,
                    "  client_id={}  client_secret={}  scopes={}",
                    c.client_id,
                    c.client_secret,
                    c.scopes.join(",")
                )?;
            }
        }
        Some((creds, false)) => {
            writeln!(
                out,
                "Demo tenant `{}`: credentials in {}",
                creds.tenant,
                dir.join("credentials.json").display()
            )?;
        }
        None => {}
    }
    writeln!(
        out,
        "Get a token:  curl -s -u CLIENT_ID:CLIENT_SECRET -d grant_type=client_credentials http://{addr}/oauth/token"
    )?;
    out.flush()
}

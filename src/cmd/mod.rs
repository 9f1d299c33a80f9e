//! Subcommands: each one is telemetry → config → build → run → drain.

pub mod bench;
pub mod gateway;
pub mod sim;
pub mod up;
pub mod worker;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use tollgate_shared::config::{self, Config, ConfigError, Role};
use tollgate_shared::telemetry::Telemetry;

/// How a subcommand fails: a config problem exits 2, anything else 1.
#[derive(Debug)]
pub enum Failure {
    Config(ConfigError),
    Other(anyhow::Error),
}

impl Failure {
    pub fn report(self) -> ExitCode {
        let (code, text) = match self {
            Failure::Config(e) => (2, e.to_string()),
            Failure::Other(e) => (1, format!("{e:#}")),
        };
        let _ = writeln!(std::io::stderr(), "tollgate: {text}");
        ExitCode::from(code)
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Other(e.into())
    }
}

pub type CmdResult = Result<(), Failure>;

/// Loads the config for `role` and starts logging at its level.
pub fn load(path: Option<&Path>, role: Role) -> Result<Config, Failure> {
    let config = config::load(path, role)?;
    tollgate_shared::telemetry::init_logging(&config.telemetry.log_level);
    Ok(config)
}

/// Sets up a server's telemetry (logs, traces, metrics) as `name`. Its
/// `shutdown` comes last, after the servers drained and the audit flushed.
pub fn telemetry(config: &Config, name: &str) -> Result<Telemetry, Failure> {
    tollgate_shared::telemetry::init(&config.telemetry, name)
        .map_err(|e| Failure::Other(anyhow::anyhow!(e)))
}

/// `tollgate check-config`: validate and print the effective config, secrets masked.
pub fn check_config(path: Option<&Path>) -> CmdResult {
    let config = config::load(path, Role::Standalone)?;
    let text = serde_json::to_string_pretty(&config.masked_json())
        .map_err(|e| Failure::Other(e.into()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// A server started by a subcommand, stopped in the order the list gives.
pub struct Running {
    pub name: &'static str,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub fn spawn(name: &'static str, server: actix_web::dev::Server) -> Running {
        let handle = server.handle();
        // Owned by `Running`: awaited in `stop_in_order`.
        let task = actix_web::rt::spawn(server);
        Running { name, handle, task }
    }
}

/// Serves until SIGINT/SIGTERM (or until any server ends by itself), then
/// runs `before_stop` and stops the servers in order, each draining its
/// in-flight requests for at most `grace`.
pub async fn serve_until_signal(
    mut servers: Vec<Running>,
    grace: std::time::Duration,
    before_stop: impl FnOnce(),
) -> CmdResult {
    let ended = futures::future::select_all(
        servers
            .iter_mut()
            .map(|s| Box::pin(async { (&mut s.task).await })),
    );
    let early = tokio::select! {
        _ = shutdown_signal() => None,
        (result, index, _) = ended => Some((index, result)),
    };
    if let Some((index, result)) = &early {
        tracing::error!(
            server = servers[*index].name,
            ?result,
            "a server stopped by itself; shutting down"
        );
    } else {
        tracing::info!("shutdown requested; draining");
    }
    before_stop();
    for s in servers {
        if tokio::time::timeout(
            grace + std::time::Duration::from_secs(1),
            s.handle.stop(true),
        )
        .await
        .is_err()
        {
            tracing::warn!(server = s.name, "did not drain in time");
        }
        s.task.abort();
        tracing::info!(server = s.name, "stopped");
    }
    match early {
        Some(_) => Err(Failure::Other(anyhow::anyhow!(
            "a server stopped unexpectedly"
        ))),
        None => Ok(()),
    }
}

/// Binds a listener, turning the error into one that names the address.
pub fn bind(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, Failure> {
    std::net::TcpListener::bind(addr)
        .map_err(|e| Failure::Other(anyhow::anyhow!("cannot listen on {addr}: {e}")))
}

/// Starts `n` in-process simulated vLLM shards on loopback and returns their URLs.
pub fn start_sims(
    config: &tollgate_shared::config::SimConfig,
    n: u32,
) -> Result<(Vec<String>, Vec<Running>), Failure> {
    let mut urls = Vec::new();
    let mut running = Vec::new();
    for i in 0..n {
        let mut opts = tollgate_worker::sim::SimOptions::from_config(config)
            .map_err(|e| Failure::Other(anyhow::anyhow!("sim: {e}")))?;
        opts.seed = opts.seed.wrapping_add(u64::from(i));
        let listener = bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        running.push(Running::spawn(
            "sim",
            tollgate_worker::sim::start(opts, listener)?,
        ));
        tracing::info!(role = "sim", shard = i, addr = %addr, "listening");
        urls.push(format!("http://{addr}"));
    }
    Ok((urls, running))
}

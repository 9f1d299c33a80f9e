//! `tollgate`: one binary, one subcommand per role (CONTRACT §1).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// mimalloc instead of the system allocator: a request allocates and frees
/// many small buffers on several threads, and glibc's malloc spent about a
/// fifth of the gateway's CPU on it (arena locks, consolidation); see
/// docs/performance.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Multi-tenant gateway for vLLM fleets"
)]
struct Cli {
    /// Config file (TOML). Keys can be overridden by TOLLGATE_<SECTION>__<KEY>.
    #[arg(long, global = true, env = "TOLLGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Gateway, scheduler and one worker with simulated shards, all in one process.
    Up(cmd::up::UpArgs),
    /// A gateway replica (the scheduler runs inside it).
    Gateway(cmd::gateway::GatewayArgs),
    /// A worker node driving vLLM shards.
    Worker(cmd::worker::WorkerArgs),
    /// The vLLM simulator as an HTTP server.
    Sim(Box<cmd::sim::SimArgs>),
    /// Load generator and report.
    Bench(cmd::bench::BenchArgs),
    /// Validate a config file and print the effective config, secrets masked.
    CheckConfig,
}

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config.as_deref();
    let result = match cli.command {
        Command::Up(args) => cmd::up::run(config, args).await,
        Command::Gateway(args) => cmd::gateway::run(config, args).await,
        Command::Worker(args) => cmd::worker::run(config, args).await,
        Command::Sim(args) => cmd::sim::run(config, *args).await,
        Command::Bench(args) => cmd::bench::run(args).await,
        Command::CheckConfig => cmd::check_config(config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}

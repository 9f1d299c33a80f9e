//! The gateway's shared state and its assembly: registry, tokens, scheduler,
//! pool and HTTP server, started together and stopped in order.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate_scheduler::{Scheduler, SchedulerHandle};
use tollgate_shared::config::Config;

use crate::audit::{Audit, AuditWriter};
use crate::auth::{Registry, TokenService};
use crate::http;
use crate::pool::Pool;

/// What every request handler can reach.
pub struct Gateway {
    pub config: Arc<Config>,
    pub registry: Registry,
    pub tokens: TokenService,
    pub scheduler: SchedulerHandle,
    pub pool: Arc<Pool>,
    pub audit: Audit,
}

/// A running gateway. Dropping it stops the scheduler and the pool's pollers.
pub struct GatewayRuntime {
    _scheduler: Scheduler,
    audit: Option<AuditWriter>,
    stop: CancellationToken,
    pollers: Vec<JoinHandle<()>>,
}

impl GatewayRuntime {
    /// Stops background work and waits until every audit record is written.
    /// Call after the HTTP server has stopped (its handlers hold audit handles).
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(w) = self.audit.take()
            && tokio::time::timeout(Duration::from_secs(5), w.finish())
                .await
                .is_err()
        {
            tracing::error!("audit records were still pending at exit");
        }
    }
}

impl Drop for GatewayRuntime {
    fn drop(&mut self) {
        self.stop.cancel();
        for p in &self.pollers {
            p.abort();
        }
    }
}

/// How often the pool asks each worker for its load.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Builds the gateway on `listener`. The returned server must be awaited by the caller.
pub fn start(config: Config, listener: TcpListener) -> Result<(GatewayRuntime, Server), String> {
    let config = Arc::new(config);
    let registry = Registry::from_config(&config.tenants, &config.clients)?;
    let tokens = TokenService::new(&config.auth)?;
    let cluster_secret = config
        .cluster
        .secret
        .clone()
        .ok_or("cluster.secret is required to reach workers")?;
    let (audit, audit_writer) = Audit::start(config.telemetry.audit_log.clone())
        .map_err(|e| format!("cannot open the audit log: {e}"))?;
    let scheduler = Scheduler::start(config.scheduler.max_queue_per_tenant);
    let pool = Arc::new(Pool::new(&config.gateway.workers, cluster_secret)?);
    let stop = CancellationToken::new();
    let pollers = pool.watch(scheduler.handle(), POLL_INTERVAL, stop.clone());
    let gateway = web::Data::new(Gateway {
        config: config.clone(),
        registry,
        tokens,
        scheduler: scheduler.handle(),
        pool,
        audit,
    });
    let server =
        HttpServer::new(move || App::new().configure(|c| http::configure(c, gateway.clone())))
            .listen(listener)
            .map_err(|e| e.to_string())?
            .disable_signals()
            .shutdown_timeout(config.shutdown_grace.as_secs().max(1))
            .run();
    Ok((
        GatewayRuntime {
            _scheduler: scheduler,
            audit: Some(audit_writer),
            stop,
            pollers,
        },
        server,
    ))
}

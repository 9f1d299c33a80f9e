//! The gateway's shared state and its assembly: registry, tokens, scheduler,
//! pool and HTTP server, started together and stopped in order.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate_scheduler::{Bounds, Reserve, Scheduler, SchedulerHandle, Settings};
use tollgate_shared::config::{Config, RedisFailureMode};
use tollgate_shared::store::Redis;
use tollgate_shared::worker_api::local::LocalLink;

use crate::audit::{Audit, AuditWriter};
use crate::auth::backoff::Logins;
use crate::auth::{Registry, TokenService};
use crate::guard::Guard;
use crate::http;
use crate::limits::Limiter;
use crate::pool::Pool;
use crate::tokenizer::{TokenCounter, Tokenizer};
use crate::transport;

/// What every request handler can reach.
pub struct Gateway {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub tokens: TokenService,
    /// Brute-force backoff and argon2 concurrency of the token endpoint.
    pub logins: Logins,
    pub scheduler: SchedulerHandle,
    pub pool: Arc<Pool>,
    pub audit: Audit,
    /// Shared state of all replicas; `None` in the embedded (in-memory) mode.
    pub redis: Option<Redis>,
    pub limiter: Arc<Limiter>,
    /// Counts prompt tokens: exactly with `gateway.tokenizer`, else by estimate.
    pub token_counter: TokenCounter,
    /// Deny patterns, system-prompt policy and per-tenant cache salts.
    pub guard: Guard,
    /// The last minute of traffic per tenant, for the dashboard.
    pub stats: crate::telemetry::Stats,
    /// `/openapi.json`, built for this configuration at start.
    pub openapi: bytes::Bytes,
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

/// Builds the gateway on `listener`; `local` is a worker in this process
/// (listed in `gateway.workers` by its URL), reached without HTTP. The
/// returned server must be awaited by the caller.
pub fn start(
    config: Config,
    listener: TcpListener,
    local: Option<LocalLink>,
) -> Result<(GatewayRuntime, Server), String> {
    let config = Arc::new(config);
    let tokens = TokenService::new(&config.auth)?;
    let cluster_secret = config
        .cluster
        .secret
        .clone()
        .ok_or("cluster.secret is required to reach workers")?;
    // Cache salts are keyed by the cluster secret: the same on every replica.
    let guard = Guard::new(&config.guardrails, cluster_secret.expose().as_bytes())?;
    let redis = config
        .redis
        .as_ref()
        .map(Redis::new)
        .transpose()
        .map_err(|e| format!("redis: {e}"))?;
    let (audit, audit_writer) = Audit::start(&config.telemetry, redis.clone())
        .map_err(|e| format!("cannot open the audit log: {e}"))?;
    let registry = Arc::new(
        Registry::new(
            &config.tenants,
            &config.clients,
            redis.clone(),
            crate::auth::jwt::now_secs(),
        )?
        .tolerate_stale(config.auth.stale_ok_on_redis_failure),
    );
    let logins = Logins::new(redis.clone());
    // A lease outlives any request it covers: requests end by request_timeout.
    let lease_ttl = config.gateway.request_timeout + Duration::from_secs(5);
    let limiter = match &config.redis {
        Some(r) => Limiter::new(
            redis.clone(),
            r.on_failure,
            r.gateway_replicas,
            lease_ttl,
            r.usage_retention,
        ),
        None => Limiter::new(
            None,
            RedisFailureMode::Local,
            1,
            lease_ttl,
            Duration::from_secs(400 * 86_400),
        ),
    };
    let token_counter = match &config.gateway.tokenizer {
        Some(path) => TokenCounter::Exact(Box::new(
            Tokenizer::load(path).map_err(|e| format!("gateway.tokenizer: {e}"))?,
        )),
        None => TokenCounter::Estimate,
    };
    let scheduler = Scheduler::start(Settings {
        bounds: Bounds {
            max_queue_per_tenant: config.scheduler.max_queue_per_tenant,
            max_queued_bytes: config.scheduler.max_queued_bytes,
        },
        batch_window: config.scheduler.batch_window,
        reserve: Reserve {
            slots: config.scheduler.reserved_slots,
            hold_ms: config.scheduler.reserve_hold.as_millis() as u64,
        },
    });
    let pool = Arc::new(Pool::new(cluster_secret, scheduler.handle(), local)?);
    let stop = CancellationToken::new();
    // Static workers plus, with Redis, the registered ones; one poller each.
    let pollers = vec![crate::discovery::spawn(
        pool.clone(),
        &config.gateway.workers,
        redis.clone(),
        POLL_INTERVAL,
        stop.clone(),
    )];
    // With Redis, the registry's view follows every replica's changes.
    let pollers: Vec<_> = pollers
        .into_iter()
        .chain(crate::auth::sync::spawn(registry.clone(), stop.clone()))
        .collect();
    let gateway = web::Data::new(Gateway {
        config: config.clone(),
        registry,
        tokens,
        logins,
        scheduler: scheduler.handle(),
        pool,
        audit,
        redis,
        limiter,
        token_counter,
        guard,
        stats: Default::default(),
        openapi: http::openapi::build(&config),
    });
    crate::telemetry::metrics::describe();
    let server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(transport::check_head))
            // Outermost: every answer, refused heads included, has its id, span and record.
            .wrap(from_fn(crate::telemetry::middleware))
            .configure(|c| http::configure(c, gateway.clone()))
    })
    .client_request_timeout(config.gateway.header_timeout)
    .keep_alive(config.gateway.keep_alive)
    // A client that closed its side of the connection has left: its request
    // is dropped at once (taken out of the queue, or cancelled in vLLM) and
    // recorded as 499, instead of running on for nobody until the answer
    // cannot be written.
    .h1_allow_half_closed(false)
    // Without it an answer written in two parts waits for the client's
    // delayed ACK (Nagle): ~40 ms added to small answers.
    .tcp_nodelay(true);
    // TLS offers h2 by ALPN; plaintext serves HTTP/1.1 and h2c (prior knowledge).
    let server = match &config.gateway.tls {
        Some(tls) => server.listen_rustls_0_23(listener, transport::tls_config(tls)?),
        None => server.listen_auto_h2c(listener),
    };
    let server = server
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

//! Phase two of config loading: raw values → runtime types, collecting every issue.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::*;
use super::*;
use crate::secret::{Secret, SecretSource, is_published_example};

/// Minimum length of an HS256 secret (RFC 7518 §3.2: a key of at least the hash size).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn push(
        &mut self,
        key: impl Into<String>,
        value: impl std::fmt::Debug,
        rule: impl Into<String>,
    ) {
        self.0.push(ConfigIssue {
            key: key.into(),
            value: format!("{value:?}"),
            rule: rule.into(),
        });
    }

    fn addr(&mut self, key: &str, value: Option<String>, default: &str) -> SocketAddr {
        let v = value.unwrap_or_else(|| default.to_owned());
        match v.parse() {
            Ok(a) => a,
            Err(_) => {
                self.push(key, &v, "must be an address and port, like 127.0.0.1:8080");
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    }

    fn positive(&mut self, key: &str, value: Option<u64>, default: u64) -> u64 {
        let v = value.unwrap_or(default);
        if v == 0 {
            self.push(key, v, "must be greater than 0");
        }
        v
    }

    fn url(&mut self, key: &str, value: &str) {
        let ok = (value.starts_with("http://") || value.starts_with("https://"))
            && value.len() > "http://".len();
        if !ok {
            self.push(key, value, "must be an http:// or https:// URL");
        }
    }

    fn secret(&mut self, key: &str, source: Option<SecretSource>) -> Option<Secret> {
        match source?.resolve() {
            Ok(s) => Some(s),
            Err(why) => {
                self.push(key, "(secret)", why);
                None
            }
        }
    }
}

pub(super) fn validate(raw: RawConfig, role: Role) -> Result<Config, Vec<ConfigIssue>> {
    let mut is = Issues(Vec::new());
    let gateway = gateway(&mut is, raw.gateway);
    let auth = auth(&mut is, raw.auth, role);
    let redis = raw.redis.map(|r| redis(&mut is, r));
    let tenants = tenants(&mut is, raw.tenants);
    let clients = clients(&mut is, raw.clients, &tenants);
    let scheduler = SchedulerConfig {
        max_queue_per_tenant: is.positive(
            "scheduler.max_queue_per_tenant",
            raw.scheduler.max_queue_per_tenant,
            1000,
        ) as usize,
        max_queued_bytes: is.positive(
            "scheduler.max_queued_bytes",
            raw.scheduler.max_queued_bytes,
            256 * 1024 * 1024,
        ) as usize,
        fair_share: raw.scheduler.fair_share.unwrap_or(true),
        queue_timeout: Duration::from_secs(is.positive(
            "scheduler.queue_timeout_secs",
            raw.scheduler.queue_timeout_secs,
            30,
        )),
        batch_window: Duration::from_millis(raw.scheduler.batch_window_ms.unwrap_or(2)),
        reserved_slots: match raw.scheduler.reserved_slots.unwrap_or(2) {
            v @ 0..=1024 => v as u32,
            v => {
                is.push("scheduler.reserved_slots", v, "must be at most 1024");
                0
            }
        },
        reserve_hold: Duration::from_secs(is.positive(
            "scheduler.reserve_hold_secs",
            raw.scheduler.reserve_hold_secs,
            60,
        )),
    };
    let cluster_secret = is.secret("cluster.secret", raw.cluster.secret);
    if let Some(s) = &cluster_secret {
        if s.expose().len() < 16 || is_published_example(s.expose()) {
            is.push(
                "cluster.secret",
                "(secret)",
                "must be at least 16 bytes and not a published example",
            );
        }
    } else if matches!(role, Role::Gateway | Role::Worker) {
        is.push(
            "cluster.secret",
            "(absent)",
            "required: gateways and workers authenticate each other with it",
        );
    }
    let worker = worker(&mut is, raw.worker);
    let guardrails = guardrails(&mut is, raw.guardrails);
    let telemetry = telemetry(&mut is, raw.telemetry);
    let sim = sim(&mut is, raw.sim);
    let shutdown_grace = Duration::from_secs(raw.shutdown_grace_secs.unwrap_or(30));
    if is.0.is_empty() {
        Ok(Config {
            shutdown_grace,
            gateway,
            auth,
            redis,
            tenants,
            clients,
            scheduler,
            cluster: ClusterConfig {
                secret: cluster_secret,
            },
            worker,
            guardrails,
            telemetry,
            sim,
        })
    } else {
        Err(is.0)
    }
}

fn gateway(is: &mut Issues, g: RawGateway) -> GatewayConfig {
    let listen = is.addr("gateway.listen", g.listen, "127.0.0.1:8080");
    let max_body_bytes = is.positive("gateway.max_body_bytes", g.max_body_bytes, 2_097_152);
    let request_timeout = is.positive("gateway.request_timeout_secs", g.request_timeout_secs, 600);
    let workers = g.workers.unwrap_or_default();
    for (i, w) in workers.iter().enumerate() {
        is.url(&format!("gateway.workers[{i}]"), w);
    }
    let model = g.model.unwrap_or_else(|| DEFAULT_MODEL.to_owned());
    if model.trim().is_empty() {
        is.push("gateway.model", &model, "must not be empty");
    }
    if let Some(t) = &g.tokenizer
        && std::fs::metadata(t).map(|m| !m.is_file()).unwrap_or(true)
    {
        is.push(
            "gateway.tokenizer",
            t,
            "must be a readable tokenizer.json file",
        );
    }
    GatewayConfig {
        tokenizer: g.tokenizer.map(PathBuf::from),
        listen,
        max_body_bytes: max_body_bytes as usize,
        request_timeout: Duration::from_secs(request_timeout),
        workers,
        tls: g.tls.map(|t| {
            for (k, path) in [("gateway.tls.cert", &t.cert), ("gateway.tls.key", &t.key)] {
                if std::fs::metadata(path)
                    .map(|m| !m.is_file())
                    .unwrap_or(true)
                {
                    is.push(k, path, "must be a readable PEM file");
                }
            }
            TlsConfig {
                cert: PathBuf::from(t.cert),
                key: PathBuf::from(t.key),
            }
        }),
        model,
        header_timeout: secs(is, "gateway.header_timeout_secs", g.header_timeout_secs, 10),
        keep_alive: secs(is, "gateway.keep_alive_secs", g.keep_alive_secs, 30),
        body_timeout: secs(is, "gateway.body_timeout_secs", g.body_timeout_secs, 30),
        stream_idle_timeout: secs(
            is,
            "gateway.stream_idle_timeout_secs",
            g.stream_idle_timeout_secs,
            60,
        ),
        sse_keepalive: secs(is, "gateway.sse_keepalive_secs", g.sse_keepalive_secs, 15),
        max_header_bytes: {
            let v = g.max_header_bytes.unwrap_or(32_768);
            // actix-http refuses heads over 128 KiB by itself.
            if !(1024..=131_072).contains(&v) {
                is.push(
                    "gateway.max_header_bytes",
                    v,
                    "must be between 1024 and 131072",
                );
            }
            v as usize
        },
    }
}

/// A timeout in whole seconds: at least 1, at most a day.
fn secs(is: &mut Issues, key: &str, value: Option<u64>, default: u64) -> Duration {
    let v = is.positive(key, value, default);
    if v > 86_400 {
        is.push(key, v, "must be at most 86400 (one day)");
    }
    Duration::from_secs(v.clamp(1, 86_400))
}

fn auth(is: &mut Issues, a: RawAuth, role: Role) -> AuthConfig {
    let algorithm = match a.algorithm.as_deref() {
        None => JwtAlgorithm::HS256,
        Some(name) => JwtAlgorithm::parse(name).unwrap_or_else(|| {
            is.push(
                "auth.algorithm",
                name,
                "must be one of HS256, RS256, ES256, EdDSA",
            );
            JwtAlgorithm::HS256
        }),
    };
    let ttl = is.positive("auth.token_ttl_secs", a.token_ttl_secs, 3600);
    if ttl > 86_400 {
        is.push(
            "auth.token_ttl_secs",
            ttl,
            "must be at most 86400 (one day)",
        );
    }
    let hs256_secret = is.secret("auth.hs256_secret", a.hs256_secret);
    if let Some(s) = &hs256_secret {
        hs256_rules(is, "auth.hs256_secret", s);
    }
    let signs = matches!(role, Role::Gateway | Role::Embedded);
    let signing_key = is.secret("auth.signing_key", a.signing_key);
    if algorithm == JwtAlgorithm::HS256 {
        if hs256_secret.is_none() && role == Role::Gateway {
            is.push(
                "auth.hs256_secret",
                "(absent)",
                "required with algorithm HS256 (e.g. hs256_secret = { env = \"TOLLGATE_JWT_SECRET\" })",
            );
        }
        if signing_key.is_some() {
            is.push(
                "auth.signing_key",
                "(key)",
                "is used with RS256, ES256 or EdDSA only; HS256 signs with hs256_secret",
            );
        }
    } else {
        match &signing_key {
            Some(k) if !is_pem(k.expose(), "PRIVATE KEY") => is.push(
                "auth.signing_key",
                "(key)",
                "must be a PEM private key (-----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)",
            ),
            None if signs => is.push(
                "auth.signing_key",
                "(absent)",
                format!(
                    "required with algorithm {} (e.g. signing_key = {{ file = \"jwt.pem\" }})",
                    algorithm.as_str()
                ),
            ),
            _ => {}
        }
    }
    if let Some(kid) = &a.kid
        && !valid_id(kid)
    {
        is.push("auth.kid", kid, ID_RULE);
    }
    let verify_keys = verify_keys(is, a.verify_keys.unwrap_or_default());
    let mut kids = HashSet::new();
    // The signing key's id: HS256 tokens carry none unless one is set.
    let signing_kid = match (&a.kid, algorithm) {
        (Some(k), _) => Some(k.clone()),
        (None, JwtAlgorithm::HS256) => None,
        (None, _) => Some("(thumbprint)".into()),
    };
    kids.insert(signing_kid);
    for (i, k) in verify_keys.iter().enumerate() {
        if (k.kid.is_some() || k.algorithm == JwtAlgorithm::HS256) && !kids.insert(k.kid.clone()) {
            is.push(
                format!("auth.verify_keys[{i}].kid"),
                &k.kid,
                "two keys with one kid: a token could not tell which one verifies it",
            );
        }
    }
    let issuer = a.issuer.unwrap_or_else(|| "tollgate".into());
    let audience = a.audience.unwrap_or_else(|| "tollgate-api".into());
    if issuer.is_empty() {
        is.push("auth.issuer", &issuer, "must not be empty");
    }
    if audience.is_empty() {
        is.push("auth.audience", &audience, "must not be empty");
    }
    let stale_ok_on_redis_failure = match a.on_redis_failure.as_deref().unwrap_or("closed") {
        "closed" => false,
        "stale" => true,
        other => {
            is.push("auth.on_redis_failure", other, "must be closed or stale");
            false
        }
    };
    AuthConfig {
        stale_ok_on_redis_failure,
        issuer,
        audience,
        token_ttl: Duration::from_secs(ttl),
        algorithm,
        hs256_secret,
        signing_key,
        kid: a.kid,
        verify_keys,
    }
}

fn hs256_rules(is: &mut Issues, key: &str, s: &Secret) {
    if s.expose().len() < MIN_HS256_SECRET_BYTES {
        is.push(
            key,
            "(secret)",
            format!("must be at least {MIN_HS256_SECRET_BYTES} bytes"),
        );
    } else if is_published_example(s.expose()) {
        is.push(
            key,
            "(secret)",
            "is a published example secret; generate one, e.g. `openssl rand -base64 48`",
        );
    }
}

/// A light shape check; the gateway parses the key itself and names it when it cannot.
fn is_pem(text: &str, kind: &str) -> bool {
    let t = text.trim();
    t.starts_with("-----BEGIN ") && t.contains(kind) && t.ends_with("-----")
}

fn verify_keys(is: &mut Issues, raw: Vec<RawVerifyKey>) -> Vec<VerifyKeyConfig> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, k) in raw.into_iter().enumerate() {
        let key = |name: &str| format!("auth.verify_keys[{i}].{name}");
        if let Some(kid) = &k.kid
            && !valid_id(kid)
        {
            is.push(key("kid"), kid, ID_RULE);
        }
        let Some(algorithm) = JwtAlgorithm::parse(&k.algorithm) else {
            is.push(
                key("algorithm"),
                &k.algorithm,
                "must be one of HS256, RS256, ES256, EdDSA",
            );
            continue;
        };
        let public_key = is.secret(&key("public_key"), k.public_key);
        let secret = is.secret(&key("secret"), k.secret);
        let material = match (algorithm, public_key, secret) {
            (JwtAlgorithm::HS256, None, Some(s)) => {
                hs256_rules(is, &key("secret"), &s);
                Some(s)
            }
            (JwtAlgorithm::HS256, _, _) => {
                is.push(
                    key("secret"),
                    "(absent)",
                    "an HS256 key is given as `secret` (and no `public_key`)",
                );
                None
            }
            (_, Some(p), None) if is_pem(p.expose(), "PUBLIC KEY") => Some(p),
            (_, Some(_), None) => {
                is.push(
                    key("public_key"),
                    "(key)",
                    "must be a PEM public key (-----BEGIN PUBLIC KEY-----)",
                );
                None
            }
            (_, _, _) => {
                is.push(
                    key("public_key"),
                    "(absent)",
                    "an RS256, ES256 or EdDSA key is given as `public_key` (and no `secret`)",
                );
                None
            }
        };
        if let Some(material) = material {
            out.push(VerifyKeyConfig {
                kid: k.kid,
                algorithm,
                key: material,
            });
        }
    }
    out
}

fn redis(is: &mut Issues, r: RawRedis) -> RedisConfig {
    let scheme_ok = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
    let target = match (r.url, r.cluster) {
        (Some(_), Some(_)) => {
            is.push(
                "redis.cluster",
                "(nodes)",
                "give either redis.url (one server) or redis.cluster (a Redis Cluster), not both",
            );
            RedisTarget::Url(Secret::new(String::new()))
        }
        (None, Some(nodes)) => {
            if nodes.is_empty() {
                is.push(
                    "redis.cluster",
                    "[]",
                    "must name at least one node, like [\"redis://127.0.0.1:7000\"]",
                );
            }
            for (i, n) in nodes.iter().enumerate() {
                if !scheme_ok(n) {
                    is.push(
                        format!("redis.cluster[{i}]"),
                        "(url)",
                        "must start with redis:// or rediss://",
                    );
                } else if !matches!(url_database(n), "" | "0") {
                    is.push(
                        format!("redis.cluster[{i}]"),
                        "(url)",
                        "a Redis Cluster has only database 0",
                    );
                }
            }
            RedisTarget::Cluster(nodes.into_iter().map(Secret::new).collect())
        }
        (url, None) => {
            let url = url.unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
            if !scheme_ok(&url) {
                is.push(
                    "redis.url",
                    "(url)",
                    "must start with redis:// or rediss://",
                );
            }
            RedisTarget::Url(Secret::new(url))
        }
    };
    let wait_replicas = r.wait_replicas.unwrap_or(match target {
        RedisTarget::Cluster(_) => 1,
        RedisTarget::Url(_) => 0,
    });
    let on_failure = match r.on_failure.as_deref().unwrap_or("local") {
        "local" => RedisFailureMode::Local,
        "open" => RedisFailureMode::Open,
        "closed" => RedisFailureMode::Closed,
        other => {
            is.push(
                "redis.on_failure",
                other,
                "must be one of local, open, closed",
            );
            RedisFailureMode::Local
        }
    };
    let gateway_replicas = is.positive("redis.gateway_replicas", r.gateway_replicas, 1);
    let retention_days = is.positive("redis.usage_retention_days", r.usage_retention_days, 400);
    RedisConfig {
        target,
        wait_replicas,
        gateway_replicas,
        usage_retention: Duration::from_secs(retention_days * 86_400),
        key_prefix: r.key_prefix.unwrap_or_else(|| "tollgate:".into()),
        on_failure,
    }
}

/// The database a redis:// URL names (after the host; "" when none).
fn url_database(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    host.split_once('/').map_or("", |(_, db)| db)
}

/// Ids of tenants, clients, workers and keys: short, printable, safe in keys and headers.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

pub const ID_RULE: &str = "must be 1-64 characters of A-Z a-z 0-9 _ - .";
/// [`valid_id`] as a regular expression (for the OpenAPI document).
pub const ID_PATTERN: &str = "^[A-Za-z0-9_.-]{1,64}$";

fn tenants(is: &mut Issues, raw: Vec<RawTenant>) -> Vec<TenantConfig> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, t) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("tenants[{i}].{k}");
        if !valid_id(&t.id) {
            is.push(key("id"), &t.id, ID_RULE);
        }
        if !seen.insert(t.id.clone()) {
            is.push(key("id"), &t.id, "duplicate tenant id");
        }
        let priority = match t.priority.as_deref() {
            None => Priority::Normal,
            Some(p) => Priority::parse(p).unwrap_or_else(|| {
                is.push(key("priority"), p, "must be one of high, normal, low");
                Priority::Normal
            }),
        };
        let weight = t.weight.unwrap_or(1);
        if weight == 0 || weight > 1000 {
            is.push(key("weight"), weight, "must be between 1 and 1000");
        }
        out.push(TenantConfig {
            id: t.id,
            priority,
            weight,
            limits: limits(
                is,
                &key(""),
                t.rpm,
                t.tpm,
                t.max_concurrency,
                t.daily_tokens,
            ),
        });
    }
    out
}

fn limits(
    is: &mut Issues,
    prefix: &str,
    rpm: Option<u64>,
    tpm: Option<u64>,
    max_concurrency: Option<u64>,
    daily_tokens: Option<u64>,
) -> Limits {
    for (name, v) in [
        ("rpm", rpm),
        ("tpm", tpm),
        ("max_concurrency", max_concurrency),
        ("daily_tokens", daily_tokens),
    ] {
        if v == Some(0) {
            is.push(
                format!("{prefix}{name}"),
                0,
                "must be greater than 0 (omit it for no limit)",
            );
        }
    }
    Limits {
        rpm,
        tpm,
        max_concurrency,
        daily_tokens,
    }
}

fn clients(is: &mut Issues, raw: Vec<RawClient>, tenants: &[TenantConfig]) -> Vec<ClientConfig> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, c) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("clients[{i}].{k}");
        if !valid_id(&c.id) {
            is.push(key("id"), &c.id, ID_RULE);
        }
        if !seen.insert(c.id.clone()) {
            is.push(key("id"), &c.id, "duplicate client id");
        }
        if !tenants.iter().any(|t| t.id == c.tenant) {
            is.push(key("tenant"), &c.tenant, "names no tenant in [[tenants]]");
        }
        let credential = match (c.secret, c.secret_hash) {
            (Some(src), None) => match src.resolve() {
                Ok(s) if s.expose().len() < 16 => {
                    is.push(key("secret"), "(secret)", "must be at least 16 bytes");
                    None
                }
                Ok(s) if is_published_example(s.expose()) => {
                    is.push(key("secret"), "(secret)", "is a published example secret");
                    None
                }
                Ok(s) => Some(ClientCredential::Secret(s)),
                Err(why) => {
                    is.push(key("secret"), "(secret)", why);
                    None
                }
            },
            (None, Some(h)) if h.starts_with("$argon2id$") => Some(ClientCredential::Hash(h)),
            (None, Some(_)) => {
                is.push(
                    key("secret_hash"),
                    "(hash)",
                    "must be an argon2id PHC string ($argon2id$...)",
                );
                None
            }
            (Some(_), Some(_)) => {
                is.push(
                    key("secret"),
                    "(both)",
                    "give either secret or secret_hash, not both",
                );
                None
            }
            (None, None) => {
                is.push(
                    key("secret"),
                    "(absent)",
                    "one of secret or secret_hash is required",
                );
                None
            }
        };
        let mut scopes = Vec::new();
        for s in c.scopes.unwrap_or_else(|| vec!["infer".into()]) {
            match Scope::parse(&s) {
                Some(sc) if !scopes.contains(&sc) => scopes.push(sc),
                Some(_) => {}
                None => is.push(
                    key("scopes"),
                    &s,
                    "each scope must be one of infer, admin, dev",
                ),
            }
        }
        out.push(ClientConfig {
            id: c.id,
            credential: credential.unwrap_or(ClientCredential::Hash(String::new())),
            tenant: c.tenant,
            scopes,
            limits: limits(
                is,
                &key(""),
                c.rpm,
                c.tpm,
                c.max_concurrency,
                c.daily_tokens,
            ),
            disabled: c.disabled.unwrap_or(false),
        });
    }
    out
}

fn worker(is: &mut Issues, w: RawWorker) -> WorkerConfig {
    let listen = is.addr("worker.listen", w.listen, "127.0.0.1:9100");
    let shards = w.shards.unwrap_or_default();
    for (i, s) in shards.iter().enumerate() {
        is.url(&format!("worker.shards[{i}]"), s);
    }
    let max_inflight = is.positive(
        "worker.max_inflight_per_shard",
        w.max_inflight_per_shard,
        256,
    );
    if max_inflight > 100_000 {
        is.push(
            "worker.max_inflight_per_shard",
            max_inflight,
            "must be at most 100000",
        );
    }
    if let Some(id) = &w.id
        && !valid_id(id)
    {
        is.push("worker.id", id, ID_RULE);
    }
    let poll = is.positive("worker.poll_interval_ms", w.poll_interval_ms, 100);
    if let Some(u) = &w.advertise_url {
        is.url("worker.advertise_url", u);
    }
    let breaker_failures = is.positive("worker.breaker_failures", w.breaker_failures, 3);
    if breaker_failures > 1000 {
        is.push(
            "worker.breaker_failures",
            breaker_failures,
            "must be at most 1000",
        );
    }
    let cooldown = is.positive("worker.breaker_cooldown_ms", w.breaker_cooldown_ms, 1000);
    WorkerConfig {
        id: w.id,
        listen,
        shards,
        max_inflight_per_shard: max_inflight.min(100_000) as u32,
        poll_interval: Duration::from_millis(poll),
        advertise_url: w.advertise_url.map(|u| u.trim_end_matches('/').to_owned()),
        breaker_failures: breaker_failures.min(1000) as u32,
        breaker_cooldown: Duration::from_millis(cooldown),
    }
}

fn guardrails(is: &mut Issues, g: RawGuardrails) -> GuardrailsConfig {
    let policy = match g.system_prompt_policy.as_deref().unwrap_or("prepend") {
        "prepend" => SystemPromptPolicy::Prepend,
        "enforce" => SystemPromptPolicy::Enforce,
        "off" => SystemPromptPolicy::Off,
        other => {
            is.push(
                "guardrails.system_prompt_policy",
                other,
                "must be one of prepend, enforce, off",
            );
            SystemPromptPolicy::Off
        }
    };
    let mode = match g.mode.as_deref().unwrap_or("reject") {
        "reject" => GuardMode::Reject,
        "flag" => GuardMode::Flag,
        other => {
            is.push("guardrails.mode", other, "must be reject or flag");
            GuardMode::Reject
        }
    };
    let deny_patterns = g.deny_patterns.unwrap_or_default();
    for (i, p) in deny_patterns.iter().enumerate() {
        if let Err(e) = regex::RegexBuilder::new(p)
            .size_limit(DENY_PATTERN_SIZE_LIMIT)
            .build()
        {
            let why = e.to_string().replace('\n', " ");
            is.push(
                format!("guardrails.deny_patterns[{i}]"),
                p,
                format!("must be a valid regex: {why}"),
            );
        }
    }
    let allow_fields = g.allow_fields.unwrap_or_default();
    for (i, f) in allow_fields.iter().enumerate() {
        if !crate::openai::VLLM_EXTRA_FIELDS.contains(&f.as_str()) {
            is.push(
                format!("guardrails.allow_fields[{i}]"),
                f,
                format!(
                    "must be one of {}",
                    crate::openai::VLLM_EXTRA_FIELDS.join(", ")
                ),
            );
        }
    }
    GuardrailsConfig {
        max_prompt_chars: is.positive("guardrails.max_prompt_chars", g.max_prompt_chars, 500_000)
            as usize,
        deny_patterns,
        system_prompt: g.system_prompt.filter(|s| !s.trim().is_empty()),
        system_prompt_policy: policy,
        mode,
        allow_fields,
    }
}

fn telemetry(is: &mut Issues, t: RawTelemetry) -> TelemetryConfig {
    let otlp_protocol = match t.otlp_protocol.as_deref().unwrap_or("grpc") {
        "grpc" => OtlpProtocol::Grpc,
        "http" => OtlpProtocol::Http,
        other => {
            is.push("telemetry.otlp_protocol", other, "must be grpc or http");
            OtlpProtocol::Grpc
        }
    };
    if let Some(e) = &t.otlp_endpoint {
        is.url("telemetry.otlp_endpoint", e);
    }
    TelemetryConfig {
        service_name: t.service_name.filter(|s| !s.trim().is_empty()),
        otlp_endpoint: t.otlp_endpoint,
        otlp_protocol,
        audit_log: t.audit_log.map(PathBuf::from),
        log_level: t.log_level.unwrap_or_else(|| "info".into()),
        audit_enabled: t.audit_enabled.unwrap_or(true),
        audit_rotate_bytes: is.positive(
            "telemetry.audit_rotate_bytes",
            t.audit_rotate_bytes,
            256 * 1024 * 1024,
        ),
        audit_rotate: Duration::from_secs(is.positive(
            "telemetry.audit_rotate_secs",
            t.audit_rotate_secs,
            86_400,
        )),
        audit_keep_files: is.positive("telemetry.audit_keep_files", t.audit_keep_files, 30)
            as usize,
        audit_retention: Duration::from_secs(
            is.positive("telemetry.audit_retention_days", t.audit_retention_days, 90) * 86_400,
        ),
        audit_stream_max_len: is.positive(
            "telemetry.audit_stream_max_len",
            t.audit_stream_max_len,
            1_000_000,
        ),
        audit_prompt_sample: t.audit_prompt_sample.unwrap_or(false),
    }
}

fn sim(is: &mut Issues, s: RawSim) -> SimConfig {
    if let Some(p) = s.preset.as_deref()
        && p != "h200"
        && p != "h100"
    {
        is.push("sim.preset", p, "must be h200 or h100");
    }
    if let Some(p) = s.scheduling_policy.as_deref()
        && p != "fcfs"
        && p != "priority"
    {
        is.push("sim.scheduling_policy", p, "must be fcfs or priority");
    }
    if let Some(t) = s.time_scale
        && !(t.is_finite() && t > 0.0)
    {
        is.push("sim.time_scale", t, "must be a positive number");
    }
    SimConfig {
        host: s.host,
        port: s.port,
        model: s.model,
        preset: s.preset,
        max_model_len: s.max_model_len,
        max_num_seqs: s.max_num_seqs,
        max_num_batched_tokens: s.max_num_batched_tokens,
        kv_cache_tokens: s.kv_cache_tokens,
        scheduling_policy: s.scheduling_policy,
        time_scale: s.time_scale,
        seed: s.seed,
        echo: s.echo,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_id_pattern_is_the_id_rule() {
        let re = regex::Regex::new(ID_PATTERN).unwrap();
        let long = "a".repeat(65);
        for id in [
            "acme",
            "a",
            "A-z_0.9",
            &long[..64],
            &long,
            "",
            "a b",
            "a/b",
            "é",
            "a\n",
            "{x}",
        ] {
            assert_eq!(re.is_match(id), valid_id(id), "{id:?}");
        }
    }

    fn raw(toml: &str) -> RawConfig {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(toml))
            .extract()
            .unwrap()
    }

    #[test]
    fn every_issue_is_reported_with_key_value_and_rule() {
        let issues = validate(
            raw("[gateway]\nlisten = \"x\"\nmax_body_bytes = 0\n[auth]\nhs256_secret = \"short\"\n[[clients]]\nid = \"c\"\ntenant = \"nope\"\nsecret = \"0123456789abcdef\"\n"),
            Role::Gateway,
        )
        .unwrap_err();
        let keys: Vec<_> = issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "gateway.listen",
                "gateway.max_body_bytes",
                "auth.hs256_secret",
                "clients[0].tenant",
                "cluster.secret"
            ]
        );
        assert_eq!(issues[0].value, "\"x\"");
        assert!(
            !issues.iter().any(|i| i.value.contains("short")),
            "secret values are never echoed"
        );
    }

    fn redis_of(toml: &str) -> Result<RedisConfig, Vec<ConfigIssue>> {
        validate(raw(toml), Role::Embedded).map(|c| c.redis.unwrap())
    }

    #[test]
    fn a_redis_cluster_is_named_by_its_nodes_and_waits_for_one_replica() {
        let r = redis_of(
            "[redis]\ncluster = [\"redis://127.0.0.1:7000\", \"redis://:pw@127.0.0.1:7001/0\"]\n",
        )
        .unwrap();
        let RedisTarget::Cluster(nodes) = &r.target else {
            panic!("{:?}", r.target)
        };
        let nodes: Vec<_> = nodes.iter().map(|n| n.expose().to_owned()).collect();
        assert_eq!(
            nodes,
            ["redis://127.0.0.1:7000", "redis://:pw@127.0.0.1:7001/0"]
        );
        assert_eq!(r.wait_replicas, 1);
        let single = redis_of("[redis]\nurl = \"redis://127.0.0.1:6390/2\"\n").unwrap();
        assert!(matches!(single.target, RedisTarget::Url(_)));
        assert_eq!(single.wait_replicas, 0, "one server: no WAIT, as before");
        let no_wait =
            redis_of("[redis]\ncluster = [\"redis://127.0.0.1:7000\"]\nwait_replicas = 0\n");
        assert_eq!(no_wait.unwrap().wait_replicas, 0);
    }

    #[test]
    fn a_redis_cluster_excludes_url_and_needs_nodes_of_database_0() {
        let keys = |toml: &str| -> Vec<(String, String)> {
            redis_of(toml)
                .unwrap_err()
                .into_iter()
                .map(|i| (i.key, i.rule))
                .collect()
        };
        let both = keys(
            "[redis]\nurl = \"redis://127.0.0.1:6390\"\ncluster = [\"redis://127.0.0.1:7000\"]\n",
        );
        assert_eq!(both.len(), 1);
        assert_eq!(both[0].0, "redis.cluster");
        assert!(both[0].1.contains("not both"), "{both:?}");
        assert_eq!(keys("[redis]\ncluster = []\n")[0].0, "redis.cluster");
        let bad = keys(
            "[redis]\ncluster = [\"redis://127.0.0.1:7000\", \"http://127.0.0.1:7001\", \"redis://127.0.0.1:7002/3\"]\n",
        );
        let bad_keys: Vec<_> = bad.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(bad_keys, ["redis.cluster[1]", "redis.cluster[2]"]);
        assert!(bad[1].1.contains("database 0"), "{bad:?}");
        // A password in a node URL is never echoed.
        let issues =
            redis_of("[redis]\ncluster = [\"http://:hunter2@127.0.0.1:7000\"]\n").unwrap_err();
        assert!(!issues.iter().any(|i| i.value.contains("hunter2")));
    }

    #[test]
    fn the_database_of_a_url_is_read_after_the_host() {
        assert_eq!(url_database("redis://127.0.0.1:7000"), "");
        assert_eq!(url_database("redis://127.0.0.1:7000/0"), "0");
        assert_eq!(url_database("redis://:p/w@127.0.0.1:7000/4?x=1"), "4");
        assert_eq!(url_database("rediss://u:p@host:7000"), "");
    }

    #[test]
    fn defaults_make_a_valid_embedded_config() {
        let c = validate(RawConfig::default(), Role::Embedded).unwrap();
        assert_eq!(c.gateway.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.gateway.model, DEFAULT_MODEL);
        assert_eq!(c.scheduler.max_queue_per_tenant, 1000);
        assert_eq!(c.scheduler.reserved_slots, 2);
        assert_eq!(c.worker.max_inflight_per_shard, 256);
    }

    #[test]
    fn asymmetric_keys_and_rotation_keys_are_checked() {
        let issues = validate(
            raw("[auth]\nalgorithm = \"RS256\"\nhs256_secret = \"0123456789abcdef0123456789abcdef-x\"\nkid = \"k/../1\"\n[[auth.verify_keys]]\nkid = \"old\"\nalgorithm = \"HS256\"\nsecret = \"short\"\n[[auth.verify_keys]]\nalgorithm = \"ES256\"\nsecret = \"0123456789abcdef0123456789abcdef-x\"\n[[auth.verify_keys]]\nkid = \"old\"\nalgorithm = \"HS512\"\n[cluster]\nsecret = \"0123456789abcdef0123\"\n"),
            Role::Gateway,
        )
        .unwrap_err();
        let keys: Vec<_> = issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "auth.signing_key",
                "auth.kid",
                "auth.verify_keys[0].secret",
                "auth.verify_keys[1].public_key",
                "auth.verify_keys[2].algorithm",
            ]
        );
        let ok = validate(
            raw("[auth]\nalgorithm = \"EdDSA\"\nsigning_key = \"-----BEGIN PRIVATE KEY-----\\nMC4=\\n-----END PRIVATE KEY-----\"\n[[auth.verify_keys]]\nalgorithm = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcdef-x\"\n[cluster]\nsecret = \"0123456789abcdef0123\"\n"),
            Role::Gateway,
        )
        .unwrap();
        assert_eq!(ok.auth.algorithm, JwtAlgorithm::EdDSA);
        assert_eq!(ok.auth.verify_keys.len(), 1);
    }

    #[test]
    fn guardrails_and_transport_keys_are_checked() {
        let issues = validate(
            raw("[gateway]\nbody_timeout_secs = 0\nmax_header_bytes = 10\n[guardrails]\nmode = \"block\"\ndeny_patterns = [\"(?i)system:\", \"(unclosed\"]\nallow_fields = [\"min_tokens\", \"cache_salt\"]\n"),
            Role::Embedded,
        )
        .unwrap_err();
        let keys: Vec<_> = issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "gateway.body_timeout_secs",
                "gateway.max_header_bytes",
                "guardrails.mode",
                "guardrails.deny_patterns[1]",
                "guardrails.allow_fields[1]"
            ]
        );
        let c = validate(RawConfig::default(), Role::Embedded).unwrap();
        assert!(
            c.guardrails.deny_patterns.is_empty(),
            "no pattern refuses normal text by default"
        );
        assert_eq!(c.guardrails.mode, GuardMode::Reject);
        assert_eq!(c.gateway.sse_keepalive, Duration::from_secs(15));
    }

    #[test]
    fn the_seed_articles_client_secrets_are_refused() {
        let issues = validate(
            raw("[[tenants]]\nid = \"t\"\n[[clients]]\nid = \"client_abc123\"\ntenant = \"t\"\nsecret = \"secret_xyz789\"\n"),
            Role::Embedded,
        )
        .unwrap_err();
        assert_eq!(issues[0].key, "clients[0].secret");
    }
}

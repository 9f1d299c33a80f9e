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
        queue_timeout: Duration::from_secs(is.positive(
            "scheduler.queue_timeout_secs",
            raw.scheduler.queue_timeout_secs,
            30,
        )),
        batch_window: Duration::from_millis(raw.scheduler.batch_window_ms.unwrap_or(2)),
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
    GatewayConfig {
        listen,
        max_body_bytes: max_body_bytes as usize,
        request_timeout: Duration::from_secs(request_timeout),
        workers,
        tls: g.tls.map(|t| TlsConfig {
            cert: PathBuf::from(t.cert),
            key: PathBuf::from(t.key),
        }),
        model,
    }
}

fn auth(is: &mut Issues, a: RawAuth, role: Role) -> AuthConfig {
    let algorithm = match a.algorithm.as_deref().unwrap_or("HS256") {
        "HS256" => JwtAlgorithm::HS256,
        other => {
            is.push(
                "auth.algorithm",
                other,
                "must be HS256 (RS256, ES256 and EdDSA are not supported yet)",
            );
            JwtAlgorithm::HS256
        }
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
    match &hs256_secret {
        Some(s) if s.expose().len() < MIN_HS256_SECRET_BYTES => is.push(
            "auth.hs256_secret",
            "(secret)",
            format!("must be at least {MIN_HS256_SECRET_BYTES} bytes"),
        ),
        Some(s) if is_published_example(s.expose()) => is.push(
            "auth.hs256_secret",
            "(secret)",
            "is a published example secret; generate one, e.g. `openssl rand -base64 48`",
        ),
        None if role == Role::Gateway && algorithm == JwtAlgorithm::HS256 => is.push(
            "auth.hs256_secret",
            "(absent)",
            "required with algorithm HS256 (e.g. hs256_secret = { env = \"TOLLGATE_JWT_SECRET\" })",
        ),
        _ => {}
    }
    let issuer = a.issuer.unwrap_or_else(|| "tollgate".into());
    let audience = a.audience.unwrap_or_else(|| "tollgate-api".into());
    if issuer.is_empty() {
        is.push("auth.issuer", &issuer, "must not be empty");
    }
    if audience.is_empty() {
        is.push("auth.audience", &audience, "must not be empty");
    }
    AuthConfig {
        issuer,
        audience,
        token_ttl: Duration::from_secs(ttl),
        algorithm,
        hs256_secret,
    }
}

fn redis(is: &mut Issues, r: RawRedis) -> RedisConfig {
    let url = r.url.unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        is.push(
            "redis.url",
            "(url)",
            "must start with redis:// or rediss://",
        );
    }
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
    RedisConfig {
        url: Secret::new(url),
        key_prefix: r.key_prefix.unwrap_or_else(|| "tollgate:".into()),
        on_failure,
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

const ID_RULE: &str = "must be 1-64 characters of A-Z a-z 0-9 _ - .";

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
    WorkerConfig {
        id: w.id,
        listen,
        shards,
        max_inflight_per_shard: max_inflight.min(100_000) as u32,
        poll_interval: Duration::from_millis(poll),
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
    GuardrailsConfig {
        max_prompt_chars: is.positive("guardrails.max_prompt_chars", g.max_prompt_chars, 500_000)
            as usize,
        deny_patterns: g.deny_patterns.unwrap_or_default(),
        system_prompt: g.system_prompt.filter(|s| !s.trim().is_empty()),
        system_prompt_policy: policy,
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
        service_name: t.service_name.unwrap_or_else(|| "tollgate".into()),
        otlp_endpoint: t.otlp_endpoint,
        otlp_protocol,
        audit_log: t.audit_log.map(PathBuf::from),
        log_level: t.log_level.unwrap_or_else(|| "info".into()),
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

    #[test]
    fn defaults_make_a_valid_embedded_config() {
        let c = validate(RawConfig::default(), Role::Embedded).unwrap();
        assert_eq!(c.gateway.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.gateway.model, DEFAULT_MODEL);
        assert_eq!(c.scheduler.max_queue_per_tenant, 1000);
        assert_eq!(c.worker.max_inflight_per_shard, 256);
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

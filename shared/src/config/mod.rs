//! Configuration: loaded in two phases. `raw` (serde, unknown keys rejected)
//! is read from TOML and environment overrides, then `validate` turns it into
//! [`Config`], reporting every bad key with its value and the rule it breaks.

mod env;
pub mod raw;
mod validate;

pub use validate::{ID_PATTERN, ID_RULE, valid_id};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

use crate::secret::{Secret, SecretSource};
pub use raw::RawConfig;

/// The model Tollgate serves unless told otherwise.
pub const DEFAULT_MODEL: &str = "Qwen/Qwen2.5-7B-Instruct";

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub shutdown_grace: Duration,
    pub gateway: GatewayConfig,
    pub auth: AuthConfig,
    pub redis: Option<RedisConfig>,
    pub tenants: Vec<TenantConfig>,
    pub clients: Vec<ClientConfig>,
    pub scheduler: SchedulerConfig,
    pub cluster: ClusterConfig,
    pub worker: WorkerConfig,
    pub guardrails: GuardrailsConfig,
    pub telemetry: TelemetryConfig,
    pub sim: SimConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub workers: Vec<String>,
    pub tls: Option<TlsConfig>,
    /// The model name clients see and vLLM serves.
    pub model: String,
    /// The served model's Hugging Face `tokenizer.json`, for exact token counts.
    pub tokenizer: Option<PathBuf>,
    /// The request head must arrive within this (slowloris guard).
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub keep_alive: Duration,
    /// The whole request body must arrive within this, else 408.
    pub body_timeout: Duration,
    /// A stream whose client takes nothing for this long is aborted upstream.
    pub stream_idle_timeout: Duration,
    /// A stream quiet for this long (queued, or before its first token) gets an SSE comment.
    pub sse_keepalive: Duration,
    /// Request heads larger than this (names and values of all headers) are refused with 431.
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
    EdDSA,
}

impl JwtAlgorithm {
    /// The JOSE name (RFC 7518 / RFC 8037).
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }

    pub fn parse(s: &str) -> Option<JwtAlgorithm> {
        match s {
            "HS256" => Some(JwtAlgorithm::HS256),
            "RS256" => Some(JwtAlgorithm::RS256),
            "ES256" => Some(JwtAlgorithm::ES256),
            "EdDSA" => Some(JwtAlgorithm::EdDSA),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    pub token_ttl: Duration,
    pub algorithm: JwtAlgorithm,
    /// Present whenever `algorithm` is HS256 and the role signs or verifies tokens.
    pub hs256_secret: Option<Secret>,
    /// PEM private key; present whenever `algorithm` is asymmetric and the role signs tokens.
    pub signing_key: Option<Secret>,
    /// The signing key's id (`kid`), when set explicitly.
    pub kid: Option<String>,
    /// Keys that verify but no longer sign (rotation).
    pub verify_keys: Vec<VerifyKeyConfig>,
    /// While Redis is unreachable: `false` (default) fails revocation and
    /// registry checks closed with 503; `true` keeps trusting the last view.
    pub stale_ok_on_redis_failure: bool,
}

/// A key that verifies tokens but signs none, kept during a rotation.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyKeyConfig {
    /// None: tokens without a `kid` (HS256), or the key's RFC 7638 thumbprint (asymmetric).
    pub kid: Option<String>,
    pub algorithm: JwtAlgorithm,
    /// The PEM public key (asymmetric) or the shared secret (HS256).
    pub key: Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisFailureMode {
    Local,
    Open,
    Closed,
}

/// Where Redis is: one server (`redis.url`) or the seed nodes of a Redis
/// Cluster (`redis.cluster`), any of which tells the client the rest.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisTarget {
    Url(Secret),
    Cluster(Vec<Secret>),
}

#[derive(Debug, Clone, Serialize)]
pub struct RedisConfig {
    /// Printed as `url` or `cluster`, the key it came from.
    #[serde(flatten)]
    pub target: RedisTarget,
    /// Replicas a limiter, registry or revocation write waits for (`WAIT`,
    /// see `store::Redis::invoke_replicated`); 0: no wait. Default 1 on a
    /// cluster, 0 on one server.
    pub wait_replicas: u64,
    /// Gateway replicas sharing this Redis: with `on_failure = "local"` each
    /// enforces limit ÷ this many while Redis is down.
    pub gateway_replicas: u64,
    /// How long usage for billing is kept.
    pub usage_retention: Duration,
    pub key_prefix: String,
    pub on_failure: RedisFailureMode,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    Normal,
    Low,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }
}

/// Limits of a tenant or (as overrides) of a client. `None` means unlimited
/// (or, on a client, inherited from its tenant).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrency: Option<u64>,
    pub daily_tokens: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantConfig {
    pub id: String,
    pub priority: Priority,
    pub weight: u32,
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Infer,
    Admin,
    Dev,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Infer => "infer",
            Scope::Admin => "admin",
            Scope::Dev => "dev",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "infer" => Some(Scope::Infer),
            "admin" => Some(Scope::Admin),
            "dev" => Some(Scope::Dev),
            _ => None,
        }
    }
}

/// How a client proves itself: a secret given in the config, or its argon2id hash.
#[derive(Debug, Clone, Serialize)]
pub enum ClientCredential {
    Secret(Secret),
    Hash(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientConfig {
    pub id: String,
    pub credential: ClientCredential,
    pub tenant: String,
    pub scopes: Vec<Scope>,
    pub limits: Limits,
    pub disabled: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SchedulerConfig {
    pub max_queue_per_tenant: usize,
    /// Request bodies waiting in the queue, all tenants together; past it the
    /// lowest class is shed first.
    pub max_queued_bytes: usize,
    /// Priority classes and fair share inside them; `false` is plain FIFO
    /// (for comparison — it is what a queue without a scheduler does).
    pub fair_share: bool,
    pub queue_timeout: Duration,
    pub batch_window: Duration,
    /// Slots of each shard lower classes leave free while a higher class is
    /// active, at least (more while its bursts need them; 0: none). Never
    /// more than half a shard.
    pub reserved_slots: u32,
    /// How long after a class's last request it still counts as active.
    pub reserve_hold: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterConfig {
    /// Present whenever the role talks gateway↔worker.
    pub secret: Option<Secret>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerConfig {
    pub id: Option<String>,
    pub listen: SocketAddr,
    pub shards: Vec<String>,
    pub max_inflight_per_shard: u32,
    pub poll_interval: Duration,
    /// The URL gateways reach this worker at, as registered in Redis;
    /// `None`: `http://` + the address the worker is listening on.
    pub advertise_url: Option<String>,
    /// Consecutive relay failures that open a shard's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before probing the shard again.
    pub breaker_cooldown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SystemPromptPolicy {
    Prepend,
    Enforce,
    Off,
}

/// Compiled size bound of one deny pattern (and of the whole set), so a
/// pathological regex fails at load time instead of eating memory.
pub const DENY_PATTERN_SIZE_LIMIT: usize = 4 << 20;

/// What the prompt guard does when a deny pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    /// Refuse the request (400 `prompt_rejected`).
    Reject,
    /// Serve it and mark it in the audit trail.
    Flag,
}

#[derive(Debug, Clone, Serialize)]
pub struct GuardrailsConfig {
    pub max_prompt_chars: usize,
    /// Regexes (each checked at load time) matched against normalised prompt text.
    pub deny_patterns: Vec<String>,
    pub system_prompt: Option<String>,
    pub system_prompt_policy: SystemPromptPolicy,
    pub mode: GuardMode,
    /// vLLM extra request fields clients may send (from [`crate::openai::VLLM_EXTRA_FIELDS`]).
    pub allow_fields: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    Grpc,
    Http,
}

#[derive(Debug, Clone, Serialize)]
pub struct TelemetryConfig {
    /// `None`: each role names itself (`tollgate-gateway`, `tollgate-worker`, `tollgate`).
    pub service_name: Option<String>,
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: OtlpProtocol,
    pub audit_log: Option<PathBuf>,
    pub log_level: String,
    /// `false` records nothing (for overhead benchmarks only; warned about at start).
    pub audit_enabled: bool,
    /// The audit file is rotated when it passes this size…
    pub audit_rotate_bytes: u64,
    /// …or this age.
    pub audit_rotate: Duration,
    /// Rotated audit files kept (the oldest beyond this are deleted).
    pub audit_keep_files: usize,
    /// Rotated audit files older than this are deleted.
    pub audit_retention: Duration,
    /// Approximate length of the Redis audit stream (`XADD … MAXLEN ~ N`).
    pub audit_stream_max_len: u64,
    /// Put a redacted sample of each prompt in its audit record (off by default).
    pub audit_prompt_sample: bool,
}

/// The `[sim]` section; command-line flags of `tollgate sim` override it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimConfig {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub model: Option<String>,
    pub preset: Option<String>,
    pub max_model_len: Option<u64>,
    pub max_num_seqs: Option<u64>,
    pub max_num_batched_tokens: Option<u64>,
    pub kv_cache_tokens: Option<u64>,
    pub scheduling_policy: Option<String>,
    pub time_scale: Option<f64>,
    pub seed: Option<u64>,
    pub echo: Option<bool>,
}

/// What a process needs of the config; decides which secrets are required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `tollgate up`: everything in one process; missing secrets are generated by the caller.
    Embedded,
    Gateway,
    Worker,
    /// `tollgate sim` and `check-config`: nothing is required.
    Standalone,
}

/// One broken rule of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub value: String,
    pub rule: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {}: {}", self.key, self.value, self.rule)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config: {0}")]
    Read(String),
    #[error("invalid config:\n{}", .0.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigIssue>),
}

/// Reads the raw config from an optional TOML file and `TOLLGATE_*` environment overrides.
pub fn read_raw(path: Option<&Path>) -> Result<RawConfig, ConfigError> {
    read_raw_with(path, "TOLLGATE_")
}

fn read_raw_with(path: Option<&Path>, prefix: &str) -> Result<RawConfig, ConfigError> {
    env::warn_ignored(prefix);
    let mut figment = Figment::new();
    if let Some(path) = path {
        if !path.exists() {
            return Err(ConfigError::Read(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file(path));
    }
    figment = figment.merge(
        Env::prefixed(prefix)
            .filter(|k| env::is_config(k.as_str()))
            .split("__"),
    );
    figment.extract::<RawConfig>().map_err(|e| {
        let issues = e
            .into_iter()
            .map(|e| ConfigIssue {
                key: if e.path.is_empty() {
                    "(top level)".into()
                } else {
                    e.path.join(".")
                },
                value: e
                    .metadata
                    .as_ref()
                    .map(|m| format!("(from {})", m.name))
                    .unwrap_or_default(),
                rule: e.kind.to_string(),
            })
            .collect();
        ConfigError::Invalid(issues)
    })
}

/// Reads and validates the config for `role`.
pub fn load(path: Option<&Path>, role: Role) -> Result<Config, ConfigError> {
    let raw = read_raw(path)?;
    validate::validate(raw, role).map_err(ConfigError::Invalid)
}

/// Validates an already read raw config (used by `tollgate up`, which fills in generated secrets).
pub fn validate(raw: RawConfig, role: Role) -> Result<Config, ConfigError> {
    validate::validate(raw, role).map_err(ConfigError::Invalid)
}

impl Config {
    /// The effective config as TOML-like JSON with every secret masked.
    pub fn masked_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

impl SecretSource {
    /// A literal secret, as `tollgate up` generates them.
    pub fn literal(value: String) -> Self {
        SecretSource::Literal(value)
    }
}

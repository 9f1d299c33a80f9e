//! The config as written: TOML plus `TOLLGATE_<SECTION>__<KEY>` overrides.
//! Unknown keys are rejected here; values are checked in `validate`.

use serde::Deserialize;

use crate::secret::SecretSource;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub shutdown_grace_secs: Option<u64>,
    #[serde(default)]
    pub gateway: RawGateway,
    #[serde(default)]
    pub auth: RawAuth,
    pub redis: Option<RawRedis>,
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
    #[serde(default)]
    pub clients: Vec<RawClient>,
    #[serde(default)]
    pub scheduler: RawScheduler,
    #[serde(default)]
    pub cluster: RawCluster,
    #[serde(default)]
    pub worker: RawWorker,
    #[serde(default)]
    pub guardrails: RawGuardrails,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub sim: RawSim,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub listen: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub request_timeout_secs: Option<u64>,
    pub workers: Option<Vec<String>>,
    pub tls: Option<RawTls>,
    pub model: Option<String>,
    pub tokenizer: Option<String>,
    pub header_timeout_secs: Option<u64>,
    pub keep_alive_secs: Option<u64>,
    pub body_timeout_secs: Option<u64>,
    pub stream_idle_timeout_secs: Option<u64>,
    pub sse_keepalive_secs: Option<u64>,
    pub max_header_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub on_redis_failure: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub token_ttl_secs: Option<u64>,
    pub algorithm: Option<String>,
    pub hs256_secret: Option<SecretSource>,
    /// PEM private key for RS256, ES256 or EdDSA.
    pub signing_key: Option<SecretSource>,
    /// Key id put in every token's header (default: the key's RFC 7638 thumbprint).
    pub kid: Option<String>,
    /// Earlier keys that still verify (rotation): their tokens live until they expire.
    pub verify_keys: Option<Vec<RawVerifyKey>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerifyKey {
    pub kid: Option<String>,
    pub algorithm: String,
    /// PEM public key (RS256, ES256, EdDSA).
    pub public_key: Option<SecretSource>,
    /// The shared secret (HS256).
    pub secret: Option<SecretSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: Option<String>,
    pub cluster: Option<Vec<String>>,
    pub wait_replicas: Option<u64>,
    pub gateway_replicas: Option<u64>,
    pub usage_retention_days: Option<u64>,
    pub key_prefix: Option<String>,
    pub on_failure: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub id: String,
    pub priority: Option<String>,
    pub weight: Option<u32>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrency: Option<u64>,
    pub daily_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub id: String,
    pub secret: Option<SecretSource>,
    pub secret_hash: Option<String>,
    pub tenant: String,
    pub scopes: Option<Vec<String>>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrency: Option<u64>,
    pub daily_tokens: Option<u64>,
    pub disabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScheduler {
    pub max_queue_per_tenant: Option<u64>,
    pub max_queued_bytes: Option<u64>,
    pub fair_share: Option<bool>,
    pub queue_timeout_secs: Option<u64>,
    pub batch_window_ms: Option<u64>,
    pub reserved_slots: Option<u64>,
    pub reserve_hold_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub secret: Option<SecretSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorker {
    pub listen: Option<String>,
    pub shards: Option<Vec<String>>,
    pub max_inflight_per_shard: Option<u64>,
    pub id: Option<String>,
    pub poll_interval_ms: Option<u64>,
    pub advertise_url: Option<String>,
    pub breaker_failures: Option<u64>,
    pub breaker_cooldown_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuardrails {
    pub max_prompt_chars: Option<u64>,
    pub deny_patterns: Option<Vec<String>>,
    pub system_prompt: Option<String>,
    pub system_prompt_policy: Option<String>,
    pub mode: Option<String>,
    pub allow_fields: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub service_name: Option<String>,
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    pub audit_log: Option<String>,
    pub log_level: Option<String>,
    pub audit_enabled: Option<bool>,
    pub audit_rotate_bytes: Option<u64>,
    pub audit_rotate_secs: Option<u64>,
    pub audit_keep_files: Option<u64>,
    pub audit_retention_days: Option<u64>,
    pub audit_stream_max_len: Option<u64>,
    pub audit_prompt_sample: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSim {
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

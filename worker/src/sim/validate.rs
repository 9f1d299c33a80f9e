//! Request checks as vLLM makes them, with its messages: `n`, `max_tokens`
//! against the context length, `min_tokens`, `stream_options`, `priority`;
//! and the small derivations shared by both completion endpoints.

use super::engine::SchedulingPolicy;
use super::error::SimError;
use super::protocol::StreamOptions;
use super::sse::UsageMode;
use super::text::{hash_str, mix};

/// The simulator's bound on `n` (vLLM has none; this keeps one request small).
const MAX_N: i64 = 128;

pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, SimError> {
    serde_json::from_slice(body)
        .map_err(|e| SimError::bad_request(format!("Invalid request body: {e}")))
}

pub fn usage_mode(stream: bool, options: Option<StreamOptions>) -> Result<UsageMode, SimError> {
    let Some(o) = options else {
        return Ok(UsageMode::default());
    };
    if !stream {
        return Err(SimError::bad_param(
            "Stream options can only be defined when `stream=True`.",
            "stream_options",
        ));
    }
    let include = o.include_usage.unwrap_or(true);
    Ok(UsageMode {
        include,
        continuous: include && o.continuous_usage_stats.unwrap_or(false),
    })
}

pub fn choices_n(n: Option<i64>) -> Result<u32, SimError> {
    match n.unwrap_or(1) {
        n if n < 1 => Err(SimError::bad_param(
            format!("n must be at least 1, got {n}."),
            "n",
        )),
        n if n > MAX_N => Err(SimError::bad_param(
            format!("n must be at most {MAX_N} in the simulator, got {n}."),
            "n",
        )),
        n => Ok(n as u32),
    }
}

/// vLLM refuses an empty `cache_salt`.
pub fn check_cache_salt(salt: Option<&str>) -> Result<(), SimError> {
    match salt {
        Some("") => Err(SimError::bad_param(
            "Parameter 'cache_salt' must be a non-empty string if provided.",
            "cache_salt",
        )),
        _ => Ok(()),
    }
}

pub fn check_priority(policy: SchedulingPolicy, priority: i64) -> Result<(), SimError> {
    if priority != 0 && policy == SchedulingPolicy::Fcfs {
        return Err(SimError::bad_request(format!(
            "Got priority {priority} but Priority scheduling is not enabled."
        )));
    }
    Ok(())
}

/// `max_tokens` as vLLM settles it, or its refusal. When the prompt is too
/// long vLLM stops tokenizing one token past what would fit, so its message
/// reports that many input tokens ("at least").
pub fn resolve_max_tokens(
    max_model_len: u32,
    prompt: u32,
    requested: Option<i64>,
    param: &'static str,
) -> Result<u32, SimError> {
    let len = i64::from(max_model_len);
    let prompt = i64::from(prompt);
    let requested_out = requested.unwrap_or(0);
    if let Some(m) = requested {
        if m < 1 {
            return Err(SimError::bad_param(
                format!("max_tokens must be at least 1, got {m}."),
                param,
            ));
        }
        if m > len {
            return Err(SimError::bad_param(
                format!(
                    "{param}={m} cannot be greater than max_model_len={len}. Please request fewer output tokens."
                ),
                param,
            ));
        }
    }
    let max_input = len - requested_out;
    if prompt > max_input {
        let reported = max_input + 1;
        return Err(SimError::bad_param(
            format!(
                "This model's maximum context length is {len} tokens. However, you requested \
                 {requested_out} output tokens and your prompt contains at least {reported} input \
                 tokens, for a total of at least {} tokens. Please reduce the length of the input \
                 prompt or the number of requested output tokens. (parameter=input_tokens, value={reported})",
                reported + requested_out
            ),
            "input_tokens",
        ));
    }
    match requested {
        Some(m) => Ok(m as u32),
        None if prompt == len => Err(SimError::bad_param(
            "max_tokens must be at least 1, got 0.",
            param,
        )),
        None => Ok((len - prompt) as u32),
    }
}

pub fn check_min_tokens(min_tokens: i64, max_tokens: u32) -> Result<u32, SimError> {
    if min_tokens < 0 {
        return Err(SimError::bad_param(
            format!("min_tokens must be greater than or equal to 0, got {min_tokens}."),
            "min_tokens",
        ));
    }
    if min_tokens > i64::from(max_tokens) {
        return Err(SimError::bad_param(
            format!(
                "min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}."
            ),
            "min_tokens",
        ));
    }
    Ok(min_tokens as u32)
}

/// The request's seed when given, else the server's seed mixed with the prompt.
pub fn seed_for(server_seed: u64, request_seed: Option<i64>, prompt: &str) -> u64 {
    match request_seed {
        Some(s) => mix(s as u64, 0x5eed),
        None => mix(server_seed, hash_str(prompt)),
    }
}

/// vLLM's base id: the `X-Request-Id` header, else the body's `request_id`, else a random one.
pub fn base_request_id(header: Option<&str>, body: Option<&str>) -> String {
    header
        .filter(|s| !s.is_empty())
        .or(body.filter(|s| !s.is_empty()))
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_length_error_reports_like_vllm() {
        let e = resolve_max_tokens(32768, 32000, Some(1000), "max_tokens").unwrap_err();
        let env = e.envelope();
        assert_eq!(env.error.code, 400);
        assert_eq!(env.error.kind, "BadRequestError");
        assert_eq!(env.error.param.as_deref(), Some("input_tokens"));
        assert_eq!(
            env.error.message,
            "This model's maximum context length is 32768 tokens. However, you requested 1000 \
             output tokens and your prompt contains at least 31769 input tokens, for a total of \
             at least 32769 tokens. Please reduce the length of the input prompt or the number \
             of requested output tokens. (parameter=input_tokens, value=31769)"
        );
        assert_eq!(
            resolve_max_tokens(32768, 32000, Some(768), "max_tokens").unwrap(),
            768
        );
        assert_eq!(
            resolve_max_tokens(32768, 100, None, "max_tokens").unwrap(),
            32668
        );
        assert!(resolve_max_tokens(32768, 100, Some(0), "max_tokens").is_err());
        assert!(resolve_max_tokens(32768, 100, Some(40000), "max_tokens").is_err());
    }

    #[test]
    fn stream_options_need_stream_and_default_to_usage() {
        let o = StreamOptions {
            include_usage: None,
            continuous_usage_stats: Some(true),
        };
        assert_eq!(
            usage_mode(true, Some(o)).unwrap(),
            UsageMode {
                include: true,
                continuous: true
            }
        );
        assert!(usage_mode(false, Some(o)).is_err());
        assert_eq!(usage_mode(false, None).unwrap(), UsageMode::default());
    }

    #[test]
    fn priority_needs_the_priority_policy() {
        assert!(check_priority(SchedulingPolicy::Fcfs, 0).is_ok());
        let e = check_priority(SchedulingPolicy::Fcfs, 5)
            .unwrap_err()
            .envelope();
        assert_eq!(
            e.error.message,
            "Got priority 5 but Priority scheduling is not enabled."
        );
        assert!(check_priority(SchedulingPolicy::Priority, 5).is_ok());
    }
}

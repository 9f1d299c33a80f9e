//! Checks of the request parameters: ranges, caps on what multiplies the work
//! of one request (`n`, `best_of`, logprobs, stop strings, `logit_bias`), and
//! the vLLM extras an operator has (or has not) allowed.

use std::collections::BTreeMap;

use tollgate_shared::openai::{ChatCompletionRequest, CompletionRequest, Stop};

use crate::error::ApiError;

/// Largest `max_tokens` the served model generates (Qwen2.5-7B-Instruct: 8192).
pub const MAX_OUTPUT_TOKENS: u32 = 8192;
/// Largest `n` (completions per request) and `best_of` accepted.
pub const MAX_N: u32 = 8;
/// Largest `logprobs` of `/v1/completions` (OpenAI's bound).
pub const MAX_LOGPROBS: u32 = 5;
/// Largest `top_logprobs` of chat (OpenAI's bound).
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// Most `logit_bias` entries (OpenAI's bound), and the range of each bias.
pub const MAX_LOGIT_BIAS: usize = 300;
/// Most stop strings (OpenAI's bound) and the longest one, in characters.
pub const MAX_STOP: usize = 4;
pub const MAX_STOP_CHARS: usize = 256;
/// Longest `user` and message `name`, in characters.
pub const MAX_USER_CHARS: usize = 256;
pub const MAX_NAME_CHARS: usize = 64;
/// Most entries in list-valued vLLM extras (`stop_token_ids`, `bad_words`, `guided_choice`).
pub const MAX_EXTRA_ITEMS: usize = 256;
/// A `logit_bias` key: a token id in decimal, without sign or leading zeros,
/// of at most 9 digits (vocabularies are far smaller). [`is_token_id`] is
/// the same rule; the OpenAPI document publishes this form.
pub const TOKEN_ID_PATTERN: &str = "^(0|[1-9][0-9]{0,8})$";

pub fn is_token_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 9
        && b.iter().all(u8::is_ascii_digit)
        && (b[0] != b'0' || b.len() == 1)
}

/// The parameters chat and completions share, borrowed from either.
pub struct Common<'a> {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<u32>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub stop: Option<&'a Stop>,
    pub logit_bias: Option<&'a BTreeMap<String, f64>>,
    pub user: Option<&'a str>,
    /// The output budget the client set, under whichever name.
    pub max_tokens: Option<u32>,
    pub min_tokens: Option<u32>,
    pub stop_token_ids: Option<&'a [u32]>,
    pub bad_words: Option<&'a [String]>,
    pub guided_choice: Option<&'a [String]>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub extras: Vec<&'static str>,
}

impl<'a> Common<'a> {
    pub fn of_chat(r: &'a ChatCompletionRequest) -> Common<'a> {
        Common {
            temperature: r.temperature,
            top_p: r.top_p,
            n: r.n,
            presence_penalty: r.presence_penalty,
            frequency_penalty: r.frequency_penalty,
            stop: r.stop.as_ref(),
            logit_bias: r.logit_bias.as_ref(),
            user: r.user.as_deref(),
            max_tokens: r.max_completion_tokens.or(r.max_tokens),
            min_tokens: r.min_tokens,
            stop_token_ids: r.stop_token_ids.as_deref(),
            bad_words: r.bad_words.as_deref(),
            guided_choice: r.guided_choice.as_deref(),
            min_p: r.min_p,
            repetition_penalty: r.repetition_penalty,
            extras: r.extras(),
        }
    }

    pub fn of_completion(r: &'a CompletionRequest) -> Common<'a> {
        Common {
            temperature: r.temperature,
            top_p: r.top_p,
            n: r.n,
            presence_penalty: r.presence_penalty,
            frequency_penalty: r.frequency_penalty,
            stop: r.stop.as_ref(),
            logit_bias: r.logit_bias.as_ref(),
            user: r.user.as_deref(),
            max_tokens: r.max_tokens,
            min_tokens: r.min_tokens,
            stop_token_ids: r.stop_token_ids.as_deref(),
            bad_words: r.bad_words.as_deref(),
            guided_choice: r.guided_choice.as_deref(),
            min_p: r.min_p,
            repetition_penalty: r.repetition_penalty,
            extras: r.extras(),
        }
    }

    /// Every check of the shared parameters, the first failure named.
    pub fn check(&self, allowed: &[String]) -> Result<(), ApiError> {
        check_extras_allowed(&self.extras, allowed)?;
        check_sampling(self)?;
        check_stop(self.stop)?;
        check_logit_bias(self.logit_bias)?;
        if self
            .user
            .is_some_and(|u| u.chars().count() > MAX_USER_CHARS)
        {
            return Err(too_long("user", MAX_USER_CHARS));
        }
        check_extra_values(self)
    }
}

fn out_of_range(param: &str, rule: &str) -> ApiError {
    ApiError::invalid_param(param, format!("{param} must be {rule}"))
}

fn too_long(param: &str, max: usize) -> ApiError {
    ApiError::invalid_param(param, format!("{param} must be at most {max} characters"))
}

fn check_sampling(c: &Common<'_>) -> Result<(), ApiError> {
    if c.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(out_of_range("temperature", "between 0 and 2"));
    }
    if c.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        return Err(out_of_range("top_p", "in (0, 1]"));
    }
    if c.n.is_some_and(|n| !(1..=MAX_N).contains(&n)) {
        return Err(out_of_range("n", &format!("between 1 and {MAX_N}")));
    }
    for (name, v) in [
        ("presence_penalty", c.presence_penalty),
        ("frequency_penalty", c.frequency_penalty),
    ] {
        if v.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
            return Err(out_of_range(name, "between -2 and 2"));
        }
    }
    if c.min_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
        return Err(out_of_range("min_p", "between 0 and 1"));
    }
    if c.repetition_penalty.is_some_and(|p| !(p > 0.0 && p <= 2.0)) {
        return Err(out_of_range("repetition_penalty", "in (0, 2]"));
    }
    Ok(())
}

pub fn check_max_tokens(param: &str, v: Option<u32>) -> Result<(), ApiError> {
    match v {
        Some(0) => Err(out_of_range(param, "at least 1")),
        Some(v) if v > MAX_OUTPUT_TOKENS => Err(ApiError::InvalidRequest {
            message: format!(
                "{param} is {v}, but the model generates at most {MAX_OUTPUT_TOKENS} tokens"
            ),
            param: Some(param.to_owned()),
            code: Some("context_length_exceeded"),
        }),
        _ => Ok(()),
    }
}

fn check_stop(stop: Option<&Stop>) -> Result<(), ApiError> {
    let list = match stop {
        None => return Ok(()),
        Some(Stop::One(s)) => std::slice::from_ref(s),
        Some(Stop::Many(v)) => v.as_slice(),
    };
    if list.len() > MAX_STOP {
        return Err(ApiError::invalid_param(
            "stop",
            format!("stop takes at most {MAX_STOP} strings"),
        ));
    }
    for s in list {
        if s.is_empty() || s.chars().count() > MAX_STOP_CHARS {
            return Err(ApiError::invalid_param(
                "stop",
                format!("each stop string must be 1 to {MAX_STOP_CHARS} characters"),
            ));
        }
    }
    Ok(())
}

fn check_logit_bias(bias: Option<&BTreeMap<String, f64>>) -> Result<(), ApiError> {
    let Some(bias) = bias else { return Ok(()) };
    if bias.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::invalid_param(
            "logit_bias",
            format!("logit_bias takes at most {MAX_LOGIT_BIAS} entries"),
        ));
    }
    for (token, v) in bias {
        if !is_token_id(token) || !(-100.0..=100.0).contains(v) {
            return Err(ApiError::invalid_param(
                "logit_bias",
                "logit_bias maps token ids (integers as strings) to numbers between -100 and 100",
            ));
        }
    }
    Ok(())
}

/// vLLM's extras pass only when the operator listed them in `guardrails.allow_fields`.
fn check_extras_allowed(present: &[&'static str], allowed: &[String]) -> Result<(), ApiError> {
    match present.iter().find(|f| !allowed.iter().any(|a| a == *f)) {
        None => Ok(()),
        Some(field) => Err(ApiError::InvalidRequest {
            message: format!("the field `{field}` is not enabled on this service"),
            param: Some((*field).to_owned()),
            code: Some("unsupported_field"),
        }),
    }
}

fn check_extra_values(c: &Common<'_>) -> Result<(), ApiError> {
    if let (Some(min), Some(max)) = (c.min_tokens, c.max_tokens)
        && min > max
    {
        return Err(out_of_range("min_tokens", "at most max_tokens"));
    }
    if c.min_tokens.is_some_and(|m| m > MAX_OUTPUT_TOKENS) {
        return Err(out_of_range(
            "min_tokens",
            &format!("at most {MAX_OUTPUT_TOKENS}"),
        ));
    }
    for (name, len) in [
        ("stop_token_ids", c.stop_token_ids.map(<[u32]>::len)),
        ("bad_words", c.bad_words.map(<[String]>::len)),
        ("guided_choice", c.guided_choice.map(<[String]>::len)),
    ] {
        if len.is_some_and(|n| n > MAX_EXTRA_ITEMS) {
            return Err(out_of_range(
                name,
                &format!("a list of at most {MAX_EXTRA_ITEMS} items"),
            ));
        }
    }
    if c.bad_words
        .is_some_and(|w| w.iter().any(|s| s.chars().count() > MAX_STOP_CHARS))
    {
        return Err(too_long("bad_words", MAX_STOP_CHARS));
    }
    Ok(())
}

/// Chat's `logprobs`/`top_logprobs` pair.
pub fn check_chat_logprobs(logprobs: Option<bool>, top: Option<u32>) -> Result<(), ApiError> {
    match top {
        Some(t) if t > MAX_TOP_LOGPROBS => Err(out_of_range(
            "top_logprobs",
            &format!("between 0 and {MAX_TOP_LOGPROBS}"),
        )),
        Some(_) if logprobs != Some(true) => Err(ApiError::invalid_param(
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        )),
        _ => Ok(()),
    }
}

/// Completions' `logprobs` and `best_of`.
pub fn check_completion_extras(
    logprobs: Option<u32>,
    best_of: Option<u32>,
    n: Option<u32>,
) -> Result<(), ApiError> {
    if best_of.is_some_and(|b| b < n.unwrap_or(1) || b > MAX_N) {
        return Err(out_of_range("best_of", &format!("between n and {MAX_N}")));
    }
    if logprobs.is_some_and(|l| l > MAX_LOGPROBS) {
        return Err(out_of_range("logprobs", &format!("at most {MAX_LOGPROBS}")));
    }
    Ok(())
}

/// The name of a chat message.
pub fn check_name(name: Option<&str>) -> Result<(), ApiError> {
    if name.is_some_and(|n| n.is_empty() || n.chars().count() > MAX_NAME_CHARS) {
        return Err(ApiError::invalid_param(
            "messages",
            format!("a message name must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(())
}

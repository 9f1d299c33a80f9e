//! Stages `validate` and `guard`: a request body checked against the limits of
//! the served model and the operator's guardrails, and turned into the body
//! sent to vLLM. The limiter, the guard and vLLM all see this one body.
//!
//! - `json`: the pre-pass over the raw body (depth, duplicate keys, NUL)
//! - `params`: parameter ranges, caps, and the allowlist of vLLM extras
//! - `context`: the lower bound on prompt tokens and the context-window check
//! - this file: the order of the checks and the upstream body ([`Plan`])

mod context;
#[cfg(test)]
mod fuzz;
mod json;
mod params;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tollgate_shared::openai::{
    ChatCompletionRequest, ChatMessage, ChatRole, CompletionRequest, GenerateRequest,
    MessageContent, StreamOptions,
};
use tollgate_shared::worker_api::Endpoint;

use crate::app::Gateway;
use crate::error::ApiError;
use crate::guard::Guard;
use crate::tokenizer::TokenCounter;
pub use context::min_tokens;
pub use json::{MAX_DEPTH, ShapeError};
pub use params::{
    MAX_EXTRA_ITEMS, MAX_LOGIT_BIAS, MAX_LOGPROBS, MAX_N, MAX_NAME_CHARS, MAX_OUTPUT_TOKENS,
    MAX_STOP, MAX_STOP_CHARS, MAX_TOP_LOGPROBS, MAX_USER_CHARS, TOKEN_ID_PATTERN,
};

/// Most prompts in one `/v1/completions` request.
pub const MAX_PROMPTS: usize = 64;
/// The whitespace a `/v1/generate` prompt may not consist of alone: Unicode's
/// White_Space, which `char::is_whitespace` tests. [`NOT_BLANK_PATTERN`]
/// matches a string with any other character.
pub const NOT_BLANK_PATTERN: &str = "[^\\t\\n\\u000B\\f\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]";

/// What the gateway will send upstream for one request.
#[derive(Debug, Clone)]
pub struct Plan {
    pub endpoint: Endpoint,
    pub body: Bytes,
    pub stream: bool,
    /// The client asked for the usage chunk (the gateway always asks vLLM for it).
    pub client_wants_usage: bool,
    /// Estimated tokens of the prompt plus the output budget, for scheduling.
    pub cost_tokens: u64,
    /// Estimated tokens of the prompt alone (billing falls back on it when vLLM reports no usage).
    pub prompt_tokens: u64,
    pub prompt_chars: usize,
    /// A deny pattern matched in `flag` mode: served, to be marked in the audit record.
    pub flagged: bool,
}

/// Everything validation needs besides the request: the served model's
/// limits, the operator's rules, and the caller's tenant salt.
pub struct Rules<'a> {
    pub served_model: &'a str,
    /// `max_model_len` as the workers report it; `None` until they have.
    pub max_model_len: Option<u64>,
    pub max_prompt_chars: usize,
    pub allow_fields: &'a [String],
    pub guard: &'a Guard,
    /// The caller's tenant's `cache_salt`, put on every upstream body.
    pub cache_salt: String,
    /// Counts prompt tokens: exactly when a tokenizer is configured.
    pub counter: &'a TokenCounter,
}

impl<'a> Rules<'a> {
    pub fn for_tenant(gw: &'a Gateway, tenant: &str) -> Rules<'a> {
        Rules {
            served_model: &gw.config.gateway.model,
            max_model_len: gw.pool.max_model_len(),
            max_prompt_chars: gw.config.guardrails.max_prompt_chars,
            allow_fields: &gw.config.guardrails.allow_fields,
            guard: &gw.guard,
            cache_salt: gw.guard.cache_salt(tenant),
            counter: &gw.token_counter,
        }
    }
}

/// Parses a JSON body into `T` after the shape pre-pass, naming the
/// offending field where serde does.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid(
            "the request body is empty; expected a JSON object",
        ));
    }
    json::check(body).map_err(|e| {
        let message = format!("invalid request body: {e}");
        match e {
            ShapeError::DuplicateKey(key) => ApiError::InvalidRequest {
                message,
                param: Some(key),
                code: Some("duplicate_key"),
            },
            _ => ApiError::invalid(message),
        }
    })?;
    if !is_object(body) {
        return Err(ApiError::invalid(
            "invalid request body: expected a JSON object",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))
}

/// Whether a (well-formed) JSON document is an object. serde reads a struct
/// from an array too, field by field in order; a request body is an object.
pub fn is_object(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|b| *b == b'{')
}

/// A conservative (high) token estimate for text when no tokenizer is loaded,
/// for scheduling and reservations: one token per 3 bytes (English runs ~4
/// bytes a token, CJK 3 bytes a character). Chat adds 4 a message.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(3)
}

fn check_model(model: &Option<String>, served: &str) -> Result<(), ApiError> {
    match model {
        Some(m) if m != served => Err(ApiError::ModelNotFound(m.clone())),
        _ => Ok(()),
    }
}

fn check_prompt_chars(param: &str, chars: usize, max: usize) -> Result<(), ApiError> {
    if chars > max {
        return Err(ApiError::InvalidRequest {
            message: format!(
                "the prompt has {chars} characters; this service accepts at most {max}"
            ),
            param: Some(param.to_owned()),
            code: Some("prompt_too_long"),
        });
    }
    Ok(())
}

/// The client's stream options, and the ones sent upstream (usage always on).
fn stream_options(
    stream: bool,
    opts: Option<StreamOptions>,
) -> Result<(bool, Option<StreamOptions>), ApiError> {
    if !stream {
        if opts.is_some() {
            return Err(ApiError::invalid_param(
                "stream_options",
                "stream_options is only allowed with stream: true",
            ));
        }
        return Ok((false, None));
    }
    let opts = opts.unwrap_or_default();
    let wants = opts.include_usage.unwrap_or(false);
    Ok((
        wants,
        Some(StreamOptions {
            include_usage: Some(true),
            ..opts
        }),
    ))
}

fn to_bytes<T: serde::Serialize>(v: &T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(format!("serialising upstream body: {e}")))
}

/// Every piece of text a client put in a conversation: contents of every
/// role and the `name`s (vLLM hands both to the chat template).
fn chat_texts(messages: &[ChatMessage]) -> impl Iterator<Item = &str> {
    messages.iter().flat_map(|m| {
        let mut pieces: Vec<&str> = Vec::new();
        if let Some(c) = &m.content {
            c.for_each_text(|t| pieces.push(t));
        }
        pieces.extend(m.name.as_deref());
        pieces
    })
}

fn chat_chars(messages: &[ChatMessage]) -> usize {
    let mut n = 0;
    for m in messages {
        if let Some(c) = &m.content {
            c.for_each_text(|t| n += t.chars().count());
        }
    }
    n
}

pub fn chat(mut req: ChatCompletionRequest, rules: &Rules<'_>) -> Result<Plan, ApiError> {
    check_model(&req.model, rules.served_model)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must not be empty",
        ));
    }
    if !req.messages.iter().any(|m| m.role == ChatRole::User) {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must contain a user message",
        ));
    }
    for m in &req.messages {
        params::check_name(m.name.as_deref())?;
    }
    params::check_max_tokens("max_tokens", req.max_tokens)?;
    params::check_max_tokens("max_completion_tokens", req.max_completion_tokens)?;
    params::Common::of_chat(&req).check(rules.allow_fields)?;
    params::check_chat_logprobs(req.logprobs, req.top_logprobs)?;
    check_prompt_chars(
        "messages",
        chat_chars(&req.messages),
        rules.max_prompt_chars,
    )?;

    // Stage `guard`: the client's text as written, then the operator's prompt.
    let texts = chat_texts(&req.messages).chain(req.chat_template.as_deref());
    let verdict = rules.guard.screen(texts)?;
    rules.guard.apply_system_prompt(&mut req.messages);

    let budget = req.max_completion_tokens.or(req.max_tokens);
    // With a tokenizer the count is exact (the template as vLLM renders it);
    // without one the context check uses a certain lower bound and the
    // reservation a conservative estimate.
    let exact = match rules.counter {
        TokenCounter::Exact(_) => Some(
            rules.counter.count_chat(
                rendered(&req.messages)
                    .iter()
                    .map(|(r, t)| (*r, t.as_str())),
            ),
        ),
        TokenCounter::Estimate => None,
    };
    context::check(
        "messages",
        exact.unwrap_or_else(|| context::min_chat_tokens(&req.messages)),
        budget.map_or(1, u64::from),
        rules.max_model_len,
    )?;
    let stream = req.stream.unwrap_or(false);
    let (client_wants_usage, upstream_opts) = stream_options(stream, req.stream_options.take())?;
    req.stream_options = upstream_opts;
    req.model = Some(rules.served_model.to_owned());
    req.cache_salt = Some(rules.cache_salt.clone());
    let prompt_tokens: u64 = exact.unwrap_or_else(|| {
        req.messages
            .iter()
            .map(|m| {
                let mut bytes = 0;
                if let Some(c) = &m.content {
                    c.for_each_text(|t| bytes += t.len());
                }
                4 + (bytes as u64).div_ceil(3)
            })
            .sum()
    });
    let budget = budget.unwrap_or(MAX_OUTPUT_TOKENS);
    Ok(Plan {
        endpoint: Endpoint::ChatCompletions,
        body: to_bytes(&req)?,
        stream,
        client_wants_usage,
        cost_tokens: prompt_tokens + u64::from(budget) * u64::from(req.n.unwrap_or(1)),
        prompt_tokens,
        prompt_chars: chat_chars(&req.messages),
        flagged: verdict.flagged,
    })
}

pub fn completion(mut req: CompletionRequest, rules: &Rules<'_>) -> Result<Plan, ApiError> {
    check_model(&req.model, rules.served_model)?;
    let texts = req.prompt.texts();
    if texts.is_empty() || texts.len() > MAX_PROMPTS {
        return Err(ApiError::invalid_param(
            "prompt",
            format!("prompt must be a string or a list of 1 to {MAX_PROMPTS} strings"),
        ));
    }
    if texts.iter().any(|t| t.is_empty()) {
        return Err(ApiError::invalid_param(
            "prompt",
            "prompt must not be empty",
        ));
    }
    params::check_max_tokens("max_tokens", req.max_tokens)?;
    params::Common::of_completion(&req).check(rules.allow_fields)?;
    params::check_completion_extras(req.logprobs, req.best_of, req.n)?;
    let prompt_chars = texts.iter().map(|t| t.chars().count()).sum();
    check_prompt_chars("prompt", prompt_chars, rules.max_prompt_chars)?;
    let verdict = rules.guard.screen(texts.iter().map(String::as_str))?;
    // OpenAI's and vLLM's default for completions is 16 tokens.
    let max_tokens = u64::from(req.max_tokens.unwrap_or(16));
    // vLLM runs each prompt of a list as its own sequence.
    let exact: Option<Vec<u64>> = match rules.counter {
        TokenCounter::Exact(_) => Some(texts.iter().map(|t| rules.counter.count(t)).collect()),
        TokenCounter::Estimate => None,
    };
    let longest = match &exact {
        Some(counts) => counts.iter().copied().max().unwrap_or(0),
        None => texts.iter().map(|t| min_tokens(t)).max().unwrap_or(0),
    };
    context::check("prompt", longest, max_tokens, rules.max_model_len)?;

    let stream = req.stream.unwrap_or(false);
    let (client_wants_usage, upstream_opts) = stream_options(stream, req.stream_options.take())?;
    req.stream_options = upstream_opts;
    req.model = Some(rules.served_model.to_owned());
    req.cache_salt = Some(rules.cache_salt.clone());
    let texts = req.prompt.texts();
    let prompt_tokens: u64 = match exact {
        Some(counts) => counts.iter().sum(),
        None => texts.iter().map(|t| estimate_tokens(t)).sum(),
    };
    let budget = max_tokens * texts.len() as u64;
    Ok(Plan {
        endpoint: Endpoint::Completions,
        body: to_bytes(&req)?,
        stream,
        client_wants_usage,
        cost_tokens: prompt_tokens + budget * u64::from(req.n.unwrap_or(1)),
        prompt_tokens,
        prompt_chars,
        flagged: verdict.flagged,
    })
}

/// `/v1/generate` is a one-message chat completion (so every chat rule applies).
pub fn generate(g: GenerateRequest, rules: &Rules<'_>) -> Result<Plan, ApiError> {
    if g.prompt.chars().all(char::is_whitespace) {
        return Err(ApiError::invalid_param(
            "prompt",
            "prompt must not be empty",
        ));
    }
    let req = ChatCompletionRequest {
        messages: vec![ChatMessage {
            role: ChatRole::User,
            content: Some(MessageContent::Text(g.prompt)),
            name: None,
        }],
        max_tokens: g.max_tokens,
        temperature: g.temperature,
        ..ChatCompletionRequest::default()
    };
    chat(req, rules)
}

/// The messages as Qwen2.5's template renders them: role and text, without
/// `developer` messages (the template does not render them).
fn rendered(messages: &[ChatMessage]) -> Vec<(&'static str, String)> {
    messages
        .iter()
        .filter_map(|m| {
            let role = match m.role {
                ChatRole::System => "system",
                ChatRole::User => "user",
                ChatRole::Assistant => "assistant",
                ChatRole::Developer => return None,
            };
            Some((
                role,
                m.content.as_ref().map(|c| c.text()).unwrap_or_default(),
            ))
        })
        .collect()
}

//! Stage `validate`: a parsed OpenAI request checked against the limits of the
//! served model and turned into the body sent to vLLM.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tollgate_shared::openai::{
    ChatCompletionRequest, ChatMessage, ChatRole, CompletionRequest, MessageContent, StreamOptions,
};
use tollgate_shared::worker_api::Endpoint;

use crate::error::ApiError;

/// Largest `max_tokens` the served model generates (Qwen2.5-7B-Instruct: 8192).
pub const MAX_OUTPUT_TOKENS: u32 = 8192;
/// Largest `n` (completions per request) accepted.
pub const MAX_N: u32 = 8;

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
    pub prompt_chars: usize,
}

/// Parses a JSON body into `T`, naming the offending field where serde does.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid(
            "the request body is empty; expected a JSON object",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))
}

/// A conservative token estimate for text when no tokenizer is loaded:
/// one token per 3 bytes (English runs ~4 bytes a token, CJK 3 bytes a character).
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(3)
}

fn check_model(model: &Option<String>, served: &str) -> Result<(), ApiError> {
    match model {
        Some(m) if m != served => Err(ApiError::ModelNotFound(m.clone())),
        _ => Ok(()),
    }
}

fn check_sampling(
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<u32>,
    presence: Option<f32>,
    frequency: Option<f32>,
) -> Result<(), ApiError> {
    if let Some(t) = temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(ApiError::invalid_param(
            "temperature",
            "temperature must be between 0 and 2",
        ));
    }
    if let Some(p) = top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(ApiError::invalid_param("top_p", "top_p must be in (0, 1]"));
    }
    if let Some(n) = n
        && !(1..=MAX_N).contains(&n)
    {
        return Err(ApiError::invalid_param(
            "n",
            format!("n must be between 1 and {MAX_N}"),
        ));
    }
    for (name, v) in [
        ("presence_penalty", presence),
        ("frequency_penalty", frequency),
    ] {
        if v.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
            return Err(ApiError::invalid_param(
                name,
                format!("{name} must be between -2 and 2"),
            ));
        }
    }
    Ok(())
}

fn check_max_tokens(param: &str, v: Option<u32>) -> Result<(), ApiError> {
    match v {
        Some(0) => Err(ApiError::invalid_param(
            param,
            format!("{param} must be at least 1"),
        )),
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

pub fn chat(mut req: ChatCompletionRequest, served_model: &str) -> Result<Plan, ApiError> {
    check_model(&req.model, served_model)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must not be empty",
        ));
    }
    if !req
        .messages
        .iter()
        .any(|m| matches!(m.role, ChatRole::User))
    {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must contain a user message",
        ));
    }
    check_max_tokens("max_tokens", req.max_tokens)?;
    check_max_tokens("max_completion_tokens", req.max_completion_tokens)?;
    check_sampling(
        req.temperature,
        req.top_p,
        req.n,
        req.presence_penalty,
        req.frequency_penalty,
    )?;
    let stream = req.stream.unwrap_or(false);
    let (client_wants_usage, upstream_opts) = stream_options(stream, req.stream_options.take())?;
    req.stream_options = upstream_opts;
    req.model = Some(served_model.to_owned());
    let prompt_chars: usize = req.messages.iter().map(message_chars).sum();
    let prompt_tokens: u64 = req
        .messages
        .iter()
        .map(|m| 4 + m.content.as_ref().map_or(0, |c| estimate_tokens(&c.text())))
        .sum();
    let budget = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(MAX_OUTPUT_TOKENS);
    Ok(Plan {
        endpoint: tollgate_shared::worker_api::Endpoint::ChatCompletions,
        body: to_bytes(&req)?,
        stream,
        client_wants_usage,
        cost_tokens: prompt_tokens + u64::from(budget) * u64::from(req.n.unwrap_or(1)),
        prompt_chars,
    })
}

fn message_chars(m: &ChatMessage) -> usize {
    let mut n = 0;
    if let Some(c) = &m.content {
        c.for_each_text(|t| n += t.chars().count());
    }
    n
}

pub fn completion(mut req: CompletionRequest, served_model: &str) -> Result<Plan, ApiError> {
    check_model(&req.model, served_model)?;
    let texts = req.prompt.texts();
    if texts.is_empty() || texts.len() > 64 {
        return Err(ApiError::invalid_param(
            "prompt",
            "prompt must be a string or a list of 1 to 64 strings",
        ));
    }
    if texts.iter().any(|t| t.is_empty()) {
        return Err(ApiError::invalid_param(
            "prompt",
            "prompt must not be empty",
        ));
    }
    check_max_tokens("max_tokens", req.max_tokens)?;
    check_sampling(
        req.temperature,
        req.top_p,
        req.n,
        req.presence_penalty,
        req.frequency_penalty,
    )?;
    if req
        .best_of
        .is_some_and(|b| b < req.n.unwrap_or(1) || b > MAX_N)
    {
        return Err(ApiError::invalid_param(
            "best_of",
            format!("best_of must be between n and {MAX_N}"),
        ));
    }
    if req.logprobs.is_some_and(|l| l > 5) {
        return Err(ApiError::invalid_param(
            "logprobs",
            "logprobs must be at most 5",
        ));
    }
    let stream = req.stream.unwrap_or(false);
    let (client_wants_usage, upstream_opts) = stream_options(stream, req.stream_options.take())?;
    req.stream_options = upstream_opts;
    req.model = Some(served_model.to_owned());
    let texts = req.prompt.texts();
    let prompt_chars = texts.iter().map(|t| t.chars().count()).sum();
    let prompt_tokens: u64 = texts.iter().map(|t| estimate_tokens(t)).sum();
    // OpenAI's and vLLM's default for completions is 16 tokens.
    let budget = u64::from(req.max_tokens.unwrap_or(16)) * texts.len() as u64;
    Ok(Plan {
        endpoint: Endpoint::Completions,
        body: to_bytes(&req)?,
        stream,
        client_wants_usage,
        cost_tokens: prompt_tokens + budget * u64::from(req.n.unwrap_or(1)),
        prompt_chars,
    })
}

/// `/v1/generate` is a one-message chat completion.
pub fn generate(
    prompt: String,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    served_model: &str,
) -> Result<Plan, ApiError> {
    if prompt.trim().is_empty() {
        return Err(ApiError::invalid_param(
            "prompt",
            "prompt must not be empty",
        ));
    }
    let req = ChatCompletionRequest {
        model: None,
        messages: vec![ChatMessage {
            role: ChatRole::User,
            content: Some(MessageContent::Text(prompt)),
            name: None,
        }],
        max_tokens,
        max_completion_tokens: None,
        temperature,
        top_p: None,
        n: None,
        stream: None,
        stream_options: None,
        stop: None,
        presence_penalty: None,
        frequency_penalty: None,
        seed: None,
        user: None,
        logprobs: None,
        top_logprobs: None,
        logit_bias: None,
        response_format: None,
    };
    chat(req, served_model)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "Qwen/Qwen2.5-7B-Instruct";

    fn chat_req(json: &str) -> ChatCompletionRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn streaming_always_asks_upstream_for_usage() {
        let p = chat(
            chat_req(r#"{"messages":[{"role":"user","content":"hi"}],"stream":true}"#),
            M,
        )
        .unwrap();
        assert!(p.stream && !p.client_wants_usage);
        let body: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["model"], M);
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (r#"{"messages":[]}"#, "messages"),
            (
                r#"{"messages":[{"role":"system","content":"x"}]}"#,
                "messages",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "max_tokens",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":9000}"#,
                "max_tokens",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                "temperature",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"n":100}"#,
                "n",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#,
                "stream_options",
            ),
        ];
        for (json, param) in cases {
            match chat(chat_req(json), M) {
                Err(ApiError::InvalidRequest { param: Some(p), .. }) => {
                    assert_eq!(p, param, "{json}")
                }
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_models_are_not_found() {
        let r = chat(
            chat_req(r#"{"model":"gpt-4","messages":[{"role":"user","content":"x"}]}"#),
            M,
        );
        assert!(matches!(r, Err(ApiError::ModelNotFound(m)) if m == "gpt-4"));
    }

    #[test]
    fn completion_cost_counts_every_prompt() {
        let req: CompletionRequest =
            serde_json::from_str(r#"{"prompt":["abc","def"],"max_tokens":10}"#).unwrap();
        let p = completion(req, M).unwrap();
        assert_eq!(p.cost_tokens, 2 + 20);
        assert_eq!(p.prompt_chars, 6);
    }

    #[test]
    fn estimate_is_conservative_for_cjk_and_english() {
        assert_eq!(estimate_tokens("你好世界"), 4);
        assert!(estimate_tokens("hello world, this is english") >= 6);
    }
}

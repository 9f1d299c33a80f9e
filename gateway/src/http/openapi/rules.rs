//! The rules the OpenAPI document states, taken from the constants the
//! checks in `validate` and `auth::model` use: per field, and between fields.

use serde_json::{Value, json};
use tollgate_shared::config::ID_PATTERN;

use crate::auth::model::MAX_WEIGHT;
use crate::validate::{
    MAX_EXTRA_ITEMS, MAX_LOGIT_BIAS, MAX_LOGPROBS, MAX_N, MAX_NAME_CHARS, MAX_OUTPUT_TOKENS,
    MAX_PROMPTS, MAX_STOP, MAX_STOP_CHARS, MAX_TOP_LOGPROBS, MAX_USER_CHARS, NOT_BLANK_PATTERN,
    TOKEN_ID_PATTERN,
};

/// Per-property rules: what the checks in `validate` and `auth::model`
/// enforce on a single field.
pub fn bounds() -> Vec<(&'static str, &'static str, Value)> {
    let tokens = json!({"minimum": 1, "maximum": MAX_OUTPUT_TOKENS});
    let temperature = json!({"minimum": 0, "maximum": 2});
    let top_p = json!({"exclusiveMinimum": 0, "maximum": 1});
    let n = json!({"minimum": 1, "maximum": MAX_N});
    let penalty = json!({"minimum": -2, "maximum": 2});
    let user = json!({"maxLength": MAX_USER_CHARS});
    let seed = json!({"minimum": i64::MIN, "maximum": i64::MAX});
    let logit_bias = json!({
        "maxProperties": MAX_LOGIT_BIAS,
        "propertyNames": {"pattern": TOKEN_ID_PATTERN},
        "additionalProperties": {"minimum": -100, "maximum": 100},
    });
    let min_p = json!({"minimum": 0, "maximum": 1});
    let repetition = json!({"exclusiveMinimum": 0, "maximum": 2});
    let min_tokens = json!({"maximum": MAX_OUTPUT_TOKENS});
    let list = json!({"maxItems": MAX_EXTRA_ITEMS});
    let bad_words = json!({"maxItems": MAX_EXTRA_ITEMS, "items": {"maxLength": MAX_STOP_CHARS}});
    let id = json!({"pattern": ID_PATTERN});
    // u64: utoipa writes `int64`, whose range ends at i64::MAX.
    let limit = json!({"minimum": 1, "maximum": u64::MAX, "format": "uint64"});
    let weight = json!({"minimum": 1, "maximum": MAX_WEIGHT});
    let mut rules = Vec::new();
    for schema in ["ChatCompletionRequest", "CompletionRequest"] {
        rules.extend([
            (schema, "max_tokens", tokens.clone()),
            (schema, "temperature", temperature.clone()),
            (schema, "top_p", top_p.clone()),
            (schema, "n", n.clone()),
            (schema, "presence_penalty", penalty.clone()),
            (schema, "frequency_penalty", penalty.clone()),
            (schema, "user", user.clone()),
            (schema, "seed", seed.clone()),
            (schema, "logit_bias", logit_bias.clone()),
            (schema, "min_p", min_p.clone()),
            (schema, "repetition_penalty", repetition.clone()),
            (schema, "min_tokens", min_tokens.clone()),
            (schema, "stop_token_ids", list.clone()),
            (schema, "guided_choice", list.clone()),
            (schema, "bad_words", bad_words.clone()),
        ]);
    }
    rules.extend([
        (
            "ChatCompletionRequest",
            "max_completion_tokens",
            tokens.clone(),
        ),
        ("ChatCompletionRequest", "messages", json!({"minItems": 1})),
        (
            "ChatCompletionRequest",
            "top_logprobs",
            json!({"minimum": 0, "maximum": MAX_TOP_LOGPROBS}),
        ),
        (
            "ChatMessage",
            "name",
            json!({"minLength": 1, "maxLength": MAX_NAME_CHARS}),
        ),
        ("CompletionRequest", "best_of", n.clone()),
        (
            "CompletionRequest",
            "logprobs",
            json!({"minimum": 0, "maximum": MAX_LOGPROBS}),
        ),
        (
            "GenerateRequest",
            "prompt",
            json!({"pattern": NOT_BLANK_PATTERN}),
        ),
        ("GenerateRequest", "max_tokens", tokens),
        ("GenerateRequest", "temperature", temperature),
        ("NewTenant", "id", id.clone()),
        ("NewTenant", "weight", weight.clone()),
        ("TenantPatch", "weight", weight),
        ("NewClient", "id", id.clone()),
        ("NewClient", "tenant", id),
        ("NewClient", "scopes", json!({"minItems": 1})),
        ("ClientPatch", "scopes", json!({"minItems": 1})),
    ]);
    for schema in ["NewTenant", "TenantPatch", "NewClient", "ClientPatch"] {
        for name in ["rpm", "tpm", "max_concurrency", "daily_tokens"] {
            rules.push((schema, name, limit.clone()));
        }
    }
    rules
}

/// `then` applies when the field `when` is set to a value of `kind`.
fn when_set(when: &str, kind: &str, then: Value) -> Value {
    json!({
        "if": {"properties": {when: {"type": kind}}, "required": [when]},
        "then": then,
    })
}

/// Rules on whole schemas: the shapes of `stop` and `prompt`, and the rules
/// that tie two fields of a request together.
pub fn schema_rules() -> Vec<(&'static str, Value)> {
    let stop_string = json!({"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS});
    let prompt_string = json!({"type": "string", "minLength": 1});
    let needs_stream = when_set(
        "stream_options",
        "object",
        json!({"properties": {"stream": {"const": true}}, "required": ["stream"]}),
    );
    // `best_of` may not be below `n`: one `if` per value of `n` above 1.
    let best_of: Vec<Value> = (2..=MAX_N)
        .map(|k| {
            json!({
                "if": {"properties": {"n": {"const": k}}, "required": ["n"]},
                "then": {"properties": {"best_of": {"minimum": k}}},
            })
        })
        .collect();
    let mut completion = vec![needs_stream.clone()];
    completion.extend(best_of);
    vec![
        (
            "Stop",
            json!({"oneOf": [
                stop_string,
                {"type": "array", "maxItems": MAX_STOP, "items": stop_string},
            ]}),
        ),
        (
            "ContentPart",
            json!({"oneOf": [{
                "type": "object",
                "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                "required": ["type", "text"],
                "additionalProperties": false,
            }]}),
        ),
        (
            "Prompt",
            json!({"oneOf": [
                prompt_string,
                {"type": "array", "minItems": 1, "maxItems": MAX_PROMPTS, "items": prompt_string},
            ]}),
        ),
        (
            "ChatCompletionRequest",
            json!({"allOf": [
                needs_stream,
                when_set(
                    "top_logprobs",
                    "integer",
                    json!({"properties": {"logprobs": {"const": true}}, "required": ["logprobs"]}),
                ),
                {"properties": {"messages": {"contains": {
                    "type": "object",
                    "properties": {"role": {"const": "user"}},
                    "required": ["role"],
                }}}},
            ]}),
        ),
        ("CompletionRequest", json!({"allOf": completion})),
        (
            "TokenForm",
            json!({"dependentRequired": {
                "client_id": ["client_secret"], "client_secret": ["client_id"],
            }}),
        ),
        (
            "RevokeForm",
            json!({"dependentRequired": {
                "client_id": ["client_secret"], "client_secret": ["client_id"],
            }}),
        ),
    ]
}

//! OpenAI-compatible wire types the gateway accepts and forwards.
//!
//! Request types reject unknown fields: only what is listed here reaches vLLM,
//! so a client cannot switch on server-side behaviour the gateway does not know.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::integer;

/// vLLM's extra request fields an operator may let clients send
/// (`guardrails.allow_fields`). They change how vLLM serves a request, so the
/// gateway refuses them unless allowed; any field not known here is refused
/// by the parser. `cache_salt` is not among them: the gateway always sets it.
pub const VLLM_EXTRA_FIELDS: &[&str] = &[
    "top_k",
    "min_p",
    "repetition_penalty",
    "min_tokens",
    "ignore_eos",
    "stop_token_ids",
    "bad_words",
    "skip_special_tokens",
    "include_stop_str_in_output",
    "priority",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "structured_outputs",
    "chat_template",
    "chat_template_kwargs",
    "add_generation_prompt",
    "continue_final_message",
];

/// Names of the `Option` fields of `$req` that are set.
macro_rules! present {
    ($req:ident: $($field:ident),* $(,)?) => {{
        let mut names: Vec<&'static str> = Vec::new();
        $(if $req.$field.is_some() { names.push(stringify!($field)); })*
        names
    }};
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatCompletionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_tokens: Option<u32>,
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub top_logprobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<BTreeMap<String, f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<serde_json::Value>,
    // vLLM extras (see VLLM_EXTRA_FIELDS): refused unless the operator allows them.
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub top_k: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_token_ids: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad_words: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_special_tokens: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_stop_str_in_output: Option<bool>,
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided_json: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided_choice: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided_grammar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured_outputs: Option<serde_json::Value>,
    /// Accepted from clients but always replaced: the gateway keys vLLM's
    /// prefix cache per tenant with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_salt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_generation_prompt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_final_message: Option<bool>,
}

impl ChatCompletionRequest {
    /// The vLLM extra fields this request sets (`cache_salt` aside).
    pub fn extras(&self) -> Vec<&'static str> {
        let r = self;
        present!(r: top_k, min_p, repetition_penalty, min_tokens, ignore_eos, stop_token_ids,
            bad_words, skip_special_tokens, include_stop_str_in_output, priority, guided_json,
            guided_regex, guided_choice, guided_grammar, structured_outputs, chat_template,
            chat_template_kwargs, add_generation_prompt, continue_final_message)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: ChatRole,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    Developer,
    User,
    Assistant,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// Only text parts: the served model is a text model.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ContentPart {
    Text { text: String },
}

impl<'de> Deserialize<'de> for ContentPart {
    /// As the derived form would, but `type` must be the string `text`:
    /// serde also takes a variant's index (`"type": 0`) for its tag.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
        enum Tagged {
            Text { text: String },
        }
        let part = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        if !part.get("type").is_some_and(serde_json::Value::is_string) {
            return Err(D::Error::custom(
                "a content part needs `type`: \"text\" (a string)",
            ));
        }
        let Tagged::Text { text } =
            serde_json::from_value(serde_json::Value::Object(part)).map_err(D::Error::custom)?;
        Ok(ContentPart::Text { text })
    }
}

impl MessageContent {
    /// The text of the message, parts joined in order.
    pub fn text(&self) -> String {
        match self {
            MessageContent::Text(t) => t.clone(),
            MessageContent::Parts(parts) => parts
                .iter()
                .map(|ContentPart::Text { text }| text.as_str())
                .collect::<Vec<_>>()
                .join(""),
        }
    }

    /// Visits every piece of text in the content.
    pub fn for_each_text<'a>(&'a self, mut f: impl FnMut(&'a str)) {
        match self {
            MessageContent::Text(t) => f(t),
            MessageContent::Parts(parts) => {
                for ContentPart::Text { text } in parts {
                    f(text)
                }
            }
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous_usage_stats: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub n: Option<u32>,
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub best_of: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub logprobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<BTreeMap<String, f64>>,
    // vLLM extras (see VLLM_EXTRA_FIELDS): refused unless the operator allows them.
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub top_k: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_token_ids: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad_words: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_special_tokens: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_stop_str_in_output: Option<bool>,
    #[serde(
        default,
        deserialize_with = "integer::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided_json: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided_choice: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided_grammar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured_outputs: Option<serde_json::Value>,
    /// Accepted from clients but always replaced: the gateway keys vLLM's
    /// prefix cache per tenant with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_salt: Option<String>,
}

impl CompletionRequest {
    /// The vLLM extra fields this request sets (`cache_salt` aside).
    pub fn extras(&self) -> Vec<&'static str> {
        let r = self;
        present!(r: top_k, min_p, repetition_penalty, min_tokens, ignore_eos, stop_token_ids,
            bad_words, skip_special_tokens, include_stop_str_in_output, priority, guided_json,
            guided_regex, guided_choice, guided_grammar, structured_outputs)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

impl Prompt {
    pub fn texts(&self) -> &[String] {
        match self {
            Prompt::One(s) => std::slice::from_ref(s),
            Prompt::Many(v) => v,
        }
    }
}

/// The simple form of `/v1/generate`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub prompt: String,
    #[serde(default, deserialize_with = "integer::deserialize")]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// OpenAI's error envelope. vLLM puts the HTTP status (a number) in `code`;
/// the gateway puts a machine-readable string there.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    /// The gateway's answers carry a string here.
    #[schema(value_type = String)]
    pub code: serde_json::Value,
}

/// A chat completion as vLLM answers it. The gateway relays the answer
/// unchanged, so fields beyond these pass through.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    /// `chat.completion`
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct AssistantMessage {
    pub role: String,
    pub content: Option<String>,
}

/// A text completion as vLLM answers it, relayed like [`ChatCompletion`].
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct Completion {
    pub id: String,
    /// `text_completion`
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub finish_reason: Option<String>,
}

/// `GET /v1/models`: the served model.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ModelList {
    /// `list`
    pub object: String,
    pub data: Vec<Model>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct Model {
    pub id: String,
    /// `model`
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// The context window as the fleet reports it; absent until a worker has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused_and_vllm_extras_are_named() {
        let r: Result<ChatCompletionRequest, _> = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"frobnicate":"x"}"#,
        );
        assert!(r.unwrap_err().to_string().contains("frobnicate"));
        let r: ChatCompletionRequest = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":"hi"}],"chat_template":"x","ignore_eos":true,"cache_salt":"s"}"#,
        )
        .unwrap();
        assert_eq!(r.extras(), ["ignore_eos", "chat_template"]);
        let r: CompletionRequest =
            serde_json::from_str(r#"{"prompt":"x","min_tokens":2,"priority":1}"#).unwrap();
        assert_eq!(r.extras(), ["min_tokens", "priority"]);
        for name in r.extras() {
            assert!(VLLM_EXTRA_FIELDS.contains(&name));
        }
    }

    #[test]
    fn image_parts_are_refused_text_parts_accepted() {
        let ok: ChatCompletionRequest = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(ok.messages[0].content.as_ref().unwrap().text(), "ab");
        let bad: Result<ChatCompletionRequest, _> = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
        );
        assert!(bad.is_err());
        // A variant's index is not its name.
        let bad: Result<ChatCompletionRequest, _> = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":[{"type":0,"text":"a"}]}]}"#,
        );
        assert!(bad.is_err());
    }

    #[test]
    fn integer_fields_take_numbers_with_a_zero_fraction() {
        let r: ChatCompletionRequest = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":17.0,"n":1.0,"seed":-5e0,"stop_token_ids":[7.0]}"#,
        )
        .unwrap();
        assert_eq!((r.max_tokens, r.n, r.seed), (Some(17), Some(1), Some(-5)));
        // Forwarded as plain integers.
        assert!(
            serde_json::to_string(&r)
                .unwrap()
                .contains(r#""max_tokens":17,"#)
        );
        let r: CompletionRequest =
            serde_json::from_str(r#"{"prompt":"x","best_of":2.0,"logprobs":0.0}"#).unwrap();
        assert_eq!((r.best_of, r.logprobs), (Some(2), Some(0)));
        let e = serde_json::from_str::<CompletionRequest>(r#"{"prompt":"x","max_tokens":17.5}"#)
            .unwrap_err();
        assert!(e.to_string().contains("expected an integer"), "{e}");
    }

    #[test]
    fn forwarded_body_omits_absent_fields() {
        let r: CompletionRequest =
            serde_json::from_str(r#"{"prompt":["a","b"],"max_tokens":5}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"prompt":["a","b"],"max_tokens":5}"#
        );
    }
}

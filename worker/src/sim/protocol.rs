//! vLLM's OpenAI-compatible wire shapes, as far as the simulator speaks them.
//!
//! Requests are lenient like vLLM's pydantic models: unknown fields are
//! ignored, vLLM's extra sampling fields are accepted. Responses keep vLLM's
//! field order and its explicit `null`s (it serialises with `model_dump()`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Default, Deserialize)]
pub struct ChatRequest {
    pub messages: Option<Vec<Message>>,
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub n: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub min_tokens: i64,
    #[serde(default)]
    pub include_stop_str_in_output: bool,
    pub cache_salt: Option<String>,
    pub request_id: Option<String>,
    pub tools: Option<Vec<Value>>,
    pub add_generation_prompt: Option<bool>,
    #[serde(default)]
    pub continue_final_message: bool,
    /// Prepend the last message's content when it has the reply's role.
    #[serde(default)]
    pub echo: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl Content {
    /// The text the chat template sees: text parts joined by newlines, as
    /// vLLM's "string" content format does.
    pub fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter(|p| p.kind == "text")
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ToolCall {
    pub function: ToolFunction,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ToolFunction {
    pub name: String,
    /// A JSON-encoded string per OpenAI; vLLM also accepts an object.
    #[serde(default)]
    pub arguments: Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// vLLM's defaults: `include_usage` is true once `stream_options` is given.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
    pub continuous_usage_stats: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<PromptInput>,
    /// `None` (absent or null) means vLLM's default of 16.
    pub max_tokens: Option<i64>,
    pub echo: Option<bool>,
    pub n: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub min_tokens: i64,
    #[serde(default)]
    pub include_stop_str_in_output: bool,
    pub cache_salt: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

/// `POST /tokenize`: either a completion prompt or chat messages.
#[derive(Debug, Default, Deserialize)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<Message>>,
    pub tools: Option<Vec<Value>>,
    pub add_generation_prompt: Option<bool>,
    #[serde(default)]
    pub continue_final_message: bool,
    #[serde(default)]
    pub return_token_strs: bool,
}

// ---- responses -------------------------------------------------------------

/// Stands for a field vLLM always sends as `null` here (logprobs, tool
/// parsing, KV transfer...).
pub type Null = Option<()>;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
    pub completion_tokens: u64,
}

/// `usage` of a non-streaming answer: vLLM adds `prompt_tokens_details`.
#[derive(Debug, Serialize)]
pub struct FullUsage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
    pub completion_tokens: u64,
    pub prompt_tokens_details: Null,
}

impl From<Usage> for FullUsage {
    fn from(u: Usage) -> Self {
        FullUsage {
            prompt_tokens: u.prompt_tokens,
            total_tokens: u.total_tokens,
            completion_tokens: u.completion_tokens,
            prompt_tokens_details: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ChatCompletion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChatChoice>,
    pub service_tier: Null,
    pub system_fingerprint: Null,
    pub usage: FullUsage,
    pub prompt_logprobs: Null,
    pub prompt_token_ids: Null,
    pub kv_transfer_params: Null,
}

#[derive(Debug, Serialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Null,
    pub finish_reason: &'static str,
    pub stop_reason: Option<String>,
    pub token_ids: Null,
}

/// vLLM leaves `tool_calls` out when empty and names the reasoning channel `reasoning`.
#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
    pub refusal: Null,
    pub annotations: Null,
    pub audio: Null,
    pub function_call: Null,
    pub reasoning: Null,
}

#[derive(Debug, Serialize)]
pub struct Completion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<CompletionChoice>,
    pub service_tier: Null,
    pub system_fingerprint: Null,
    pub usage: FullUsage,
    pub kv_transfer_params: Null,
}

#[derive(Debug, Serialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Null,
    pub finish_reason: &'static str,
    pub stop_reason: Option<String>,
    pub token_ids: Null,
    pub prompt_logprobs: Null,
    pub prompt_token_ids: Null,
}

#[derive(Debug, Serialize)]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: u32,
    pub tokens: Vec<u32>,
    pub token_strs: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub root: String,
    pub parent: Null,
    pub max_model_len: u32,
    pub permission: Vec<ModelPermission>,
}

#[derive(Debug, Serialize)]
pub struct ModelPermission {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub allow_create_engine: bool,
    pub allow_sampling: bool,
    pub allow_logprobs: bool,
    pub allow_search_indices: bool,
    pub allow_view: bool,
    pub allow_fine_tuning: bool,
    pub organization: &'static str,
    pub group: Null,
    pub is_blocking: bool,
}

/// vLLM's error envelope: `code` is the HTTP status as a number.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorEnvelope {
    pub error: ErrorInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorInfo {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_ignore_unknown_and_vllm_fields() {
        let r: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},
                {"type":"text","text":"b"}]}],"priority":3,"ignore_eos":true,"min_tokens":2,
                "cache_salt":"s","top_k":5,"chat_template_kwargs":{},"whatever":[1]}"#,
        )
        .unwrap();
        assert_eq!(r.priority, 3);
        assert!(r.ignore_eos);
        let msgs = r.messages.unwrap();
        assert_eq!(msgs[0].content.as_ref().unwrap().text(), "a\nb");
    }

    #[test]
    fn completion_prompt_forms() {
        for (body, ok) in [
            (r#"{"prompt":"x"}"#, true),
            (r#"{"prompt":["x","y"]}"#, true),
            (r#"{"prompt":[1,2,3]}"#, true),
            (r#"{"prompt":[[1],[2]]}"#, true),
            (r#"{"prompt":{"a":1}}"#, false),
        ] {
            assert_eq!(
                serde_json::from_str::<CompletionRequest>(body).is_ok(),
                ok,
                "{body}"
            );
        }
    }

    #[test]
    fn chat_response_keeps_vllm_field_order_and_nulls() {
        let r = ChatCompletion {
            id: "chatcmpl-1",
            object: "chat.completion",
            created: 7,
            model: "m",
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content: "hi".into(),
                    refusal: None,
                    annotations: None,
                    audio: None,
                    function_call: None,
                    reasoning: None,
                },
                logprobs: None,
                finish_reason: "stop",
                stop_reason: None,
                token_ids: None,
            }],
            service_tier: None,
            system_fingerprint: None,
            usage: Usage {
                prompt_tokens: 3,
                total_tokens: 4,
                completion_tokens: 1,
            }
            .into(),
            prompt_logprobs: None,
            prompt_token_ids: None,
            kv_transfer_params: None,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"id":"chatcmpl-1","object":"chat.completion","created":7,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi","refusal":null,"annotations":null,"audio":null,"function_call":null,"reasoning":null},"logprobs":null,"finish_reason":"stop","stop_reason":null,"token_ids":null}],"service_tier":null,"system_fingerprint":null,"usage":{"prompt_tokens":3,"total_tokens":4,"completion_tokens":1,"prompt_tokens_details":null},"prompt_logprobs":null,"prompt_token_ids":null,"kv_transfer_params":null}"#
        );
    }
}

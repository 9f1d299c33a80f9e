//! Stage `relay`: vLLM's answer, as the worker passes it on, turned into the
//! client's answer. Streams are re-framed event by event: the usage chunk the
//! gateway asked for is removed unless the client asked for it too, and a
//! stream that breaks ends with an SSE error event, never a clean `[DONE]`.

use std::pin::Pin;

use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tollgate_scheduler::Lease;
use tollgate_shared::openai::{ErrorEnvelope, Usage};
use tollgate_shared::worker_api::local::BodyBroken;

use crate::error::ApiError;
use crate::pool::Upstream;

/// How a request ended, for the log (and later, metering and audit).
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub usage: Option<Usage>,
    pub finish_reason: Option<String>,
    pub error: Option<&'static str>,
    /// Content chunks passed on (one per choice that carried text): vLLM
    /// streams one token a chunk, so this counts what was produced when a
    /// broken stream never delivered its usage chunk.
    pub content_chunks: u64,
    /// vLLM's id of the answer (`chatcmpl-…`), for the GenAI span.
    pub response_id: Option<String>,
    /// When the first generated text was passed on (streams): time to first token.
    pub first_token: Option<std::time::Instant>,
}

impl Outcome {
    /// Completion tokens actually produced: vLLM's usage when it came, else
    /// the content chunks the client received.
    pub fn completion_tokens(&self) -> u64 {
        self.usage
            .map_or(self.content_chunks, |u| u.completion_tokens)
    }
}

/// Turns a non-2xx vLLM answer into the client's error.
pub async fn upstream_error(resp: Upstream) -> ApiError {
    let status = resp.status.as_u16();
    let Ok(body) = resp.bytes().await else {
        return ApiError::UpstreamFailed;
    };
    let message = match serde_json::from_slice::<ErrorEnvelope>(&body) {
        Ok(env) => env.error.message,
        Err(_) => return ApiError::UpstreamFailed,
    };
    if status == 400 && message.contains("maximum context length") {
        return ApiError::InvalidRequest {
            message,
            param: Some("messages".into()),
            code: Some("context_length_exceeded"),
        };
    }
    ApiError::Upstream { status, message }
}

/// A complete (non-streamed) answer: the body as vLLM gave it.
pub async fn whole(
    resp: Upstream,
    lease: Lease,
    deadline: Instant,
) -> Result<(Bytes, Outcome), ApiError> {
    let body = tokio::time::timeout_at(deadline, resp.bytes())
        .await
        .map_err(|_| ApiError::UpstreamTimeout)?
        .map_err(|_| ApiError::UpstreamFailed)?;
    #[derive(serde::Deserialize)]
    struct Tail {
        id: Option<String>,
        usage: Option<Usage>,
        #[serde(default)]
        choices: Vec<Choice>,
    }
    #[derive(serde::Deserialize)]
    struct Choice {
        finish_reason: Option<String>,
    }
    let tail: Tail = serde_json::from_slice(&body).map_err(|_| ApiError::UpstreamFailed)?;
    // The tenant's fair share pays for the output (2 units a token) before the slot is freed.
    lease.end(tail.usage.map_or(0, |u| u.completion_tokens));
    let outcome = Outcome {
        usage: tail.usage,
        finish_reason: tail.choices.into_iter().find_map(|c| c.finish_reason),
        error: None,
        content_chunks: 0,
        response_id: tail.id,
        first_token: None,
    };
    Ok((body, outcome))
}

/// Output tokens between two charges to the scheduler while a stream runs.
const OUTPUT_CHARGE_STEP: u64 = 16;

type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<BodyBroken>>> + Send>>;

struct Relay {
    upstream: Events,
    lease: Option<Lease>,
    /// Output tokens already charged to the tenant's fair share.
    charged: u64,
    client_wants_usage: bool,
    outcome: Outcome,
    done: bool,
    deadline: Instant,
    on_end: Option<Box<dyn FnOnce(Outcome) + Send>>,
}

impl Relay {
    fn finish(&mut self) {
        self.done = true;
        if let Some(lease) = self.lease.take() {
            lease.end(self.outcome.content_chunks - self.charged);
        }
        if let Some(f) = self.on_end.take() {
            f(std::mem::take(&mut self.outcome));
        }
    }

    fn error_frame(&mut self, code: &'static str, message: &str) -> Bytes {
        self.outcome.error = Some(code);
        self.finish();
        let frame = serde_json::json!({
            "error": {"message": message, "type": "api_error", "param": null, "code": code}
        });
        Bytes::from(format!("data: {frame}\n\n"))
    }

    /// The next frame for the client, or `None` at the end.
    async fn next_frame(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        loop {
            let Ok(next) = tokio::time::timeout_at(self.deadline, self.upstream.next()).await
            else {
                return Some(
                    self.error_frame("timeout", "the request took longer than the gateway allows"),
                );
            };
            match next {
                None => {
                    return Some(self.error_frame(
                        "upstream_stream_ended",
                        "the model server ended the stream early",
                    ));
                }
                Some(Err(_)) => {
                    return Some(
                        self.error_frame(
                            "upstream_stream_broken",
                            "the model server's stream broke",
                        ),
                    );
                }
                Some(Ok(ev)) if ev.data == "[DONE]" => {
                    self.finish();
                    return Some(Bytes::from_static(b"data: [DONE]\n\n"));
                }
                Some(Ok(ev)) => {
                    if let Some(frame) = self.inspect(ev.data) {
                        return Some(frame);
                    }
                }
            }
        }
    }

    /// Notes usage and finish reasons; returns the frame to pass on, if any.
    fn inspect(&mut self, data: String) -> Option<Bytes> {
        #[derive(serde::Deserialize)]
        struct Chunk {
            id: Option<String>,
            #[serde(default)]
            choices: Vec<Choice>,
            usage: Option<Usage>,
            error: Option<serde_json::Value>,
        }
        #[derive(serde::Deserialize)]
        struct Choice {
            finish_reason: Option<String>,
            /// `/v1/completions`
            text: Option<String>,
            /// `/v1/chat/completions`
            delta: Option<Delta>,
        }
        #[derive(serde::Deserialize)]
        struct Delta {
            content: Option<String>,
        }
        match serde_json::from_str::<Chunk>(&data) {
            Ok(chunk) => {
                if chunk.error.is_some() {
                    self.outcome.error = Some("upstream_error");
                }
                let produced = chunk.choices.iter().filter(|c| {
                    let text = c
                        .text
                        .as_deref()
                        .or(c.delta.as_ref().and_then(|d| d.content.as_deref()));
                    text.is_some_and(|t| !t.is_empty())
                });
                let produced = produced.count() as u64;
                if produced > 0 && self.outcome.first_token.is_none() {
                    self.outcome.first_token = Some(std::time::Instant::now());
                }
                self.outcome.content_chunks += produced;
                // Output is charged to the tenant's fair share as it streams, in steps.
                if self.outcome.content_chunks - self.charged >= OUTPUT_CHARGE_STEP
                    && let Some(lease) = &self.lease
                {
                    lease.charge_output(self.outcome.content_chunks - self.charged);
                    self.charged = self.outcome.content_chunks;
                }
                if self.outcome.response_id.is_none() {
                    self.outcome.response_id = chunk.id;
                }
                if let Some(reason) = chunk.choices.iter().find_map(|c| c.finish_reason.clone()) {
                    self.outcome.finish_reason = Some(reason);
                }
                if let Some(u) = chunk.usage {
                    self.outcome.usage = Some(u);
                    // The usage-only chunk exists because the gateway asked for it.
                    if chunk.choices.is_empty() && !self.client_wants_usage {
                        return None;
                    }
                }
            }
            Err(_) => tracing::warn!("unparsable chunk from the model server passed on as is"),
        }
        Some(Bytes::from(format!("data: {data}\n\n")))
    }
}

/// The client's SSE stream. `on_end` runs once, when the stream ends or is dropped.
pub fn stream(
    resp: Upstream,
    lease: Lease,
    client_wants_usage: bool,
    deadline: Instant,
    on_end: Box<dyn FnOnce(Outcome) + Send>,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> {
    let relay = Relay {
        upstream: Box::pin(resp.body.eventsource()),
        lease: Some(lease),
        charged: 0,
        client_wants_usage,
        outcome: Outcome::default(),
        done: false,
        deadline,
        on_end: Some(on_end),
    };
    futures::stream::unfold(DropGuard(relay), |mut g| async move {
        let frame = g.0.next_frame().await?;
        Some((Ok(frame), g))
    })
}

/// Reports a stream the client abandoned (dropped before its end).
struct DropGuard(Relay);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.0.done {
            self.0.outcome.error = Some("client_disconnected");
            self.0.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> Result<Event, EventStreamError<BodyBroken>> {
        Ok(Event {
            event: "message".into(),
            data: data.into(),
            id: String::new(),
            retry: None,
        })
    }

    /// A stream cut after two tokens: the client gets an error event and no
    /// `[DONE]`, and the outcome counts the two tokens produced.
    #[tokio::test]
    async fn a_stream_cut_short_ends_with_an_error_and_counts_what_was_produced() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut relay = Relay {
            upstream: Box::pin(futures::stream::iter(vec![
                event(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#),
                event(r#"{"choices":[{"index":0,"delta":{"content":"Hello"}}]}"#),
                event(r#"{"choices":[{"index":0,"text":" world"}]}"#),
            ])),
            lease: None,
            charged: 0,
            client_wants_usage: false,
            outcome: Outcome::default(),
            done: false,
            deadline: Instant::now() + std::time::Duration::from_secs(60),
            on_end: Some(Box::new(move |o| tx.send(o).unwrap())),
        };
        let mut frames = Vec::new();
        while let Some(f) = relay.next_frame().await {
            frames.push(String::from_utf8(f.to_vec()).unwrap());
        }
        assert_eq!(frames.len(), 4);
        assert!(frames[3].starts_with("data: {\"error\""), "{frames:?}");
        assert!(!frames.iter().any(|f| f.contains("[DONE]")));
        let outcome = rx.recv().unwrap();
        assert_eq!(outcome.error, Some("upstream_stream_ended"));
        assert_eq!(outcome.content_chunks, 2);
        assert_eq!(outcome.completion_tokens(), 2);
    }
}

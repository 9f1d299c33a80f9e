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

use crate::error::ApiError;

/// How a request ended, for the log (and later, metering and audit).
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub usage: Option<Usage>,
    pub finish_reason: Option<String>,
    pub error: Option<&'static str>,
}

/// Turns a non-2xx vLLM answer into the client's error.
pub async fn upstream_error(resp: reqwest::Response) -> ApiError {
    let status = resp.status().as_u16();
    let message = match resp.json::<ErrorEnvelope>().await {
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
    resp: reqwest::Response,
    lease: Lease,
    deadline: Instant,
) -> Result<(Bytes, Outcome), ApiError> {
    let body = tokio::time::timeout_at(deadline, resp.bytes())
        .await
        .map_err(|_| ApiError::UpstreamTimeout)?
        .map_err(|_| ApiError::UpstreamFailed)?;
    drop(lease);
    #[derive(serde::Deserialize)]
    struct Tail {
        usage: Option<Usage>,
        #[serde(default)]
        choices: Vec<Choice>,
    }
    #[derive(serde::Deserialize)]
    struct Choice {
        finish_reason: Option<String>,
    }
    let tail: Tail = serde_json::from_slice(&body).map_err(|_| ApiError::UpstreamFailed)?;
    let outcome = Outcome {
        usage: tail.usage,
        finish_reason: tail.choices.into_iter().find_map(|c| c.finish_reason),
        error: None,
    };
    Ok((body, outcome))
}

type Upstream = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

struct Relay {
    upstream: Upstream,
    lease: Option<Lease>,
    client_wants_usage: bool,
    outcome: Outcome,
    done: bool,
    deadline: Instant,
    on_end: Option<Box<dyn FnOnce(Outcome) + Send>>,
}

impl Relay {
    fn finish(&mut self) {
        self.done = true;
        self.lease = None;
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
            #[serde(default)]
            choices: Vec<Choice>,
            usage: Option<Usage>,
            error: Option<serde_json::Value>,
        }
        #[derive(serde::Deserialize)]
        struct Choice {
            finish_reason: Option<String>,
        }
        match serde_json::from_str::<Chunk>(&data) {
            Ok(chunk) => {
                if chunk.error.is_some() {
                    self.outcome.error = Some("upstream_error");
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
    resp: reqwest::Response,
    lease: Lease,
    client_wants_usage: bool,
    deadline: Instant,
    on_end: Box<dyn FnOnce(Outcome) + Send>,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> {
    let relay = Relay {
        upstream: Box::pin(resp.bytes_stream().eventsource()),
        lease: Some(lease),
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

//! Server-sent events as vLLM frames them: `data: <json>\n\n` chunks, each
//! token sent as the engine produces it, then (on request) a usage chunk with
//! empty `choices`, then `data: [DONE]\n\n`. Chunks are serialised by hand
//! around a precomputed head: one small buffer per token, no JSON tree.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;

use super::error::SimError;
use super::protocol::Usage;
use super::runner::Submission;
use super::text::{Cursor, OutputPlan};

/// Stop gathering ready tokens into one write past this many bytes.
const MAX_WRITE: usize = 32 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Completion,
}

/// `stream_options` as vLLM resolves them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageMode {
    /// A final chunk with `usage` and no choices.
    pub include: bool,
    /// `usage` on every chunk.
    pub continuous: bool,
}

/// Writes the chunks of one response.
#[derive(Debug, Clone)]
pub struct ChunkFormat {
    api: Api,
    /// `{"id":…,"object":…,"created":…,"model":…`
    head: String,
}

impl ChunkFormat {
    pub fn new(api: Api, id: &str, created: u64, model: &str) -> ChunkFormat {
        let object = match api {
            Api::Chat => "chat.completion.chunk",
            Api::Completion => "text_completion",
        };
        let head = format!(
            "{{\"id\":{},\"object\":\"{object}\",\"created\":{created},\"model\":{}",
            json_str(id),
            json_str(model)
        );
        ChunkFormat { api, head }
    }

    /// The first chunk of a chat choice: `delta: {"role":"assistant","content":""}`.
    pub fn role(&self, out: &mut Vec<u8>, index: u32, usage: Option<Usage>) {
        self.open(out);
        push_fmt(
            out,
            format_args!(
                "{{\"index\":{index},\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]"
            ),
        );
        push_usage(out, usage);
        out.extend_from_slice(b",\"prompt_token_ids\":null}\n\n");
    }

    /// A chunk carrying `text`; `finish` = (finish_reason, stop_reason) on the last one.
    pub fn content(
        &self,
        out: &mut Vec<u8>,
        index: u32,
        text: &str,
        finish: Option<(&str, Option<&str>)>,
        usage: Option<Usage>,
    ) {
        self.open(out);
        push_fmt(out, format_args!("{{\"index\":{index},"));
        match self.api {
            Api::Chat => {
                out.extend_from_slice(b"\"delta\":{\"content\":");
                push_json_str(out, text);
                out.extend_from_slice(b"},\"logprobs\":null,");
                match finish {
                    Some((reason, stop)) => {
                        push_fmt(
                            out,
                            format_args!("\"finish_reason\":\"{reason}\",\"stop_reason\":"),
                        );
                        push_opt_str(out, stop);
                        out.push(b',');
                    }
                    None => out.extend_from_slice(b"\"finish_reason\":null,"),
                }
                out.extend_from_slice(b"\"token_ids\":null}]");
            }
            Api::Completion => {
                out.extend_from_slice(b"\"text\":");
                push_json_str(out, text);
                out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
                match finish {
                    Some((reason, stop)) => {
                        push_fmt(out, format_args!("\"{reason}\",\"stop_reason\":"));
                        push_opt_str(out, stop);
                    }
                    None => out.extend_from_slice(b"null,\"stop_reason\":null"),
                }
                out.extend_from_slice(b",\"prompt_token_ids\":null,\"token_ids\":null}]");
            }
        }
        push_usage(out, usage);
        out.extend_from_slice(b"}\n\n");
    }

    /// The closing usage chunk: `"choices":[]` and the totals.
    pub fn usage(&self, out: &mut Vec<u8>, usage: Usage) {
        self.open(out);
        out.push(b']');
        push_usage(out, Some(usage));
        out.extend_from_slice(b"}\n\n");
    }

    fn open(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(b",\"choices\":[");
    }
}

pub fn done(out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: [DONE]\n\n");
}

/// An error after streaming began: an error frame, then `[DONE]`.
pub fn error_frame(out: &mut Vec<u8>, err: &SimError) {
    out.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut *out, &err.envelope()).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
    done(out);
}

fn push_usage(out: &mut Vec<u8>, usage: Option<Usage>) {
    if let Some(u) = usage {
        push_fmt(
            out,
            format_args!(
                ",\"usage\":{{\"prompt_tokens\":{},\"total_tokens\":{},\"completion_tokens\":{}}}",
                u.prompt_tokens, u.total_tokens, u.completion_tokens
            ),
        );
    }
}

fn push_fmt(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = out.write_fmt(args);
}

fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

pub fn usage(prompt: u64, completion: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        total_tokens: prompt + completion,
        completion_tokens: completion,
    }
}

/// One choice of a streamed response.
#[derive(Debug)]
pub struct ChoiceStream {
    pub index: u32,
    pub prompt_len: u32,
    pub plan: Arc<OutputPlan>,
    /// Text shown before the first token (request `echo`).
    pub prefix: Option<Arc<str>>,
    pub sub: Submission,
    pub cursor: Cursor,
    pub tokens: u32,
    pub done: bool,
}

/// Fault injection on a stream: after this many tokens...
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamFaults {
    /// ...stop sending but keep the connection open.
    pub stall_after: Option<u32>,
    /// ...cut the connection (no `[DONE]`).
    pub drop_after: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Streaming,
    Stalled,
    Dropping,
    Finished,
}

/// The body of a streaming answer.
#[derive(Debug)]
pub struct SseBody {
    fmt: ChunkFormat,
    choices: Vec<ChoiceStream>,
    mode: UsageMode,
    prompt_tokens: u64,
    faults: StreamFaults,
    started: bool,
    sent: u32,
    phase: Phase,
}

impl SseBody {
    pub fn new(
        fmt: ChunkFormat,
        choices: Vec<ChoiceStream>,
        mode: UsageMode,
        prompt_tokens: u64,
        faults: StreamFaults,
    ) -> SseBody {
        SseBody {
            fmt,
            choices,
            mode,
            prompt_tokens,
            faults,
            started: false,
            sent: 0,
            phase: Phase::Streaming,
        }
    }

    /// First output: the role chunk of every chat choice, then echoed text.
    fn start(&mut self, out: &mut Vec<u8>) {
        self.started = true;
        if self.fmt.api != Api::Chat {
            return;
        }
        let continuous = self.mode.continuous;
        for c in &self.choices {
            let u = continuous.then(|| usage(u64::from(c.prompt_len), 0));
            self.fmt.role(out, c.index, u);
        }
        for c in &mut self.choices {
            if let Some(prefix) = c.prefix.take() {
                let u = continuous.then(|| usage(u64::from(c.prompt_len), 0));
                self.fmt.content(out, c.index, &prefix, None, u);
            }
        }
    }

    fn fault_due(&self) -> Option<Phase> {
        if self.faults.drop_after.is_some_and(|n| self.sent >= n) {
            Some(Phase::Dropping)
        } else if self.faults.stall_after.is_some_and(|n| self.sent >= n) {
            Some(Phase::Stalled)
        } else {
            None
        }
    }

    /// Gathers every token already produced into `out`.
    fn drain(&mut self, cx: &mut Context<'_>, out: &mut Vec<u8>) {
        let mut progress = true;
        while progress && out.len() < MAX_WRITE {
            progress = false;
            for i in 0..self.choices.len() {
                if self.choices[i].done {
                    continue;
                }
                match self.choices[i].sub.events.poll_recv(cx) {
                    Poll::Ready(Some(ev)) => {
                        if let Some(phase) = self.fault_due() {
                            // Abort everything upstream; the fault shows on the next poll.
                            self.choices.clear();
                            self.phase = phase;
                            return;
                        }
                        if !self.started {
                            self.start(out);
                        }
                        self.emit(i, ev.index, ev.last, out);
                        progress = true;
                    }
                    Poll::Ready(None) => {
                        error_frame(out, &SimError::EngineGone);
                        self.choices.clear();
                        self.phase = Phase::Finished;
                        return;
                    }
                    Poll::Pending => {}
                }
            }
        }
        if !self.choices.is_empty() && self.choices.iter().all(|c| c.done) {
            if self.mode.include {
                let completion = self.choices.iter().map(|c| u64::from(c.tokens)).sum();
                self.fmt.usage(out, usage(self.prompt_tokens, completion));
            }
            done(out);
            self.phase = Phase::Finished;
        }
    }

    fn emit(&mut self, i: usize, token: u32, last: bool, out: &mut Vec<u8>) {
        let continuous = self.mode.continuous;
        let c = &mut self.choices[i];
        let piece = c.cursor.next(&c.plan, token);
        c.tokens += 1;
        let u = continuous.then(|| usage(u64::from(c.prompt_len), u64::from(c.tokens)));
        let finish = last.then(|| (c.plan.finish.as_str(), c.plan.stop_reason.as_deref()));
        match c.prefix.take() {
            Some(prefix) => {
                let text = format!("{prefix}{piece}");
                self.fmt.content(out, c.index, &text, finish, u);
            }
            None => self.fmt.content(out, c.index, piece, finish, u),
        }
        if last {
            c.done = true;
            c.sub.guard.disarm();
        }
        self.sent += 1;
    }
}

impl Stream for SseBody {
    type Item = Result<Bytes, SimError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.phase {
            Phase::Finished => return Poll::Ready(None),
            // Never woken again: the client sees a connection that stays silent.
            Phase::Stalled => return Poll::Pending,
            Phase::Dropping => {
                this.phase = Phase::Finished;
                return Poll::Ready(Some(Err(SimError::Dropped)));
            }
            Phase::Streaming => {}
        }
        let mut out = Vec::new();
        this.drain(cx, &mut out);
        if !out.is_empty() {
            return Poll::Ready(Some(Ok(Bytes::from(out))));
        }
        match this.phase {
            Phase::Streaming | Phase::Stalled => Poll::Pending,
            Phase::Dropping => {
                this.phase = Phase::Finished;
                Poll::Ready(Some(Err(SimError::Dropped)))
            }
            Phase::Finished => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(out: Vec<u8>) -> String {
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn chat_chunks_match_vllm() {
        let f = ChunkFormat::new(Api::Chat, "chatcmpl-1", 5, "m");
        let mut out = Vec::new();
        f.role(&mut out, 0, None);
        assert_eq!(
            text(out),
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"prompt_token_ids\":null}\n\n"
        );
        let mut out = Vec::new();
        f.content(
            &mut out,
            0,
            " a\"b",
            Some(("stop", None)),
            Some(usage(3, 2)),
        );
        let line = text(out);
        let json: serde_json::Value =
            serde_json::from_str(line.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert_eq!(json["choices"][0]["delta"]["content"], " a\"b");
        assert_eq!(json["choices"][0]["finish_reason"], "stop");
        assert!(json["choices"][0]["stop_reason"].is_null());
        assert_eq!(json["usage"]["total_tokens"], 5);
    }

    #[test]
    fn completion_and_usage_chunks() {
        let f = ChunkFormat::new(Api::Completion, "cmpl-1", 5, "m");
        let mut out = Vec::new();
        f.content(&mut out, 1, "x", None, None);
        f.usage(&mut out, usage(4, 1));
        done(&mut out);
        assert_eq!(
            text(out),
            "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":5,\"model\":\"m\",\"choices\":[{\"index\":1,\"text\":\"x\",\"logprobs\":null,\"finish_reason\":null,\"stop_reason\":null,\"prompt_token_ids\":null,\"token_ids\":null}]}\n\n\
             data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":5,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"total_tokens\":5,\"completion_tokens\":1}}\n\n\
             data: [DONE]\n\n"
        );
    }

    #[test]
    fn error_frame_then_done() {
        let mut out = Vec::new();
        error_frame(&mut out, &SimError::EngineGone);
        assert_eq!(
            text(out),
            "data: {\"error\":{\"message\":\"Internal server error\",\"type\":\"InternalServerError\",\"param\":null,\"code\":500}}\n\ndata: [DONE]\n\n"
        );
    }
}

//! How the stages report to their request's trail: one short call each
//! (who called, what was asked, queue wait, shard, how the answer went), and
//! the spans of the GenAI part (`chat <model>` with `queue`, `dispatch` and
//! `relay` under it). Every call does nothing for a request without a trail.
//!
//! The trail is reachable from the request (`Observe::of`) and, for code
//! that never sees the request (the dispatch loop), from the task: the
//! middleware and [`Observe::stream`] run their futures inside a task-local
//! scope, as tracing does with the current span.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpMessage, HttpRequest};
use tollgate_scheduler::ShardId;
use tollgate_shared::openai::{ChatCompletionRequest, CompletionRequest, GenerateRequest};
use tracing::Instrument;

use super::redact;
use super::trail::{AnswerFacts, CallerFacts, RequestFacts, Trail};
use crate::audit::AuditRecord;
use crate::auth::Caller;
use crate::auth::manage::scope_list;
use crate::error::ApiError;
use crate::relay::Outcome;

tokio::task_local! {
    static CURRENT: Arc<Trail>;
}

/// Runs `f` with `trail` as the task's current trail.
pub fn scope<F: Future>(trail: Arc<Trail>, f: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(trail, f)
}

/// A stage's handle on its request's trail.
#[derive(Clone, Default)]
pub struct Observe(Option<Arc<Trail>>);

fn answer_of(o: &Outcome) -> AnswerFacts {
    AnswerFacts {
        prompt_tokens: o.usage.map(|u| u.prompt_tokens),
        completion_tokens: o.usage.map(|u| u.completion_tokens).or_else(|| {
            // A broken stream never delivered its usage: what was produced.
            o.error.map(|_| o.completion_tokens())
        }),
        finish_reason: o.finish_reason.clone(),
        response_id: o.response_id.clone(),
        first_token: o.first_token,
        error: o.error,
    }
}

impl Observe {
    pub fn of(req: &HttpRequest) -> Observe {
        Observe(req.extensions().get::<Arc<Trail>>().cloned())
    }

    /// The trail of the request this task is serving, if any.
    pub fn current() -> Observe {
        Observe(CURRENT.try_with(Arc::clone).ok())
    }

    /// Makes `r` the request's one audit record (a token endpoint's event);
    /// without a trail it is written as it is.
    pub fn record_as(&self, audit: &crate::audit::Audit, r: AuditRecord) {
        match &self.0 {
            Some(t) => t.record_as(r),
            None => audit.record(r),
        }
    }

    /// Stage `authenticate` named the caller.
    pub fn caller(&self, c: &Caller) {
        if let Some(t) = &self.0 {
            t.set_caller(CallerFacts {
                client_id: c.client_id.to_string(),
                tenant: c.tenant.to_string(),
                scopes: scope_list(&c.scopes),
                priority: Some(c.priority),
            });
        }
    }

    fn request(
        &self,
        operation: &'static str,
        model: Option<&str>,
        prompt: impl FnOnce(bool) -> redact::PromptFacts,
        max_tokens: Option<u32>,
        temperature: Option<f64>,
        stream: Option<bool>,
    ) {
        let Some(t) = &self.0 else {
            return;
        };
        let gw = t.gateway();
        let facts = prompt(gw.config.telemetry.audit_prompt_sample);
        t.set_request(
            facts,
            RequestFacts {
                operation,
                model: model.unwrap_or(&gw.config.gateway.model).to_owned(),
                max_tokens,
                temperature,
                stream: stream.unwrap_or(false),
            },
        );
    }

    /// The body parsed: what the chat asks for and a digest of its prompt.
    pub fn chat(&self, r: &ChatCompletionRequest) {
        self.request(
            "chat",
            r.model.as_deref(),
            |sample| redact::chat(&r.messages, sample),
            r.max_completion_tokens.or(r.max_tokens),
            r.temperature,
            r.stream,
        );
    }

    pub fn completion(&self, r: &CompletionRequest) {
        self.request(
            "text_completion",
            r.model.as_deref(),
            |sample| redact::completion(&r.prompt, sample),
            r.max_tokens,
            r.temperature,
            r.stream,
        );
    }

    pub fn generate(&self, g: &GenerateRequest) {
        self.request(
            "chat",
            None,
            |sample| redact::generate(&g.prompt, sample),
            g.max_tokens,
            g.temperature,
            Some(false),
        );
    }

    /// A guardrail pattern matched in `flag` mode.
    pub fn flagged(&self, flagged: bool) {
        if let (Some(t), true) = (&self.0, flagged) {
            t.set_flagged(true);
        }
    }

    /// The GenAI span (`chat <model>`), opened now under the request's span
    /// and kept open until the answer is complete.
    pub fn genai(&self) -> tracing::Span {
        let Some(t) = &self.0 else {
            return tracing::Span::none();
        };
        let Some(r) = t.request() else {
            return tracing::Span::none();
        };
        let span = tracing::info_span!(
            "genai",
            otel.name = %format!("{} {}", r.operation, r.model),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            gen_ai.operation.name = r.operation,
            gen_ai.provider.name = "vllm",
            gen_ai.request.model = %r.model,
            gen_ai.request.max_tokens = tracing::field::Empty,
            gen_ai.request.temperature = tracing::field::Empty,
            gen_ai.request.stream = r.stream,
            gen_ai.response.id = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            error.type = tracing::field::Empty,
            tollgate.client_id = tracing::field::Empty,
            tollgate.tenant = tracing::field::Empty,
            tollgate.priority = tracing::field::Empty,
            tollgate.queue_wait_ms = tracing::field::Empty,
        );
        if let Some(n) = r.max_tokens {
            span.record("gen_ai.request.max_tokens", i64::from(n));
        }
        if let Some(x) = r.temperature {
            span.record("gen_ai.request.temperature", x);
        }
        t.keep_spans(Some(span.clone()), None);
        span
    }

    /// The `relay` span, under the GenAI span, open until the answer is complete.
    pub fn relay(&self, genai: &tracing::Span) -> tracing::Span {
        let Some(t) = &self.0 else {
            return tracing::Span::none();
        };
        let span = tracing::info_span!(parent: genai, "relay");
        t.keep_spans(None, Some(span.clone()));
        span
    }

    /// The request has waited this long in the queue so far (requeues included).
    pub fn queued(&self, waited: Duration) {
        if let Some(t) = &self.0 {
            t.set_queued(waited);
        }
    }

    pub fn shard(&self, shard: &ShardId) {
        if let Some(t) = &self.0 {
            t.set_shard(&shard.worker, shard.index);
        }
    }

    /// A complete (non-streamed) answer.
    pub fn answer(&self, o: &Outcome) {
        if let Some(t) = &self.0 {
            t.set_answer(answer_of(o));
        }
    }

    /// A streamed answer's end, whatever it was (the relay's `on_end`).
    pub fn stream_end(&self, o: &Outcome) {
        if let Some(t) = &self.0 {
            t.stream_ended(answer_of(o));
        }
    }

    /// Wraps the start of a streamed answer (queue, dispatch, the answer's
    /// head): it runs inside the GenAI span and this trail wherever it is
    /// polled, and a start that fails or is dropped ends the trail's stream
    /// (on success, the relay's `on_end` will).
    pub fn stream<F, S>(
        &self,
        genai: tracing::Span,
        start: F,
    ) -> impl Future<Output = Result<S, ApiError>> + use<F, S>
    where
        F: Future<Output = Result<S, ApiError>>,
    {
        let trail = self.0.clone();
        if let Some(t) = &trail {
            t.expect_stream();
        }
        let guard = NotStarted(trail.clone());
        let run = async move {
            let mut guard = guard;
            let result = start.await;
            if let (Some(t), Err(e)) = (guard.0.take(), &result) {
                t.stream_ended(AnswerFacts {
                    error: Some(e.code()),
                    ..AnswerFacts::default()
                });
            }
            result
        }
        .instrument(genai);
        ScopedOpt(trail).run(run)
    }
}

/// Ends the trail's stream as abandoned when the start is dropped unfinished.
struct NotStarted(Option<Arc<Trail>>);

impl Drop for NotStarted {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.stream_ended(AnswerFacts {
                error: Some("client_disconnected"),
                ..AnswerFacts::default()
            });
        }
    }
}

/// Scopes a future to a trail when there is one.
struct ScopedOpt(Option<Arc<Trail>>);

impl ScopedOpt {
    async fn run<F: Future>(self, f: F) -> F::Output {
        match self.0 {
            Some(t) => CURRENT.scope(t, f).await,
            None => f.await,
        }
    }
}

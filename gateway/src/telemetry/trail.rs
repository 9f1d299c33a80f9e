//! A request's trail: what the stages learn about one request, and the one
//! place where it is turned into the request's audit record, its metrics,
//! its dashboard sample and its span attributes — exactly once.
//!
//! Who finishes a trail: the middleware, when the answer is complete (an
//! error, a JSON answer), or gone before it was made (the client left:
//! recorded as 499); for a streamed answer, the end of the stream. A streamed
//! answer is known as one only when the middleware sees its 200, and its end
//! may come before or after that, so both are waited for (see
//! [`Trail::answered`] and [`Trail::stream_ended`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::web;
use tollgate_shared::config::Priority;
use tollgate_shared::ids::RequestId;

use super::metrics::{self, Finished, GenAi, NO_TENANT};
use super::redact::PromptFacts;
use super::stats::Sample;
use crate::app::Gateway;
use crate::audit::{AuditRecord, now_ms};

/// The routes the dashboard's figures are about: the model's traffic, not
/// logins, admin calls or the dashboard's own polling.
const INFERENCE_ROUTES: &[&str] = &["/v1/chat/completions", "/v1/completions", "/v1/generate"];

/// Who is calling, once authentication said so.
#[derive(Debug, Clone)]
pub struct CallerFacts {
    pub client_id: String,
    pub tenant: String,
    pub scopes: String,
    pub priority: Option<Priority>,
}

/// What the request asked the model for.
#[derive(Debug, Clone)]
pub struct RequestFacts {
    /// `chat` or `text_completion` (GenAI `gen_ai.operation.name`).
    pub operation: &'static str,
    pub model: String,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub stream: bool,
}

/// How the model's answer went.
#[derive(Debug, Clone, Default)]
pub struct AnswerFacts {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub finish_reason: Option<String>,
    pub response_id: Option<String>,
    pub first_token: Option<Instant>,
    /// Why a streamed answer broke off (`client_disconnected`, `upstream_stream_broken`, …).
    pub error: Option<&'static str>,
}

#[derive(Default)]
struct State {
    done: bool,
    /// The handler answers with a stream: a 200 is not the end.
    streaming: bool,
    /// The middleware's 200 for a stream, waiting for the stream's end.
    answered_ok: bool,
    /// A stream's end, waiting for the middleware's 200.
    ended: Option<AnswerFacts>,
    caller: Option<CallerFacts>,
    prompt: Option<PromptFacts>,
    request: Option<RequestFacts>,
    answer: Option<AnswerFacts>,
    queued: Option<Duration>,
    shard: Option<(String, u32)>,
    flagged: bool,
    genai: Option<tracing::Span>,
    relay: Option<tracing::Span>,
    /// A handler's own event (`token_issued`, …) that is this request's record.
    event: Option<AuditRecord>,
}

/// How the middleware saw the request end.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub status: u16,
    /// The error's code (`ApiError::code`), when the answer is an error.
    pub error: Option<&'static str>,
}

pub struct Trail {
    gw: web::Data<Gateway>,
    started: Instant,
    request_id: RequestId,
    /// The matched route pattern (metrics label).
    route: String,
    /// The path as requested, escaped and cut (audit).
    path: String,
    ip: Option<String>,
    user_agent: Option<String>,
    root: tracing::Span,
    state: Mutex<State>,
}

impl Trail {
    pub fn new(
        gw: web::Data<Gateway>,
        request_id: RequestId,
        route: String,
        path: String,
        ip: Option<String>,
        user_agent: Option<String>,
        root: tracing::Span,
    ) -> Trail {
        Trail {
            gw,
            started: Instant::now(),
            request_id,
            route,
            path,
            ip,
            user_agent,
            root,
            state: Mutex::new(State::default()),
        }
    }

    pub fn gateway(&self) -> &Gateway {
        &self.gw
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> Option<T> {
        self.state.lock().ok().map(|mut s| f(&mut s))
    }

    pub fn set_caller(&self, c: CallerFacts) {
        self.root.record("tollgate.client_id", c.client_id.as_str());
        self.root.record("tollgate.tenant", c.tenant.as_str());
        self.with(|s| s.caller = Some(c));
    }

    pub fn has_caller(&self) -> bool {
        self.with(|s| s.caller.is_some()).unwrap_or(true)
    }

    pub fn set_request(&self, prompt: PromptFacts, request: RequestFacts) {
        self.with(|s| {
            s.prompt = Some(prompt);
            s.request = Some(request);
        });
    }

    pub fn request(&self) -> Option<RequestFacts> {
        self.with(|s| s.request.clone()).flatten()
    }

    pub fn set_flagged(&self, flagged: bool) {
        self.with(|s| s.flagged = flagged);
    }

    /// The request waited this long in the queue, in all (requeues included).
    pub fn set_queued(&self, waited: Duration) {
        self.with(|s| s.queued = Some(waited));
    }

    pub fn set_shard(&self, worker: &str, shard: u32) {
        self.with(|s| s.shard = Some((worker.to_owned(), shard)));
    }

    pub fn keep_spans(&self, genai: Option<tracing::Span>, relay: Option<tracing::Span>) {
        self.with(|s| {
            if genai.is_some() {
                s.genai = genai;
            }
            if relay.is_some() {
                s.relay = relay;
            }
        });
    }

    /// Makes `r` the request's audit record in place of the generic one;
    /// the trail still fills in what every request record carries.
    pub fn record_as(&self, r: AuditRecord) {
        self.with(|s| s.event = Some(r));
    }

    pub fn set_answer(&self, a: AnswerFacts) {
        self.with(|s| s.answer = Some(a));
    }

    /// The handler is about to answer with a stream.
    pub fn expect_stream(&self) {
        self.with(|s| s.streaming = true);
    }

    /// The middleware's view of the end. A stream's 200 waits for the stream.
    pub fn answered(&self, a: Answer) {
        let end = self.with(|s| {
            if s.done {
                return None;
            }
            if !(s.streaming && a.status == 200) {
                return Some(None);
            }
            match s.ended.take() {
                Some(end) => Some(Some(end)),
                None => {
                    s.answered_ok = true;
                    None
                }
            }
        });
        if let Some(Some(end)) = end {
            self.finish(a, end);
        }
    }

    /// A stream ended (or never started: `end.error` says why).
    pub fn stream_ended(&self, end: AnswerFacts) {
        let now = self.with(|s| {
            if s.done {
                return None;
            }
            if s.answered_ok {
                Some(end)
            } else {
                s.ended = Some(end);
                None
            }
        });
        if let Some(end) = now.flatten() {
            self.finish(
                Answer {
                    status: 200,
                    error: None,
                },
                Some(end),
            );
        }
    }

    fn finish(&self, a: Answer, stream_end: Option<AnswerFacts>) {
        let Some(mut s) = self
            .with(|s| {
                if s.done {
                    return None;
                }
                s.done = true;
                Some(std::mem::take(s))
            })
            .flatten()
        else {
            return;
        };
        if let Some(end) = stream_end {
            s.answer = Some(end);
        }
        let latency = self.started.elapsed();
        let answer = s.answer.take().unwrap_or_default();
        let error = a.error.or(answer.error);
        let ttft = answer
            .first_token
            .map(|t| t.saturating_duration_since(self.started));
        self.spans(&s, a, &answer, error);
        self.audit(&mut s, a, &answer, error, latency, ttft);
        let caller = s.caller.as_ref();
        let tenant = caller.map_or(NO_TENANT, |c| c.tenant.as_str());
        let per_token = match (answer.first_token, answer.completion_tokens) {
            (Some(first), Some(n)) if n > 1 => Some(first.elapsed().div_f64((n - 1) as f64)),
            _ => None,
        };
        if let (Some(q), Some(p)) = (s.queued, caller.and_then(|c| c.priority)) {
            metrics::queue_wait(p, q);
        }
        let request = s.request.as_ref();
        metrics::finished(&Finished {
            tenant,
            route: &self.route,
            status: a.status,
            duration: latency,
            priority: caller.and_then(|c| c.priority),
            ttft,
            tokens: answer.prompt_tokens.zip(answer.completion_tokens),
            per_token,
            limited_by: (a.status == 429).then_some(error).flatten(),
            genai: request.map(|r| GenAi {
                operation: r.operation,
                model: &r.model,
            }),
            error,
        });
        if INFERENCE_ROUTES.contains(&self.route.as_str()) {
            self.gw.stats.record(
                now_ms() / 1000,
                Sample {
                    tenant,
                    status: a.status,
                    broken: answer.error.is_some_and(|e| e != "client_disconnected"),
                    latency_ms: latency.as_secs_f64() * 1000.0,
                    ttft_ms: ttft.map(|t| t.as_secs_f64() * 1000.0),
                },
            );
        }
        // The spans end here (the root's last handle goes with the middleware).
        drop(s.relay.take());
        drop(s.genai.take());
    }

    fn spans(&self, s: &State, a: Answer, answer: &AnswerFacts, error: Option<&'static str>) {
        // Numbers go to spans as i64: the OpenTelemetry layer exports other
        // integer types as their Debug text, a string attribute.
        self.root
            .record("http.response.status_code", i64::from(a.status));
        if let Some(e) = error {
            self.root.record("error.type", e);
        }
        if a.status >= 500 || answer.error.is_some_and(|e| e != "client_disconnected") {
            self.root.record("otel.status_code", "error");
        }
        let Some(g) = &s.genai else {
            return;
        };
        if let Some(c) = &s.caller {
            g.record("tollgate.client_id", c.client_id.as_str());
            g.record("tollgate.tenant", c.tenant.as_str());
            if let Some(p) = c.priority {
                g.record("tollgate.priority", p.as_str());
            }
        }
        if let Some(q) = s.queued {
            g.record("tollgate.queue_wait_ms", q.as_millis() as i64);
        }
        if let Some(id) = &answer.response_id {
            g.record("gen_ai.response.id", id.as_str());
        }
        if let Some(n) = answer.prompt_tokens {
            g.record("gen_ai.usage.input_tokens", n as i64);
        }
        if let Some(n) = answer.completion_tokens {
            g.record("gen_ai.usage.output_tokens", n as i64);
        }
        if let Some(r) = &answer.finish_reason {
            tollgate_shared::telemetry::set_string_array(
                g,
                "gen_ai.response.finish_reasons",
                vec![r.clone()],
            );
        }
        if let Some(e) = error {
            g.record("error.type", e);
            if e != "client_disconnected" {
                g.record("otel.status_code", "error");
            }
        }
    }

    fn audit(
        &self,
        s: &mut State,
        a: Answer,
        answer: &AnswerFacts,
        error: Option<&'static str>,
        latency: Duration,
        ttft: Option<Duration>,
    ) {
        let mut r = s
            .event
            .take()
            .unwrap_or_else(|| AuditRecord::new("request"));
        r.request_id = Some(self.request_id.to_string());
        r.ip = self.ip.clone();
        r.user_agent = self.user_agent.clone();
        r.route = Some(self.path.clone());
        r.status = Some(a.status);
        // An event's own code is more precise than the answer's.
        r.error_code = r.error_code.take().or(error.map(str::to_owned));
        r.latency_ms = Some(latency.as_millis() as u64);
        r.ttft_ms = ttft.map(|t| t.as_millis() as u64);
        if let Some(c) = s.caller.as_ref().filter(|_| r.client_id.is_none()) {
            r.client_id = Some(c.client_id.clone());
            r.tenant = Some(c.tenant.clone());
            r.scopes = Some(c.scopes.clone());
            r.priority = c.priority.map(Priority::as_str);
        }
        if let Some(p) = &s.prompt {
            r.prompt_chars = Some(p.chars);
            r.prompt_sha256 = Some(p.sha256.clone());
            r.prompt_sample = p.sample.clone();
        }
        r.queue_ms = s.queued.map(|q| q.as_millis() as u64);
        if let Some((worker, shard)) = &s.shard {
            r.worker = Some(worker.clone());
            r.shard = Some(*shard);
        }
        r.prompt_tokens = answer.prompt_tokens;
        r.completion_tokens = answer.completion_tokens;
        r.finish_reason = answer.finish_reason.clone();
        r.flagged = s.flagged.then_some(true);
        self.gw.audit.record(r);
    }
}

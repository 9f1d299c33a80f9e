//! `/v1/chat/completions` and `/v1/completions`: parse leniently, validate
//! as vLLM does, render and tokenize the prompt, fix each choice's output,
//! submit to the engine, then stream or collect the answer.

use std::sync::Arc;

use actix_web::HttpResponse;
use bytes::Bytes;

use super::error::SimError;
use super::http::SimState;
use super::protocol::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatRequest, Completion, CompletionChoice,
    CompletionRequest, PromptInput, Stop,
};
use super::runner::{Spec, Submission};
use super::sse::{self, Api, ChoiceStream, ChunkFormat, SseBody, UsageMode};
use super::template::{self, Ending};
use super::text::{Cursor, OutputPlan, PlanRequest, mix};
use super::validate::{
    base_request_id, check_cache_salt, check_min_tokens, check_priority, choices_n, parse,
    resolve_max_tokens, seed_for, unix_now, usage_mode,
};
use super::{kv, tokenizer};

/// vLLM's default `max_tokens` for `/v1/completions`.
const COMPLETIONS_DEFAULT_MAX_TOKENS: i64 = 16;

/// A tokenized prompt.
#[derive(Debug, Clone)]
pub struct PromptData {
    pub text: Arc<str>,
    pub len: u32,
    pub hashes: Arc<[u64]>,
    /// Token end offsets, kept when the output echoes the prompt.
    pub ends: Option<Arc<[u32]>>,
}

impl PromptData {
    pub fn from_text(
        text: String,
        block_size: u32,
        salt: Option<&str>,
        keep_ends: bool,
    ) -> PromptData {
        let mut ids = Vec::with_capacity(text.len() / 3);
        let mut ends = Vec::new();
        for r in tokenizer::spans(&text) {
            ids.push(tokenizer::token_id(&text[r.clone()]));
            if keep_ends {
                ends.push(u32::try_from(r.end).unwrap_or(u32::MAX));
            }
        }
        PromptData {
            len: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            hashes: kv::block_hashes(ids, block_size, salt).into(),
            ends: keep_ends.then(|| ends.into()),
            text: text.into(),
        }
    }

    fn from_ids(ids: Vec<u32>, block_size: u32, salt: Option<&str>, keep_ends: bool) -> PromptData {
        PromptData {
            len: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            hashes: kv::block_hashes(ids, block_size, salt).into(),
            ends: keep_ends.then(|| Arc::from(Vec::new())),
            text: Arc::from(""),
        }
    }
}

/// Everything needed to answer, once validated.
#[derive(Debug)]
struct Job {
    api: Api,
    id: String,
    created: u64,
    stream: bool,
    usage: UsageMode,
    prompt_tokens: u64,
    priority: i64,
    choices: Vec<ChoiceJob>,
}

#[derive(Debug)]
struct ChoiceJob {
    index: u32,
    prompt_len: u32,
    hashes: Arc<[u64]>,
    plan: Arc<OutputPlan>,
    prefix: Option<Arc<str>>,
}

/// What every choice of a request shares.
struct Sampling {
    max_tokens: u32,
    min_tokens: u32,
    ignore_eos: bool,
    stop: Vec<String>,
    include_stop: bool,
}

pub async fn chat(
    state: &SimState,
    request_id: Option<&str>,
    body: &[u8],
) -> Result<HttpResponse, SimError> {
    let req: ChatRequest = parse(body)?;
    state.check_model(req.model.as_deref())?;
    let stream = req.stream.unwrap_or(false);
    let usage = usage_mode(stream, req.stream_options)?;
    let n = choices_n(req.n)?;
    check_cache_salt(req.cache_salt.as_deref())?;
    let messages = req
        .messages
        .ok_or_else(|| SimError::bad_param("Field required: messages", "messages"))?;
    let ending = match (req.continue_final_message, req.add_generation_prompt) {
        (true, Some(true)) => {
            return Err(SimError::bad_request(
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
            ));
        }
        (true, _) => Ending::ContinueFinal,
        (false, Some(false)) => Ending::Closed,
        (false, _) => Ending::GenerationPrompt,
    };
    let text = template::render(&messages, req.tools.as_deref(), ending);
    let prompt = PromptData::from_text(
        text,
        state.block_size,
        req.cache_salt.as_deref(),
        state.echo,
    );
    let (param, requested) = match req.max_completion_tokens {
        Some(m) => ("max_completion_tokens", Some(m)),
        None => ("max_tokens", req.max_tokens),
    };
    let max_tokens = resolve_max_tokens(state.max_model_len, prompt.len, requested, param)?;
    let sampling = Sampling {
        max_tokens,
        min_tokens: check_min_tokens(req.min_tokens, max_tokens)?,
        ignore_eos: req.ignore_eos,
        stop: req.stop.map(Stop::into_vec).unwrap_or_default(),
        include_stop: req.include_stop_str_in_output,
    };
    check_priority(state.policy, req.priority)?;
    // Request `echo`: the reply repeats the last message when it has the reply's role.
    let prefix = match messages.last() {
        Some(m) if req.echo && m.role == "assistant" => {
            m.content.as_ref().map(|c| Arc::from(c.text()))
        }
        _ => None,
    };
    let seed = seed_for(state.seed, req.seed, &prompt.text);
    let choices = (0..n)
        .map(|i| {
            choice(
                state,
                &prompt,
                &sampling,
                mix(seed, u64::from(i)),
                i,
                prefix.clone(),
            )
        })
        .collect();
    let job = Job {
        api: Api::Chat,
        id: format!(
            "chatcmpl-{}",
            base_request_id(request_id, req.request_id.as_deref())
        ),
        created: unix_now(),
        stream,
        usage,
        prompt_tokens: u64::from(prompt.len),
        priority: req.priority,
        choices,
    };
    run(state, job).await
}

pub async fn completions(
    state: &SimState,
    request_id: Option<&str>,
    body: &[u8],
) -> Result<HttpResponse, SimError> {
    let req: CompletionRequest = parse(body)?;
    state.check_model(req.model.as_deref())?;
    let stream = req.stream.unwrap_or(false);
    let usage = usage_mode(stream, req.stream_options)?;
    let n = choices_n(req.n)?;
    check_cache_salt(req.cache_salt.as_deref())?;
    let (bs, salt, echo) = (state.block_size, req.cache_salt.as_deref(), state.echo);
    let prompts: Vec<PromptData> = match req.prompt {
        Some(PromptInput::Text(s)) if !s.is_empty() => {
            vec![PromptData::from_text(s, bs, salt, echo)]
        }
        Some(PromptInput::Texts(v)) if !v.is_empty() && v.iter().all(|s| !s.is_empty()) => v
            .into_iter()
            .map(|s| PromptData::from_text(s, bs, salt, echo))
            .collect(),
        Some(PromptInput::Ids(ids)) if !ids.is_empty() => {
            vec![PromptData::from_ids(ids, bs, salt, echo)]
        }
        Some(PromptInput::IdLists(l)) if !l.is_empty() && l.iter().all(|ids| !ids.is_empty()) => l
            .into_iter()
            .map(|ids| PromptData::from_ids(ids, bs, salt, echo))
            .collect(),
        _ => {
            return Err(SimError::bad_param(
                "Either prompt or prompt_embeds must be provided and non-empty.",
                "prompt",
            ));
        }
    };
    let requested = Some(req.max_tokens.unwrap_or(COMPLETIONS_DEFAULT_MAX_TOKENS));
    let stop = req.stop.map(Stop::into_vec).unwrap_or_default();
    let mut choices = Vec::with_capacity(prompts.len() * n as usize);
    for (p, prompt) in prompts.iter().enumerate() {
        let max_tokens =
            resolve_max_tokens(state.max_model_len, prompt.len, requested, "max_tokens")?;
        let sampling = Sampling {
            max_tokens,
            min_tokens: check_min_tokens(req.min_tokens, max_tokens)?,
            ignore_eos: req.ignore_eos,
            stop: stop.clone(),
            include_stop: req.include_stop_str_in_output,
        };
        let seed = seed_for(state.seed, req.seed, &prompt.text);
        let prefix = req.echo.unwrap_or(false).then(|| prompt.text.clone());
        for i in 0..n {
            let index = p as u32 * n + i;
            choices.push(choice(
                state,
                prompt,
                &sampling,
                mix(seed, u64::from(i)),
                index,
                prefix.clone(),
            ));
        }
    }
    check_priority(state.policy, req.priority)?;
    let job = Job {
        api: Api::Completion,
        id: format!(
            "cmpl-{}",
            base_request_id(request_id, req.request_id.as_deref())
        ),
        created: unix_now(),
        stream,
        usage,
        prompt_tokens: prompts.iter().map(|p| u64::from(p.len)).sum(),
        priority: req.priority,
        choices,
    };
    run(state, job).await
}

fn choice(
    state: &SimState,
    prompt: &PromptData,
    sampling: &Sampling,
    seed: u64,
    index: u32,
    prefix: Option<Arc<str>>,
) -> ChoiceJob {
    let echo = match (&prompt.ends, state.echo) {
        (Some(ends), true) => Some((prompt.text.clone(), ends.clone())),
        _ => None,
    };
    let plan = OutputPlan::new(&PlanRequest {
        seed,
        max_tokens: sampling.max_tokens,
        min_tokens: sampling.min_tokens,
        ignore_eos: sampling.ignore_eos,
        stop: &sampling.stop,
        include_stop_str_in_output: sampling.include_stop,
        echo,
    });
    ChoiceJob {
        index,
        prompt_len: prompt.len,
        hashes: prompt.hashes.clone(),
        plan: Arc::new(plan),
        prefix,
    }
}

async fn run(state: &SimState, job: Job) -> Result<HttpResponse, SimError> {
    if !state.engine.is_alive() {
        return Err(SimError::EngineGone);
    }
    let subs: Vec<Submission> = job
        .choices
        .iter()
        .map(|c| {
            state.engine.submit(Spec {
                prompt_len: c.prompt_len,
                block_hashes: c.hashes.clone(),
                output_tokens: c.plan.tokens,
                finish: c.plan.finish,
                priority: job.priority,
            })
        })
        .collect();
    if job.stream {
        let fmt = ChunkFormat::new(job.api, &job.id, job.created, &state.model);
        let choices = job
            .choices
            .into_iter()
            .zip(subs)
            .map(|(c, sub)| ChoiceStream {
                index: c.index,
                prompt_len: c.prompt_len,
                plan: c.plan,
                prefix: c.prefix,
                sub,
                cursor: Cursor::default(),
                tokens: 0,
                done: false,
            })
            .collect();
        let body = SseBody::new(
            fmt,
            choices,
            job.usage,
            job.prompt_tokens,
            state.stream_faults(),
        );
        return Ok(HttpResponse::Ok()
            .content_type("text/event-stream; charset=utf-8")
            .streaming(body));
    }
    collect(state, job, subs).await
}

/// Waits for every choice to finish, then answers in one JSON body.
async fn collect(
    state: &SimState,
    job: Job,
    mut subs: Vec<Submission>,
) -> Result<HttpResponse, SimError> {
    let faults = state.stream_faults();
    let mut sent = 0u32;
    for sub in &mut subs {
        loop {
            let Some(ev) = sub.events.recv().await else {
                return Err(SimError::EngineGone);
            };
            if faults.drop_after.is_some_and(|n| sent >= n) {
                return Ok(cut_connection());
            }
            if faults.stall_after.is_some_and(|n| sent >= n) {
                drop(subs);
                return std::future::pending().await;
            }
            sent += 1;
            if ev.last {
                sub.guard.disarm();
                break;
            }
        }
    }
    let completion_tokens: u64 = job.choices.iter().map(|c| u64::from(c.plan.tokens)).sum();
    let usage = sse::usage(job.prompt_tokens, completion_tokens).into();
    let text = |c: &ChoiceJob| match &c.prefix {
        Some(p) => format!("{p}{}", c.plan.full_text()),
        None => c.plan.full_text(),
    };
    let body = match job.api {
        Api::Chat => serde_json::to_vec(&ChatCompletion {
            id: &job.id,
            object: "chat.completion",
            created: job.created,
            model: &state.model,
            choices: job
                .choices
                .iter()
                .map(|c| ChatChoice {
                    index: c.index,
                    message: AssistantMessage {
                        role: "assistant",
                        content: text(c),
                        refusal: None,
                        annotations: None,
                        audio: None,
                        function_call: None,
                        reasoning: None,
                    },
                    logprobs: None,
                    finish_reason: c.plan.finish.as_str(),
                    stop_reason: c.plan.stop_reason.clone(),
                    token_ids: None,
                })
                .collect(),
            service_tier: None,
            system_fingerprint: None,
            usage,
            prompt_logprobs: None,
            prompt_token_ids: None,
            kv_transfer_params: None,
        }),
        Api::Completion => serde_json::to_vec(&Completion {
            id: &job.id,
            object: "text_completion",
            created: job.created,
            model: &state.model,
            choices: job
                .choices
                .iter()
                .map(|c| CompletionChoice {
                    index: c.index,
                    text: text(c),
                    logprobs: None,
                    finish_reason: c.plan.finish.as_str(),
                    stop_reason: c.plan.stop_reason.clone(),
                    token_ids: None,
                    prompt_logprobs: None,
                    prompt_token_ids: None,
                })
                .collect(),
            service_tier: None,
            system_fingerprint: None,
            usage,
            kv_transfer_params: None,
        }),
    }
    .map_err(|_| SimError::EngineGone)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

/// A response whose connection is cut right after the status line.
pub fn cut_connection() -> HttpResponse {
    let body = futures::stream::once(async { Err::<Bytes, SimError>(SimError::Dropped) });
    HttpResponse::Ok()
        .content_type("application/json")
        .streaming(body)
}

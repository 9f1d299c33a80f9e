//! Endpoints, response shapes, SSE framing and errors.

use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use serde_json::{Value, json};

use super::{MODEL, chat_body, frames, json_of, options};
use crate::sim::template::{DEFAULT_SYSTEM, Ending, render};
use crate::sim::{SchedulingPolicy, SimOptions};

#[tokio::test(start_paused = true)]
async fn chat_stream_is_framed_like_vllm() {
    let (svc, _) = service!(options());
    let body = chat_body(json!({"max_tokens": 5, "ignore_eos": true, "stream": true,
        "stream_options": {"include_usage": true}}));
    let resp = test::call_service(&svc, post!("/v1/chat/completions", body)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let f = frames(&test::read_body(resp).await);
    assert_eq!(f.len(), 1 + 5 + 1 + 1, "{f:#?}");
    assert_eq!(f[0]["object"], "chat.completion.chunk");
    assert!(f[0]["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(
        f[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    for (i, chunk) in f[1..6].iter().enumerate() {
        assert_eq!(chunk["id"], f[0]["id"]);
        let choice = &chunk["choices"][0];
        assert!(
            choice["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
        let expected = if i == 4 { json!("length") } else { Value::Null };
        assert_eq!(choice["finish_reason"], expected);
    }
    assert_eq!(f[6]["choices"], json!([]));
    let usage = &f[6]["usage"];
    assert_eq!(usage["completion_tokens"], 5);
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    assert_eq!(usage["total_tokens"], prompt + 5);
    assert_eq!(f[7], "[DONE]");
}

#[tokio::test(start_paused = true)]
async fn streamed_and_whole_answers_say_the_same() {
    let (svc, _) = service!(options());
    let req = |stream: bool| chat_body(json!({"max_tokens": 30, "seed": 42, "stream": stream}));
    let (status, whole) =
        json_of(test::call_service(&svc, post!("/v1/chat/completions", req(false))).await).await;
    assert_eq!(status, StatusCode::OK);
    let f = frames(
        &test::read_body(test::call_service(&svc, post!("/v1/chat/completions", req(true))).await)
            .await,
    );
    let streamed: String = f
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let content = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(streamed, content);
    assert!(!content.is_empty());
    // Same seed, same text; another seed, other text.
    let (_, again) =
        json_of(test::call_service(&svc, post!("/v1/chat/completions", req(false))).await).await;
    assert_eq!(again["choices"][0]["message"]["content"], content);
    let other = chat_body(json!({"max_tokens": 30, "seed": 43}));
    let (_, other) =
        json_of(test::call_service(&svc, post!("/v1/chat/completions", other)).await).await;
    assert_ne!(other["choices"][0]["message"]["content"], content);
}

#[tokio::test(start_paused = true)]
async fn chat_completion_shape_and_usage() {
    let (svc, _) = service!(options());
    let (status, r) = json_of(
        test::call_service(
            &svc,
            post!(
                "/v1/chat/completions",
                chat_body(json!({"max_tokens": 8, "ignore_eos": true}))
            ),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["model"], MODEL);
    let choice = &r["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["reasoning"].is_null());
    assert_eq!(choice["finish_reason"], "length");
    assert!(choice["stop_reason"].is_null() && choice["logprobs"].is_null());
    assert!(r["prompt_logprobs"].is_null() && r["usage"]["prompt_tokens_details"].is_null());
    // The prompt is counted with the same tokenizer as /tokenize.
    let (_, tok) = json_of(
        test::call_service(
            &svc,
            post!(
                "/tokenize",
                json!({"messages": [{"role": "user", "content": "Hello there"}]})
            ),
        )
        .await,
    )
    .await;
    assert_eq!(r["usage"]["prompt_tokens"], tok["count"]);
    assert_eq!(r["usage"]["completion_tokens"], 8);
}

#[tokio::test(start_paused = true)]
async fn completions_stream_and_whole() {
    let (svc, _) = service!(options());
    let (status, r) = json_of(
        test::call_service(
            &svc,
            post!("/v1/completions", json!({"prompt": "Once upon a time"})),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r["object"], "text_completion");
    assert!(r["id"].as_str().unwrap().starts_with("cmpl-"));
    // vLLM's default max_tokens for completions is 16.
    assert_eq!(r["usage"]["completion_tokens"], 16);
    assert_eq!(r["choices"][0]["finish_reason"], "length");

    let body = json!({"prompt": "Once upon a time", "max_tokens": 3, "stream": true, "echo": true,
        "stream_options": {"include_usage": true, "continuous_usage_stats": true}});
    let f = frames(
        &test::read_body(test::call_service(&svc, post!("/v1/completions", body)).await).await,
    );
    assert_eq!(f.len(), 3 + 1 + 1, "{f:#?}");
    assert_eq!(f[0]["object"], "text_completion");
    assert!(
        f[0]["choices"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Once upon a time")
    );
    assert_eq!(f[2]["choices"][0]["finish_reason"], "length");
    assert_eq!(
        f[1]["usage"]["completion_tokens"], 2,
        "continuous usage on every chunk"
    );
    assert_eq!(f[3]["choices"], json!([]));
    assert_eq!(f[3]["usage"]["completion_tokens"], 3);
    assert_eq!(f[4], "[DONE]");
}

#[tokio::test(start_paused = true)]
async fn n_choices_and_prompt_lists() {
    let (svc, _) = service!(options());
    let (_, r) = json_of(
        test::call_service(
            &svc,
            post!(
                "/v1/chat/completions",
                chat_body(json!({"n": 3, "max_tokens": 4, "ignore_eos": true}))
            ),
        )
        .await,
    )
    .await;
    let choices = r["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    assert_ne!(
        choices[0]["message"]["content"],
        choices[1]["message"]["content"]
    );
    assert_eq!(r["usage"]["completion_tokens"], 12);

    let body = json!({"prompt": ["a b", "c d"], "n": 2, "max_tokens": 2, "stream": true});
    let f = frames(
        &test::read_body(test::call_service(&svc, post!("/v1/completions", body)).await).await,
    );
    let mut indices: Vec<u64> = f
        .iter()
        .filter_map(|c| c["choices"][0]["index"].as_u64())
        .collect();
    indices.sort_unstable();
    indices.dedup();
    assert_eq!(indices, [0, 1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn echo_answers_with_the_rendered_prompt() {
    let (svc, _) = service!(SimOptions {
        echo: true,
        ..options()
    });
    let messages =
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]);
    let (_, r) = json_of(
        test::call_service(
            &svc,
            post!("/v1/chat/completions", json!({"messages": messages})),
        )
        .await,
    )
    .await;
    let parsed: Vec<crate::sim::protocol::Message> = serde_json::from_value(messages).unwrap();
    let rendered = render(&parsed, None, Ending::GenerationPrompt);
    assert_eq!(r["choices"][0]["message"]["content"], rendered.as_str());
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    // Truncated to max_tokens.
    let (_, r) = json_of(
        test::call_service(
            &svc,
            post!(
                "/v1/chat/completions",
                json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
            ),
        )
        .await,
    )
    .await;
    assert_eq!(r["choices"][0]["message"]["content"], "<|im_start|>system");
    assert!(!DEFAULT_SYSTEM.is_empty());
    let (_, r) = json_of(
        test::call_service(
            &svc,
            post!(
                "/v1/completions",
                json!({"prompt": "one two three", "max_tokens": 10})
            ),
        )
        .await,
    )
    .await;
    assert_eq!(r["choices"][0]["text"], "one two three");
}

#[tokio::test(start_paused = true)]
async fn errors_have_vllms_shape() {
    let opts = SimOptions {
        max_model_len: 1024,
        ..options()
    };
    let (svc, _) = service!(opts);
    let long = "word ".repeat(300);
    let body = json!({"messages": [{"role": "user", "content": long}], "max_tokens": 1000});
    let (status, r) =
        json_of(test::call_service(&svc, post!("/v1/chat/completions", body)).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(r["error"]["type"], "BadRequestError");
    assert_eq!(r["error"]["code"], 400);
    assert_eq!(r["error"]["param"], "input_tokens");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("This model's maximum context length is 1024 tokens. However, you requested 1000 output tokens"),
        "{msg}"
    );

    let (status, r) = json_of(
        test::call_service(
            &svc,
            post!("/v1/completions", json!({"model": "gpt-4", "prompt": "x"})),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        r,
        json!({"error": {"message": "The model `gpt-4` does not exist.", "type": "NotFoundError", "param": "model", "code": 404}})
    );

    let (status, r) = json_of(
        test::call_service(
            &svc,
            post!("/v1/chat/completions", chat_body(json!({"priority": 2}))),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r["error"]["message"],
        "Got priority 2 but Priority scheduling is not enabled."
    );

    let (status, r) = json_of(
        test::call_service(
            &svc,
            post!(
                "/v1/chat/completions",
                chat_body(json!({"stream_options": {}}))
            ),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, &r["error"]["param"]),
        (StatusCode::BAD_REQUEST, &json!("stream_options"))
    );

    let req = TestRequest::post()
        .uri("/v1/chat/completions")
        .set_payload("{not json")
        .to_request();
    let (status, r) = json_of(test::call_service(&svc, req).await).await;
    assert_eq!(
        (status, &r["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!(400))
    );

    let (status, r) =
        json_of(test::call_service(&svc, TestRequest::get().uri("/nope").to_request()).await).await;
    assert_eq!(
        (status, r),
        (StatusCode::NOT_FOUND, json!({"detail": "Not Found"}))
    );
}

#[tokio::test(start_paused = true)]
async fn priority_policy_accepts_priorities() {
    let (svc, _) = service!(SimOptions {
        scheduling_policy: SchedulingPolicy::Priority,
        ..options()
    });
    let resp = test::call_service(
        &svc,
        post!(
            "/v1/chat/completions",
            chat_body(json!({"priority": -3, "max_tokens": 2}))
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn models_version_tokenize() {
    let (svc, _) = service!(options());
    let (_, r) =
        json_of(test::call_service(&svc, TestRequest::get().uri("/v1/models").to_request()).await)
            .await;
    assert_eq!(r["object"], "list");
    let card = &r["data"][0];
    assert_eq!(
        (&card["id"], &card["object"], &card["owned_by"]),
        (&json!(MODEL), &json!("model"), &json!("vllm"))
    );
    assert_eq!(
        (&card["root"], &card["max_model_len"]),
        (&json!(MODEL), &json!(32768))
    );
    assert!(card["parent"].is_null());
    assert_eq!(card["permission"][0]["object"], "model_permission");

    let (_, r) =
        json_of(test::call_service(&svc, TestRequest::get().uri("/version").to_request()).await)
            .await;
    assert!(r["version"].is_string());

    let (_, r) = json_of(
        test::call_service(
            &svc,
            post!(
                "/tokenize",
                json!({"prompt": "Hello world", "return_token_strs": true})
            ),
        )
        .await,
    )
    .await;
    assert_eq!(r["count"], 2);
    assert_eq!(r["max_model_len"], 32768);
    assert_eq!(r["tokens"].as_array().unwrap().len(), 2);
    assert_eq!(r["token_strs"], json!(["Hello", " world"]));
}

#[tokio::test(start_paused = true)]
async fn metrics_follow_the_engine() {
    let (svc, _) = service!(options());
    let body = chat_body(json!({"max_tokens": 4, "ignore_eos": true}));
    test::call_service(&svc, post!("/v1/chat/completions", body.clone())).await;
    let resp = test::call_service(&svc, post!("/v1/chat/completions", body)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = test::call_service(&svc, TestRequest::get().uri("/metrics").to_request()).await;
    let text = String::from_utf8(test::read_body(resp).await.to_vec()).unwrap();
    let value = |name: &str| -> f64 {
        let prefix = format!("{name}{{engine=\"0\",model_name=\"{MODEL}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("vllm:num_requests_running"), 0.0);
    assert_eq!(value("vllm:num_requests_waiting"), 0.0);
    assert_eq!(value("vllm:generation_tokens_total"), 8.0);
    assert_eq!(value("vllm:time_to_first_token_seconds_count"), 2.0);
    assert!(
        value("vllm:prefix_cache_hits_total") > 0.0,
        "the second request reused the first's prompt"
    );
    assert!(text.contains("vllm:request_success_total{engine=\"0\",finished_reason=\"length\",model_name=\"Qwen/Qwen2.5-7B-Instruct\"} 2.0"));
}

/// Polls the next chunk of a response body.
#[tokio::test(start_paused = true)]
async fn request_id_header_names_the_completion() {
    let (svc, _) = service!(options());
    let req = TestRequest::post()
        .uri("/v1/chat/completions")
        .insert_header(("x-request-id", "abc123"))
        .set_json(chat_body(json!({"max_tokens": 1})))
        .to_request();
    let (_, r) = json_of(test::call_service(&svc, req).await).await;
    assert_eq!(r["id"], "chatcmpl-abc123");
}

//! Spans: one per stage, the GenAI span's attributes, the worker in the
//! gateway's trace, both OTLP protocols, and a dead collector.

use serde_json::{Value, json};

use super::common::observability::*;
use super::common::*;
use super::{chat, request_id};

const TRACE_IN: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_IN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn every_stage_has_its_span_and_the_worker_joins_the_trace() {
    let mut collector = Collector::start().await;
    let cluster = Cluster::start(Spec {
        otlp: Some((collector.endpoint(), "grpc")),
        ..Spec::default()
    })
    .await;
    let http = http();
    let t = cluster.token(READER).await;

    // A caller with its own trace: the request joins it, and its id is the trace id.
    let r = http
        .post(format!("{}/v1/chat/completions", cluster.base))
        .bearer_auth(&t)
        .header("traceparent", format!("00-{TRACE_IN}-{SPAN_IN}-01"))
        .json(&json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5, "temperature": 0.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(request_id(&r), TRACE_IN);
    let answer: Value = r.json().await.unwrap();

    // A streamed answer, with a trace of its own.
    let r = chat(
        &http,
        &cluster.base,
        &t,
        json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": true}),
    )
    .await;
    let streamed = request_id(&r);
    assert!(r.text().await.unwrap().ends_with("data: [DONE]\n\n"));

    // Refused at the door: a trace of one span that says why.
    let r = chat(&http, &cluster.base, "not-a-token", json!({"messages": []})).await;
    assert_eq!(r.status(), 401);
    let refused = request_id(&r);

    let worker_span = "POST /internal/v1/shards/{index}/chat/completions";
    let chat_span = format!("chat {MODEL}");
    let spans = collector
        .until(
            "both answered traces, worker included, and the refusal",
            |s| {
                let done = |id: &str| {
                    let t = Trace::of(s, id);
                    t.has(worker_span) && t.has("relay") && t.has("POST /v1/chat/completions")
                };
                done(TRACE_IN)
                    && done(&streamed)
                    && Trace::of(s, &refused).has("POST /v1/chat/completions")
            },
        )
        .await;

    let trace = Trace::of(&spans, TRACE_IN);
    let root = trace.named("POST /v1/chat/completions");
    assert_eq!(
        root.parent_span_id, SPAN_IN,
        "the caller's span is the parent"
    );
    assert_eq!(root.kind, "SPAN_KIND_SERVER");
    assert_eq!(root.attr("http.response.status_code"), Some("200"));
    assert_eq!(
        root.kinds
            .get("http.response.status_code")
            .map(String::as_str),
        Some("IntValue")
    );
    let dispatch = trace.named("dispatch");
    assert_eq!(
        dispatch.kinds.get("tollgate.shard").map(String::as_str),
        Some("IntValue"),
        "{dispatch:#?}"
    );
    let worker = trace.named(worker_span);
    for key in ["tollgate.shard", "http.response.status_code"] {
        assert_eq!(
            worker.kinds.get(key).map(String::as_str),
            Some("IntValue"),
            "{key} of {worker:#?}"
        );
    }
    assert_eq!(root.attr("http.route"), Some("/v1/chat/completions"));
    for stage in ["authenticate", "validate", "limit", chat_span.as_str()] {
        trace.parent_of("POST /v1/chat/completions", stage);
    }
    for stage in ["queue", "dispatch", "relay"] {
        trace.parent_of(&chat_span, stage);
    }
    // The worker's span is a child of the gateway's dispatch, in the same trace.
    trace.parent_of("dispatch", worker_span);
    assert_eq!(trace.named(worker_span).kind, "SPAN_KIND_SERVER");
    assert_eq!(trace.named(worker_span).attr("tollgate.worker"), Some("w1"));

    let g = trace.named(&chat_span);
    assert_eq!(g.kind, "SPAN_KIND_CLIENT");
    let usage = &answer["usage"];
    let expected = [
        ("gen_ai.operation.name", "chat".to_owned()),
        ("gen_ai.provider.name", "vllm".to_owned()),
        ("gen_ai.request.model", MODEL.to_owned()),
        ("gen_ai.request.max_tokens", "5".to_owned()),
        ("gen_ai.request.temperature", "0.5".to_owned()),
        ("gen_ai.request.stream", "false".to_owned()),
        (
            "gen_ai.response.id",
            answer["id"].as_str().unwrap().to_owned(),
        ),
        (
            "gen_ai.response.finish_reasons",
            answer["choices"][0]["finish_reason"]
                .as_str()
                .unwrap()
                .to_owned(),
        ),
        (
            "gen_ai.usage.input_tokens",
            usage["prompt_tokens"].to_string(),
        ),
        (
            "gen_ai.usage.output_tokens",
            usage["completion_tokens"].to_string(),
        ),
        ("tollgate.tenant", "acme".to_owned()),
        ("tollgate.client_id", "reader".to_owned()),
        ("tollgate.priority", "high".to_owned()),
    ];
    for (key, value) in expected {
        assert_eq!(g.attr(key), Some(value.as_str()), "{key} of {g:#?}");
    }
    assert!(
        g.attr("tollgate.queue_wait_ms")
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    // Numbers reach the collector as OTLP ints, not as their text.
    for key in [
        "gen_ai.request.max_tokens",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "tollgate.queue_wait_ms",
    ] {
        assert_eq!(
            g.kinds.get(key).map(String::as_str),
            Some("IntValue"),
            "{key} of {g:#?}"
        );
    }

    let s = Trace::of(&spans, &streamed);
    assert_eq!(
        s.named("POST /v1/chat/completions").parent_span_id,
        "",
        "a root of its own"
    );
    assert_eq!(
        s.named(&chat_span).attr("gen_ai.request.stream"),
        Some("true")
    );
    assert_eq!(
        s.named(&chat_span).attr("gen_ai.response.finish_reasons"),
        Some("length")
    );
    s.parent_of(&chat_span, "relay");
    s.parent_of("dispatch", worker_span);

    let refusal = Trace::of(&spans, &refused);
    let root = refusal.named("POST /v1/chat/completions");
    assert_eq!(root.attr("http.response.status_code"), Some("401"));
    assert_eq!(root.attr("error.type"), Some("invalid_token"));
    refusal.parent_of("POST /v1/chat/completions", "authenticate");
    assert!(!refusal.has(&chat_span), "nothing reached the model");
}

#[tokio::test]
async fn spans_also_reach_an_otlp_http_receiver() {
    let collector = HttpCollector::start().await;
    let cluster = Cluster::start(Spec {
        otlp: Some((collector.endpoint(), "http")),
        ..Spec::default()
    })
    .await;
    let http = http();
    let t = cluster.token(READER).await;
    let r = chat(
        &http,
        &cluster.base,
        &t,
        json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let worker_span = "POST /internal/v1/shards/{index}/chat/completions";
    let spans = collector
        .until("the trace over HTTP/protobuf", |s| {
            // The root ends last: once it is in, the gateway's spans are.
            let t = Trace::of(s, &id);
            t.has(worker_span) && t.has("POST /v1/chat/completions")
        })
        .await;
    let trace = Trace::of(&spans, &id);
    trace.parent_of(&format!("chat {MODEL}"), "dispatch");
    trace.parent_of("dispatch", worker_span);
}

#[tokio::test]
async fn a_dead_collector_costs_no_request_and_no_record() {
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cluster = Cluster::start(Spec {
        otlp: Some((format!("http://{dead}"), "grpc")),
        ..Spec::default()
    })
    .await;
    let http = http();
    let t = cluster.token(READER).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let stream = i % 3 == 0;
        let r = chat(
            &http,
            &cluster.base,
            &t,
            json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3, "stream": stream}),
        )
        .await;
        assert_eq!(r.status(), 200);
        ids.push(request_id(&r));
        r.bytes().await.unwrap();
    }
    let by_id = request_records(&cluster.audit_path(), &ids).await;
    assert!(
        ids.iter()
            .all(|id| by_id[id].len() == 1 && by_id[id][0]["status"] == 200)
    );
    // The spans are lost, and counted.
    eventually("spans counted as dropped", || {
        let http = http.clone();
        let base = cluster.base.clone();
        async move {
            let text = http
                .get(format!("{base}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (metric(&text, "tollgate_otel_spans_dropped_total") > 0.0).then_some(())
        }
    })
    .await;
}

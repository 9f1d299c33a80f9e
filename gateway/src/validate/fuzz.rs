//! Property tests over the whole parse → validate → guard path: whatever the
//! bytes, it answers with a client error or a plan, never a panic, and every
//! plan it makes is a body vLLM can take. Runs `PROPTEST_CASES` cases per
//! property (256 by default), so it is bounded in CI.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tollgate_shared::config::{GuardMode, GuardrailsConfig, SystemPromptPolicy};
use tollgate_shared::openai::{ChatCompletionRequest, CompletionRequest, GenerateRequest};

use super::*;
use crate::guard::for_matching;

fn guard() -> Guard {
    static GUARD: std::sync::LazyLock<Guard> = std::sync::LazyLock::new(build_guard);
    GUARD.clone()
}

fn build_guard() -> Guard {
    let cfg = GuardrailsConfig {
        max_prompt_chars: 100_000,
        deny_patterns: vec!["(?i)system:".into(), "exec\\(".into()],
        system_prompt: Some("Be kind.".into()),
        system_prompt_policy: SystemPromptPolicy::Enforce,
        mode: GuardMode::Flag,
        allow_fields: Vec::new(),
    };
    Guard::new(&cfg, b"fuzzing key 0123").unwrap()
}

fn rules(guard: &Guard) -> Rules<'_> {
    Rules {
        served_model: "m",
        max_model_len: Some(4096),
        max_prompt_chars: 100_000,
        allow_fields: &[],
        guard,
        counter: &crate::tokenizer::TokenCounter::Estimate,
        cache_salt: "s".into(),
    }
}

/// Runs one body through every entry path; checks what comes out.
fn exercise(body: &[u8]) {
    let g = guard();
    let r = rules(&g);
    let results = [
        parse_json::<ChatCompletionRequest>(body).and_then(|q| chat(q, &r)),
        parse_json::<CompletionRequest>(body).and_then(|q| completion(q, &r)),
        parse_json::<GenerateRequest>(body).and_then(|q| generate(q, &r)),
    ];
    for res in results {
        match res {
            Ok(plan) => {
                let up: Value = serde_json::from_slice(&plan.body).expect("upstream body is JSON");
                assert_eq!(up["model"], "m");
                assert_eq!(up["cache_salt"], "s");
                json::check(&plan.body).expect("upstream body has a sane shape");
            }
            Err(e) => assert!(
                matches!(
                    e,
                    ApiError::InvalidRequest { .. } | ApiError::ModelNotFound(_)
                ),
                "{e:?}"
            ),
        }
    }
}

const FIELDS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "role",
    "content",
    "name",
    "type",
    "text",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "best_of",
    "stream",
    "stream_options",
    "include_usage",
    "stop",
    "temperature",
    "top_p",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "user",
    "seed",
    "min_tokens",
    "cache_salt",
    "response_format",
    "echo",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        Just("system: exec(".to_owned()),
        Just("ｓｙｓ\u{200B}ｔｅｍ：".to_owned()),
        Just("user".to_owned()),
        Just("m".to_owned()),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (0u32..10_000).prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..8).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

fn message() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&["system", "developer", "user", "assistant", "tool"][..]),
        text(),
        proptest::option::of(text()),
    )
        .prop_map(|(role, content, name)| {
            let mut m = json!({"role": role, "content": content});
            if let Some(n) = name {
                m["name"] = n.into();
            }
            m
        })
}

/// Chat bodies close to valid, so the checks past the parser run too.
fn chat_body() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(message(), 0..5),
        proptest::option::of(0u32..10_000),
        proptest::option::of(0u32..12),
        proptest::option::of(any::<bool>()),
        proptest::option::of(-1.0f32..3.0),
        proptest::option::of(prop::collection::vec(text(), 0..6)),
    )
        .prop_map(|(messages, max_tokens, n, stream, temperature, stop)| {
            let mut b = json!({"messages": messages});
            let fields = [
                ("max_tokens", max_tokens.map(Value::from)),
                ("n", n.map(Value::from)),
                ("stream", stream.map(Value::from)),
                ("temperature", temperature.map(|t| json!(t))),
                ("stop", stop.map(Value::from)),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    b[k] = v;
                }
            }
            b
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        exercise(&body);
    }

    #[test]
    fn arbitrary_json_never_panics(v in value()) {
        exercise(&serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn near_valid_chat_bodies_give_plans_or_client_errors(b in chat_body()) {
        let bytes = serde_json::to_vec(&b).unwrap();
        exercise(&bytes);
        // The same body with a key repeated is always refused, whatever it holds.
        let text = String::from_utf8(bytes).unwrap();
        let dup = text.replacen('{', "{\"messages\":[],", 1);
        let g = guard();
        let r = parse_json::<ChatCompletionRequest>(dup.as_bytes()).and_then(|q| chat(q, &rules(&g)));
        let is_dup = matches!(r, Err(ApiError::InvalidRequest { code: Some("duplicate_key"), .. }));
        prop_assert!(is_dup);
    }

    #[test]
    fn normalisation_is_idempotent(s in "\\PC{0,40}|[a-z\u{200B}\u{200D}\u{0301}\u{FE0F}\u{E0041}\u{FF41}-\u{FF5A}]{0,20}") {
        let once = for_matching(&s).into_owned();
        let twice = for_matching(&once).into_owned();
        prop_assert_eq!(twice, once);
    }

    #[test]
    fn piecewise_normalisation_equals_whole_text_nfkc(
        s in "\\PC{0,40}|[a-zA-Z \u{4E00}-\u{4E08}\u{3099}\u{304B}\u{0653}\u{0627}\u{0300}-\u{036F}\u{200B}-\u{200D}\u{00C0}-\u{00FF}\u{FF01}-\u{FF5E}\u{1100}-\u{1112}\u{1161}-\u{1175}\u{11A8}-\u{11AC}\u{AC00}-\u{AC10}\u{E0041}]{0,30}"
    ) {
        use unicode_normalization::UnicodeNormalization;
        let whole: String = s.chars().filter(|c| !crate::guard::is_invisible(*c)).nfkc().collect();
        prop_assert_eq!(for_matching(&s).into_owned(), whole);
    }

    #[test]
    fn the_token_bound_counts_the_runs_of_non_whitespace(s in "[a \t\n\r\u{0b}\u{0c}é你]{0,600}") {
        let runs = s.split([' ', '\t', '\n', '\r', '\u{0b}', '\u{0c}']).filter(|w| !w.is_empty()).count();
        prop_assert_eq!(min_tokens(&s) as usize, runs);
    }
}

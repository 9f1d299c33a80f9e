//! The HTTP layer against a real engine actor on tokio's paused clock.
//!
//! - `api`: endpoints, response shapes, SSE framing, errors
//! - `faults`: injected faults and client disconnects

use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::test;
use serde_json::{Value, json};

use super::SimOptions;

pub const MODEL: &str = "Qwen/Qwen2.5-7B-Instruct";

pub fn options() -> SimOptions {
    SimOptions {
        kv_cache_tokens: Some(65_536),
        ..SimOptions::default()
    }
}

/// A test service over a fresh simulator, and its shared state.
macro_rules! service {
    ($opts:expr) => {{
        let state = $crate::sim::build_state(&$opts).unwrap();
        (
            actix_web::test::init_service($crate::sim::app(state.clone())).await,
            state,
        )
    }};
}

macro_rules! post {
    ($path:expr, $body:expr) => {
        actix_web::test::TestRequest::post()
            .uri($path)
            .set_json($body)
            .to_request()
    };
}

/// The JSON payloads of an SSE body (`[DONE]` kept as a string).
pub fn frames(body: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.ends_with("\n\n"), "{text}");
    text.split_terminator("\n\n")
        .map(|f| {
            let data = f
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad frame {f:?}"));
            if data == "[DONE]" {
                Value::String(data.to_owned())
            } else {
                serde_json::from_str(data).unwrap()
            }
        })
        .collect()
}

pub async fn json_of(resp: ServiceResponse) -> (StatusCode, Value) {
    let status = resp.status();
    let body = test::read_body(resp).await;
    (status, serde_json::from_slice(&body).unwrap())
}

pub fn chat_body(extra: Value) -> Value {
    let mut body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello there"}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

mod api;
mod faults;

//! The simulator's errors and the one place they become vLLM-shaped HTTP
//! answers: `{"error":{"message","type","param","code":<status>}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use super::protocol::{ErrorEnvelope, ErrorInfo};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A request vLLM would refuse with 400.
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<&'static str>,
    },
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    /// `--fail-rate`: a failure injected on purpose, with `--fail-status`.
    #[error("Simulated failure (injected by --fail-rate)")]
    Injected(u16),
    /// The engine actor is gone.
    #[error("Internal server error")]
    EngineGone,
    /// `--drop-after-tokens` or an exit: the connection is to be cut.
    #[error("connection dropped by the simulator")]
    Dropped,
}

impl SimError {
    pub fn bad_request(message: impl Into<String>) -> SimError {
        SimError::BadRequest {
            message: message.into(),
            param: None,
        }
    }

    pub fn bad_param(message: impl Into<String>, param: &'static str) -> SimError {
        SimError::BadRequest {
            message: message.into(),
            param: Some(param),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            SimError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            SimError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            SimError::Injected(code) => {
                StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            SimError::EngineGone | SimError::Dropped => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn param(&self) -> Option<String> {
        match self {
            SimError::BadRequest { param, .. } => param.map(str::to_owned),
            SimError::ModelNotFound(_) => Some("model".to_owned()),
            SimError::Injected(_) | SimError::EngineGone | SimError::Dropped => None,
        }
    }

    /// The body vLLM sends for this error (also inside an SSE error frame).
    pub fn envelope(&self) -> ErrorEnvelope {
        let status = self.status();
        ErrorEnvelope {
            error: ErrorInfo {
                message: self.to_string(),
                kind: error_type(status),
                param: self.param(),
                code: status.as_u16(),
            },
        }
    }
}

/// vLLM's `type` for a status: `BadRequestError`, `NotFoundError`,
/// `InternalServerError`, ... (the reason phrase, spaces removed, plus "Error").
pub fn error_type(status: StatusCode) -> String {
    let phrase: String = status
        .canonical_reason()
        .unwrap_or("Unknown")
        .split(|c: char| !c.is_ascii_alphanumeric())
        .collect();
    if phrase.ends_with("Error") {
        phrase
    } else {
        format!("{phrase}Error")
    }
}

impl ResponseError for SimError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status()).json(self.envelope())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_vllm_names() {
        assert_eq!(error_type(StatusCode::BAD_REQUEST), "BadRequestError");
        assert_eq!(error_type(StatusCode::NOT_FOUND), "NotFoundError");
        assert_eq!(
            error_type(StatusCode::INTERNAL_SERVER_ERROR),
            "InternalServerError"
        );
        assert_eq!(
            error_type(StatusCode::SERVICE_UNAVAILABLE),
            "ServiceUnavailableError"
        );
        assert_eq!(
            error_type(StatusCode::TOO_MANY_REQUESTS),
            "TooManyRequestsError"
        );
    }

    #[test]
    fn model_not_found_shape() {
        let e = SimError::ModelNotFound("gpt-4".into()).envelope();
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"error": {"message": "The model `gpt-4` does not exist.",
                "type": "NotFoundError", "param": "model", "code": 404}})
        );
    }
}

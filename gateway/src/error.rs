//! The gateway's error type, and the one place where an error becomes an HTTP
//! answer: [`ApiError::status`] and [`ApiError::body`] are exhaustive matches,
//! so every new error must choose its status and shape.

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, HeaderValue, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::{HttpResponse, ResponseError};
use tollgate_shared::config::Scope;

/// RFC 6749 §5.2 error codes of the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthCode {
    InvalidRequest,
    /// `basic`: the client authenticated with HTTP Basic (answer with `WWW-Authenticate: Basic`).
    InvalidClient {
        basic: bool,
    },
    UnsupportedGrantType,
    InvalidScope,
}

impl OAuthCode {
    fn as_str(self) -> &'static str {
        match self {
            OAuthCode::InvalidRequest => "invalid_request",
            OAuthCode::InvalidClient { .. } => "invalid_client",
            OAuthCode::UnsupportedGrantType => "unsupported_grant_type",
            OAuthCode::InvalidScope => "invalid_scope",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Token endpoint errors, RFC 6749 shaped.
    #[error("{description}")]
    OAuth {
        code: OAuthCode,
        description: String,
    },
    /// Missing, malformed, expired, revoked or badly signed bearer token.
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("this call needs the `{}` scope", .0.as_str())]
    Forbidden(Scope),
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("no such route")]
    NotFound,
    #[error("the tenant's queue is full")]
    QueueFull { retry_after_secs: u64 },
    #[error("{message}")]
    Overloaded {
        message: &'static str,
        retry_after_secs: u64,
    },
    #[error("the model server did not answer in time")]
    UpstreamTimeout,
    /// An error answer relayed from vLLM (status and message as vLLM gave them).
    #[error("{message}")]
    Upstream { status: u16, message: String },
    #[error("the model server failed")]
    UpstreamFailed,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.to_owned()),
            code: None,
        }
    }

    pub fn oauth(code: OAuthCode, description: impl Into<String>) -> Self {
        ApiError::OAuth {
            code,
            description: description.into(),
        }
    }

    /// A short machine-readable name, for logs, metrics and the audit trail.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::OAuth { code, .. } => code.as_str(),
            ApiError::Unauthenticated(_) => "invalid_token",
            ApiError::Forbidden(_) => "insufficient_scope",
            ApiError::InvalidRequest { code, .. } => code.unwrap_or("invalid_request"),
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::NotFound => "not_found",
            ApiError::QueueFull { .. } => "queue_full",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::UpstreamTimeout => "upstream_timeout",
            ApiError::Upstream { .. } => "upstream_error",
            ApiError::UpstreamFailed => "upstream_failed",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// The OpenAI error `type`.
    fn kind(&self) -> &'static str {
        match self {
            ApiError::OAuth { .. } => "oauth_error",
            ApiError::Unauthenticated(_) => "authentication_error",
            ApiError::Forbidden(_) => "permission_error",
            ApiError::InvalidRequest { .. } | ApiError::PayloadTooLarge { .. } => {
                "invalid_request_error"
            }
            ApiError::ModelNotFound(_) | ApiError::NotFound => "not_found_error",
            ApiError::QueueFull { .. } => "rate_limit_error",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::UpstreamTimeout | ApiError::UpstreamFailed | ApiError::Internal(_) => {
                "api_error"
            }
            ApiError::Upstream { status, .. } if *status < 500 => "invalid_request_error",
            ApiError::Upstream { .. } => "api_error",
        }
    }

    /// The text a client sees. Internal details stay in the log.
    fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }

    /// The JSON body: RFC 6749 for the token endpoint, OpenAI's shape elsewhere.
    pub fn body(&self) -> serde_json::Value {
        match self {
            ApiError::OAuth { code, description } => serde_json::json!({
                "error": code.as_str(),
                "error_description": description,
            }),
            ApiError::InvalidRequest { param, .. } => openai_body(self, param.as_deref()),
            _ => openai_body(self, None),
        }
    }
}

fn openai_body(e: &ApiError, param: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "error": {
            "message": e.public_message(),
            "type": e.kind(),
            "param": param,
            "code": e.code(),
        }
    })
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::OAuth { code, .. } => match code {
                OAuthCode::InvalidClient { .. } => StatusCode::UNAUTHORIZED,
                OAuthCode::InvalidRequest
                | OAuthCode::UnsupportedGrantType
                | OAuthCode::InvalidScope => StatusCode::BAD_REQUEST,
            },
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_) | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Upstream { status, .. } => {
                if (400..500).contains(status) {
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST)
                } else {
                    StatusCode::BAD_GATEWAY
                }
            }
            ApiError::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(detail) = self {
            tracing::error!(error = %detail, "internal error");
        }
        let mut resp = HttpResponse::build(self.status_code());
        match self {
            ApiError::OAuth { code, .. } => {
                resp.insert_header((CACHE_CONTROL, "no-store"))
                    .insert_header((PRAGMA, "no-cache"));
                if let OAuthCode::InvalidClient { basic: true } = code {
                    resp.insert_header((
                        WWW_AUTHENTICATE,
                        "Basic realm=\"tollgate\", charset=\"UTF-8\"",
                    ));
                }
            }
            ApiError::Unauthenticated(reason) => {
                let value = format!(
                    "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"{reason}\""
                );
                if let Ok(v) = HeaderValue::from_str(&value) {
                    resp.insert_header((WWW_AUTHENTICATE, v));
                }
            }
            ApiError::Forbidden(scope) => {
                let value = format!(
                    "Bearer realm=\"tollgate\", error=\"insufficient_scope\", scope=\"{}\"",
                    scope.as_str()
                );
                if let Ok(v) = HeaderValue::from_str(&value) {
                    resp.insert_header((WWW_AUTHENTICATE, v));
                }
            }
            ApiError::QueueFull { retry_after_secs }
            | ApiError::Overloaded {
                retry_after_secs, ..
            } => {
                resp.insert_header((RETRY_AFTER, retry_after_secs.to_string()));
            }
            ApiError::InvalidRequest { .. }
            | ApiError::ModelNotFound(_)
            | ApiError::PayloadTooLarge { .. }
            | ApiError::NotFound
            | ApiError::UpstreamTimeout
            | ApiError::Upstream { .. }
            | ApiError::UpstreamFailed
            | ApiError::Internal(_) => {}
        }
        resp.json(self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape_and_status() {
        let e = ApiError::invalid_param("messages", "messages must not be empty");
        assert_eq!(e.status_code(), StatusCode::BAD_REQUEST);
        let b = e.body();
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["param"], "messages");
        assert_eq!(b["error"]["code"], "invalid_request");
    }

    #[test]
    fn internal_details_are_not_shown() {
        let e = ApiError::Internal("db password=hunter2 failed".into());
        assert_eq!(e.body()["error"]["message"], "internal error");
    }

    #[test]
    fn oauth_shape() {
        let e = ApiError::oauth(OAuthCode::InvalidClient { basic: true }, "bad client");
        assert_eq!(e.status_code(), StatusCode::UNAUTHORIZED);
        let r = e.error_response();
        assert!(r.headers().get(WWW_AUTHENTICATE).is_some());
        assert_eq!(r.headers().get(CACHE_CONTROL).unwrap(), "no-store");
        assert_eq!(e.body()["error"], "invalid_client");
    }

    #[test]
    fn relayed_upstream_errors_keep_client_statuses_only() {
        let e = ApiError::Upstream {
            status: 400,
            message: "too long".into(),
        };
        assert_eq!(e.status_code(), StatusCode::BAD_REQUEST);
        let e = ApiError::Upstream {
            status: 500,
            message: "boom".into(),
        };
        assert_eq!(e.status_code(), StatusCode::BAD_GATEWAY);
    }
}

//! The gateway's error type, and the one place where an error becomes an HTTP
//! answer: [`ApiError::status`] and [`ApiError::body`] are exhaustive matches,
//! so every new error must choose its status and shape.

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, HeaderValue, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use tollgate_shared::config::Scope;
use tollgate_shared::openai::{ErrorBody, ErrorEnvelope};
use utoipa::ToSchema;

/// The token endpoint's error body (RFC 6749 §5.2).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OAuthErrorBody {
    /// `invalid_request`, `invalid_client`, `unsupported_grant_type`,
    /// `invalid_scope`, `unauthorized_client`, `slow_down` or `temporarily_unavailable`
    pub error: String,
    pub error_description: String,
}

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
    /// The client may not do this (RFC 7009: revoking another client's token).
    UnauthorizedClient,
    /// Too many failed attempts from this address: 429 with `Retry-After`.
    SlowDown {
        retry_after_secs: u64,
    },
    /// The registry cannot be trusted right now (Redis unreachable): 503 with `Retry-After`.
    TemporarilyUnavailable {
        retry_after_secs: u64,
    },
}

impl OAuthCode {
    fn as_str(self) -> &'static str {
        match self {
            OAuthCode::InvalidRequest => "invalid_request",
            OAuthCode::InvalidClient { .. } => "invalid_client",
            OAuthCode::UnsupportedGrantType => "unsupported_grant_type",
            OAuthCode::InvalidScope => "invalid_scope",
            OAuthCode::UnauthorizedClient => "unauthorized_client",
            OAuthCode::SlowDown { .. } => "slow_down",
            OAuthCode::TemporarilyUnavailable { .. } => "temporarily_unavailable",
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
    /// RFC 6750 §2.3 is not offered: a token in a URL ends up in logs.
    #[error(
        "access tokens are accepted in the Authorization header only, never in the query string"
    )]
    TokenInQuery,
    /// The revocation list or registry is not fresh (Redis unreachable): fail closed.
    #[error("access control is temporarily unavailable; try again")]
    AuthUnavailable,
    /// An admin API object that does not exist.
    #[error("{0}")]
    ResourceNotFound(String),
    /// An admin API change that clashes with the current state.
    #[error("{0}")]
    Conflict(String),
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
    /// The request head is larger than `gateway.max_header_bytes`.
    #[error("the request headers are larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    /// The body did not arrive within `gateway.body_timeout_secs` (closes the connection).
    #[error("the request body did not arrive within {secs} seconds")]
    BodyTimeout { secs: u64 },
    #[error("no such route")]
    NotFound,
    #[error("the tenant's queue is full")]
    QueueFull { retry_after_secs: u64 },
    /// A rate limit or quota was hit; `code` names it (CONTRACT §3).
    #[error("{message}")]
    RateLimited {
        code: &'static str,
        message: String,
        retry_after_secs: u64,
    },
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
            ApiError::TokenInQuery => "invalid_request",
            ApiError::AuthUnavailable => "auth_unavailable",
            ApiError::ResourceNotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::InvalidRequest { code, .. } => code.unwrap_or("invalid_request"),
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::HeadersTooLarge { .. } => "request_header_fields_too_large",
            ApiError::BodyTimeout { .. } => "request_timeout",
            ApiError::NotFound => "not_found",
            ApiError::QueueFull { .. } => "queue_full",
            ApiError::RateLimited { code, .. } => code,
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
            ApiError::TokenInQuery | ApiError::Conflict(_) => "invalid_request_error",
            ApiError::ResourceNotFound(_) => "not_found_error",
            ApiError::AuthUnavailable => "api_error",
            ApiError::InvalidRequest { .. }
            | ApiError::PayloadTooLarge { .. }
            | ApiError::HeadersTooLarge { .. }
            | ApiError::BodyTimeout { .. } => "invalid_request_error",
            ApiError::ModelNotFound(_) | ApiError::NotFound => "not_found_error",
            ApiError::QueueFull { .. } | ApiError::RateLimited { .. } => "rate_limit_error",
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
        let body = match self {
            ApiError::OAuth { code, description } => serde_json::to_value(OAuthErrorBody {
                error: code.as_str().to_owned(),
                error_description: description.clone(),
            }),
            ApiError::InvalidRequest { param, .. } => openai_body(self, param.clone()),
            _ => openai_body(self, None),
        };
        body.unwrap_or_default()
    }
}

fn openai_body(e: &ApiError, param: Option<String>) -> serde_json::Result<serde_json::Value> {
    serde_json::to_value(ErrorEnvelope {
        error: ErrorBody {
            message: e.public_message(),
            kind: e.kind().to_owned(),
            param,
            code: e.code().into(),
        },
    })
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::OAuth { code, .. } => match code {
                OAuthCode::InvalidClient { .. } => StatusCode::UNAUTHORIZED,
                OAuthCode::InvalidRequest
                | OAuthCode::UnsupportedGrantType
                | OAuthCode::InvalidScope
                | OAuthCode::UnauthorizedClient => StatusCode::BAD_REQUEST,
                OAuthCode::SlowDown { .. } => StatusCode::TOO_MANY_REQUESTS,
                OAuthCode::TemporarilyUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            },
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TokenInQuery => StatusCode::BAD_REQUEST,
            ApiError::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::ResourceNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_) | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::QueueFull { .. } | ApiError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
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
                match code {
                    OAuthCode::InvalidClient { basic: true } => {
                        resp.insert_header((
                            WWW_AUTHENTICATE,
                            "Basic realm=\"tollgate\", charset=\"UTF-8\"",
                        ));
                    }
                    OAuthCode::SlowDown { retry_after_secs }
                    | OAuthCode::TemporarilyUnavailable { retry_after_secs } => {
                        resp.insert_header((RETRY_AFTER, retry_after_secs.to_string()));
                    }
                    OAuthCode::InvalidClient { basic: false }
                    | OAuthCode::InvalidRequest
                    | OAuthCode::UnsupportedGrantType
                    | OAuthCode::InvalidScope
                    | OAuthCode::UnauthorizedClient => {}
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
            ApiError::TokenInQuery => {
                resp.insert_header((
                    WWW_AUTHENTICATE,
                    "Bearer realm=\"tollgate\", error=\"invalid_request\", error_description=\"use the Authorization header\"",
                ));
            }
            ApiError::AuthUnavailable => {
                resp.insert_header((RETRY_AFTER, "1"));
            }
            ApiError::QueueFull { retry_after_secs }
            | ApiError::RateLimited {
                retry_after_secs, ..
            }
            | ApiError::Overloaded {
                retry_after_secs, ..
            } => {
                resp.insert_header((RETRY_AFTER, retry_after_secs.to_string()));
            }
            // The rest of the body may still be on its way: not read, so not reusable.
            ApiError::BodyTimeout { .. } => {
                resp.force_close();
            }
            ApiError::InvalidRequest { .. }
            | ApiError::HeadersTooLarge { .. }
            | ApiError::ResourceNotFound(_)
            | ApiError::Conflict(_)
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

//! Authentication and authorization: who is calling, and may they do this.
//!
//! - `registry`: tenants and clients, secrets as argon2id hashes
//! - `jwt`: access tokens (issue, verify)

pub mod jwt;
pub mod registry;

use std::sync::Arc;

use actix_web::HttpRequest;
use actix_web::http::header::AUTHORIZATION;
use tollgate_shared::config::{Priority, Scope};

use crate::error::ApiError;
pub use jwt::{Claims, TokenError, TokenService};
pub use registry::{Client, Registry, Tenant};

/// An authenticated caller of `/v1`.
#[derive(Debug, Clone)]
pub struct Caller {
    pub client_id: Arc<str>,
    pub tenant: Arc<str>,
    pub priority: Priority,
    pub scopes: Vec<Scope>,
    pub jti: String,
}

impl Caller {
    /// Stage `authorize`: the caller must hold `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(scope))
        }
    }
}

/// Stage `authenticate`: a valid bearer token of an active client.
pub fn authenticate(
    req: &HttpRequest,
    tokens: &TokenService,
    registry: &Registry,
) -> Result<Caller, ApiError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .ok_or(ApiError::Unauthenticated("missing bearer token"))?;
    if header.len() > jwt::MAX_TOKEN_BYTES + 16 {
        return Err(ApiError::Unauthenticated("the token is too large"));
    }
    let value = header
        .to_str()
        .map_err(|_| ApiError::Unauthenticated("malformed authorization header"))?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(ApiError::Unauthenticated("expected a bearer token")),
    };
    let claims = tokens.verify(token).map_err(|e| {
        ApiError::Unauthenticated(match e {
            TokenError::TooLarge => "the token is too large",
            TokenError::Malformed => "the token is malformed",
            TokenError::Expired => "the token has expired",
            TokenError::NotYetValid => "the token is not valid yet",
            TokenError::Invalid => "the token is invalid",
        })
    })?;
    let client = registry
        .client(&claims.sub)
        .filter(|c| !c.disabled && *c.tenant == *claims.tid)
        .ok_or(ApiError::Unauthenticated(
            "the token's client is no longer active",
        ))?;
    let tenant = registry
        .tenant(&claims.tid)
        .ok_or(ApiError::Unauthenticated(
            "the token's tenant no longer exists",
        ))?;
    // The token's scopes, narrowed to what the client may still hold.
    let scopes = claims
        .scope
        .split(' ')
        .filter_map(Scope::parse)
        .filter(|s| client.scopes.contains(s))
        .collect();
    Ok(Caller {
        client_id: client.id,
        tenant: tenant.id,
        priority: tenant.priority,
        scopes,
        jti: claims.jti,
    })
}

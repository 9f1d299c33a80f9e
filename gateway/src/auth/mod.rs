//! Authentication and authorization: who is calling, and may they do this.
//!
//! - `jwt`: access tokens (issue, verify) — `keys`: signing and verifying keys, JWKS
//! - `registry`: tenants, clients and revoked tokens, one local view (synced by `sync`)
//! - `shared_store`: the registry in Redis (layout, scripts, loads, seeding)
//! - `model`: the registry's records and the admin API's inputs (pure rules)
//! - `manage`: registry changes as the admin API makes them
//! - `secret`: client secrets (argon2id) — `backoff`: brute-force protection of logins
//! - `debug`: the `dev` scope's timing breakdown

pub mod backoff;
#[cfg(test)]
mod bench;
pub mod debug;
pub mod jwt;
pub mod keys;
pub mod manage;
pub mod model;
pub mod registry;
pub mod secret;
pub mod shared_store;
pub mod sync;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use actix_web::http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use tollgate_shared::config::{Limits, Priority, Scope};

use crate::error::ApiError;
pub use debug::Timing;
pub use jwt::{Claims, TokenError, TokenService};
pub use registry::{Client, Refused, Registry, Tenant};

/// An authenticated caller of `/v1`.
#[derive(Debug, Clone)]
pub struct Caller {
    pub client_id: Arc<str>,
    pub tenant: Arc<str>,
    pub priority: Priority,
    /// The token's scopes, narrowed to what the client may still hold.
    pub scopes: Vec<Scope>,
    pub jti: String,
    /// The limits of the client and of its tenant, and the tenant's fair-share
    /// weight, as the registry held them when the caller was admitted: the
    /// later stages take them from here, not from the registry again.
    pub client_limits: Limits,
    pub tenant_limits: Limits,
    pub weight: u32,
    /// Present when a `dev` caller asked for the timing breakdown.
    pub timing: Option<Timing>,
}

impl Caller {
    /// Stage `authorize`: the caller must hold `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            failed("insufficient_scope");
            Err(ApiError::Forbidden(scope))
        }
    }

    /// Ends a timing stage (nothing unless the breakdown was asked for).
    pub fn mark(&mut self, stage: &'static str) {
        if let Some(t) = &mut self.timing {
            t.mark(stage);
        }
    }

    /// Ends stage `first`, known to have taken `first_took`, and `rest` now.
    pub fn mark_split(&mut self, first: &'static str, first_took: Duration, rest: &'static str) {
        if let Some(t) = &mut self.timing {
            t.mark_split(first, first_took, rest);
        }
    }

    /// The `x-tollgate-timing` header, when the breakdown was asked for.
    pub fn timing_header(&self) -> Option<(HeaderName, HeaderValue)> {
        self.timing.as_ref().and_then(Timing::header)
    }
}

/// Counts an authentication or authorization failure (`tollgate_auth_failures_total`).
pub fn failed(reason: &'static str) {
    metrics::counter!("tollgate_auth_failures_total", "reason" => reason).increment(1);
}

/// The bearer token of the `Authorization` header (scheme case-insensitive,
/// RFC 7235). A token in the query string is refused outright: it would sit
/// in every access log on the way.
pub fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
    let query = req.query_string();
    if !query.is_empty()
        && serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .is_ok_and(|q| q.iter().any(|(k, _)| k == "access_token"))
    {
        failed("token_in_query");
        return Err(ApiError::TokenInQuery);
    }
    let header = req.headers().get(AUTHORIZATION).ok_or_else(|| {
        failed("token_missing");
        ApiError::Unauthenticated("missing bearer token")
    })?;
    // Refused before any parsing: a huge header costs nothing more than its length.
    if header.len() > jwt::MAX_TOKEN_BYTES + 16 {
        failed("token_too_large");
        return Err(ApiError::Unauthenticated("the token is too large"));
    }
    let value = header.to_str().map_err(|_| {
        failed("token_malformed");
        ApiError::Unauthenticated("malformed authorization header")
    })?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => {
            failed("token_missing");
            Err(ApiError::Unauthenticated("expected a bearer token"))
        }
    }
}

/// Stage `authenticate`: a valid bearer token, not revoked, of an active
/// client whose credentials have not changed since.
pub fn authenticate(
    req: &HttpRequest,
    tokens: &TokenService,
    registry: &Registry,
) -> Result<Caller, ApiError> {
    let started = Instant::now();
    let token = bearer(req)?;
    let claims = tokens.verify(token).map_err(|e| {
        let (message, reason) = e.describe();
        failed(reason);
        ApiError::Unauthenticated(message)
    })?;
    let (client, tenant) = registry
        .admit(&claims.sub, &claims.tid, claims.generation, &claims.jti)
        .map_err(|r| match r {
            Refused::Unavailable => {
                failed("registry_unavailable");
                ApiError::AuthUnavailable
            }
            Refused::Revoked => {
                failed("token_revoked");
                ApiError::Unauthenticated("the token has been revoked")
            }
            Refused::ClientInactive => {
                failed("client_inactive");
                ApiError::Unauthenticated("the token's client is no longer active")
            }
            Refused::TenantGone => {
                failed("tenant_gone");
                ApiError::Unauthenticated("the token's tenant no longer exists")
            }
        })?;
    let scopes: Vec<Scope> = claims
        .scope
        .split(' ')
        .filter_map(Scope::parse)
        .filter(|s| client.scopes.contains(s))
        .collect();
    let timing = (scopes.contains(&Scope::Dev) && debug::requested(req)).then(|| {
        let mut t = Timing::new(started);
        t.mark("auth");
        t
    });
    Ok(Caller {
        client_id: client.id,
        tenant: tenant.id,
        priority: tenant.priority,
        scopes,
        jti: claims.jti.clone(),
        client_limits: client.limits,
        tenant_limits: tenant.limits,
        weight: tenant.weight,
        timing,
    })
}

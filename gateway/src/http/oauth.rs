//! `POST /oauth/token`: OAuth 2.0 client credentials grant (RFC 6749 §4.4),
//! and `POST /oauth/revoke`: token revocation (RFC 7009).
//!
//! A credential check is the expensive, attackable step: it runs in one of
//! a few argon2 slots (bounded memory), only when no brute-force wait is
//! pending for its client id and address, and the same work is done for an
//! unknown id as for a wrong secret, so neither the answer nor its timing
//! tells them apart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, PRAGMA, USER_AGENT};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use bytes::Bytes;
use tollgate_shared::config::Scope;

use super::request_id_of;
use crate::app::Gateway;
use crate::audit::AuditRecord;
use crate::auth::{Client, authenticate, failed};
use crate::error::{ApiError, OAuthCode, OAuthErrorBody};
use crate::telemetry::Observe;

/// An issued access token (RFC 6749 §5.1).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    /// A JWT, to send as `Authorization: Bearer …`.
    pub access_token: String,
    /// `Bearer`
    #[schema(value_type = String)]
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// The granted scopes, space-separated.
    pub scope: String,
}

/// The grant of the token endpoint: only the client credentials grant.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // Describes the form, which is read field by field (see `form`).
pub enum GrantType {
    ClientCredentials,
}

/// The token request's form (RFC 6749 §4.4.2). The client authenticates
/// with HTTP Basic or with `client_id` and `client_secret` here, not both.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Describes the form, which is read field by field (see `form`).
pub struct TokenForm {
    grant_type: GrantType,
    /// Space-separated scopes, a subset of the client's; all of them when absent.
    scope: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// The revocation request's form (RFC 7009 §2.1). The revoker is the
/// token's own client (Basic, these form fields, or a bearer token of its
/// own) or an `admin`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Describes the form, which is read field by field (see `form`).
pub struct RevokeForm {
    token: String,
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// Form bodies larger than this are not token requests.
const MAX_FORM_BYTES: usize = 8 * 1024;
/// How long a token request may wait for an argon2 slot before it is told to come back.
const HASHING_PATIENCE: Duration = Duration::from_secs(5);
/// How long a token request waits for a fresh registry (a replica that just
/// started) before it is told to come back.
const FRESHNESS_PATIENCE: Duration = Duration::from_secs(1);
/// Presented client ids are cut to this length in logs and audit records.
const MAX_LOGGED_ID: usize = 64;

struct Credentials {
    id: String,
    secret: String,
    basic: bool,
}

/// An audit record of `event` with what the request tells about its sender.
pub(super) fn record(event: &'static str, req: &HttpRequest) -> AuditRecord {
    let mut r = AuditRecord::new(event);
    r.request_id = Some(request_id_of(req).to_string());
    r.ip = req.peer_addr().map(|a| a.ip().to_string());
    r.user_agent = req
        .headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(256).collect());
    r.route = Some(req.path().to_owned());
    r
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Client credentials from HTTP Basic (each part form-urlencoded, RFC 6749 §2.3.1).
/// None when the Authorization header is absent or carries a Bearer token.
fn basic(req: &HttpRequest) -> Result<Option<Credentials>, ApiError> {
    let Some(value) = req.headers().get(AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::oauth(
            OAuthCode::InvalidClient { basic: true },
            "malformed Basic credentials",
        )
    };
    let value = value.to_str().map_err(|_| bad())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(bad());
    };
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(ApiError::oauth(
            OAuthCode::InvalidClient { basic: false },
            "client authentication must use HTTP Basic or form fields",
        ));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    let unescape = |s: &str| -> Result<String, ApiError> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(&format!("v={s}")).map_err(|_| bad())?;
        pairs.into_iter().next().map(|(_, v)| v).ok_or_else(bad)
    };
    Ok(Some(Credentials {
        id: unescape(id)?,
        secret: unescape(secret)?,
        basic: true,
    }))
}

/// The one value of a form field; a repeated field is an `invalid_request` (RFC 6749 §3.2).
fn single<'a>(form: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut values = form
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str());
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::oauth(
            OAuthCode::InvalidRequest,
            format!("parameter `{name}` is repeated"),
        ));
    }
    Ok(first)
}

/// The form body of an OAuth endpoint.
fn form(req: &HttpRequest, body: &Bytes) -> Result<Vec<(String, String)>, ApiError> {
    let is_form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(ApiError::oauth(
            OAuthCode::InvalidRequest,
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    if body.len() > MAX_FORM_BYTES {
        return Err(ApiError::oauth(
            OAuthCode::InvalidRequest,
            "the request is too large",
        ));
    }
    serde_urlencoded::from_bytes(body)
        .map_err(|_| ApiError::oauth(OAuthCode::InvalidRequest, "the form body is malformed"))
}

/// Client credentials from Basic or the form, never both (RFC 6749 §2.3).
fn credentials(
    req: &HttpRequest,
    form: &[(String, String)],
) -> Result<Option<Credentials>, ApiError> {
    let from_form = match (single(form, "client_id")?, single(form, "client_secret")?) {
        (Some(id), Some(secret)) => Some(Credentials {
            id: id.to_owned(),
            secret: secret.to_owned(),
            basic: false,
        }),
        (None, None) => None,
        _ => {
            return Err(ApiError::oauth(
                OAuthCode::InvalidRequest,
                "client_id and client_secret go together",
            ));
        }
    };
    match (basic(req)?, from_form) {
        (Some(_), Some(_)) => Err(ApiError::oauth(
            OAuthCode::InvalidRequest,
            "use one client authentication method, not both",
        )),
        (Some(c), None) | (None, Some(c)) => Ok(Some(c)),
        (None, None) => Ok(None),
    }
}

fn unavailable() -> ApiError {
    ApiError::oauth(
        OAuthCode::TemporarilyUnavailable {
            retry_after_secs: 1,
        },
        "client authentication is temporarily unavailable; try again",
    )
}

/// Checks client credentials: backoff, then argon2 in a bounded slot.
async fn check_client(
    req: &HttpRequest,
    gw: &web::Data<Gateway>,
    creds: Credentials,
) -> Result<Client, ApiError> {
    let ip = req
        .peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string());
    let shown_id: String = creds.id.chars().take(MAX_LOGGED_ID).collect();
    let deny = |code: &'static str| {
        let mut r = record("token_denied", req);
        r.client_id = Some(shown_id.clone());
        r.error_code = Some(code.to_owned());
        r.status = Some(match code {
            "slow_down" => 429,
            "temporarily_unavailable" => 503,
            _ => 401,
        });
        Observe::of(req).record_as(&gw.audit, r);
    };
    // A stale registry might still hold a disabled client or an old secret.
    if !gw.registry.wait_fresh(FRESHNESS_PATIENCE).await {
        deny("temporarily_unavailable");
        return Err(unavailable());
    }
    // The wait is checked inside the slot, so parallel guesses cannot all
    // pass one count (see `auth::backoff`).
    let Some(mut slot) = gw.registry.hashing_slot(HASHING_PATIENCE).await else {
        deny("temporarily_unavailable");
        return Err(unavailable());
    };
    match gw.logins.check(&creds.id, &ip, now_ms()).await {
        Ok(Ok(())) => {}
        Ok(Err(retry_after_secs)) => {
            failed("login_backoff");
            deny("slow_down");
            tracing::warn!(client_id = %shown_id, ip = %ip, retry_after_secs, "token request refused: too many failed attempts");
            return Err(ApiError::oauth(
                OAuthCode::SlowDown { retry_after_secs },
                format!("too many failed attempts; retry after {retry_after_secs} s"),
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "login attempt store unavailable");
            deny("temporarily_unavailable");
            return Err(unavailable());
        }
    }
    let basic_used = creds.basic;
    let id = creds.id.clone();
    let gw2 = gw.clone();
    // The slot goes with the check: a client that leaves meanwhile does not
    // free it while argon2 still runs.
    let client = web::block(move || {
        gw2.registry
            .check_secret(&creds.id, &creds.secret, slot.memory())
    })
    .await
    .map_err(|e| ApiError::Internal(format!("credential check failed: {e}")))?;
    let Some(client) = client else {
        failed("bad_client_credentials");
        if let Err(e) = gw.logins.failed(&id, &ip, now_ms()).await {
            tracing::warn!(error = %e, "could not count a failed login");
        }
        deny("invalid_client");
        return Err(ApiError::oauth(
            OAuthCode::InvalidClient { basic: basic_used },
            "client authentication failed",
        ));
    };
    if let Err(e) = gw.logins.succeeded(&id, &ip).await {
        tracing::warn!(error = %e, "could not clear the login attempt count");
    }
    Ok(client)
}

/// The granted scopes: the client's, or the requested subset of them.
fn granted(client: &Client, requested: Option<&str>) -> Result<Vec<Scope>, ApiError> {
    let Some(requested) = requested else {
        return Ok(client.scopes.clone());
    };
    let mut out = Vec::new();
    for name in requested.split(' ').filter(|p| !p.is_empty()) {
        match Scope::parse(name) {
            Some(sc) if client.scopes.contains(&sc) => {
                if !out.contains(&sc) {
                    out.push(sc)
                }
            }
            _ => {
                return Err(ApiError::oauth(
                    OAuthCode::InvalidScope,
                    format!(
                        "scope `{}` is not granted to this client",
                        name.chars().take(32).collect::<String>()
                    ),
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(ApiError::oauth(
            OAuthCode::InvalidScope,
            "the scope is empty",
        ));
    }
    Ok(out)
}

#[utoipa::path(
    post,
    path = "/oauth/token",
    tag = "auth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "a token; `Cache-Control: no-store`", body = TokenResponse),
        (status = 400, description = "a malformed request, another grant, or a scope not granted", body = OAuthErrorBody),
        (status = 401, description = "client authentication failed", body = OAuthErrorBody),
        (status = 429, description = "too many failed attempts (`slow_down`); see `Retry-After`", body = OAuthErrorBody),
        (status = 503, description = "client authentication is unavailable for now (`temporarily_unavailable`)", body = OAuthErrorBody),
    ),
    security((), ("client_basic" = [])),
)]
pub async fn token(
    req: HttpRequest,
    body: Bytes,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let form = form(&req, &body)?;
    match single(&form, "grant_type")? {
        None => {
            return Err(ApiError::oauth(
                OAuthCode::InvalidRequest,
                "grant_type is required",
            ));
        }
        Some("client_credentials") => {}
        Some(_) => {
            return Err(ApiError::oauth(
                OAuthCode::UnsupportedGrantType,
                "only the client_credentials grant is supported",
            ));
        }
    }
    let Some(creds) = credentials(&req, &form)? else {
        return Err(ApiError::oauth(
            OAuthCode::InvalidClient { basic: false },
            "client authentication is required",
        ));
    };
    let requested = single(&form, "scope")?.map(str::to_owned);
    let client = check_client(&req, &gw, creds).await?;
    let scopes = granted(&client, requested.as_deref()).inspect_err(|_| {
        let mut r = record("token_denied", &req);
        r.client_id = Some(client.id.to_string());
        r.tenant = Some(client.tenant.to_string());
        r.error_code = Some("invalid_scope".into());
        r.status = Some(400);
        Observe::of(&req).record_as(&gw.audit, r);
    })?;
    let scope = scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let (access_token, claims) = gw
        .tokens
        .issue(&client.id, &client.tenant, &scope, client.generation)
        .map_err(|e| ApiError::Internal(format!("signing a token: {e}")))?;
    let mut r = record("token_issued", &req);
    r.client_id = Some(client.id.to_string());
    r.tenant = Some(client.tenant.to_string());
    r.scopes = Some(scope.clone());
    r.status = Some(200);
    Observe::of(&req).record_as(&gw.audit, r);
    tracing::info!(client_id = %client.id, tenant = %client.tenant, scope = %scope, jti = %claims.jti, "token issued");
    Ok(HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, "no-store"))
        .insert_header((PRAGMA, "no-cache"))
        .json(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: gw.tokens.ttl().as_secs(),
            scope,
        }))
}

/// `POST /oauth/revoke` (RFC 7009). The revoker is the token's owner, by its
/// client credentials or a bearer token of its own, or an `admin` bearer.
/// A token that is not valid anyway (expired, forged, unreadable) is answered
/// 200, as §2.2 asks: there is nothing to revoke.
#[utoipa::path(
    post,
    path = "/oauth/revoke",
    tag = "auth",
    request_body(content = RevokeForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "revoked, or not a valid token anyway (RFC 7009 §2.2)"),
        (status = 400, description = "a malformed request, or another client's token", body = OAuthErrorBody),
        (status = 401, description = "client authentication failed", body = OAuthErrorBody),
        (status = 429, description = "too many failed attempts (`slow_down`)", body = OAuthErrorBody),
        (status = 503, description = "revocation is unavailable for now", body = OAuthErrorBody),
    ),
    security((), ("client_basic" = []), ("bearer" = [])),
)]
pub async fn revoke(
    req: HttpRequest,
    body: Bytes,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let form = form(&req, &body)?;
    let token = single(&form, "token")?
        .ok_or_else(|| ApiError::oauth(OAuthCode::InvalidRequest, "token is required"))?;
    let (actor, admin) = match credentials(&req, &form)? {
        Some(creds) => {
            let client = check_client(&req, &gw, creds).await?;
            let admin = client.scopes.contains(&Scope::Admin);
            (client.id, admin)
        }
        None if req.headers().contains_key(AUTHORIZATION) => {
            let caller = authenticate(&req, &gw.tokens, &gw.registry)?;
            let admin = caller.scopes.contains(&Scope::Admin);
            (caller.client_id, admin)
        }
        None => {
            return Err(ApiError::oauth(
                OAuthCode::InvalidClient { basic: false },
                "client authentication is required",
            ));
        }
    };
    let done = || {
        HttpResponse::Ok()
            .insert_header((CACHE_CONTROL, "no-store"))
            .insert_header((PRAGMA, "no-cache"))
            .finish()
    };
    let Ok(claims) = gw.tokens.verify(token) else {
        return Ok(done());
    };
    if *claims.sub != *actor && !admin {
        let mut r = record("token_revoke_denied", &req);
        r.client_id = Some(actor.to_string());
        r.error_code = Some("unauthorized_client".into());
        r.status = Some(400);
        Observe::of(&req).record_as(&gw.audit, r);
        return Err(ApiError::oauth(
            OAuthCode::UnauthorizedClient,
            "only the token's own client or an admin may revoke it",
        ));
    }
    let now = crate::auth::jwt::now_secs();
    gw.registry
        .revoke(&claims.jti, claims.exp, now)
        .await
        .map_err(|e| match e {
            ApiError::AuthUnavailable => unavailable(),
            other => other,
        })?;
    let mut r = record("token_revoked", &req);
    r.client_id = Some(claims.sub.clone());
    r.tenant = Some(claims.tid.clone());
    r.scopes = Some(claims.scope.clone());
    r.status = Some(200);
    r.detail = Some(format!("revoked by {actor}; jti {}", claims.jti));
    Observe::of(&req).record_as(&gw.audit, r);
    tracing::info!(client_id = %claims.sub, by = %actor, jti = %claims.jti, "token revoked");
    Ok(done())
}

//! `POST /oauth/token`: OAuth 2.0 client credentials grant (RFC 6749 §4.4).

use actix_web::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use bytes::Bytes;
use tollgate_shared::config::Scope;

use crate::app::Gateway;
use crate::error::{ApiError, OAuthCode};

/// Form bodies larger than this are not token requests.
const MAX_FORM_BYTES: usize = 8 * 1024;

struct Credentials {
    id: String,
    secret: String,
    basic: bool,
}

/// Client credentials from HTTP Basic (each part form-urlencoded, RFC 6749 §2.3.1).
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

pub async fn token(
    req: HttpRequest,
    body: Bytes,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
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
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|_| ApiError::oauth(OAuthCode::InvalidRequest, "the form body is malformed"))?;
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
    let from_form = match (single(&form, "client_id")?, single(&form, "client_secret")?) {
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
    let creds = match (basic(&req)?, from_form) {
        (Some(_), Some(_)) => {
            return Err(ApiError::oauth(
                OAuthCode::InvalidRequest,
                "use one client authentication method, not both",
            ));
        }
        (Some(c), None) | (None, Some(c)) => c,
        (None, None) => {
            return Err(ApiError::oauth(
                OAuthCode::InvalidClient { basic: false },
                "client authentication is required",
            ));
        }
    };
    let requested = single(&form, "scope")?.map(str::to_owned);
    let basic_used = creds.basic;
    let gw2 = gw.clone();
    // argon2 is deliberately slow: keep it off the async executor.
    let client = web::block(move || gw2.registry.authenticate(&creds.id, &creds.secret))
        .await
        .map_err(|e| ApiError::Internal(format!("credential check failed: {e}")))?
        .ok_or_else(|| {
            ApiError::oauth(
                OAuthCode::InvalidClient { basic: basic_used },
                "client authentication failed",
            )
        })?;
    let scopes: Vec<Scope> = match requested.as_deref() {
        None => client.scopes.clone(),
        Some(s) => {
            let mut out = Vec::new();
            for name in s.split(' ').filter(|p| !p.is_empty()) {
                match Scope::parse(name) {
                    Some(sc) if client.scopes.contains(&sc) => {
                        if !out.contains(&sc) {
                            out.push(sc)
                        }
                    }
                    _ => {
                        return Err(ApiError::oauth(
                            OAuthCode::InvalidScope,
                            format!("scope `{name}` is not granted to this client"),
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
            out
        }
    };
    let scope = scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let (access_token, claims) = gw
        .tokens
        .issue(&client.id, &client.tenant, &scope)
        .map_err(|e| ApiError::Internal(format!("signing a token: {e}")))?;
    tracing::info!(client_id = %client.id, tenant = %client.tenant, scope = %scope, jti = %claims.jti, "token issued");
    Ok(HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, "no-store"))
        .insert_header((PRAGMA, "no-cache"))
        .json(serde_json::json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": gw.tokens.ttl().as_secs(),
            "scope": scope,
        })))
}

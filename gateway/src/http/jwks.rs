//! `GET /.well-known/jwks.json`: the public keys that verify Tollgate's tokens
//! (RFC 7517), the signing key's and those kept for a rotation. Empty with
//! HS256, whose key is a shared secret and never leaves the gateway.

use actix_web::http::header::CACHE_CONTROL;
use actix_web::{HttpResponse, web};

use crate::app::Gateway;

/// Verifiers may cache the set briefly; a new key should be published (as a
/// verify key) at least this long before it signs.
const MAX_AGE_SECS: u64 = 300;

pub async fn jwks(gw: web::Data<Gateway>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, format!("public, max-age={MAX_AGE_SECS}")))
        .json(gw.tokens.jwks())
}

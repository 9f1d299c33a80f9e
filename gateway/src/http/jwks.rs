//! `GET /.well-known/jwks.json`: the public keys that verify Tollgate's tokens
//! (RFC 7517), the signing key's and those kept for a rotation. Empty with
//! HS256, whose key is a shared secret and never leaves the gateway.

use actix_web::http::header::CACHE_CONTROL;
use actix_web::{HttpResponse, web};

use crate::app::Gateway;

/// Verifiers may cache the set briefly; a new key should be published (as a
/// verify key) at least this long before it signs.
const MAX_AGE_SECS: u64 = 300;

/// A JSON Web Key Set (RFC 7517 §5).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Describes jsonwebtoken's `JwkSet`, which is what is sent.
pub struct Jwks {
    /// The public keys; none with HS256.
    #[schema(value_type = Vec<Object>)]
    keys: Vec<()>,
}

#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "auth",
    responses((status = 200, description = "the keys that verify Tollgate's tokens", body = Jwks)),
)]
pub async fn jwks(gw: web::Data<Gateway>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, format!("public, max-age={MAX_AGE_SECS}")))
        .json(gw.tokens.jwks())
}

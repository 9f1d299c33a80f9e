//! Access tokens: JWTs in the RFC 9068 profile (`typ: at+jwt`), verified as
//! RFC 8725 asks: size capped before any parsing, the key chosen by `kid`
//! alone and the algorithm pinned to that key (so `none` and HS/RS confusion
//! cannot work), unknown `crit` refused, `exp`, `iat`, `nbf`, `iss`, `aud`,
//! `jti` required, a leeway of 30 s.
//!
//! A token that passed is remembered by its exact text (a few thousand at
//! most), so the same token on its next request costs a lookup and an
//! expiry check instead of base64, JSON and a signature. Only a token that
//! verified can get in, the keys do not change under a `TokenService`, and
//! everything else those checks decide cannot change with time but `exp`.
//! Revocation is not the token's business: the registry decides it on every
//! request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};
use tollgate_shared::config::AuthConfig;

use super::keys::KeySet;

/// Bearer tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 4096;
const TYP: &str = "at+jwt";
/// Clock skew tolerated on `exp`, `nbf` and `iat` (RFC 8725 suggests minutes at most).
pub const LEEWAY_SECS: u64 = 30;
/// The longest lifetime a token may claim (the largest `auth.token_ttl_secs`).
const MAX_LIFETIME_SECS: u64 = 86_400;
const MAX_JTI_BYTES: usize = 128;
/// Verified tokens remembered at most; at this many, the expired ones go,
/// and if none has, all of them.
const VERIFIED_MAX: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub tid: String,
    pub scope: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    /// The client's credential generation when the token was issued: disabling
    /// a client or rotating its secret moves it on, which kills older tokens.
    #[serde(default, rename = "gen")]
    pub generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    TooLarge,
    Malformed,
    Expired,
    NotYetValid,
    /// Signature, key, algorithm, issuer, audience, type or a claim is wrong.
    Invalid,
}

impl TokenError {
    /// What the caller is told (RFC 6750 `error_description`) and the metric label.
    pub fn describe(self) -> (&'static str, &'static str) {
        match self {
            TokenError::TooLarge => ("the token is too large", "token_too_large"),
            TokenError::Malformed => ("the token is malformed", "token_malformed"),
            TokenError::Expired => ("the token has expired", "token_expired"),
            TokenError::NotYetValid => ("the token is not valid yet", "token_not_yet_valid"),
            TokenError::Invalid => ("the token is invalid", "token_invalid"),
        }
    }
}

/// The parts of the JOSE header that decide anything. Everything else
/// (`jku`, `x5u`, `jwk`, `x5c`...) is ignored: keys come from config only.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    typ: Option<String>,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

pub struct TokenService {
    issuer: String,
    audience: String,
    ttl: Duration,
    keys: KeySet,
    /// One prepared validation per algorithm in use.
    validations: Vec<(Algorithm, Validation)>,
    /// Tokens that verified, by their text (see the module doc).
    verified: Mutex<HashMap<Box<str>, Arc<Claims>>>,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn validation(alg: Algorithm, cfg: &AuthConfig) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[cfg.issuer.as_str()]);
    v.set_audience(&[cfg.audience.as_str()]);
    v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    v.validate_exp = true;
    v.validate_nbf = true;
    v.leeway = LEEWAY_SECS;
    v
}

impl TokenService {
    pub fn new(cfg: &AuthConfig) -> Result<TokenService, String> {
        let keys = KeySet::from_config(cfg)?;
        let mut validations: Vec<(Algorithm, Validation)> = Vec::new();
        for alg in keys.algorithms() {
            if !validations.iter().any(|(a, _)| *a == alg) {
                validations.push((alg, validation(alg, cfg)));
            }
        }
        Ok(TokenService {
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            ttl: cfg.token_ttl,
            keys,
            validations,
            verified: Mutex::new(HashMap::new()),
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn jwks(&self) -> JwkSet {
        self.keys.jwks()
    }

    /// Signs a token for `client` (credential generation `generation`) of `tenant` with `scope` (space-separated).
    pub fn issue(
        &self,
        client: &str,
        tenant: &str,
        scope: &str,
        generation: u64,
    ) -> Result<(String, Claims), String> {
        let now = now_secs();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: client.to_owned(),
            tid: tenant.to_owned(),
            scope: scope.to_owned(),
            iat: now,
            nbf: now,
            exp: now + self.ttl.as_secs(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            generation,
        };
        let (key, alg, kid) = self.keys.signing();
        let mut header = Header::new(alg);
        header.typ = Some(TYP.to_owned());
        header.kid = kid.map(str::to_owned);
        let token = encode(&header, &claims, key).map_err(|e| e.to_string())?;
        Ok((token, claims))
    }

    /// Verifies a token completely; see the module doc for the rules.
    pub fn verify(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let now = now_secs();
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = verified.get(token) {
            // The library's rule: expired once `exp` is more than the leeway ago.
            if c.exp.saturating_add(LEEWAY_SECS) >= now {
                return Ok(c.clone());
            }
            verified.remove(token);
            return Err(TokenError::Expired);
        }
        drop(verified);
        let claims = Arc::new(self.check(token, now)?);
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= VERIFIED_MAX {
            verified.retain(|_, c| c.exp.saturating_add(LEEWAY_SECS) >= now);
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
        }
        verified.insert(token.into(), claims.clone());
        Ok(claims)
    }

    /// Every check of a token not seen before.
    fn check(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(head), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let head = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head)
            .map_err(|_| TokenError::Malformed)?;
        let head: JoseHeader = serde_json::from_slice(&head).map_err(|_| TokenError::Malformed)?;
        // RFC 7515 §4.1.11: an extension we do not understand must not be ignored; we know none.
        if head.crit.is_some() {
            return Err(TokenError::Invalid);
        }
        let typ_ok = head.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case(TYP) || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if !typ_ok {
            return Err(TokenError::Invalid);
        }
        let key = self
            .keys
            .find(head.kid.as_deref())
            .ok_or(TokenError::Invalid)?;
        // The key decides the algorithm; the header may only agree with it.
        if key.alg_name != head.alg {
            return Err(TokenError::Invalid);
        }
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == key.alg)
            .map(|(_, v)| v)
            .ok_or(TokenError::Invalid)?;
        let claims = decode::<Claims>(token, &key.decoding, validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidToken
                | ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_)
                | ErrorKind::InvalidClaimFormat(_)
                | ErrorKind::MissingRequiredClaim(_) => TokenError::Malformed,
                _ => TokenError::Invalid,
            })?;
        check_claims(&claims, now)?;
        Ok(claims)
    }
}

/// What the library does not check: `iat` not in the future, a sane
/// lifetime, a usable `jti`.
fn check_claims(c: &Claims, now: u64) -> Result<(), TokenError> {
    if c.iat > now + LEEWAY_SECS {
        return Err(TokenError::NotYetValid);
    }
    if c.exp <= c.iat || c.exp - c.iat > MAX_LIFETIME_SECS + LEEWAY_SECS {
        return Err(TokenError::Invalid);
    }
    let jti_ok = !c.jti.is_empty()
        && c.jti.len() <= MAX_JTI_BYTES
        && c.jti.bytes().all(|b| b.is_ascii_graphic());
    if !jti_ok {
        return Err(TokenError::Invalid);
    }
    Ok(())
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
pub(crate) mod tests;

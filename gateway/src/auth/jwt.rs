//! Access tokens: JWTs signed with HS256 (RFC 9068 profile: `typ: at+jwt`),
//! verified with the algorithm pinned to the key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
use serde::{Deserialize, Serialize};
use tollgate_shared::config::AuthConfig;

/// Bearer tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 4096;
const TYP: &str = "at+jwt";
const LEEWAY_SECS: u64 = 30;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is too large")]
    TooLarge,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's signature, issuer or audience is wrong")]
    Invalid,
}

pub struct TokenService {
    issuer: String,
    audience: String,
    ttl: Duration,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenService {
    pub fn new(cfg: &AuthConfig) -> Result<TokenService, String> {
        let secret = cfg
            .hs256_secret
            .as_ref()
            .ok_or("auth.hs256_secret is required to sign tokens")?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[cfg.issuer.as_str()]);
        validation.set_audience(&[cfg.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        Ok(TokenService {
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            ttl: cfg.token_ttl,
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Signs a token for `client` of `tenant` with `scope` (space-separated).
    pub fn issue(
        &self,
        client: &str,
        tenant: &str,
        scope: &str,
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
        };
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some(TYP.to_owned());
        let token = encode(&header, &claims, &self.encoding).map_err(|e| e.to_string())?;
        Ok((token, claims))
    }

    /// Verifies signature (HS256 only), `typ`, `iss`, `aud`, `exp`, `nbf` and the claim set.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let header = decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::HS256 || header.typ.as_deref() != Some(TYP) {
            return Err(TokenError::Invalid);
        }
        use jsonwebtoken::errors::ErrorKind;
        decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidToken
                | ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_) => TokenError::Malformed,
                _ => TokenError::Invalid,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_shared::config::JwtAlgorithm;
    use tollgate_shared::secret::Secret;

    fn service(secret: &str) -> TokenService {
        TokenService::new(&AuthConfig {
            issuer: "tollgate".into(),
            audience: "tollgate-api".into(),
            token_ttl: Duration::from_secs(60),
            algorithm: JwtAlgorithm::HS256,
            hs256_secret: Some(Secret::new(secret.into())),
        })
        .unwrap()
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef-test";

    #[test]
    fn issued_tokens_verify_with_their_claims() {
        let s = service(KEY);
        let (t, c) = s.issue("c1", "acme", "infer admin").unwrap();
        let v = s.verify(&t).unwrap();
        assert_eq!(v, c);
        assert_eq!(v.exp - v.iat, 60);
        assert_eq!(v.jti.len(), 32);
    }

    #[test]
    fn another_key_or_tampering_is_refused() {
        let (t, _) = service(KEY).issue("c1", "acme", "infer").unwrap();
        assert_eq!(
            service("another-key-of-sufficient-length-000").verify(&t),
            Err(TokenError::Invalid)
        );
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged_payload = base64_url(
            r#"{"iss":"tollgate","aud":"tollgate-api","sub":"c1","tid":"acme","scope":"infer admin","iat":1,"nbf":1,"exp":99999999999,"jti":"x"}"#,
        );
        parts[1] = &forged_payload;
        assert_eq!(
            service(KEY).verify(&parts.join(".")),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn alg_none_and_oversized_tokens_are_refused() {
        let header = base64_url(r#"{"alg":"none","typ":"at+jwt"}"#);
        let body = base64_url(r#"{"sub":"c1"}"#);
        assert!(service(KEY).verify(&format!("{header}.{body}.")).is_err());
        assert_eq!(
            service(KEY).verify(&"a".repeat(MAX_TOKEN_BYTES + 1)),
            Err(TokenError::TooLarge)
        );
        assert_eq!(service(KEY).verify("not a jwt"), Err(TokenError::Malformed));
    }

    fn base64_url(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }
}

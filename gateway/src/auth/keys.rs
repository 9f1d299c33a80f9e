//! The token keys: the one key that signs, and every key that verifies (the
//! signing key plus those kept for a rotation). Each verifying key is pinned
//! to exactly one algorithm and found by `kid` only: nothing in a token's
//! header (`jku`, `x5u`, `jwk`) can bring in a key of its own.

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use tollgate_shared::config::{AuthConfig, JwtAlgorithm, VerifyKeyConfig};

/// A key that verifies tokens, with the one algorithm it accepts.
pub struct VerifyingKey {
    /// None only for an HS256 key without an explicit id (tokens without `kid`).
    pub kid: Option<String>,
    pub alg: Algorithm,
    /// `alg` as it appears in a JOSE header.
    pub alg_name: &'static str,
    pub decoding: DecodingKey,
    /// The public JWK, published at `/.well-known/jwks.json` (never for HS256).
    jwk: Option<Jwk>,
}

pub struct KeySet {
    signing: EncodingKey,
    signing_alg: Algorithm,
    signing_kid: Option<String>,
    /// The signing key first, then the rotation keys; a handful, so a scan is fastest.
    verifying: Vec<VerifyingKey>,
}

pub fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

fn encoding_key(alg: JwtAlgorithm, material: &[u8]) -> Result<EncodingKey, String> {
    let key = match alg {
        JwtAlgorithm::HS256 => Ok(EncodingKey::from_secret(material)),
        JwtAlgorithm::RS256 => EncodingKey::from_rsa_pem(material),
        JwtAlgorithm::ES256 => EncodingKey::from_ec_pem(material),
        JwtAlgorithm::EdDSA => EncodingKey::from_ed_pem(material),
    };
    key.map_err(|e| format!("not a usable {} private key: {e}", alg.as_str()))
}

fn decoding_key(alg: JwtAlgorithm, material: &[u8]) -> Result<DecodingKey, String> {
    let key = match alg {
        JwtAlgorithm::HS256 => Ok(DecodingKey::from_secret(material)),
        JwtAlgorithm::RS256 => DecodingKey::from_rsa_pem(material),
        JwtAlgorithm::ES256 => DecodingKey::from_ec_pem(material),
        JwtAlgorithm::EdDSA => DecodingKey::from_ed_pem(material),
    };
    key.map_err(|e| format!("not a usable {} public key: {e}", alg.as_str()))
}

/// The public JWK of an asymmetric key, its `kid` set (by default to its RFC 7638 thumbprint).
fn publish(mut jwk: Jwk, kid: Option<&str>) -> Result<(Jwk, String), String> {
    let kid = match kid {
        Some(k) => k.to_owned(),
        None => jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| format!("cannot compute the key's thumbprint: {e}"))?,
    };
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok((jwk, kid))
}

impl KeySet {
    pub fn from_config(cfg: &AuthConfig) -> Result<KeySet, String> {
        let material = match cfg.algorithm {
            JwtAlgorithm::HS256 => cfg
                .hs256_secret
                .as_ref()
                .ok_or("auth.hs256_secret is required to sign tokens")?,
            _ => cfg
                .signing_key
                .as_ref()
                .ok_or("auth.signing_key is required to sign tokens")?,
        };
        let alg = algorithm(cfg.algorithm);
        let signing = encoding_key(cfg.algorithm, material.expose().as_bytes())
            .map_err(|e| format!("auth.signing_key: {e}"))?;
        let (decoding, jwk, kid) = if cfg.algorithm == JwtAlgorithm::HS256 {
            let d = DecodingKey::from_secret(material.expose().as_bytes());
            (d, None, cfg.kid.clone())
        } else {
            let jwk = Jwk::from_encoding_key(&signing, alg)
                .map_err(|e| format!("auth.signing_key: {e}"))?;
            let d = DecodingKey::from_jwk(&jwk).map_err(|e| format!("auth.signing_key: {e}"))?;
            let (jwk, kid) = publish(jwk, cfg.kid.as_deref())?;
            (d, Some(jwk), Some(kid))
        };
        let mut set = KeySet {
            signing,
            signing_alg: alg,
            signing_kid: kid.clone(),
            verifying: vec![VerifyingKey {
                kid,
                alg,
                alg_name: cfg.algorithm.as_str(),
                decoding,
                jwk,
            }],
        };
        for (i, k) in cfg.verify_keys.iter().enumerate() {
            let key = verifying_key(k).map_err(|e| format!("auth.verify_keys[{i}]: {e}"))?;
            if set.verifying.iter().any(|v| v.kid == key.kid) {
                return Err(format!(
                    "auth.verify_keys[{i}]: kid {:?} is used by another key",
                    key.kid
                ));
            }
            set.verifying.push(key);
        }
        set.self_test()?;
        Ok(set)
    }

    /// Signs and verifies a probe, so a key that does not fit its algorithm
    /// stops the start instead of the first token request.
    fn self_test(&self) -> Result<(), String> {
        let message = b"tollgate key self-test";
        let sig = jsonwebtoken::crypto::sign(message, &self.signing, self.signing_alg)
            .map_err(|e| format!("auth.signing_key cannot sign: {e}"))?;
        let ok = self.verifying.first().is_some_and(|k| {
            jsonwebtoken::crypto::verify(&sig, message, &k.decoding, k.alg).unwrap_or(false)
        });
        if ok {
            Ok(())
        } else {
            Err("auth.signing_key: a signature it made does not verify".into())
        }
    }

    pub fn signing(&self) -> (&EncodingKey, Algorithm, Option<&str>) {
        (&self.signing, self.signing_alg, self.signing_kid.as_deref())
    }

    /// The key a token's `kid` names (a token without `kid` names the key without one).
    pub fn find(&self, kid: Option<&str>) -> Option<&VerifyingKey> {
        self.verifying.iter().find(|k| k.kid.as_deref() == kid)
    }

    pub fn algorithms(&self) -> impl Iterator<Item = Algorithm> + '_ {
        self.verifying.iter().map(|k| k.alg)
    }

    /// The public keys as a JWK Set (RFC 7517 §5). Empty with HS256 only.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self
                .verifying
                .iter()
                .filter_map(|k| k.jwk.clone())
                .collect(),
        }
    }
}

fn verifying_key(k: &VerifyKeyConfig) -> Result<VerifyingKey, String> {
    let alg = algorithm(k.algorithm);
    let decoding = decoding_key(k.algorithm, k.key.expose().as_bytes())?;
    if k.algorithm == JwtAlgorithm::HS256 {
        return Ok(VerifyingKey {
            kid: k.kid.clone(),
            alg,
            alg_name: k.algorithm.as_str(),
            decoding,
            jwk: None,
        });
    }
    let jwk = Jwk::from_decoding_key(&decoding, Some(alg)).map_err(|e| e.to_string())?;
    let (jwk, kid) = publish(jwk, k.kid.as_deref())?;
    Ok(VerifyingKey {
        kid: Some(kid),
        alg,
        alg_name: k.algorithm.as_str(),
        decoding,
        jwk: Some(jwk),
    })
}

//! Token issue and verification, with keys of every supported algorithm
//! generated per test run (nothing private is kept in the repository).

use std::time::Duration;

use base64::Engine;
use tollgate_shared::config::{AuthConfig, JwtAlgorithm, VerifyKeyConfig};
use tollgate_shared::secret::Secret;

use super::*;

pub(crate) mod test_keys {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
    };
    use base64::Engine;

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    /// (private PKCS#8 PEM, public SPKI PEM)
    pub fn rsa() -> (String, String) {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let private = AsDer::<Pkcs8V1Der>::as_der(&kp).unwrap();
        let public = AsDer::<PublicKeyX509Der>::as_der(kp.public_key()).unwrap();
        (
            pem("PRIVATE KEY", private.as_ref()),
            pem("PUBLIC KEY", public.as_ref()),
        )
    }

    pub fn ec() -> (String, String) {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
        let public = AsDer::<PublicKeyX509Der>::as_der(kp.public_key()).unwrap();
        (
            pem("PRIVATE KEY", doc.as_ref()),
            pem("PUBLIC KEY", public.as_ref()),
        )
    }

    pub fn ed() -> (String, String) {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8v1(&rng).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(doc.as_ref()).unwrap();
        let public = AsDer::<PublicKeyX509Der>::as_der(kp.public_key()).unwrap();
        (
            pem("PRIVATE KEY", doc.as_ref()),
            pem("PUBLIC KEY", public.as_ref()),
        )
    }
}

pub(crate) const KEY: &str = "0123456789abcdef0123456789abcdef-test";

pub(crate) fn config(alg: JwtAlgorithm, signing: &str) -> AuthConfig {
    AuthConfig {
        stale_ok_on_redis_failure: false,
        issuer: "tollgate".into(),
        audience: "tollgate-api".into(),
        token_ttl: Duration::from_secs(60),
        algorithm: alg,
        hs256_secret: (alg == JwtAlgorithm::HS256).then(|| Secret::new(signing.into())),
        signing_key: (alg != JwtAlgorithm::HS256).then(|| Secret::new(signing.into())),
        kid: None,
        verify_keys: Vec::new(),
    }
}

fn service(secret: &str) -> TokenService {
    TokenService::new(&config(JwtAlgorithm::HS256, secret)).unwrap()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn header_of(token: &str) -> serde_json::Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn issued_tokens_verify_with_their_claims() {
    let s = service(KEY);
    let (t, c) = s.issue("c1", "acme", "infer admin", 3).unwrap();
    let v = s.verify(&t).unwrap();
    assert_eq!(*v, c);
    assert_eq!(v.exp - v.iat, 60);
    assert_eq!(v.jti.len(), 32);
    assert_eq!(v.generation, 3);
    let h = header_of(&t);
    assert_eq!(
        (h["alg"].as_str(), h["typ"].as_str()),
        (Some("HS256"), Some("at+jwt"))
    );
    assert!(h.get("kid").is_none(), "HS256 without a configured kid");
    assert!(
        s.jwks().keys.is_empty(),
        "a shared secret is never published"
    );
}

#[test]
fn another_key_or_tampering_is_refused() {
    let (t, _) = service(KEY).issue("c1", "acme", "infer", 0).unwrap();
    assert_eq!(
        service("another-key-of-sufficient-length-000").verify(&t),
        Err(TokenError::Invalid)
    );
    let mut parts: Vec<&str> = t.split('.').collect();
    let forged = b64(
        r#"{"iss":"tollgate","aud":"tollgate-api","sub":"c1","tid":"acme","scope":"infer admin","iat":1,"nbf":1,"exp":99999999999,"jti":"x"}"#,
    );
    parts[1] = &forged;
    assert_eq!(
        service(KEY).verify(&parts.join(".")),
        Err(TokenError::Invalid)
    );
}

#[test]
fn alg_none_crit_typ_and_oversized_tokens_are_refused() {
    let s = service(KEY);
    let (t, _) = s.issue("c1", "acme", "infer", 0).unwrap();
    let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
    let with_header = |h: &str, parts: &mut Vec<String>| {
        parts[0] = b64(h);
        parts.join(".")
    };
    for (header, why) in [
        (r#"{"alg":"none","typ":"at+jwt"}"#, "alg none"),
        (r#"{"alg":"HS512","typ":"at+jwt"}"#, "another algorithm"),
        (r#"{"alg":"HS256","typ":"JWT"}"#, "wrong typ"),
        (r#"{"alg":"HS256"}"#, "no typ"),
        (r#"{"alg":"HS256","typ":"at+jwt","crit":["exp"]}"#, "crit"),
        (
            r#"{"alg":"HS256","typ":"at+jwt","kid":"../../dev/null"}"#,
            "unknown kid",
        ),
    ] {
        assert!(s.verify(&with_header(header, &mut parts)).is_err(), "{why}");
    }
    assert_eq!(
        s.verify(&"a".repeat(MAX_TOKEN_BYTES + 1)),
        Err(TokenError::TooLarge)
    );
    assert_eq!(s.verify("not a jwt"), Err(TokenError::Malformed));
    assert_eq!(s.verify("a.b.c.d"), Err(TokenError::Malformed));
}

#[test]
fn claims_beyond_the_library_are_checked() {
    let now = 1_000_000;
    let ok = Claims {
        iss: "i".into(),
        aud: "a".into(),
        sub: "c".into(),
        tid: "t".into(),
        scope: "infer".into(),
        iat: now,
        nbf: now,
        exp: now + 60,
        jti: "j1".into(),
        generation: 0,
    };
    assert_eq!(check_claims(&ok, now), Ok(()));
    let future = Claims {
        iat: now + 120,
        exp: now + 180,
        ..ok.clone()
    };
    assert_eq!(check_claims(&future, now), Err(TokenError::NotYetValid));
    let forever = Claims {
        exp: now + 10 * 86_400,
        ..ok.clone()
    };
    assert_eq!(check_claims(&forever, now), Err(TokenError::Invalid));
    let odd_jti = Claims {
        jti: "a b".into(),
        ..ok.clone()
    };
    assert_eq!(check_claims(&odd_jti, now), Err(TokenError::Invalid));
}

#[test]
fn asymmetric_keys_sign_verify_and_publish_their_public_half() {
    for (alg, (private, _)) in [
        (JwtAlgorithm::RS256, test_keys::rsa()),
        (JwtAlgorithm::ES256, test_keys::ec()),
        (JwtAlgorithm::EdDSA, test_keys::ed()),
    ] {
        let s = TokenService::new(&config(alg, &private)).unwrap();
        let (t, c) = s.issue("c1", "acme", "infer", 0).unwrap();
        assert_eq!(*s.verify(&t).unwrap(), c, "{alg:?}");
        let h = header_of(&t);
        assert_eq!(h["alg"], alg.as_str());
        let jwks = serde_json::to_value(s.jwks()).unwrap();
        let key = &jwks["keys"][0];
        assert_eq!(
            key["kid"], h["kid"],
            "{alg:?}: the token names its published key"
        );
        assert_eq!(key["alg"], alg.as_str());
        assert_eq!(key["use"], "sig");
        for private_part in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(
                key.get(private_part).is_none(),
                "{alg:?} publishes {private_part}"
            );
        }
    }
}

#[test]
fn rotation_old_keys_verify_and_the_confusion_attack_fails() {
    let (old_private, old_public) = test_keys::ec();
    let (new_private, new_public) = test_keys::rsa();
    let old = TokenService::new(&AuthConfig {
        kid: Some("2026-10".into()),
        ..config(JwtAlgorithm::ES256, &old_private)
    })
    .unwrap();
    let (old_token, _) = old.issue("c1", "acme", "infer", 0).unwrap();
    let (hs_token, _) = service(KEY).issue("c1", "acme", "infer", 0).unwrap();
    let rotated = TokenService::new(&AuthConfig {
        kid: Some("2026-11".into()),
        verify_keys: vec![
            VerifyKeyConfig {
                kid: Some("2026-10".into()),
                algorithm: JwtAlgorithm::ES256,
                key: Secret::new(old_public),
            },
            VerifyKeyConfig {
                kid: None,
                algorithm: JwtAlgorithm::HS256,
                key: Secret::new(KEY.into()),
            },
        ],
        ..config(JwtAlgorithm::RS256, &new_private)
    })
    .unwrap();
    assert!(
        rotated.verify(&old_token).is_ok(),
        "the old EC key still verifies"
    );
    assert!(
        rotated.verify(&hs_token).is_ok(),
        "the old kid-less HS256 key too"
    );
    let (new_token, _) = rotated.issue("c1", "acme", "infer", 0).unwrap();
    assert_eq!(header_of(&new_token)["kid"], "2026-11");
    assert!(old.verify(&new_token).is_err());
    let kids: Vec<_> = rotated
        .jwks()
        .keys
        .iter()
        .map(|k| k.common.key_id.clone().unwrap())
        .collect();
    assert_eq!(kids, ["2026-11", "2026-10"]);

    // HS256 keyed with the RSA public key, naming the RSA key: pinned to RS256, refused.
    let header = jsonwebtoken::Header {
        kid: Some("2026-11".into()),
        typ: Some("at+jwt".into()),
        ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
    };
    let (_, claims) = rotated.issue("c1", "acme", "infer admin", 0).unwrap();
    let forged = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(new_public.as_bytes()),
    )
    .unwrap();
    assert_eq!(rotated.verify(&forged), Err(TokenError::Invalid));
}

#[test]
fn a_key_that_does_not_fit_its_algorithm_stops_the_start() {
    let (rsa_private, _) = test_keys::rsa();
    assert!(TokenService::new(&config(JwtAlgorithm::ES256, &rsa_private)).is_err());
    assert!(
        TokenService::new(&config(
            JwtAlgorithm::EdDSA,
            "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----"
        ))
        .is_err()
    );
}

#[test]
fn a_verified_token_is_remembered_until_it_expires() {
    let s = service(KEY);
    let (t, c) = s.issue("c1", "acme", "infer", 0).unwrap();
    let first = s.verify(&t).unwrap();
    let again = s.verify(&t).unwrap();
    assert!(
        Arc::ptr_eq(&first, &again),
        "the second verification is the remembered one"
    );
    assert_eq!(*again, c);
    // The same claims, now long expired: the remembered token is refused and forgotten.
    let stale = Arc::new(Claims {
        exp: now_secs() - LEEWAY_SECS - 1,
        ..c
    });
    s.verified.lock().unwrap().insert(t.as_str().into(), stale);
    assert_eq!(s.verify(&t), Err(TokenError::Expired));
    assert!(!s.verified.lock().unwrap().contains_key(t.as_str()));
    // A token that fails is not remembered; one changed by a byte is not the same token.
    let mut forged = t.clone().into_bytes();
    let i = forged.len() - 10;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert!(s.verify(&forged).is_err());
    assert!(!s.verified.lock().unwrap().contains_key(forged.as_str()));
}

#[test]
fn remembered_tokens_are_bounded() {
    let s = service(KEY);
    for i in 0..VERIFIED_MAX + 10 {
        let (t, _) = s.issue(&format!("c{i}"), "acme", "infer", 0).unwrap();
        s.verify(&t).unwrap();
        assert!(s.verified.lock().unwrap().len() <= VERIFIED_MAX);
    }
}

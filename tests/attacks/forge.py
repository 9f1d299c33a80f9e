"""Forges access tokens for Tollgate's attack tests with an independent JWT
implementation (PyJWT and the `cryptography` package), never Tollgate's own.

Usage: forge.py keys DIR          writes rs/es/ed/attacker key pairs as PEM files
       forge.py tokens DIR JSON   prints {name: token} for the claims in JSON
       forge.py verify JWKS TOKEN AUDIENCE ISSUER
                                  verifies one of Tollgate's tokens with its
                                  published JWK Set and prints the claims

Token names starting with `valid_` are correctly signed controls that must be
accepted; every other token is an attack that must be refused.
"""

import base64
import hashlib
import hmac
import json
import sys
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

KEYS = ("rs", "es", "ed", "attacker")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def write_keys(out: Path) -> None:
    pairs = {
        "rs": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "es": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
        "attacker": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }
    for name, key in pairs.items():
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        (out / f"{name}.key.pem").write_bytes(private)
        (out / f"{name}.pub.pem").write_bytes(public)


def tokens(keys: Path, spec: dict) -> dict:
    now = int(time.time())
    pem = lambda name: (keys / name).read_bytes()
    rs, es, ed = pem("rs.key.pem"), pem("es.key.pem"), pem("ed.key.pem")
    attacker = pem("attacker.key.pem")
    rs_public = pem("rs.pub.pem")
    kids = spec["kids"]

    def claims(**changes):
        c = {
            "iss": spec["iss"],
            "aud": spec["aud"],
            "sub": spec["sub"],
            "tid": spec["tid"],
            "scope": spec["scope"],
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
        }
        for k, v in changes.items():
            if v is None:
                c.pop(k, None)
            else:
                c[k] = v
        return c

    def header(alg, kid, **extra):
        h = {"alg": alg, "typ": "at+jwt"}
        if kid is not None:
            h["kid"] = kid
        h.update(extra)
        return h

    def sign(key, alg, kid, body=None, **extra):
        h = header(alg, kid, **extra)
        h.pop("alg")
        return jwt.encode(body or claims(), key, algorithm=alg, headers=h)

    def hs(secret: bytes, h: dict, body: dict) -> str:
        signing_input = f"{segment(h)}.{segment(body)}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(mac)}"

    out = {
        # Controls: correctly signed by the current and the rotated-out keys.
        "valid_rs256": sign(rs, "RS256", kids["rs"]),
        "valid_es256_old_key": sign(es, "ES256", kids["es"]),
        "valid_eddsa_old_key": sign(ed, "EdDSA", kids["ed"]),
        # Unsigned.
        "alg_none": f"{segment(header('none', kids['rs']))}.{segment(claims())}.",
        "alg_None_capitalised": f"{segment(header('None', kids['rs']))}.{segment(claims())}.",
        "alg_none_no_kid": f"{segment(header('none', None))}.{segment(claims())}.",
        # Algorithm confusion: HMAC keyed with the RSA public key (as published).
        "hs256_keyed_with_rs_public_key": hs(rs_public, header("HS256", kids["rs"]), claims()),
        "hs256_keyed_with_rs_public_key_no_kid": hs(rs_public, header("HS256", None), claims()),
        # ECDSA signature (r, s) = (0, 0), the "psychic signature" (CVE-2022-21449).
        "es256_r_s_zero": f"{segment(header('ES256', kids['es']))}.{segment(claims())}.{b64(bytes(64))}",
        # kid injection: paths to well-known files, SQL.
        "kid_path_traversal": hs(b"", header("HS256", "../../../../../../dev/null"), claims()),
        "kid_path_traversal_rs": sign(rs, "RS256", "../../../../etc/passwd"),
        "kid_sql_injection": hs(
            b"secret", header("HS256", "x' UNION SELECT 'secret' -- "), claims()
        ),
        # Keys brought by the token itself.
        "embedded_jwk_and_jku": sign(
            attacker,
            "RS256",
            kids["rs"],
            jku="http://127.0.0.1:9/jwks.json",
            x5u="http://127.0.0.1:9/cert.pem",
            jwk=json.loads(
                jwt.algorithms.RSAAlgorithm.to_jwk(
                    serialization.load_pem_private_key(attacker, None).public_key()
                )
            ),
        ),
        "attacker_key_unknown_kid": sign(attacker, "RS256", "attacker-1"),
        # Time claims.
        "expired": sign(rs, "RS256", kids["rs"], claims(iat=now - 7200, nbf=now - 7200, exp=now - 3600)),
        "nbf_in_the_future": sign(rs, "RS256", kids["rs"], claims(nbf=now + 3600, exp=now + 4000)),
        "iat_in_the_future": sign(rs, "RS256", kids["rs"], claims(iat=now + 3600, exp=now + 4000)),
        "exp_as_a_string": sign(rs, "RS256", kids["rs"], claims(exp=str(now + 600))),
        "nbf_as_a_string": sign(rs, "RS256", kids["rs"], claims(nbf=str(now))),
        "lifetime_of_a_year": sign(rs, "RS256", kids["rs"], claims(exp=now + 365 * 86400)),
        # Required claims missing.
        "missing_exp": sign(rs, "RS256", kids["rs"], claims(exp=None)),
        "missing_jti": sign(rs, "RS256", kids["rs"], claims(jti=None)),
        "missing_iat": sign(rs, "RS256", kids["rs"], claims(iat=None)),
        "missing_nbf": sign(rs, "RS256", kids["rs"], claims(nbf=None)),
        "missing_iss": sign(rs, "RS256", kids["rs"], claims(iss=None)),
        "missing_aud": sign(rs, "RS256", kids["rs"], claims(aud=None)),
        # Wrong audience, issuer, type.
        "wrong_aud": sign(rs, "RS256", kids["rs"], claims(aud="another-api")),
        "wrong_iss": sign(rs, "RS256", kids["rs"], claims(iss="https://evil.example")),
        "aud_list_without_ours": sign(rs, "RS256", kids["rs"], claims(aud=["another-api"])),
        "typ_jwt": jwt.encode(claims(), rs, algorithm="RS256", headers={"kid": kids["rs"], "typ": "JWT"}),
        "typ_missing": jwt.encode(claims(), rs, algorithm="RS256", headers={"kid": kids["rs"], "typ": None}),
        # An extension the gateway cannot understand.
        "unknown_crit": sign(rs, "RS256", kids["rs"], crit=["x-tollgate-bypass"], **{"x-tollgate-bypass": True}),
        # Correctly signed, but naming a client that does not exist or another tenant.
        "unknown_client": sign(rs, "RS256", kids["rs"], claims(sub="nobody-at-all")),
        "client_of_another_tenant": sign(rs, "RS256", kids["rs"], claims(tid=spec["other_tenant"])),
        # Tampered payload on a real signature.
        "payload_swapped": ".".join(
            [sign(rs, "RS256", kids["rs"]).split(".")[0], segment(claims(scope="infer admin dev")), sign(rs, "RS256", kids["rs"]).split(".")[2]]
        ),
    }
    if "hs_secret" in spec:
        # A token from before a switch to asymmetric keys: HS256 without kid.
        out["valid_hs256_legacy_no_kid"] = hs(
            spec["hs_secret"].encode(), header("HS256", None), claims()
        )
    return out


def verify(jwks: str, token: str, audience: str, issuer: str) -> dict:
    keys = jwt.PyJWKSet.from_dict(json.loads(jwks))
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    return jwt.decode(
        token,
        key.key,
        algorithms=[key.algorithm_name],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "jti", "sub"]},
    )


def main() -> None:
    if sys.argv[1] == "keys":
        write_keys(Path(sys.argv[2]))
    elif sys.argv[1] == "tokens":
        print(json.dumps(tokens(Path(sys.argv[2]), json.loads(sys.argv[3]))))
    elif sys.argv[1] == "verify":
        print(json.dumps(verify(*sys.argv[2:6])))
    else:
        sys.exit(f"unknown command {sys.argv[1]}")


if __name__ == "__main__":
    main()

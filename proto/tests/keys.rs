//! RS256 and ES256 tokens against public keys from PEM files and a JWKS
//! (the test keys in tests/keys/, made with openssl for these tests only).
#![allow(clippy::unwrap_used, missing_docs)]

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proto::keys::{KeyError, PublicKey};
use proto::token::{verify, verify_any, Claims, TokenError};

const SECRET: &[u8] = b"hs256 secret for the tests";
const NOW: u64 = 1_700_000_000;

fn key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn claims(user: &str) -> Claims {
    Claims {
        sub: user.into(),
        exp: NOW + 60,
        dev: None,
        channels: Some(vec!["news".into()]),
        send: None,
        publish: None,
    }
}

fn sign(alg: Algorithm, private: &str, kid: Option<&str>, c: &Claims) -> String {
    let pem = key(private);
    let k = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => unreachable!(),
    };
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, c, &k).unwrap()
}

fn invalid(r: Result<Claims, TokenError>) -> String {
    match r {
        Err(TokenError::Invalid(t)) => t,
        other => panic!("expected an invalid token, got {other:?}"),
    }
}

#[test]
fn pem_keys_verify_rs256_and_es256() {
    let rsa = PublicKey::from_pem(&key("rsa-public.pem")).unwrap();
    let ec = PublicKey::from_pem(&key("ec-public.pem")).unwrap();
    assert_eq!((rsa.algorithm(), ec.algorithm()), ("RS256", "ES256"));
    let keys = [rsa, ec];
    let c = claims("alice");
    for (alg, private) in [
        (Algorithm::RS256, "rsa-private.pem"),
        (Algorithm::ES256, "ec-private.pem"),
    ] {
        let t = sign(alg, private, None, &c);
        assert_eq!(verify_any(&t, SECRET, &keys, NOW), Ok(c.clone()), "{alg:?}");
        // A key's kid does not matter for a PEM key.
        let t = sign(alg, private, Some("whatever"), &c);
        assert_eq!(verify_any(&t, SECRET, &keys, NOW), Ok(c.clone()), "{alg:?}");
        // Expiry and sub are checked as for HS256.
        let mut old = c.clone();
        old.exp = NOW;
        let t = sign(alg, private, None, &old);
        assert_eq!(verify_any(&t, SECRET, &keys, NOW), Err(TokenError::Expired));
        let mut nobody = c.clone();
        nobody.sub = String::new();
        let t = sign(alg, private, None, &nobody);
        assert_eq!(
            verify_any(&t, SECRET, &keys, NOW),
            Err(TokenError::BadSubject)
        );
    }
    // HS256 still works beside them.
    let t = proto::token::mint(&c, SECRET).unwrap();
    assert_eq!(verify_any(&t, SECRET, &keys, NOW), Ok(c));
}

#[test]
fn a_token_signed_by_another_key_or_for_an_unconfigured_algorithm_is_refused() {
    let rsa = PublicKey::from_pem(&key("rsa-public.pem")).unwrap();
    let c = claims("mallory");
    // Signed with the other RSA key.
    let t = sign(Algorithm::RS256, "rsa2-private.pem", None, &c);
    assert_eq!(
        invalid(verify_any(&t, SECRET, std::slice::from_ref(&rsa), NOW)),
        "bad signature"
    );
    // ES256 with only an RSA key configured, RS256 with none.
    let t = sign(Algorithm::ES256, "ec-private.pem", None, &c);
    assert_eq!(
        invalid(verify_any(&t, SECRET, std::slice::from_ref(&rsa), NOW)),
        "algorithm ES256 is not accepted, only HS256 and RS256"
    );
    let t = sign(Algorithm::RS256, "rsa-private.pem", None, &c);
    assert_eq!(
        invalid(verify(&t, SECRET, NOW)),
        "algorithm RS256 is not accepted, only HS256"
    );
    // An RS256 header over an HS256 signature made with the public key as
    // the secret (the classic key-confusion attack) fails the RSA check.
    let pem = key("rsa-public.pem");
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(&pem),
    )
    .unwrap();
    let mut parts: Vec<&str> = forged.split('.').collect();
    let rs_header = sign(Algorithm::RS256, "rsa-private.pem", None, &c);
    parts[0] = rs_header.split('.').next().unwrap();
    let forged = parts.join(".");
    assert!(verify_any(&forged, SECRET, &[rsa], NOW).is_err());
}

#[test]
fn jwks_keys_are_chosen_by_kid() {
    let keys = PublicKey::from_jwks(&key("jwks.json")).unwrap();
    let found: Vec<(&str, Option<&str>)> = keys.iter().map(|k| (k.algorithm(), k.kid())).collect();
    assert_eq!(found, [("ES256", Some("ec-1")), ("RS256", Some("rsa-2"))]);
    let c = claims("bob");
    let t = sign(Algorithm::ES256, "ec-private.pem", Some("ec-1"), &c);
    assert_eq!(verify_any(&t, SECRET, &keys, NOW), Ok(c.clone()));
    let t = sign(Algorithm::RS256, "rsa2-private.pem", Some("rsa-2"), &c);
    assert_eq!(verify_any(&t, SECRET, &keys, NOW), Ok(c.clone()));
    // No kid: every key of the algorithm is tried.
    let t = sign(Algorithm::RS256, "rsa2-private.pem", None, &c);
    assert_eq!(verify_any(&t, SECRET, &keys, NOW), Ok(c.clone()));
    // A kid no key has.
    let t = sign(Algorithm::RS256, "rsa2-private.pem", Some("rsa-9"), &c);
    assert_eq!(
        invalid(verify_any(&t, SECRET, &keys, NOW)),
        "no RS256 key with kid \"rsa-9\""
    );
    // The right kid, the wrong private key.
    let t = sign(Algorithm::RS256, "rsa-private.pem", Some("rsa-2"), &c);
    assert_eq!(invalid(verify_any(&t, SECRET, &keys, NOW)), "bad signature");
}

#[test]
fn unusable_key_files_are_refused_with_a_reason() {
    assert_eq!(
        PublicKey::from_pem(&key("rsa-private.pem")).unwrap_err(),
        KeyError::Pem
    );
    assert_eq!(PublicKey::from_pem(b"hello").unwrap_err(), KeyError::Pem);
    assert_eq!(
        PublicKey::from_pem(&key("jwks.json")).unwrap_err(),
        KeyError::Pem
    );
    assert!(matches!(
        PublicKey::from_jwks(b"[1,2]"),
        Err(KeyError::Jwks(_))
    ));
    assert_eq!(
        PublicKey::from_jwks(br#"{"keys":[]}"#).unwrap_err(),
        KeyError::Empty
    );
    let hmac = br#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#;
    assert_eq!(
        PublicKey::from_jwks(hmac).unwrap_err().to_string(),
        "JWKS key 0 (h): only RSA and EC P-256 keys are accepted"
    );
    let enc = String::from_utf8(key("jwks.json")).unwrap().replacen(
        "\"use\": \"sig\"",
        "\"use\": \"enc\"",
        1,
    );
    assert_eq!(
        PublicKey::from_jwks(enc.as_bytes())
            .unwrap_err()
            .to_string(),
        "JWKS key 0 (ec-1): its use is not sig"
    );
    let p384 = br#"{"keys":[{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}]}"#;
    assert_eq!(
        PublicKey::from_jwks(p384).unwrap_err().to_string(),
        "JWKS key 0 (no kid): only the P-256 curve is accepted"
    );
}

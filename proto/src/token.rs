//! Token claims (JWT) and their checks. The clock is the caller's.
//!
//! HS256 with the shared secret is always accepted; RS256 and ES256 when
//! public keys are configured ([`crate::keys`], [`verify_any`]). Tokens with
//! `alg` `none` or any other algorithm are refused before their signature is
//! looked at. `exp` is checked against the `now` the caller passes, never
//! against the library's own clock.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::keys::{alg_name, PublicKey};

/// Longest accepted `sub` claim (user id), in bytes.
pub const MAX_SUB_LEN: usize = 256;

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;

/// The claims pushgate reads from a client token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id (required).
    pub sub: String,
    /// Expiry, seconds since the Unix epoch (required).
    pub exp: u64,
    /// Device id (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// Channels this connection may subscribe to: names, or prefixes ending in `*`.
    /// Absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// Whether this connection may `send` 1:1 messages; absent means yes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<bool>,
    /// Channels this connection may `pub` to: names, or prefixes ending in
    /// `*` (as `channels`). Absent means none. The claim is named `pub`.
    #[serde(default, rename = "pub", skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
}

impl Claims {
    /// Whether the token allows subscribing to `channel`.
    ///
    /// An entry allows the channel of exactly that name, or, when it ends in
    /// `*`, every channel whose name starts with what precedes the `*` (so
    /// `"*"` allows every channel). A name that is not [`valid_channel`] is
    /// never allowed, and no `channels` claim allows nothing.
    pub fn allows_channel(&self, channel: &str) -> bool {
        if !valid_channel(channel) {
            return false;
        }
        grants(self.channels.as_deref(), channel)
    }

    /// Whether the token allows `pub` to `channel` (the `pub` claim, read
    /// as [`Claims::allows_channel`] reads `channels`).
    pub fn allows_pub(&self, channel: &str) -> bool {
        valid_channel(channel) && grants(self.publish.as_deref(), channel)
    }

    /// Whether the token allows `send` (unless it says `"send": false`).
    pub fn allows_send(&self) -> bool {
        self.send != Some(false)
    }
}

/// Whether `entries` (names, or prefixes ending in `*`) grant `channel`.
fn grants(entries: Option<&[String]>, channel: &str) -> bool {
    entries.is_some_and(|entries| {
        entries.iter().any(|e| match e.strip_suffix('*') {
            Some(prefix) => channel.starts_with(prefix),
            None => e == channel,
        })
    })
}

/// Whether `name` is a valid channel name: 1 to 128 bytes of ASCII letters,
/// digits and `_ . : @ / -` (so never a `*`).
pub fn valid_channel(name: &str) -> bool {
    (1..=MAX_CHANNEL_LEN).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'/' | b'-')
        })
}

/// Why a token was refused. The texts are written for client developers
/// (they reach the client in the `auth_failed` error frame): they say what
/// is wrong with the token, never a library's internals.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    /// Signature, algorithm or format is wrong; the text says which.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `sub` is empty or too long.
    #[error("invalid sub claim")]
    BadSubject,
}

/// Signs `claims` with `secret` (HS256).
///
/// # Errors
/// [`TokenError::Invalid`] if encoding fails.
pub fn mint(claims: &Claims, secret: &[u8]) -> Result<String, TokenError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| TokenError::Invalid(e.to_string()))
}

/// The `exp` claim of `token`, read without checking the signature: for a
/// client, which has no secret, to know when to refresh its token. `None`
/// when the token is not a JWT or has no numeric `exp`. Never use it to
/// trust a token.
pub fn unverified_exp(token: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Exp {
        exp: u64,
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Exp>(token)
        .ok()
        .map(|c| c.exp)
}

/// Verifies an HS256 token against `secret` at time `now` (seconds since the epoch).
///
/// The token is valid while `now < exp`. `sub` must be 1 to
/// [`MAX_SUB_LEN`] bytes. Other registered claims (`aud`, `iss`, `nbf`) are
/// not checked.
///
/// # Errors
/// [`TokenError::Invalid`] for a malformed token, another algorithm than
/// HS256, a bad signature or a missing/mistyped `sub` or `exp`;
/// [`TokenError::Expired`] when `exp <= now`; [`TokenError::BadSubject`] for
/// an empty or too long `sub`.
pub fn verify(token: &str, secret: &[u8], now: u64) -> Result<Claims, TokenError> {
    verify_any(token, secret, &[], now)
}

/// Verifies a token signed with the HS256 `secret` or, for RS256 and
/// ES256 tokens, with one of the `public` keys of that algorithm (the one
/// whose `kid` the token names, when it names one), at time `now`. The
/// claims are checked as by [`verify`].
///
/// # Errors
/// As [`verify`]; an algorithm for which no key is configured, or a `kid`
/// that no key of the token's algorithm has, is [`TokenError::Invalid`].
pub fn verify_any(
    token: &str,
    secret: &[u8],
    public: &[PublicKey],
    now: u64,
) -> Result<Claims, TokenError> {
    // The header first, so that a refused algorithm is named as such (its
    // JSON fails to decode when the algorithm is one the library lacks).
    let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(&e, Part::Header))?;
    let claims = match header.alg {
        Algorithm::HS256 => decode(token, Algorithm::HS256, &DecodingKey::from_secret(secret))?,
        alg @ (Algorithm::RS256 | Algorithm::ES256) if public.iter().any(|k| k.alg == alg) => {
            let kid = header.kid.as_deref();
            let mut keys = public
                .iter()
                .filter(|k| {
                    k.alg == alg && (kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
                })
                .peekable();
            if keys.peek().is_none() {
                return Err(TokenError::Invalid(format!(
                    "no {} key with kid {:?}",
                    alg_name(alg),
                    kid.unwrap_or_default()
                )));
            }
            // The first key that verifies the signature (a key rotation
            // keeps old and new side by side); else the last key's error.
            let mut last = None;
            let mut found = None;
            for k in keys {
                match decode(token, alg, &k.key) {
                    Ok(c) => {
                        found = Some(c);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match (found, last) {
                (Some(c), _) => c,
                (None, Some(e)) => return Err(e),
                (None, None) => return Err(TokenError::Invalid("no key".to_owned())),
            }
        }
        other => {
            let mut accepted = vec!["HS256"];
            for k in public {
                let name = alg_name(k.alg);
                if !accepted.contains(&name) {
                    accepted.push(name);
                }
            }
            return Err(TokenError::Invalid(format!(
                "algorithm {other:?} is not accepted, only {}",
                accepted.join(" and ")
            )));
        }
    };
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    if claims.sub.is_empty() || claims.sub.len() > MAX_SUB_LEN {
        return Err(TokenError::BadSubject);
    }
    Ok(claims)
}

/// When `token` is an RS256 or ES256 token that none of `public` can
/// check (no key of its algorithm, or none with the `kid` it names), what
/// it names: its `kid`, or its algorithm's name when it names no `kid`.
/// That is how a token signed with a key the identity provider added after
/// the keys were fetched looks (see `--token-jwks-url`).
pub fn unknown_key(token: &str, public: &[PublicKey]) -> Option<String> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
        return None;
    }
    let kid = header.kid.as_deref();
    let known = public.iter().any(|k| {
        k.alg == header.alg && (kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
    });
    if known {
        return None;
    }
    Some(kid.map_or_else(|| alg_name(header.alg).to_owned(), str::to_owned))
}

/// Whether any of `public` could check a token naming `named` (a `kid`,
/// or an algorithm's name, as [`unknown_key`] gives it).
pub fn names_known_key(named: &str, public: &[PublicKey]) -> bool {
    public
        .iter()
        .any(|k| k.kid.as_deref() == Some(named) || alg_name(k.alg) == named)
}

/// Checks the signature of `token` with `key` and types its claims.
fn decode(token: &str, alg: Algorithm, key: &DecodingKey) -> Result<Claims, TokenError> {
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    // `sub` and `exp` are required: `typed_claims` checks them (with clearer
    // texts than the library's, which calls an `exp` of the wrong type missing).
    validation.set_required_spec_claims::<&str>(&[]);
    // Claims as JSON first, so that a wrong type is named by claim.
    let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation)
        .map_err(|e| invalid(&e, Part::Claims))?;
    typed_claims(data.claims)
}

/// [`Claims`] from the payload's JSON, naming the first claim of a wrong type.
fn typed_claims(v: serde_json::Value) -> Result<Claims, TokenError> {
    use serde_json::Value;
    let wrong = |c: &str, want: &str| TokenError::Invalid(format!("{c} claim must be {want}"));
    let Some(obj) = v.as_object() else {
        return Err(TokenError::Invalid(
            "claims are not a JSON object".to_owned(),
        ));
    };
    for c in ["sub", "exp"] {
        if obj.get(c).is_none_or(Value::is_null) {
            return Err(TokenError::Invalid(format!("missing {c} claim")));
        }
    }
    if !obj.get("sub").is_some_and(Value::is_string) {
        return Err(wrong("sub", "a string"));
    }
    if !obj.get("exp").is_some_and(Value::is_u64) {
        return Err(wrong("exp", "a whole number of seconds since the epoch"));
    }
    if !obj.get("dev").is_none_or(|d| d.is_null() || d.is_string()) {
        return Err(wrong("dev", "a string"));
    }
    let strings = |c: &Value| c.as_array().is_some_and(|a| a.iter().all(Value::is_string));
    if !obj
        .get("channels")
        .is_none_or(|c| c.is_null() || strings(c))
    {
        return Err(wrong("channels", "a list of strings"));
    }
    serde_json::from_value(v).map_err(|_| TokenError::Invalid("unusable claims".to_owned()))
}

/// Which part of the token was being decoded.
#[derive(Clone, Copy)]
enum Part {
    Header,
    Claims,
}

/// A client-facing text for a `jsonwebtoken` error.
fn invalid(e: &jsonwebtoken::errors::Error, part: Part) -> TokenError {
    let text = match (e.kind(), part) {
        (ErrorKind::InvalidToken, _) => "not a JWT (expected header.payload.signature)",
        (ErrorKind::Base64(_), _) => "not base64url",
        (ErrorKind::Utf8(_), _) => "not utf-8",
        (ErrorKind::Json(j), Part::Header) if j.is_data() => {
            "header names no accepted algorithm (only HS256 is accepted)"
        }
        (ErrorKind::Json(_), Part::Header) => "header is not a JSON object",
        (ErrorKind::Json(_), Part::Claims) => "claims are not a JSON object",
        (ErrorKind::InvalidSignature, _) => "bad signature",
        (ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName, _) => {
            "algorithm not accepted, only HS256"
        }
        (ErrorKind::MissingRequiredClaim(c), _) => {
            return TokenError::Invalid(format!("missing {c} claim"));
        }
        (ErrorKind::InvalidClaimFormat(c), _) => {
            return TokenError::Invalid(format!("{c} claim of the wrong type"));
        }
        _ => "unusable token",
    };
    TokenError::Invalid(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";
    const NOW: u64 = 1_700_000_000;

    fn claims(sub: &str) -> Claims {
        Claims {
            sub: sub.into(),
            exp: NOW + 60,
            dev: Some("phone".into()),
            channels: Some(vec!["news".into(), "chat:*".into()]),
            send: None,
            publish: None,
        }
    }

    /// base64url without padding, for hand-made tokens.
    fn b64(s: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn mint_then_verify() {
        let c = claims("alice");
        let t = mint(&c, SECRET).unwrap();
        assert_eq!(verify(&t, SECRET, NOW), Ok(c));
    }

    #[test]
    fn unverified_exp_reads_any_jwt_and_nothing_else() {
        let t = mint(&claims("alice"), b"a secret this side does not know").unwrap();
        assert_eq!(unverified_exp(&t), Some(NOW + 60));
        let h = b64(r#"{"alg":"HS256"}"#);
        let no_exp = format!("{h}.{}.sig", b64(r#"{"sub":"a"}"#));
        assert_eq!(unverified_exp(&no_exp), None);
        let text_exp = format!("{h}.{}.sig", b64(r#"{"sub":"a","exp":"soon"}"#));
        assert_eq!(unverified_exp(&text_exp), None);
        assert_eq!(unverified_exp("not a jwt"), None);
        assert_eq!(unverified_exp(""), None);
    }

    #[test]
    fn wrong_secret_is_refused() {
        let t = mint(&claims("alice"), SECRET).unwrap();
        assert!(matches!(
            verify(&t, b"other", NOW),
            Err(TokenError::Invalid(_))
        ));
        // A tampered payload breaks the signature.
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        parts[1] = b64(&format!(r#"{{"sub":"mallory","exp":{}}}"#, NOW + 60));
        let forged = parts.join(".");
        assert!(matches!(
            verify(&forged, SECRET, NOW),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn expiry_uses_the_given_clock() {
        let t = mint(&claims("alice"), SECRET).unwrap();
        assert!(verify(&t, SECRET, NOW + 59).is_ok());
        assert_eq!(verify(&t, SECRET, NOW + 60), Err(TokenError::Expired));
        // A token long expired by the real clock is fine at an earlier `now`.
        let mut old = claims("alice");
        old.exp = 10;
        let t = mint(&old, SECRET).unwrap();
        assert!(verify(&t, SECRET, 9).is_ok());
        assert_eq!(verify(&t, SECRET, 11), Err(TokenError::Expired));
    }

    #[test]
    fn other_algorithms_are_refused() {
        let payload = b64(&format!(r#"{{"sub":"alice","exp":{}}}"#, NOW + 60));
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), payload);
        assert!(matches!(
            verify(&none, SECRET, NOW),
            Err(TokenError::Invalid(_))
        ));
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims("alice"),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(matches!(
            verify(&hs384, SECRET, NOW),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn claims_are_required() {
        #[derive(Serialize)]
        struct NoExp {
            sub: String,
        }
        #[derive(Serialize)]
        struct NoSub {
            exp: u64,
        }
        let key = EncodingKey::from_secret(SECRET);
        let h = Header::new(Algorithm::HS256);
        let t = jsonwebtoken::encode(&h, &NoExp { sub: "a".into() }, &key).unwrap();
        assert!(matches!(
            verify(&t, SECRET, NOW),
            Err(TokenError::Invalid(_))
        ));
        let t = jsonwebtoken::encode(&h, &NoSub { exp: NOW + 60 }, &key).unwrap();
        assert!(matches!(
            verify(&t, SECRET, NOW),
            Err(TokenError::Invalid(_))
        ));
        for sub in [String::new(), "x".repeat(MAX_SUB_LEN + 1)] {
            let t = mint(&claims(&sub), SECRET).unwrap();
            assert_eq!(verify(&t, SECRET, NOW), Err(TokenError::BadSubject));
        }
        let t = mint(&claims(&"x".repeat(MAX_SUB_LEN)), SECRET).unwrap();
        assert!(verify(&t, SECRET, NOW).is_ok());
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let payload = b64(&format!(r#"{{"sub":"alice","exp":{}}}"#, NOW + 60));
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), payload);
        let text = |t: &str| verify(t, SECRET, NOW).unwrap_err().to_string();
        let msg = text(&none);
        assert_eq!(
            msg,
            "invalid token: header names no accepted algorithm (only HS256 is accepted)"
        );
        for leak in ["variant", "expected one of", "line", "column", "`"] {
            assert!(!msg.contains(leak), "{msg}");
        }
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims("alice"),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            text(&hs384),
            "invalid token: algorithm HS384 is not accepted, only HS256"
        );
        let t = mint(&claims("alice"), SECRET).unwrap();
        assert_eq!(
            verify(&t, b"other", NOW).unwrap_err().to_string(),
            "invalid token: bad signature"
        );
        assert_eq!(
            text("abc"),
            "invalid token: not a JWT (expected header.payload.signature)"
        );
        assert_eq!(text("a.b.c"), "invalid token: not base64url");
        let h = b64(r#"{"alg":"HS256"}"#);
        let bad_exp = format!("{h}.{}.", b64(r#"{"sub":"a","exp":"soon"}"#));
        let signed = |unsigned: &str| {
            let msg = unsigned.trim_end_matches('.');
            let sig = jsonwebtoken::crypto::sign(
                msg.as_bytes(),
                &EncodingKey::from_secret(SECRET),
                Algorithm::HS256,
            )
            .unwrap();
            format!("{msg}.{sig}")
        };
        assert_eq!(
            text(&signed(&bad_exp)),
            "invalid token: exp claim must be a whole number of seconds since the epoch"
        );
        let bad_channels = format!(
            "{h}.{}.",
            b64(&format!(
                r#"{{"sub":"a","exp":{},"channels":"news"}}"#,
                NOW + 60
            ))
        );
        assert_eq!(
            text(&signed(&bad_channels)),
            "invalid token: channels claim must be a list of strings"
        );
        let no_sub = format!("{h}.{}.", b64(&format!(r#"{{"exp":{}}}"#, NOW + 60)));
        assert_eq!(text(&signed(&no_sub)), "invalid token: missing sub claim");
    }

    #[test]
    fn garbage_is_refused() {
        for t in ["", ".", "..", "a.b.c", "eyJ.eyJ.xx", "\u{0}"] {
            assert!(matches!(
                verify(t, SECRET, NOW),
                Err(TokenError::Invalid(_))
            ));
        }
    }

    #[test]
    fn channel_permissions() {
        let c = claims("alice");
        assert!(c.allows_channel("news"));
        assert!(!c.allows_channel("news2"));
        assert!(!c.allows_channel("new"));
        assert!(c.allows_channel("chat:1"));
        assert!(c.allows_channel("chat:"));
        assert!(!c.allows_channel("chat"));
        assert!(!c.allows_channel("chat:*"));
        let all = Claims {
            channels: Some(vec!["*".into()]),
            ..claims("a")
        };
        assert!(all.allows_channel("anything"));
        assert!(!all.allows_channel(""));
        let none = Claims {
            channels: None,
            ..claims("a")
        };
        assert!(!none.allows_channel("news"));
        let empty = Claims {
            channels: Some(vec![]),
            ..claims("a")
        };
        assert!(!empty.allows_channel("news"));
    }

    #[test]
    fn channel_names() {
        for ok in [
            "a",
            "news",
            "chat:room-1",
            "user@host/x_y.z",
            &"a".repeat(128),
        ] {
            assert!(valid_channel(ok), "{ok}");
        }
        for bad in ["", "a*", "*", "a b", "ü", "a\n", &"a".repeat(129), "a#b"] {
            assert!(!valid_channel(bad), "{bad}");
        }
    }
}

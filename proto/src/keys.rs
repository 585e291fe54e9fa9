//! Public keys that client tokens may be signed with, so an application
//! server can mint tokens with its private key instead of sharing the HS256
//! secret: RS256 (RSA, 2048 bits or more) and ES256 (ECDSA P-256), read
//! from a PEM file or a JWKS document (RFC 7517).

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use thiserror::Error;

/// A key that a public key file or a JWKS could not give.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    /// Not a PEM public key of a supported kind.
    #[error("not an RSA or EC P-256 public key in PEM (-----BEGIN PUBLIC KEY-----)")]
    Pem,
    /// Not a JWKS document.
    #[error("not a JWKS document ({{\"keys\":[…]}}): {0}")]
    Jwks(String),
    /// A JWKS key that cannot verify RS256 or ES256 tokens.
    #[error("JWKS key {index} ({kid}): {why}")]
    Unusable {
        /// Its position in `keys`.
        index: usize,
        /// Its `kid`, or `no kid`.
        kid: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A JWKS with no usable key at all.
    #[error("the JWKS holds no key")]
    Empty,
}

/// One public key and the algorithm it verifies.
#[derive(Clone)]
pub struct PublicKey {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    /// A PEM public key (`PUBLIC KEY`, or `RSA PUBLIC KEY` for PKCS#1): an
    /// RSA key verifies RS256 tokens, an EC P-256 key ES256 tokens. It
    /// matches tokens whatever their `kid`.
    ///
    /// # Errors
    /// [`KeyError::Pem`] for anything else (a private key, a certificate,
    /// another curve).
    pub fn from_pem(pem: &[u8]) -> Result<PublicKey, KeyError> {
        let text = std::str::from_utf8(pem).map_err(|_| KeyError::Pem)?;
        if !text.contains("PUBLIC KEY-----") {
            return Err(KeyError::Pem);
        }
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(PublicKey {
                alg: Algorithm::RS256,
                kid: None,
                key,
            });
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            // Only P-256 keys hold a 65-byte uncompressed point; P-384 ones
            // (ES384) are refused here rather than failing every token.
            if ec_point_len(pem) == Some(65) {
                return Ok(PublicKey {
                    alg: Algorithm::ES256,
                    kid: None,
                    key,
                });
            }
        }
        Err(KeyError::Pem)
    }

    /// Every key of a JWKS document (`{"keys":[…]}`): RSA keys verify RS256
    /// tokens, EC P-256 keys ES256 tokens. A key whose `use` is not `sig`,
    /// or whose `alg` names another algorithm, is refused, like a key of
    /// another type: a JWKS given to pushgate must hold only keys it can use.
    ///
    /// # Errors
    /// [`KeyError::Jwks`] when the text is not a JWKS, [`KeyError::Unusable`]
    /// naming the first key that cannot be used, [`KeyError::Empty`].
    pub fn from_jwks(json: &[u8]) -> Result<Vec<PublicKey>, KeyError> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| KeyError::Jwks(e.to_string()))?;
        if set.keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let mut out = Vec::with_capacity(set.keys.len());
        for (index, jwk) in set.keys.iter().enumerate() {
            let kid = jwk.common.key_id.clone();
            let unusable = |why| KeyError::Unusable {
                index,
                kid: kid.clone().unwrap_or_else(|| "no kid".to_owned()),
                why,
            };
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                AlgorithmParameters::EllipticCurve(_) => {
                    return Err(unusable("only the P-256 curve is accepted"))
                }
                _ => return Err(unusable("only RSA and EC P-256 keys are accepted")),
            };
            if let Some(named) = jwk.common.key_algorithm {
                if format!("{named:?}") != format!("{alg:?}") {
                    return Err(unusable("its alg is not RS256 (RSA) or ES256 (EC P-256)"));
                }
            }
            if jwk
                .common
                .public_key_use
                .as_ref()
                .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
            {
                return Err(unusable("its use is not sig"));
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|_| unusable("unreadable key"))?;
            out.push(PublicKey { alg, kid, key });
        }
        Ok(out)
    }

    /// The algorithm this key verifies: `"RS256"` or `"ES256"`.
    pub fn algorithm(&self) -> &'static str {
        alg_name(self.alg)
    }

    /// The key's `kid`, for keys from a JWKS that name one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
}

/// The JOSE name of an algorithm pushgate accepts.
pub(crate) fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => "another algorithm",
    }
}

/// The length of the EC point in a PEM `PUBLIC KEY` (SubjectPublicKeyInfo):
/// the BIT STRING at its end, less the unused-bits byte.
fn ec_point_len(pem: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(pem).ok()?;
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()?;
    // SPKI of a P-256 key is 91 bytes: 30 59 | 30 13 (algorithm) | 03 42 00
    // <65 bytes>: the BIT STRING (tag, length 66, unused bits 0) is the last 68.
    let at = der.len().checked_sub(68)?;
    (der.get(at..at + 3)? == [0x03, 0x42, 0x00]).then_some(65)
}

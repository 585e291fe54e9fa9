//! Token claims (JWT, HS256) and their checks. The clock is the caller's.

use serde::{Deserialize, Serialize};
use thiserror::Error;

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
}

impl Claims {
    /// Whether the token allows subscribing to `channel`.
    pub fn allows_channel(&self, channel: &str) -> bool {
        let _ = channel;
        unimplemented!("proto::token::Claims::allows_channel")
    }
}

/// Why a token was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    /// Signature, algorithm or format is wrong.
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
    let _ = (claims, secret);
    unimplemented!("proto::token::mint")
}

/// Verifies an HS256 token against `secret` at time `now` (seconds since the epoch).
///
/// # Errors
/// [`TokenError`] when the token is not valid now.
pub fn verify(token: &str, secret: &[u8], now: u64) -> Result<Claims, TokenError> {
    let _ = (token, secret, now);
    unimplemented!("proto::token::verify")
}

//! Decoding errors.

use thiserror::Error;

/// Why a frame could not be decoded. Every variant maps to close code 4004
/// (protocol error) when it comes from a client.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame is larger than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The announced or actual length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The frame is not valid JSON, or not a JSON object of a known shape.
    #[error("invalid json frame: {0}")]
    Json(String),
    /// Unknown operation (JSON `op` string or binary op byte).
    #[error("unknown op {0:?}")]
    BadOp(String),
    /// A binary frame ended before its fields did.
    #[error("truncated frame")]
    Truncated,
    /// A binary frame had bytes left over after its last field.
    #[error("trailing bytes in frame")]
    Trailing,
    /// A field holds a value outside its domain (bad UTF-8, bad flag bits, …).
    #[error("invalid field {0}")]
    BadField(&'static str),
}

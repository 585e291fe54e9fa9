//! pushgate wire formats: the bytes, and nothing else.
//!
//! This crate owns the client protocol (frames of DESIGN.md in the fixed JSON
//! encoding and in pushgate's binary encoding, documented in docs/PROTOCOL.md),
//! the identifiers that cross crate boundaries, and the token claims. It
//! contains no networking code, no async runtime and no clock: callers pass
//! `now` in where time matters.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod binary;
pub mod encoded;
pub mod error;
pub mod frame;
pub mod ids;
pub mod json;
pub mod keys;
pub mod token;

pub use encoded::EncodedMsg;
pub use error::DecodeError;
pub use frame::{
    valid_cid, BroadcastProgress, ClientFrame, CloseCode, ErrorCode, MembersPage, MsgFrame,
    PresenceChange, PresencePage, PresentUser, PubMsg, SendMsg, Sender, ServerFrame, MAX_CID_LEN,
};
pub use ids::{unix_ms, ConnId, MsgId, RoomId, UserId};
pub use token::{valid_channel, Claims, TokenError};

/// Default maximum size of one client frame, in bytes (64 KiB).
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

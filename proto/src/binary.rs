//! pushgate's binary encoding of protocol v1 (docs/PROTOCOL.md), and the
//! length prefix that delimits frames on stream transports (TCP, QUIC).

use crate::error::DecodeError;
use crate::frame::{ClientFrame, ServerFrame};

/// Looks for one length-prefixed frame at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((header, body)))`
/// when the prefix is complete: the frame body is `buf[header..header + body]`
/// (which may not all be there yet). A prefix announcing more than `max` bytes
/// is an error at once, before any of the body arrives.
///
/// # Errors
/// [`DecodeError::TooLarge`] or a malformed prefix.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<(usize, usize)>, DecodeError> {
    let _ = (buf, max);
    unimplemented!("proto::binary::frame_len")
}

/// Appends the length prefix for a body of `len` bytes to `out`.
pub fn write_len(len: usize, out: &mut Vec<u8>) {
    let _ = (len, out);
    unimplemented!("proto::binary::write_len")
}

/// Decodes one client frame body (without its length prefix).
///
/// # Errors
/// [`DecodeError`] for anything that is not a valid client frame.
pub fn decode_client(buf: &[u8]) -> Result<ClientFrame, DecodeError> {
    let _ = buf;
    unimplemented!("proto::binary::decode_client")
}

/// Appends the binary encoding of a server frame (no length prefix) to `out`.
pub fn encode_server(frame: &ServerFrame, out: &mut Vec<u8>) {
    let _ = (frame, out);
    unimplemented!("proto::binary::encode_server")
}

/// Appends the binary encoding of a client frame (no length prefix) to `out`.
pub fn encode_client(frame: &ClientFrame, out: &mut Vec<u8>) {
    let _ = (frame, out);
    unimplemented!("proto::binary::encode_client")
}

/// Decodes one server frame body (for clients and tests).
///
/// # Errors
/// [`DecodeError`] for anything that is not a valid server frame.
pub fn decode_server(buf: &[u8]) -> Result<ServerFrame, DecodeError> {
    let _ = buf;
    unimplemented!("proto::binary::decode_server")
}

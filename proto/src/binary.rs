//! pushgate's binary encoding of protocol v1 (docs/PROTOCOL.md), and the
//! length prefix that delimits frames on stream transports (TCP, QUIC).
//!
//! A frame body is: one op byte, one flags byte, the `seq` varint when flag
//! bit 0 is set, then the op's fields in a fixed order. Integers are unsigned
//! LEB128 varints in their minimal form (`i64` values are written as their
//! two's-complement `u64`); strings and the message payload are a varint byte
//! length followed by that many bytes; close codes are `u16` big-endian; error
//! codes are one byte ([`ErrorCode::to_u8`]). Unused flag bits must be zero.
//!
//! On stream transports every body is preceded by its length as a varint
//! ([`write_len`], [`frame_len`]). WebSocket binary messages carry the body
//! alone.
//!
//! Decoders never panic and never allocate more than the input they are given:
//! every announced length is checked against the bytes that remain first.

use bytes::Bytes;

use crate::error::DecodeError;
use crate::frame::{
    ClientFrame, CloseCode, ErrorCode, MsgFrame, PresenceChange, PresencePage, PresentUser, Sender,
    ServerFrame,
};
use crate::ids::{ConnId, MsgId, RoomId, UserId};

/// Op byte of the client `auth` frame.
pub const OP_AUTH: u8 = 0x01;
/// Op byte of the client `ping` frame.
pub const OP_PING: u8 = 0x02;
/// Op byte of the client `sub` frame.
pub const OP_SUB: u8 = 0x03;
/// Op byte of the client `unsub` frame.
pub const OP_UNSUB: u8 = 0x04;
/// Op byte of the client `ack` frame.
pub const OP_ACK: u8 = 0x05;
/// Op byte of the client `refresh` frame.
pub const OP_REFRESH: u8 = 0x06;
/// Op byte of the client `send` frame.
pub const OP_SEND: u8 = 0x07;
/// Op byte of the client `pub` frame.
pub const OP_PUB: u8 = 0x08;
/// Op byte of the client `presence` frame.
pub const OP_PRESENCE: u8 = 0x09;
/// Op byte of the server `auth_ok` frame.
pub const OP_AUTH_OK: u8 = 0x81;
/// Op byte of the server `pong` frame.
pub const OP_PONG: u8 = 0x82;
/// Op byte of the server `sub_ok` frame.
pub const OP_SUB_OK: u8 = 0x83;
/// Op byte of the server `unsub_ok` frame.
pub const OP_UNSUB_OK: u8 = 0x84;
/// Op byte of the server `msg` frame.
pub const OP_MSG: u8 = 0x85;
/// Op byte of the server `error` frame.
pub const OP_ERROR: u8 = 0x86;
/// Op byte of the server `refresh_ok` frame.
pub const OP_REFRESH_OK: u8 = 0x87;
/// Op byte of the server `send_ok` frame.
pub const OP_SEND_OK: u8 = 0x88;
/// Op byte of the server `pub_ok` frame.
pub const OP_PUB_OK: u8 = 0x89;
/// Op byte of the server `join` frame.
pub const OP_JOIN: u8 = 0x8a;
/// Op byte of the server `leave` frame.
pub const OP_LEAVE: u8 = 0x8b;
/// Op byte of the server `presence_ok` frame.
pub const OP_PRESENCE_OK: u8 = 0x8c;

/// Flag bit 0, on every frame: a `seq` varint follows the flags byte.
const F_SEQ: u8 = 0x01;
/// Flag bit 1: the op's first optional field is present (`last_id` on auth and
/// sub, `channel` on msg, `close` on error), or its first flag is true
/// (`more` on presence_ok).
const F_OPT1: u8 = 0x02;
/// Flag bit 2: the op's second optional field is present (`device` on auth,
/// the sender on msg), or its second flag is true (`presence` on sub).
const F_OPT2: u8 = 0x04;

/// Longest varint length prefix: 5 bytes hold any `u32`.
const MAX_LEN_PREFIX: usize = 5;

/// Looks for one length-prefixed frame at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((header, body)))`
/// when the prefix is complete: the frame body is `buf[header..header + body]`
/// (which may not all be there yet). A prefix announcing more than `max` bytes
/// is an error at once, before any of the body arrives.
///
/// The prefix is the body length as an unsigned LEB128 varint in its minimal
/// form, at most 5 bytes.
///
/// # Errors
/// [`DecodeError::TooLarge`] or a malformed prefix.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value: u64 = 0;
    for (i, &b) in buf.iter().enumerate() {
        if i >= MAX_LEN_PREFIX {
            return Err(DecodeError::BadField("length"));
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        // A continuation bit promises a non-zero higher group (the minimal
        // form), so the length is at least `value + 2^(7(i+1))`: a prefix
        // whose lower bound is over the limit condemns the frame at once.
        let more = b & 0x80 != 0;
        let bound = if more {
            value + (1u64 << (7 * (i + 1)))
        } else {
            value
        };
        let len = usize::try_from(bound).unwrap_or(usize::MAX);
        if len > max {
            return Err(DecodeError::TooLarge { len, max });
        }
        if !more {
            if b == 0 && i > 0 {
                return Err(DecodeError::BadField("length"));
            }
            return Ok(Some((i + 1, len)));
        }
    }
    if buf.len() >= MAX_LEN_PREFIX {
        return Err(DecodeError::BadField("length"));
    }
    Ok(None)
}

/// Appends the length prefix for a body of `len` bytes to `out`.
pub fn write_len(len: usize, out: &mut Vec<u8>) {
    put_varint(len as u64, out);
}

/// The longest varint (a `u64`), and so the longest length prefix.
pub const MAX_VARINT: usize = 10;

/// The length prefix for a body of `len` bytes without allocating: the
/// bytes and how many of them are used (what [`write_len`] appends).
pub fn len_prefix(len: usize) -> ([u8; MAX_VARINT], usize) {
    varint(len as u64)
}

/// Appends a frame whose header depends on its body's length, in one
/// buffer: `body` encodes behind room for the longest header
/// ([`MAX_VARINT`] bytes), then the header `head(body length)` is written
/// right against it and the gap removed. Used for the length prefix here
/// and for WebSocket frame headers in the room.
pub fn append_with_head(
    out: &mut Vec<u8>,
    body: impl FnOnce(&mut Vec<u8>),
    head: impl FnOnce(usize) -> ([u8; MAX_VARINT], usize),
) {
    let start = out.len();
    out.resize(start + MAX_VARINT, 0);
    body(out);
    let (h, n) = head(out.len() - start - MAX_VARINT);
    let at = start + MAX_VARINT - n;
    out[at..start + MAX_VARINT].copy_from_slice(&h[..n]);
    out.drain(start..at);
}

/// Appends `frame` in the binary encoding with its length prefix: one frame
/// of a byte stream (TCP, TLS over TCP, a QUIC stream).
pub fn encode_client_framed(frame: &ClientFrame, out: &mut Vec<u8>) {
    append_with_head(out, |out| encode_client(frame, out), len_prefix);
}

/// Appends `frame` in the binary encoding with its length prefix (see
/// [`encode_client_framed`]).
pub fn encode_server_framed(frame: &ServerFrame, out: &mut Vec<u8>) {
    append_with_head(out, |out| encode_server(frame, out), len_prefix);
}

/// Takes one complete length-prefixed frame off the front of `buf` and
/// returns its body; `Ok(None)` while `buf` holds no complete frame. Once
/// the prefix is in, room for the rest of the frame is reserved in `buf`;
/// before that, the caller chooses how much to read.
///
/// # Errors
/// A prefix over `max` or malformed (see [`frame_len`]); `buf` is left as
/// it was, and the stream cannot be read further.
pub fn split_frame(buf: &mut bytes::BytesMut, max: usize) -> Result<Option<Bytes>, DecodeError> {
    let Some((head, len)) = frame_len(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < head + len {
        buf.reserve(head + len - buf.len());
        return Ok(None);
    }
    let _ = buf.split_to(head);
    Ok(Some(buf.split_to(len).freeze()))
}

/// `data` checked to be one JSON value in UTF-8, copied out.
fn json_data(data: &[u8]) -> Result<Bytes, DecodeError> {
    // UTF-8 first: serde_json skips the bytes of an ignored string without
    // checking them, so `from_slice` alone would take a string of invalid
    // UTF-8, which no JSON text may hold.
    let json = std::str::from_utf8(data).map_err(|_| DecodeError::BadField("data"))?;
    if serde_json::from_str::<serde::de::IgnoredAny>(json).is_err() {
        return Err(DecodeError::BadField("data"));
    }
    Ok(Bytes::copy_from_slice(data))
}

/// Decodes one client frame body (without its length prefix).
///
/// # Errors
/// [`DecodeError`] for anything that is not a valid client frame.
pub fn decode_client(buf: &[u8]) -> Result<ClientFrame, DecodeError> {
    let mut r = Reader::new(buf);
    let op = r.u8()?;
    let frame = match op {
        OP_AUTH => {
            let (flags, seq) = r.head(F_SEQ | F_OPT1 | F_OPT2)?;
            let token = r.string("token")?;
            let last_id = r.opt(flags, F_OPT1, |r| r.i64().map(MsgId))?;
            let device = r.opt(flags, F_OPT2, |r| r.string("device"))?;
            ClientFrame::Auth {
                seq,
                token,
                last_id,
                device,
            }
        }
        OP_PING => {
            let (_, seq) = r.head(F_SEQ)?;
            ClientFrame::Ping { seq }
        }
        OP_SUB => {
            let (flags, seq) = r.head(F_SEQ | F_OPT1 | F_OPT2)?;
            let channel = r.string("channel")?;
            let last_id = r.opt(flags, F_OPT1, |r| r.i64().map(MsgId))?;
            ClientFrame::Sub {
                seq,
                channel,
                last_id,
                presence: flags & F_OPT2 != 0,
            }
        }
        OP_PRESENCE => {
            let (_, seq) = r.head(F_SEQ)?;
            let channel = r.string("channel")?;
            ClientFrame::Presence { seq, channel }
        }
        OP_UNSUB => {
            let (_, seq) = r.head(F_SEQ)?;
            let channel = r.string("channel")?;
            ClientFrame::Unsub { seq, channel }
        }
        OP_ACK => {
            let (_, seq) = r.head(F_SEQ)?;
            let id = MsgId(r.i64()?);
            ClientFrame::Ack { seq, id }
        }
        OP_REFRESH => {
            let (_, seq) = r.head(F_SEQ)?;
            let token = r.string("token")?;
            ClientFrame::Refresh { seq, token }
        }
        OP_SEND => {
            let (_, seq) = r.head(F_SEQ)?;
            let to = UserId::new(r.str("to")?);
            let cid = r.string("cid")?;
            let data = json_data(r.bytes()?)?;
            ClientFrame::send(seq, to, data, cid)
        }
        OP_PUB => {
            let (_, seq) = r.head(F_SEQ)?;
            let channel = r.string("channel")?;
            let cid = r.string("cid")?;
            let data = json_data(r.bytes()?)?;
            ClientFrame::publish(seq, channel, data, cid)
        }
        other => return Err(bad_op(other)),
    };
    r.finish()?;
    Ok(frame)
}

/// Appends the binary encoding of a server frame (no length prefix) to `out`.
pub fn encode_server(frame: &ServerFrame, out: &mut Vec<u8>) {
    match frame {
        ServerFrame::AuthOk {
            seq,
            conn,
            user,
            room,
            heartbeat,
        } => {
            head(OP_AUTH_OK, 0, *seq, out);
            put_varint(conn.0, out);
            put_bytes(user.as_str().as_bytes(), out);
            put_varint(u64::from(room.0), out);
            put_varint(u64::from(*heartbeat), out);
        }
        ServerFrame::Pong { seq } => head(OP_PONG, 0, *seq, out),
        ServerFrame::SubOk { seq, channel } => {
            head(OP_SUB_OK, 0, *seq, out);
            put_bytes(channel.as_bytes(), out);
        }
        ServerFrame::UnsubOk { seq, channel } => {
            head(OP_UNSUB_OK, 0, *seq, out);
            put_bytes(channel.as_bytes(), out);
        }
        ServerFrame::RefreshOk { seq, exp } => {
            head(OP_REFRESH_OK, 0, *seq, out);
            put_varint(*exp, out);
        }
        ServerFrame::SendOk { seq, cid, id } => {
            head(OP_SEND_OK, 0, *seq, out);
            put_bytes(cid.as_bytes(), out);
            put_varint(id.0 as u64, out);
        }
        ServerFrame::PubOk { seq, cid, id } => {
            head(OP_PUB_OK, 0, *seq, out);
            put_bytes(cid.as_bytes(), out);
            put_varint(id.0 as u64, out);
        }
        ServerFrame::Msg(m) => {
            let flags = flag_if(m.channel.is_some(), F_OPT1) | flag_if(m.sender.is_some(), F_OPT2);
            head(OP_MSG, flags, None, out);
            put_varint(m.id.0 as u64, out);
            put_varint(m.ts as u64, out);
            if let Some(ch) = &m.channel {
                put_bytes(ch.as_bytes(), out);
            }
            if let Some(from) = &m.sender {
                put_bytes(from.user.as_str().as_bytes(), out);
                put_bytes(from.cid.as_bytes(), out);
            }
            put_bytes(&m.data, out);
        }
        ServerFrame::Join(c) => put_change(OP_JOIN, c, out),
        ServerFrame::Leave(c) => put_change(OP_LEAVE, c, out),
        ServerFrame::PresenceOk { seq, page } => {
            head(OP_PRESENCE_OK, flag_if(page.more, F_OPT1), *seq, out);
            put_bytes(page.channel.as_bytes(), out);
            put_varint(page.users.len() as u64, out);
            for u in &page.users {
                put_bytes(u.user.as_str().as_bytes(), out);
                put_varint(u64::from(u.connections), out);
            }
        }
        ServerFrame::Error {
            seq,
            code,
            message,
            close,
        } => {
            let flags = flag_if(close.is_some(), F_OPT1);
            head(OP_ERROR, flags, *seq, out);
            out.push(code.to_u8());
            put_bytes(message.as_bytes(), out);
            if let Some(c) = close {
                out.extend_from_slice(&c.as_u16().to_be_bytes());
            }
        }
    }
}

/// Appends the binary encoding of a client frame (no length prefix) to `out`.
pub fn encode_client(frame: &ClientFrame, out: &mut Vec<u8>) {
    match frame {
        ClientFrame::Auth {
            seq,
            token,
            last_id,
            device,
        } => {
            let flags = flag_if(last_id.is_some(), F_OPT1) | flag_if(device.is_some(), F_OPT2);
            head(OP_AUTH, flags, *seq, out);
            put_bytes(token.as_bytes(), out);
            if let Some(id) = last_id {
                put_varint(id.0 as u64, out);
            }
            if let Some(d) = device {
                put_bytes(d.as_bytes(), out);
            }
        }
        ClientFrame::Ping { seq } => head(OP_PING, 0, *seq, out),
        ClientFrame::Sub {
            seq,
            channel,
            last_id,
            presence,
        } => {
            let flags = flag_if(last_id.is_some(), F_OPT1) | flag_if(*presence, F_OPT2);
            head(OP_SUB, flags, *seq, out);
            put_bytes(channel.as_bytes(), out);
            if let Some(id) = last_id {
                put_varint(id.0 as u64, out);
            }
        }
        ClientFrame::Presence { seq, channel } => {
            head(OP_PRESENCE, 0, *seq, out);
            put_bytes(channel.as_bytes(), out);
        }
        ClientFrame::Unsub { seq, channel } => {
            head(OP_UNSUB, 0, *seq, out);
            put_bytes(channel.as_bytes(), out);
        }
        ClientFrame::Ack { seq, id } => {
            head(OP_ACK, 0, *seq, out);
            put_varint(id.0 as u64, out);
        }
        ClientFrame::Refresh { seq, token } => {
            head(OP_REFRESH, 0, *seq, out);
            put_bytes(token.as_bytes(), out);
        }
        ClientFrame::Send { seq, msg } => {
            head(OP_SEND, 0, *seq, out);
            put_bytes(msg.to.as_str().as_bytes(), out);
            put_bytes(msg.cid.as_bytes(), out);
            put_bytes(&msg.data, out);
        }
        ClientFrame::Pub { seq, msg } => {
            head(OP_PUB, 0, *seq, out);
            put_bytes(msg.channel.as_bytes(), out);
            put_bytes(msg.cid.as_bytes(), out);
            put_bytes(&msg.data, out);
        }
    }
}

/// Decodes one server frame body (for clients and tests).
///
/// The `msg` payload must be one valid JSON value.
///
/// # Errors
/// [`DecodeError`] for anything that is not a valid server frame.
pub fn decode_server(buf: &[u8]) -> Result<ServerFrame, DecodeError> {
    let mut r = Reader::new(buf);
    let op = r.u8()?;
    let frame = match op {
        OP_AUTH_OK => {
            let (_, seq) = r.head(F_SEQ)?;
            let conn = ConnId(r.varint()?);
            let user = UserId::new(r.str("user")?);
            let room = RoomId(r.u32("room")?);
            let heartbeat = r.u32("heartbeat")?;
            ServerFrame::AuthOk {
                seq,
                conn,
                user,
                room,
                heartbeat,
            }
        }
        OP_PONG => {
            let (_, seq) = r.head(F_SEQ)?;
            ServerFrame::Pong { seq }
        }
        OP_SUB_OK => {
            let (_, seq) = r.head(F_SEQ)?;
            ServerFrame::SubOk {
                seq,
                channel: r.string("channel")?,
            }
        }
        OP_UNSUB_OK => {
            let (_, seq) = r.head(F_SEQ)?;
            ServerFrame::UnsubOk {
                seq,
                channel: r.string("channel")?,
            }
        }
        OP_MSG => {
            // A msg answers no request, so it never carries a seq.
            let flags = r.flags(F_OPT1 | F_OPT2)?;
            let id = MsgId(r.i64()?);
            let ts = r.i64()?;
            let channel = r.opt(flags, F_OPT1, |r| r.string("channel"))?;
            let sender = r.opt(flags, F_OPT2, |r| {
                let user = UserId::new(r.str("from")?);
                let cid = r.string("cid")?;
                Ok(Sender { user, cid })
            })?;
            let data = json_data(r.bytes()?)?;
            ServerFrame::Msg(MsgFrame {
                id,
                ts,
                channel,
                data,
                sender,
            })
        }
        OP_SEND_OK | OP_PUB_OK => {
            let (_, seq) = r.head(F_SEQ)?;
            let cid = r.string("cid")?;
            let id = MsgId(r.i64()?);
            if op == OP_SEND_OK {
                ServerFrame::SendOk { seq, cid, id }
            } else {
                ServerFrame::PubOk { seq, cid, id }
            }
        }
        OP_ERROR => {
            let (flags, seq) = r.head(F_SEQ | F_OPT1)?;
            let code = ErrorCode::from_u8(r.u8()?).ok_or(DecodeError::BadField("code"))?;
            let message = r.string("message")?;
            let close = r.opt(flags, F_OPT1, |r| {
                CloseCode::from_u16(r.u16_be()?).ok_or(DecodeError::BadField("close"))
            })?;
            ServerFrame::Error {
                seq,
                code,
                message,
                close,
            }
        }
        OP_REFRESH_OK => {
            let (_, seq) = r.head(F_SEQ)?;
            let exp = r.varint()?;
            ServerFrame::RefreshOk { seq, exp }
        }
        OP_JOIN | OP_LEAVE => {
            // Like msg, they answer no request: no seq.
            r.flags(0)?;
            let change = Box::new(PresenceChange {
                channel: r.string("channel")?,
                user: UserId::new(r.str("user")?),
                device: r.string("device")?,
            });
            if op == OP_JOIN {
                ServerFrame::Join(change)
            } else {
                ServerFrame::Leave(change)
            }
        }
        OP_PRESENCE_OK => {
            let (flags, seq) = r.head(F_SEQ | F_OPT1)?;
            let channel = r.string("channel")?;
            let n = r.varint()?;
            // Each entry takes at least 2 bytes: a count beyond that is a
            // lie, and must not size an allocation.
            if n > (r.buf.len() / 2) as u64 {
                return Err(DecodeError::Truncated);
            }
            let mut users = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let user = UserId::new(r.str("user")?);
                let connections = r.u32("connections")?;
                users.push(PresentUser { user, connections });
            }
            let more = flags & F_OPT1 != 0;
            ServerFrame::PresenceOk {
                seq,
                page: Box::new(PresencePage {
                    channel,
                    users,
                    more,
                }),
            }
        }
        other => return Err(bad_op(other)),
    };
    r.finish()?;
    Ok(frame)
}

/// Writes a `join` or `leave` (no seq: they answer no request).
fn put_change(op: u8, c: &PresenceChange, out: &mut Vec<u8>) {
    head(op, 0, None, out);
    put_bytes(c.channel.as_bytes(), out);
    put_bytes(c.user.as_str().as_bytes(), out);
    put_bytes(c.device.as_bytes(), out);
}

fn bad_op(op: u8) -> DecodeError {
    DecodeError::BadOp(format!("{op:#04x}"))
}

/// `bit` when `present`, else no flag.
fn flag_if(present: bool, bit: u8) -> u8 {
    if present {
        bit
    } else {
        0
    }
}

/// Writes the op byte, the flags byte (with the seq bit added when `seq` is
/// set) and the seq varint.
fn head(op: u8, flags: u8, seq: Option<u32>, out: &mut Vec<u8>) {
    out.push(op);
    match seq {
        Some(s) => {
            out.push(flags | F_SEQ);
            put_varint(u64::from(s), out);
        }
        None => out.push(flags),
    }
}

/// Appends `v` as an unsigned LEB128 varint (minimal form).
fn put_varint(v: u64, out: &mut Vec<u8>) {
    let (b, n) = varint(v);
    out.extend_from_slice(&b[..n]);
}

/// `v` as a varint: the bytes and how many of them are used.
fn varint(mut v: u64) -> ([u8; MAX_VARINT], usize) {
    let mut b = [0u8; MAX_VARINT];
    let mut n = 0;
    while v >= 0x80 {
        b[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    b[n] = v as u8;
    (b, n + 1)
}

/// Appends a varint length and the bytes.
fn put_bytes(b: &[u8], out: &mut Vec<u8>) {
    put_varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// A cursor over a frame body; every read checks the remaining length first.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.buf.split_first().ok_or(DecodeError::Truncated)?;
        self.buf = rest;
        Ok(b)
    }

    fn u16_be(&mut self) -> Result<u16, DecodeError> {
        let hi = self.u8()?;
        let lo = self.u8()?;
        Ok(u16::from_be_bytes([hi, lo]))
    }

    /// Reads the flags byte; bits outside `allowed` are an error.
    fn flags(&mut self, allowed: u8) -> Result<u8, DecodeError> {
        let f = self.u8()?;
        if f & !allowed != 0 {
            return Err(DecodeError::BadField("flags"));
        }
        Ok(f)
    }

    /// Reads the flags byte (bits outside `allowed` are an error) and the
    /// `seq` that follows when its bit is set.
    fn head(&mut self, allowed: u8) -> Result<(u8, Option<u32>), DecodeError> {
        let flags = self.flags(allowed)?;
        let seq = self.opt(flags, F_SEQ, |r| r.u32("seq"))?;
        Ok((flags, seq))
    }

    /// Reads an optional field with `read` when flag `bit` is set in `flags`.
    fn opt<T>(
        &mut self,
        flags: u8,
        bit: u8,
        read: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        if flags & bit != 0 {
            read(self).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Reads a minimal unsigned LEB128 varint of at most 10 bytes.
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            if i == 9 && b > 1 {
                // Bits beyond the 64th.
                return Err(DecodeError::BadField("varint"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    // Overlong: a trailing zero group.
                    return Err(DecodeError::BadField("varint"));
                }
                return Ok(value);
            }
        }
        Err(DecodeError::BadField("varint"))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        u32::try_from(self.varint()?).map_err(|_| DecodeError::BadField(field))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.varint()? as i64)
    }

    /// Reads a varint length and that many bytes, borrowed from the input.
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated)?;
        if len > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        let (b, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(b)
    }

    fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError::BadField(field))
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        self.str(field).map(str::to_owned)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_frames_split_back() {
        let frames = client_frames();
        let mut stream = Vec::new();
        for f in &frames {
            encode_client_framed(f, &mut stream);
        }
        // Fed a byte at a time, every frame comes out whole, in order.
        let mut buf = bytes::BytesMut::new();
        let mut out = Vec::new();
        for b in &stream {
            buf.extend_from_slice(&[*b]);
            while let Some(body) = split_frame(&mut buf, crate::DEFAULT_MAX_FRAME).expect("valid") {
                out.push(decode_client(&body).expect("decodes"));
            }
        }
        assert_eq!(out, frames);
        assert!(buf.is_empty());
        // A body of 200 bytes needs a two-byte prefix.
        let big = ClientFrame::Auth {
            seq: None,
            token: "t".repeat(200),
            last_id: None,
            device: None,
        };
        let mut one = vec![0xAA];
        encode_client_framed(&big, &mut one);
        let mut body = Vec::new();
        encode_client(&big, &mut body);
        let mut want = vec![0xAA];
        write_len(body.len(), &mut want);
        want.extend_from_slice(&body);
        assert_eq!(one, want, "appends after what `out` held");
        let mut server = Vec::new();
        encode_server_framed(&ServerFrame::Pong { seq: Some(3) }, &mut server);
        let mut buf = bytes::BytesMut::from(&server[..]);
        let body = split_frame(&mut buf, 16).expect("valid").expect("whole");
        assert_eq!(
            decode_server(&body).expect("decodes"),
            ServerFrame::Pong { seq: Some(3) }
        );
    }

    #[test]
    fn split_frame_refuses_an_oversized_prefix() {
        let mut buf = bytes::BytesMut::new();
        let mut prefix = Vec::new();
        write_len(1000, &mut prefix);
        buf.extend_from_slice(&prefix);
        assert!(matches!(
            split_frame(&mut buf, 999),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(&buf[..], &prefix[..], "left as it was");
        assert!(split_frame(&mut buf, 1000).expect("valid").is_none());
    }

    fn client_frames() -> Vec<ClientFrame> {
        vec![
            ClientFrame::Auth {
                seq: Some(1),
                token: "a.b.c".into(),
                last_id: Some(MsgId(1 << 40)),
                device: Some("phone".into()),
            },
            ClientFrame::Auth {
                seq: None,
                token: String::new(),
                last_id: None,
                device: None,
            },
            ClientFrame::Auth {
                seq: None,
                token: "t".into(),
                last_id: None,
                device: Some("d".into()),
            },
            ClientFrame::Ping { seq: None },
            ClientFrame::Ping {
                seq: Some(u32::MAX),
            },
            ClientFrame::Sub {
                seq: Some(3),
                channel: "news".into(),
                last_id: Some(MsgId(-1)),
                presence: false,
            },
            ClientFrame::Sub {
                seq: None,
                channel: "ü".into(),
                last_id: None,
                presence: false,
            },
            ClientFrame::Sub {
                seq: Some(4),
                channel: "room:1".into(),
                last_id: Some(MsgId(5)),
                presence: true,
            },
            ClientFrame::Presence {
                seq: Some(5),
                channel: "room:1".into(),
            },
            ClientFrame::Unsub {
                seq: Some(0),
                channel: "news".into(),
            },
            ClientFrame::Ack {
                seq: None,
                id: MsgId(i64::MAX),
            },
            ClientFrame::Ack {
                seq: Some(9),
                id: MsgId(i64::MIN),
            },
        ]
    }

    fn server_frames() -> Vec<ServerFrame> {
        vec![
            ServerFrame::AuthOk {
                seq: Some(1),
                conn: ConnId(u64::MAX),
                user: UserId::new("alice"),
                room: RoomId(u32::MAX),
                heartbeat: 30,
            },
            ServerFrame::Pong { seq: None },
            ServerFrame::Pong { seq: Some(300) },
            ServerFrame::SubOk {
                seq: Some(2),
                channel: "news".into(),
            },
            ServerFrame::UnsubOk {
                seq: None,
                channel: "news".into(),
            },
            ServerFrame::Msg(MsgFrame {
                id: MsgId(42),
                ts: 1_700_000_000_000,
                channel: None,
                data: Bytes::from_static(br#"{"a":[1,2]}"#),
                sender: None,
            }),
            ServerFrame::Msg(MsgFrame {
                id: MsgId(43),
                ts: -5,
                channel: Some("news".into()),
                data: Bytes::from_static(b"null"),
                sender: None,
            }),
            ServerFrame::Error {
                seq: Some(7),
                code: ErrorCode::Draining,
                message: "draining reconnect_after_ms=500".into(),
                close: Some(CloseCode::Draining),
            },
            ServerFrame::Error {
                seq: None,
                code: ErrorCode::ChannelForbidden,
                message: String::new(),
                close: None,
            },
            ServerFrame::Join(Box::new(PresenceChange {
                channel: "room:1".into(),
                user: UserId::new("bob"),
                device: "phone".into(),
            })),
            ServerFrame::Leave(Box::new(PresenceChange {
                channel: "room:1".into(),
                user: UserId::new("bob"),
                device: "default".into(),
            })),
            ServerFrame::PresenceOk {
                seq: Some(6),
                page: Box::new(PresencePage {
                    channel: "room:1".into(),
                    users: vec![
                        PresentUser {
                            user: UserId::new("alice"),
                            connections: 1,
                        },
                        PresentUser {
                            user: UserId::new("bob"),
                            connections: 300,
                        },
                    ],
                    more: true,
                }),
            },
            ServerFrame::PresenceOk {
                seq: None,
                page: Box::new(PresencePage {
                    channel: "room:2".into(),
                    users: Vec::new(),
                    more: false,
                }),
            },
        ]
    }

    #[test]
    fn client_frames_round_trip() {
        for f in client_frames() {
            let mut out = Vec::new();
            encode_client(&f, &mut out);
            assert_eq!(decode_client(&out), Ok(f.clone()), "{out:02x?}");
            // Every strict prefix is truncated, never a panic or a success.
            for cut in 0..out.len() {
                assert_eq!(decode_client(&out[..cut]), Err(DecodeError::Truncated));
            }
            out.push(0);
            assert_eq!(decode_client(&out), Err(DecodeError::Trailing));
        }
    }

    #[test]
    fn server_frames_round_trip() {
        for f in server_frames() {
            let mut out = Vec::new();
            encode_server(&f, &mut out);
            assert_eq!(decode_server(&out), Ok(f.clone()), "{out:02x?}");
            for cut in 0..out.len() {
                assert!(decode_server(&out[..cut]).is_err());
            }
            out.push(0);
            assert_eq!(decode_server(&out), Err(DecodeError::Trailing));
        }
    }

    #[test]
    fn known_bytes() {
        let mut out = Vec::new();
        encode_client(&ClientFrame::Ping { seq: Some(300) }, &mut out);
        assert_eq!(out, [0x02, 0x01, 0xac, 0x02]);
        out.clear();
        encode_server(&ServerFrame::Pong { seq: None }, &mut out);
        assert_eq!(out, [0x82, 0x00]);
    }

    #[test]
    fn directions_do_not_mix() {
        let mut out = Vec::new();
        encode_client(&ClientFrame::Ping { seq: None }, &mut out);
        assert_eq!(decode_server(&out), Err(DecodeError::BadOp("0x02".into())));
        out.clear();
        encode_server(&ServerFrame::Pong { seq: None }, &mut out);
        assert_eq!(decode_client(&out), Err(DecodeError::BadOp("0x82".into())));
    }

    #[test]
    fn rejects_bad_fields() {
        // Unknown flag bit.
        assert_eq!(
            decode_client(&[OP_PING, 0x02]),
            Err(DecodeError::BadField("flags"))
        );
        // Overlong varint (seq = 0 written in two bytes).
        assert_eq!(
            decode_client(&[OP_PING, 0x01, 0x80, 0x00]),
            Err(DecodeError::BadField("varint"))
        );
        // seq beyond u32.
        assert_eq!(
            decode_client(&[OP_PING, 0x01, 0x80, 0x80, 0x80, 0x80, 0x10]),
            Err(DecodeError::BadField("seq"))
        );
        // Varint over 64 bits.
        let mut b = vec![OP_ACK, 0x00];
        b.extend_from_slice(&[0xff; 9]);
        b.push(0x02);
        assert_eq!(decode_client(&b), Err(DecodeError::BadField("varint")));
        // Bad UTF-8 in a string.
        assert_eq!(
            decode_client(&[OP_UNSUB, 0x00, 0x01, 0xff]),
            Err(DecodeError::BadField("channel"))
        );
        // A string length far beyond the input: an error, not an allocation.
        assert_eq!(
            decode_client(&[OP_UNSUB, 0x00, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            Err(DecodeError::Truncated)
        );
        // msg data that is not JSON.
        assert_eq!(
            decode_server(&[OP_MSG, 0x00, 0x01, 0x01, 0x01, b'{']),
            Err(DecodeError::BadField("data"))
        );
        // msg data that is a JSON string of invalid UTF-8 (found by the
        // binary_frames fuzz target: it was accepted, and its JSON encoding
        // was not UTF-8).
        assert_eq!(
            decode_server(&[OP_MSG, 0x00, 0x01, 0x01, 0x03, b'"', 0xa9, b'"']),
            Err(DecodeError::BadField("data"))
        );
        // Unknown error code and close code.
        assert_eq!(
            decode_server(&[OP_ERROR, 0x00, 0x00, 0x00]),
            Err(DecodeError::BadField("code"))
        );
        assert_eq!(
            decode_server(&[OP_ERROR, 0x02, 0x01, 0x00, 0x03, 0xe8]),
            Err(DecodeError::BadField("close"))
        );
        assert_eq!(decode_client(&[]), Err(DecodeError::Truncated));
        assert_eq!(decode_server(&[]), Err(DecodeError::Truncated));
    }

    #[test]
    fn error_codes_all_round_trip() {
        for code in ErrorCode::ALL {
            let f = ServerFrame::Error {
                seq: None,
                code,
                message: code.as_str().into(),
                close: Some(CloseCode::ProtocolError),
            };
            let mut out = Vec::new();
            encode_server(&f, &mut out);
            assert_eq!(decode_server(&out), Ok(f));
        }
    }

    #[test]
    fn len_prefix_is_what_write_len_appends() {
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 65_536, usize::MAX] {
            let mut buf = Vec::new();
            write_len(len, &mut buf);
            let (b, n) = len_prefix(len);
            assert_eq!(&b[..n], &buf[..], "{len}");
        }
    }

    #[test]
    fn frame_len_byte_by_byte() {
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 65_536] {
            let mut buf = Vec::new();
            write_len(len, &mut buf);
            let header = buf.len();
            buf.extend(std::iter::repeat_n(0xaa, len));
            for n in 0..header {
                assert_eq!(frame_len(&buf[..n], 65_536), Ok(None), "len {len} n {n}");
            }
            for n in header..=buf.len() {
                assert_eq!(frame_len(&buf[..n], 65_536), Ok(Some((header, len))));
            }
        }
    }

    #[test]
    fn frame_len_rejects_oversized_before_body() {
        let max = 64 * 1024;
        let mut buf = Vec::new();
        write_len(max + 1, &mut buf);
        assert_eq!(
            frame_len(&buf, max),
            Err(DecodeError::TooLarge { len: max + 1, max })
        );
        // Rejected as soon as the partial prefix exceeds the limit.
        assert_eq!(
            frame_len(&[0xe4], 100),
            Err(DecodeError::TooLarge { len: 228, max: 100 })
        );
        assert_eq!(
            frame_len(&[0x80], 127),
            Err(DecodeError::TooLarge { len: 128, max: 127 })
        );
        assert_eq!(frame_len(&[0x80], 128), Ok(None));
        assert_eq!(frame_len(&[0x80, 0x01], 128), Ok(Some((2, 128))));
        let mut huge = Vec::new();
        write_len(u32::MAX as usize, &mut huge);
        assert!(matches!(
            frame_len(&huge[..1], 10),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn frame_len_rejects_malformed_prefix() {
        assert_eq!(
            frame_len(&[0x80, 0x00], 1 << 20),
            Err(DecodeError::BadField("length"))
        );
        assert_eq!(
            frame_len(&[0x80, 0x80, 0x80, 0x80, 0x80], usize::MAX),
            Err(DecodeError::BadField("length"))
        );
        assert_eq!(frame_len(&[0x80, 0x80, 0x80, 0x80], usize::MAX), Ok(None));
    }
}

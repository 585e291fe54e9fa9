//! The JSON encoding of protocol v1, exactly as DESIGN.md fixes it.
//!
//! Every frame is one JSON object with an `"op"` string. Decoders ignore
//! fields they do not know (forward compatibility) but refuse known fields of
//! the wrong type. Encoders write the fields in a fixed order (`op`, then
//! `seq` when set, then the op's fields) with no whitespace, so their output
//! is byte-for-byte predictable (docs/PROTOCOL.md test vectors rely on it).
//!
//! The server encoder writes bytes directly, without building a
//! `serde_json::Value`: a `msg` is encoded once per push on the fan-out path.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::error::DecodeError;
use crate::frame::{
    ClientFrame, CloseCode, ErrorCode, MsgFrame, PresenceChange, PresencePage, PresentUser, Sender,
    ServerFrame,
};
use crate::ids::{ConnId, MsgId, RoomId, UserId};

/// The union of the fields of every client frame. `op` is borrowed from the
/// text where it holds no escape, so telling the frame apart allocates nothing.
#[derive(Deserialize)]
struct RawClient<'a> {
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    seq: Option<u32>,
    token: Option<String>,
    last_id: Option<i64>,
    device: Option<String>,
    channel: Option<String>,
    id: Option<i64>,
    to: Option<String>,
    cid: Option<String>,
    presence: Option<bool>,
    // `Option<Box<RawValue>>` alone would read `"data":null` as absent.
    #[serde(default, deserialize_with = "present_raw")]
    data: Option<Box<RawValue>>,
}

/// One entry of a `presence_ok`'s `users`.
#[derive(Deserialize)]
struct RawPresent {
    user: String,
    connections: u32,
}

/// The union of the fields of every server frame.
#[derive(Deserialize)]
struct RawServer {
    op: Option<String>,
    seq: Option<u32>,
    conn: Option<String>,
    user: Option<String>,
    room: Option<String>,
    heartbeat: Option<u32>,
    channel: Option<String>,
    id: Option<i64>,
    ts: Option<i64>,
    exp: Option<u64>,
    // `Option<Box<RawValue>>` alone would read `"data":null` as absent.
    #[serde(default, deserialize_with = "present_raw")]
    data: Option<Box<RawValue>>,
    code: Option<String>,
    message: Option<String>,
    close: Option<u16>,
    from: Option<String>,
    cid: Option<String>,
    device: Option<String>,
    users: Option<Vec<RawPresent>>,
    more: Option<bool>,
}

fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Parses `buf` as one JSON object (not an array: serde would accept a
/// struct written as a sequence).
fn parse_object<'a, T: Deserialize<'a>>(buf: &'a [u8]) -> Result<T, DecodeError> {
    match buf.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        _ => return Err(DecodeError::Json("expected a json object".into())),
    }
    serde_json::from_slice(buf).map_err(|e| DecodeError::Json(e.to_string()))
}

fn need<T>(v: Option<T>, field: &'static str) -> Result<T, DecodeError> {
    v.ok_or(DecodeError::BadField(field))
}

/// Decodes one client frame from a JSON text.
///
/// # Errors
/// [`DecodeError::Json`] for text that is not a JSON object or holds a known
/// field of the wrong type, [`DecodeError::BadField`] for a missing field,
/// [`DecodeError::BadOp`] for an unknown `op`.
pub fn decode_client(buf: &[u8]) -> Result<ClientFrame, DecodeError> {
    if let Some(seq) = plain_ping(buf) {
        return Ok(ClientFrame::Ping { seq });
    }
    let raw: RawClient = parse_object(buf)?;
    let op = need(raw.op, "op")?;
    let seq = raw.seq;
    Ok(match &*op {
        "auth" => ClientFrame::Auth {
            seq,
            token: need(raw.token, "token")?,
            last_id: raw.last_id.map(MsgId),
            device: raw.device,
        },
        "ping" => ClientFrame::Ping { seq },
        "sub" => ClientFrame::Sub {
            seq,
            channel: need(raw.channel, "channel")?,
            last_id: raw.last_id.map(MsgId),
            presence: raw.presence.unwrap_or(false),
        },
        "presence" => ClientFrame::Presence {
            seq,
            channel: need(raw.channel, "channel")?,
        },
        "unsub" => ClientFrame::Unsub {
            seq,
            channel: need(raw.channel, "channel")?,
        },
        "ack" => ClientFrame::Ack {
            seq,
            id: MsgId(need(raw.id, "id")?),
        },
        "refresh" => ClientFrame::Refresh {
            seq,
            token: need(raw.token, "token")?,
        },
        "send" => ClientFrame::send(
            seq,
            UserId::from(need(raw.to, "to")?),
            raw_bytes(&need(raw.data, "data")?),
            need(raw.cid, "cid")?,
        ),
        "pub" => ClientFrame::publish(
            seq,
            need(raw.channel, "channel")?,
            raw_bytes(&need(raw.data, "data")?),
            need(raw.cid, "cid")?,
        ),
        _ => return Err(DecodeError::BadOp(op.into_owned())),
    })
}

/// The heartbeat as clients write it, `{"op":"ping"}` or
/// `{"op":"ping","seq":N}` byte for byte (no whitespace, `N` a JSON integer
/// that fits a `u32`), told apart without the JSON parser: most of what a
/// room reads is this. `None` for anything else, which the parser then reads
/// (with the same result for these bytes, as the tests check).
fn plain_ping(buf: &[u8]) -> Option<Option<u32>> {
    let rest = buf.strip_prefix(b"{\"op\":\"ping\"")?;
    if rest == b"}" {
        return Some(None);
    }
    let digits = rest.strip_prefix(b",\"seq\":")?.strip_suffix(b"}")?;
    // JSON allows no leading zero, and at most 10 digits fit a u32.
    let leading_zero = digits.len() > 1 && digits[0] == b'0';
    if digits.is_empty() || digits.len() > 10 || leading_zero {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(d - b'0');
    }
    u32::try_from(n).ok().map(Some)
}

/// Appends the JSON encoding of a server frame to `out`.
///
/// A `msg`'s `data` is written verbatim: it must hold one valid JSON value.
pub fn encode_server(frame: &ServerFrame, out: &mut Vec<u8>) {
    match frame {
        ServerFrame::AuthOk {
            seq,
            conn,
            user,
            room,
            heartbeat,
        } => {
            head("auth_ok", *seq, out);
            out.extend_from_slice(b",\"conn\":\"");
            put_int(conn.0, out);
            out.extend_from_slice(b"\",\"user\":");
            put_str(user.as_str(), out);
            out.extend_from_slice(b",\"room\":\"");
            put_int(room.0, out);
            out.extend_from_slice(b"\",\"heartbeat\":");
            put_int(*heartbeat, out);
        }
        ServerFrame::Pong { seq } => head("pong", *seq, out),
        ServerFrame::SubOk { seq, channel } => {
            head("sub_ok", *seq, out);
            put_key_str("channel", channel, out);
        }
        ServerFrame::UnsubOk { seq, channel } => {
            head("unsub_ok", *seq, out);
            put_key_str("channel", channel, out);
        }
        ServerFrame::RefreshOk { seq, exp } => {
            head("refresh_ok", *seq, out);
            put_key_int("exp", *exp, out);
        }
        ServerFrame::Msg(m) => {
            out.reserve(m.data.len() + 48 + m.channel.as_ref().map_or(0, |c| c.len() + 12));
            out.extend_from_slice(b"{\"op\":\"msg\",\"id\":");
            put_int(m.id.0, out);
            if let Some(ch) = &m.channel {
                put_key_str("channel", ch, out);
            }
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(&m.data);
            put_key_int("ts", m.ts, out);
            if let Some(from) = &m.sender {
                put_key_str("from", from.user.as_str(), out);
                put_key_str("cid", &from.cid, out);
            }
        }
        ServerFrame::Join(c) => put_change("join", c, out),
        ServerFrame::Leave(c) => put_change("leave", c, out),
        ServerFrame::PresenceOk { seq, page } => {
            head("presence_ok", *seq, out);
            put_key_str("channel", &page.channel, out);
            out.extend_from_slice(b",\"users\":[");
            for (i, u) in page.users.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"user\":");
                put_str(u.user.as_str(), out);
                put_key_int("connections", u.connections, out);
                out.push(b'}');
            }
            out.extend_from_slice(b"],\"more\":");
            out.extend_from_slice(if page.more { b"true" } else { b"false" });
        }
        ServerFrame::SendOk { seq, cid, id } => {
            head("send_ok", *seq, out);
            put_key_str("cid", cid, out);
            put_key_int("id", id.0, out);
        }
        ServerFrame::PubOk { seq, cid, id } => {
            head("pub_ok", *seq, out);
            put_key_str("cid", cid, out);
            put_key_int("id", id.0, out);
        }
        ServerFrame::Error {
            seq,
            code,
            message,
            close,
        } => {
            head("error", *seq, out);
            out.extend_from_slice(b",\"code\":\"");
            out.extend_from_slice(code.as_str().as_bytes());
            out.push(b'"');
            put_key_str("message", message, out);
            if let Some(c) = close {
                put_key_int("close", c.as_u16(), out);
            }
        }
    }
    out.push(b'}');
}

/// Appends the JSON encoding of a client frame to `out` (for clients and tests).
pub fn encode_client(frame: &ClientFrame, out: &mut Vec<u8>) {
    match frame {
        ClientFrame::Auth {
            seq,
            token,
            last_id,
            device,
        } => {
            head("auth", *seq, out);
            put_key_str("token", token, out);
            if let Some(id) = last_id {
                put_key_int("last_id", id.0, out);
            }
            if let Some(d) = device {
                put_key_str("device", d, out);
            }
        }
        ClientFrame::Ping { seq } => head("ping", *seq, out),
        ClientFrame::Sub {
            seq,
            channel,
            last_id,
            presence,
        } => {
            head("sub", *seq, out);
            put_key_str("channel", channel, out);
            if let Some(id) = last_id {
                put_key_int("last_id", id.0, out);
            }
            if *presence {
                out.extend_from_slice(b",\"presence\":true");
            }
        }
        ClientFrame::Presence { seq, channel } => {
            head("presence", *seq, out);
            put_key_str("channel", channel, out);
        }
        ClientFrame::Unsub { seq, channel } => {
            head("unsub", *seq, out);
            put_key_str("channel", channel, out);
        }
        ClientFrame::Ack { seq, id } => {
            head("ack", *seq, out);
            put_key_int("id", id.0, out);
        }
        ClientFrame::Refresh { seq, token } => {
            head("refresh", *seq, out);
            put_key_str("token", token, out);
        }
        ClientFrame::Send { seq, msg } => {
            head("send", *seq, out);
            put_key_str("to", msg.to.as_str(), out);
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(&msg.data);
            put_key_str("cid", &msg.cid, out);
        }
        ClientFrame::Pub { seq, msg } => {
            head("pub", *seq, out);
            put_key_str("channel", &msg.channel, out);
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(&msg.data);
            put_key_str("cid", &msg.cid, out);
        }
    }
    out.push(b'}');
}

/// Decodes one server frame from a JSON text (for clients and tests).
///
/// `conn` and `room` are decimal strings of ASCII digits; `data` is kept as
/// its raw JSON text.
///
/// # Errors
/// [`DecodeError`] for anything that is not a valid server frame.
pub fn decode_server(buf: &[u8]) -> Result<ServerFrame, DecodeError> {
    let raw: RawServer = parse_object(buf)?;
    let op = need(raw.op, "op")?;
    let seq = raw.seq;
    Ok(match op.as_str() {
        "auth_ok" => ServerFrame::AuthOk {
            seq,
            conn: ConnId(decimal(&need(raw.conn, "conn")?, "conn")?),
            user: UserId::from(need(raw.user, "user")?),
            room: RoomId(
                u32::try_from(decimal(&need(raw.room, "room")?, "room")?)
                    .map_err(|_| DecodeError::BadField("room"))?,
            ),
            heartbeat: need(raw.heartbeat, "heartbeat")?,
        },
        "pong" => ServerFrame::Pong { seq },
        "sub_ok" => ServerFrame::SubOk {
            seq,
            channel: need(raw.channel, "channel")?,
        },
        "unsub_ok" => ServerFrame::UnsubOk {
            seq,
            channel: need(raw.channel, "channel")?,
        },
        "refresh_ok" => ServerFrame::RefreshOk {
            seq,
            exp: need(raw.exp, "exp")?,
        },
        "msg" => {
            let data = need(raw.data, "data")?;
            let sender = match (raw.from, raw.cid) {
                (Some(user), Some(cid)) => Some(Sender {
                    user: UserId::from(user),
                    cid,
                }),
                (None, None) => None,
                (None, Some(_)) => return Err(DecodeError::BadField("from")),
                (Some(_), None) => return Err(DecodeError::BadField("cid")),
            };
            ServerFrame::Msg(MsgFrame {
                id: MsgId(need(raw.id, "id")?),
                ts: need(raw.ts, "ts")?,
                channel: raw.channel,
                data: raw_bytes(&data),
                sender,
            })
        }
        "send_ok" => ServerFrame::SendOk {
            seq,
            cid: need(raw.cid, "cid")?,
            id: MsgId(need(raw.id, "id")?),
        },
        "pub_ok" => ServerFrame::PubOk {
            seq,
            cid: need(raw.cid, "cid")?,
            id: MsgId(need(raw.id, "id")?),
        },
        "join" | "leave" => {
            let change = Box::new(PresenceChange {
                channel: need(raw.channel, "channel")?,
                user: UserId::from(need(raw.user, "user")?),
                device: need(raw.device, "device")?,
            });
            if op == "join" {
                ServerFrame::Join(change)
            } else {
                ServerFrame::Leave(change)
            }
        }
        "presence_ok" => ServerFrame::PresenceOk {
            seq,
            page: Box::new(PresencePage {
                channel: need(raw.channel, "channel")?,
                users: need(raw.users, "users")?
                    .into_iter()
                    .map(|u| PresentUser {
                        user: UserId::from(u.user),
                        connections: u.connections,
                    })
                    .collect(),
                more: need(raw.more, "more")?,
            }),
        },
        "error" => ServerFrame::Error {
            seq,
            code: ErrorCode::parse(&need(raw.code, "code")?)
                .ok_or(DecodeError::BadField("code"))?,
            message: need(raw.message, "message")?,
            close: match raw.close {
                Some(n) => Some(CloseCode::from_u16(n).ok_or(DecodeError::BadField("close"))?),
                None => None,
            },
        },
        _ => return Err(DecodeError::BadOp(op)),
    })
}

/// Writes a `join` or `leave` (they answer no request: no seq).
fn put_change(op: &str, c: &PresenceChange, out: &mut Vec<u8>) {
    head(op, None, out);
    put_key_str("channel", &c.channel, out);
    put_key_str("user", c.user.as_str(), out);
    put_key_str("device", &c.device, out);
}

/// The JSON text of a raw value.
fn raw_bytes(v: &RawValue) -> Bytes {
    Bytes::copy_from_slice(v.get().as_bytes())
}

/// Parses a non-empty string of ASCII digits (no sign, no spaces).
fn decimal(s: &str, field: &'static str) -> Result<u64, DecodeError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DecodeError::BadField(field));
    }
    s.parse().map_err(|_| DecodeError::BadField(field))
}

/// Writes `{"op":"<op>"` and `,"seq":<n>` when set; the caller closes the object.
fn head(op: &str, seq: Option<u32>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"op\":\"");
    out.extend_from_slice(op.as_bytes());
    out.push(b'"');
    if let Some(s) = seq {
        put_key_int("seq", s, out);
    }
}

/// Writes `,"<key>":"<escaped value>"`.
fn put_key_str(key: &str, value: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    put_str(value, out);
}

/// Writes `,"<key>":<v>`.
fn put_key_int<I: itoa::Integer>(key: &str, v: I, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    put_int(v, out);
}

/// Writes an integer in decimal.
fn put_int<I: itoa::Integer>(v: I, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Writes `s` as a JSON string, escaped exactly as `serde_json` does:
/// `"` and `\` and control characters are escaped (`\b \f \n \r \t`, else
/// `\u00XX`); everything else, `/` and non-ASCII included, is written as is.
fn put_str(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc_s(f: &ServerFrame) -> String {
        let mut out = Vec::new();
        encode_server(f, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn enc_c(f: &ClientFrame) -> String {
        let mut out = Vec::new();
        encode_client(f, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn client_frames_exact_and_round_trip() {
        let cases = [
            (
                ClientFrame::Auth {
                    seq: Some(1),
                    token: "a.b.c".into(),
                    last_id: Some(MsgId(99)),
                    device: Some("phone".into()),
                },
                r#"{"op":"auth","seq":1,"token":"a.b.c","last_id":99,"device":"phone"}"#,
            ),
            (
                ClientFrame::Auth {
                    seq: None,
                    token: "t".into(),
                    last_id: None,
                    device: None,
                },
                r#"{"op":"auth","token":"t"}"#,
            ),
            (ClientFrame::Ping { seq: None }, r#"{"op":"ping"}"#),
            (
                ClientFrame::Ping { seq: Some(5) },
                r#"{"op":"ping","seq":5}"#,
            ),
            (
                ClientFrame::Sub {
                    seq: Some(2),
                    channel: "news".into(),
                    last_id: Some(MsgId(-3)),
                    presence: false,
                },
                r#"{"op":"sub","seq":2,"channel":"news","last_id":-3}"#,
            ),
            (
                ClientFrame::Sub {
                    seq: Some(3),
                    channel: "room:1".into(),
                    last_id: None,
                    presence: true,
                },
                r#"{"op":"sub","seq":3,"channel":"room:1","presence":true}"#,
            ),
            (
                ClientFrame::Presence {
                    seq: Some(4),
                    channel: "room:1".into(),
                },
                r#"{"op":"presence","seq":4,"channel":"room:1"}"#,
            ),
            (
                ClientFrame::Unsub {
                    seq: None,
                    channel: "news".into(),
                },
                r#"{"op":"unsub","channel":"news"}"#,
            ),
            (
                ClientFrame::Ack {
                    seq: None,
                    id: MsgId(i64::MAX),
                },
                r#"{"op":"ack","id":9223372036854775807}"#,
            ),
        ];
        for (frame, text) in cases {
            assert_eq!(enc_c(&frame), text);
            assert_eq!(decode_client(text.as_bytes()), Ok(frame));
        }
    }

    #[test]
    fn server_frames_exact_and_round_trip() {
        let cases = [
            (
                ServerFrame::AuthOk {
                    seq: Some(1),
                    conn: ConnId(1 << 40 | 5),
                    user: UserId::new("alice"),
                    room: RoomId(1),
                    heartbeat: 30,
                },
                r#"{"op":"auth_ok","seq":1,"conn":"1099511627781","user":"alice","room":"1","heartbeat":30}"#,
            ),
            (ServerFrame::Pong { seq: None }, r#"{"op":"pong"}"#),
            (
                ServerFrame::SubOk {
                    seq: Some(2),
                    channel: "news".into(),
                },
                r#"{"op":"sub_ok","seq":2,"channel":"news"}"#,
            ),
            (
                ServerFrame::UnsubOk {
                    seq: None,
                    channel: "news".into(),
                },
                r#"{"op":"unsub_ok","channel":"news"}"#,
            ),
            (
                ServerFrame::Msg(MsgFrame {
                    id: MsgId(42),
                    ts: 1_700_000_000_000,
                    channel: None,
                    data: Bytes::from_static(br#"{"text":"hi"}"#),
                    sender: None,
                }),
                r#"{"op":"msg","id":42,"data":{"text":"hi"},"ts":1700000000000}"#,
            ),
            (
                ServerFrame::Msg(MsgFrame {
                    id: MsgId(43),
                    ts: 1,
                    channel: Some("news".into()),
                    data: Bytes::from_static(b"null"),
                    sender: None,
                }),
                r#"{"op":"msg","id":43,"channel":"news","data":null,"ts":1}"#,
            ),
            (
                ServerFrame::Error {
                    seq: Some(4),
                    code: ErrorCode::Draining,
                    message: "draining reconnect_after_ms=500".into(),
                    close: Some(CloseCode::Draining),
                },
                r#"{"op":"error","seq":4,"code":"draining","message":"draining reconnect_after_ms=500","close":4007}"#,
            ),
            (
                ServerFrame::Join(Box::new(PresenceChange {
                    channel: "room:1".into(),
                    user: UserId::new("bob"),
                    device: "phone".into(),
                })),
                r#"{"op":"join","channel":"room:1","user":"bob","device":"phone"}"#,
            ),
            (
                ServerFrame::Leave(Box::new(PresenceChange {
                    channel: "room:1".into(),
                    user: UserId::new("bob"),
                    device: "phone".into(),
                })),
                r#"{"op":"leave","channel":"room:1","user":"bob","device":"phone"}"#,
            ),
            (
                ServerFrame::PresenceOk {
                    seq: Some(4),
                    page: Box::new(PresencePage {
                        channel: "room:1".into(),
                        users: vec![
                            PresentUser {
                                user: UserId::new("alice"),
                                connections: 2,
                            },
                            PresentUser {
                                user: UserId::new("bob"),
                                connections: 1,
                            },
                        ],
                        more: false,
                    }),
                },
                r#"{"op":"presence_ok","seq":4,"channel":"room:1","users":[{"user":"alice","connections":2},{"user":"bob","connections":1}],"more":false}"#,
            ),
            (
                ServerFrame::Error {
                    seq: None,
                    code: ErrorCode::BadChannel,
                    message: "bad".into(),
                    close: None,
                },
                r#"{"op":"error","code":"bad_channel","message":"bad"}"#,
            ),
        ];
        for (frame, text) in cases {
            assert_eq!(enc_s(&frame), text);
            assert_eq!(decode_server(text.as_bytes()), Ok(frame));
        }
    }

    #[test]
    fn escaping_matches_serde_json() {
        let mut all = String::new();
        for c in 0u8..0x80 {
            all.push(char::from(c));
        }
        all.push_str("é\u{2028}😀/");
        let mut out = Vec::new();
        put_str(&all, &mut out);
        assert_eq!(out, serde_json::to_vec(&all).unwrap());
    }

    /// The heartbeat's shortcut reads exactly what the parser reads, and
    /// leaves everything else to it.
    #[test]
    fn a_plain_ping_reads_as_the_parser_reads_it() {
        let taken = [
            (r#"{"op":"ping"}"#, None),
            (r#"{"op":"ping","seq":0}"#, Some(0)),
            (r#"{"op":"ping","seq":7}"#, Some(7)),
            (r#"{"op":"ping","seq":4294967295}"#, Some(u32::MAX)),
        ];
        for (text, seq) in taken {
            assert_eq!(plain_ping(text.as_bytes()), Some(seq), "{text}");
            let raw: RawClient = parse_object(text.as_bytes()).unwrap();
            assert_eq!((raw.op.as_deref(), raw.seq), (Some("ping"), seq), "{text}");
        }
        // Left to the parser: other spellings (read the same), and what the
        // parser refuses (still refused).
        let left = [
            r#"{"op":"ping" }"#,
            r#"{ "op":"ping"}"#,
            r#"{"op":"ping","seq":5,"x":1}"#,
            r#"{"op":"pi\u006eg"}"#,
            r#"{"op":"ping","seq":4294967296}"#,
            r#"{"op":"ping","seq":12345678901}"#,
            r#"{"op":"ping","seq":01}"#,
            r#"{"op":"ping","seq":-1}"#,
            r#"{"op":"ping","seq":1.5}"#,
            r#"{"op":"ping","seq":}"#,
            r#"{"op":"ping","seq":null}"#,
            r#"{"op":"ping"}}"#,
            r#"{"op":"ping"} "#,
            r#"{"op":"ping""#,
            r#"{"op":"pong"}"#,
        ];
        for text in left {
            assert_eq!(plain_ping(text.as_bytes()), None, "{text}");
        }
        assert_eq!(
            decode_client(br#"{"op":"pi\u006eg","seq":3}"#).unwrap(),
            ClientFrame::Ping { seq: Some(3) }
        );
        assert_eq!(
            decode_client(br#"{"op":"ping","seq":null}"#).unwrap(),
            ClientFrame::Ping { seq: None }
        );
        for bad in [
            r#"{"op":"ping","seq":4294967296}"#,
            r#"{"op":"ping","seq":01}"#,
            r#"{"op":"ping","seq":-1}"#,
            r#"{"op":"ping"}}"#,
        ] {
            assert!(decode_client(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let f = decode_client(br#"{"x":{"y":[1,2]},"op":"ping","future":true}"#);
        assert_eq!(f, Ok(ClientFrame::Ping { seq: None }));
        let f = decode_server(br#"{"op":"pong","new":"field"}"#);
        assert_eq!(f, Ok(ServerFrame::Pong { seq: None }));
    }

    #[test]
    fn whitespace_and_escapes_are_accepted() {
        let f = decode_client(b" { \"op\" : \"sub\" , \"channel\" : \"a\\u002fb\" } ");
        assert_eq!(
            f,
            Ok(ClientFrame::Sub {
                seq: None,
                channel: "a/b".into(),
                last_id: None,
                presence: false,
            })
        );
    }

    #[test]
    fn bad_client_frames() {
        use DecodeError::*;
        type Check = fn(&DecodeError) -> bool;
        let bad: &[(&str, Check)] = &[
            ("", |e| matches!(e, Json(_))),
            ("[\"ping\"]", |e| matches!(e, Json(_))),
            ("\"ping\"", |e| matches!(e, Json(_))),
            ("{\"op\":\"ping\"", |e| matches!(e, Json(_))),
            ("{\"op\":\"ping\"} x", |e| matches!(e, Json(_))),
            ("{}", |e| *e == BadField("op")),
            ("{\"op\":1}", |e| matches!(e, Json(_))),
            ("{\"op\":\"nope\"}", |e| *e == BadOp("nope".into())),
            ("{\"op\":\"auth\"}", |e| *e == BadField("token")),
            ("{\"op\":\"auth\",\"token\":5}", |e| matches!(e, Json(_))),
            ("{\"op\":\"sub\"}", |e| *e == BadField("channel")),
            ("{\"op\":\"unsub\"}", |e| *e == BadField("channel")),
            ("{\"op\":\"ack\"}", |e| *e == BadField("id")),
            ("{\"op\":\"ack\",\"id\":1.5}", |e| matches!(e, Json(_))),
            ("{\"op\":\"ack\",\"id\":\"1\"}", |e| matches!(e, Json(_))),
            ("{\"op\":\"ping\",\"seq\":-1}", |e| matches!(e, Json(_))),
            ("{\"op\":\"ping\",\"seq\":4294967296}", |e| {
                matches!(e, Json(_))
            }),
            ("{\"op\":\"ping\",\"op\":\"ping\"}", |e| {
                matches!(e, Json(_))
            }),
        ];
        for (text, ok) in bad {
            let e = decode_client(text.as_bytes()).unwrap_err();
            assert!(ok(&e), "{text}: {e:?}");
        }
    }

    #[test]
    fn bad_server_frames() {
        use DecodeError::*;
        let bad: &[(&str, DecodeError)] = &[
            (r#"{"op":"msg","id":1,"ts":2}"#, BadField("data")),
            (r#"{"op":"msg","id":1,"data":1}"#, BadField("ts")),
            (
                r#"{"op":"auth_ok","conn":"+1","user":"u","room":"1","heartbeat":1}"#,
                BadField("conn"),
            ),
            (
                r#"{"op":"auth_ok","conn":"1","user":"u","room":"4294967296","heartbeat":1}"#,
                BadField("room"),
            ),
            (
                r#"{"op":"error","code":"what","message":""}"#,
                BadField("code"),
            ),
            (
                r#"{"op":"error","code":"internal","message":"","close":1000}"#,
                BadField("close"),
            ),
            (r#"{"op":"ping"}"#, BadOp("ping".into())),
        ];
        for (text, want) in bad {
            assert_eq!(decode_server(text.as_bytes()).as_ref(), Err(want), "{text}");
        }
        assert!(matches!(
            decode_server(br#"{"op":"auth_ok","conn":1,"user":"u","room":"1","heartbeat":1}"#),
            Err(Json(_))
        ));
    }

    #[test]
    fn msg_data_is_kept_verbatim() {
        let text = br#"{"op":"msg","id":1,"data":{"b": [1, 2.50, "x"] ,"a":null},"ts":2}"#;
        let Ok(ServerFrame::Msg(m)) = decode_server(text) else {
            panic!("not a msg");
        };
        assert_eq!(&m.data[..], br#"{"b": [1, 2.50, "x"] ,"a":null}"#);
    }
}

//! Properties of the client-protocol decoders: JSON frames, binary frames,
//! the length-prefixed stream framing of TCP/TLS/QUIC, and tokens. Shared by
//! the cargo-fuzz targets (`proto/fuzz/fuzz_targets/*.rs`) and the stable
//! smoke tests (`proto/tests/fuzz_smoke.rs`), which include this file.
//!
//! Every check returns whether some decoder accepted the input (the smoke
//! runner keeps such inputs to mutate further) and panics when a property
//! does not hold.
#![allow(dead_code)]

use bytes::Bytes;
use proto::token::{self, Claims, TokenError, MAX_SUB_LEN};
use proto::{
    binary, json, valid_channel, ClientFrame, CloseCode, ConnId, DecodeError, ErrorCode, MsgFrame,
    MsgId, RoomId, ServerFrame, UserId, DEFAULT_MAX_FRAME,
};

/// JSON frames, both directions: nothing panics; what decodes encodes to a
/// text that decodes to the same frame and encodes to the same text again
/// (the encoder is canonical); and the frame goes through the binary
/// encoding unchanged.
pub(crate) fn json_frames(data: &[u8]) -> bool {
    let mut accepted = false;
    if let Ok(f) = json::decode_client(data) {
        accepted = true;
        let mut out = Vec::new();
        json::encode_client(&f, &mut out);
        assert_eq!(
            json::decode_client(&out).as_ref(),
            Ok(&f),
            "json client re-decode"
        );
        let mut again = Vec::new();
        json::encode_client(&f, &mut again);
        assert_eq!(out, again);
        let mut bin = Vec::new();
        binary::encode_client(&f, &mut bin);
        assert_eq!(
            binary::decode_client(&bin).as_ref(),
            Ok(&f),
            "json client via binary"
        );
    }
    if let Ok(f) = json::decode_server(data) {
        accepted = true;
        let mut out = Vec::new();
        json::encode_server(&f, &mut out);
        let back = json::decode_server(&out);
        assert_eq!(back.as_ref(), Ok(&f), "json server re-decode of {out:02x?}");
        let mut bin = Vec::new();
        binary::encode_server(&f, &mut bin);
        assert_eq!(
            binary::decode_server(&bin).as_ref(),
            Ok(&f),
            "json server via binary"
        );
    }
    accepted
}

/// Binary frames, both directions: nothing panics; the encoding is
/// canonical (what decodes encodes back to exactly the input); and the frame
/// goes through the JSON encoding unchanged (a `msg` payload up to the
/// whitespace around it, which JSON does not keep).
pub(crate) fn binary_frames(data: &[u8]) -> bool {
    let mut accepted = false;
    if let Ok(f) = binary::decode_client(data) {
        accepted = true;
        let mut out = Vec::new();
        binary::encode_client(&f, &mut out);
        assert_eq!(out, data, "binary client encoding is not canonical");
        let mut text = Vec::new();
        json::encode_client(&f, &mut text);
        assert_eq!(
            json::decode_client(&text).as_ref(),
            Ok(&f),
            "binary client via json"
        );
    }
    if let Ok(f) = binary::decode_server(data) {
        accepted = true;
        let mut out = Vec::new();
        binary::encode_server(&f, &mut out);
        assert_eq!(out, data, "binary server encoding is not canonical");
        let mut text = Vec::new();
        json::encode_server(&f, &mut text);
        let want = match &f {
            ServerFrame::Msg(m) => ServerFrame::Msg(MsgFrame {
                data: Bytes::copy_from_slice(trim_json_ws(&m.data)),
                ..m.clone()
            }),
            other => other.clone(),
        };
        assert_eq!(
            json::decode_server(&text),
            Ok(want),
            "binary server via json: {text:02x?}"
        );
    }
    accepted
}

fn trim_json_ws(b: &[u8]) -> &[u8] {
    let ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
    let start = b.iter().position(|c| !ws(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !ws(c)).map_or(start, |i| i + 1);
    &b[start..end]
}

/// Longest length prefix (`binary::frame_len` reads at most 5 bytes).
const MAX_PREFIX: usize = 5;

/// What a stream of bytes turned into.
#[derive(Debug, PartialEq)]
enum Outcome {
    Frame(ClientFrame),
    Error(DecodeError),
}

/// The stream framing of TCP, TLS and QUIC connections: the room's framer
/// (`room/src/codec.rs` and `TcpIo` in `room/src/listen/tcp.rs`, both
/// private to the room crate, so modelled here line for line on the public
/// `binary::frame_len` and `binary::decode_client` they are made of).
///
/// Input: one byte picks the frame limit, one the read sizes, the rest is
/// the stream. Properties: the frames (and the error that ends the stream)
/// are the same however the bytes are split into reads; no announced length
/// is over the limit; the kept partial bytes never exceed one prefix, one
/// frame and one read; a complete prefix is the minimal varint of the
/// length it announces, and stays the same answer once more bytes arrive.
pub(crate) fn stream_framing(data: &[u8]) -> bool {
    let [lim, reads, stream @ ..] = data else {
        return false;
    };
    let max = match lim % 4 {
        0 => DEFAULT_MAX_FRAME,
        1 => usize::from(*lim),
        2 => 0,
        _ => 1 << 20,
    };
    for n in 0..=stream.len().min(2 * MAX_PREFIX) {
        prefix_properties(&stream[..n], stream, max);
    }
    let whole = frames_whole(stream, max);
    // Read sizes: 1, 2, 3, a few from the input, and the room's 1 KiB chunk.
    for size in [
        1,
        2,
        3,
        usize::from(*reads % 32) + 1,
        usize::from(*reads) * 7 + 1,
        1024,
    ] {
        assert_eq!(frames_chunked(stream, max, size), whole, "reads of {size}");
    }
    whole.iter().any(|o| matches!(o, Outcome::Frame(_)))
}

/// `frame_len` on a prefix of the stream: limits, minimal form, and the same
/// answer for every longer prefix once complete.
fn prefix_properties(part: &[u8], stream: &[u8], max: usize) {
    match binary::frame_len(part, max) {
        Ok(Some((head, len))) => {
            assert!((1..=MAX_PREFIX).contains(&head) && head <= part.len());
            assert!(len <= max, "{len} over the limit {max}");
            let mut prefix = Vec::new();
            binary::write_len(len, &mut prefix);
            assert_eq!(prefix, &part[..head], "not the minimal prefix");
            assert_eq!(binary::frame_len(stream, max), Ok(Some((head, len))));
        }
        Ok(None) => assert!(part.len() < MAX_PREFIX),
        Err(DecodeError::TooLarge { len, max: m }) => {
            assert!(len > max && m == max);
            assert!(binary::frame_len(stream, max).is_err());
        }
        Err(e) => {
            assert_eq!(e, DecodeError::BadField("length"));
            assert!(binary::frame_len(stream, max).is_err());
        }
    }
}

/// The frames of a stream read whole (the reference).
fn frames_whole(mut buf: &[u8], max: usize) -> Vec<Outcome> {
    let mut out = Vec::new();
    loop {
        match decode_one(buf, max) {
            Ok(Some((f, n))) => {
                out.push(Outcome::Frame(f));
                buf = &buf[n..];
            }
            Ok(None) => return out,
            Err(e) => {
                out.push(Outcome::Error(e));
                return out;
            }
        }
    }
}

/// `BinCodec::decode` of the room: the first frame and the bytes it took.
fn decode_one(src: &[u8], max: usize) -> Result<Option<(ClientFrame, usize)>, DecodeError> {
    let Some((head, body)) = binary::frame_len(src, max)? else {
        return Ok(None);
    };
    let total = head + body;
    if src.len() < total {
        return Ok(None);
    }
    let frame = binary::decode_client(&src[head..total])?;
    Ok(Some((frame, total)))
}

/// `TcpIo::poll_next` of the room, with reads of `size` bytes: frames are
/// decoded from the read chunk when nothing is kept, else from the kept
/// bytes, which only partial frames leave behind.
fn frames_chunked(stream: &[u8], max: usize, size: usize) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut kept: Vec<u8> = Vec::new();
    let mut reads = stream.chunks(size);
    loop {
        // decode_kept
        if !kept.is_empty() {
            match decode_one(&kept, max) {
                Ok(Some((f, n))) => {
                    kept.drain(..n);
                    out.push(Outcome::Frame(f));
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    out.push(Outcome::Error(e));
                    return out;
                }
            }
        }
        let Some(got) = reads.next() else {
            // End of stream (a partial frame left is the caller's error).
            return out;
        };
        if !kept.is_empty() {
            kept.extend_from_slice(got);
        } else {
            match decode_one(got, max) {
                Ok(Some((f, n))) => {
                    kept.extend_from_slice(&got[n..]);
                    out.push(Outcome::Frame(f));
                }
                Ok(None) => kept.extend_from_slice(got),
                Err(e) => {
                    out.push(Outcome::Error(e));
                    return out;
                }
            }
        }
        assert!(
            kept.len() <= MAX_PREFIX + max + size,
            "{} bytes kept with a limit of {max} and reads of {size}",
            kept.len()
        );
    }
}

/// The secret the token checks sign with.
pub(crate) const SECRET: &[u8] = b"fuzz-secret";
/// The `now` tokens are checked at.
pub(crate) const NOW: u64 = 1_700_000_000;

/// Tokens: `token::verify` on arbitrary text (refused, never a panic), and
/// on arbitrary payloads and headers signed with the right key, which is
/// the only way to reach claim parsing. Whatever verifies has a valid
/// subject and has not expired, mints back to a token with the same claims,
/// and only allows valid channel names.
///
/// Input: the first byte picks the mode, the rest is the token text, or the
/// payload, or header and payload split at the first `\n`.
pub(crate) fn tokens(data: &[u8]) -> bool {
    let [mode, rest @ ..] = data else {
        return false;
    };
    let tok = match mode % 3 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => signed(br#"{"alg":"HS256","typ":"JWT"}"#, rest),
        _ => match rest.iter().position(|&b| b == b'\n') {
            Some(i) => signed(&rest[..i], &rest[i + 1..]),
            None => signed(rest, br#"{"sub":"a","exp":1800000000}"#),
        },
    };
    let claims = match token::verify(&tok, SECRET, NOW) {
        Ok(c) => c,
        Err(TokenError::Invalid(_) | TokenError::Expired | TokenError::BadSubject) => return false,
    };
    assert!(!claims.sub.is_empty() && claims.sub.len() <= MAX_SUB_LEN);
    assert!(claims.exp > NOW);
    let again = token::mint(&claims, SECRET).expect("verified claims mint");
    assert_eq!(token::verify(&again, SECRET, NOW).as_ref(), Ok(&claims));
    channel_permissions(&claims, rest);
    true
}

/// `allows_channel` only allows valid names, each matched by an entry.
fn channel_permissions(claims: &Claims, extra: &[u8]) {
    let mut names: Vec<String> = claims.channels.clone().unwrap_or_default();
    names.extend(names.clone().iter().map(|n| format!("{n}x")));
    names.push(String::from_utf8_lossy(extra).into_owned());
    for name in &names {
        if claims.allows_channel(name) {
            assert!(
                valid_channel(name),
                "{name:?} allowed but not a valid channel"
            );
            let entries = claims.channels.as_deref().unwrap_or_default();
            assert!(entries.iter().any(|e| match e.strip_suffix('*') {
                Some(p) => name.starts_with(p),
                None => e == name,
            }));
        }
    }
}

/// `base64url(header).base64url(payload).signature` with [`SECRET`].
fn signed(header: &[u8], payload: &[u8]) -> String {
    let msg = format!("{}.{}", b64(header), b64(payload));
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        .expect("hs256 signs anything");
    format!("{msg}.{sig}")
}

/// base64url without padding.
fn b64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(b.len() * 4 / 3 + 3);
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &x)| n | u32::from(x) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// Sample client frames, one or more of each op.
pub(crate) fn client_frames() -> Vec<ClientFrame> {
    vec![
        ClientFrame::Auth {
            seq: Some(1),
            token: "a.b.c".into(),
            last_id: Some(MsgId(1 << 40)),
            device: Some("phone".into()),
        },
        ClientFrame::Auth {
            seq: None,
            token: "t\"\\\u{1}é".into(),
            last_id: None,
            device: None,
        },
        ClientFrame::Ping {
            seq: Some(u32::MAX),
        },
        ClientFrame::Ping { seq: None },
        ClientFrame::Sub {
            seq: Some(300),
            channel: "chat:room-1".into(),
            last_id: Some(MsgId(-1)),
            presence: true,
        },
        ClientFrame::Presence {
            seq: Some(301),
            channel: "chat:room-1".into(),
        },
        ClientFrame::Unsub {
            seq: None,
            channel: "news".into(),
        },
        ClientFrame::Ack {
            seq: Some(0),
            id: MsgId(i64::MIN),
        },
    ]
}

/// Sample server frames, one or more of each op.
pub(crate) fn server_frames() -> Vec<ServerFrame> {
    vec![
        ServerFrame::AuthOk {
            seq: Some(1),
            conn: ConnId(u64::MAX),
            user: UserId::new("alice"),
            room: RoomId(7),
            heartbeat: 30,
        },
        ServerFrame::Pong { seq: Some(2) },
        ServerFrame::SubOk {
            seq: None,
            channel: "news".into(),
        },
        ServerFrame::UnsubOk {
            seq: Some(3),
            channel: "news".into(),
        },
        ServerFrame::Msg(MsgFrame {
            id: MsgId(42),
            ts: 1_700_000_000_000,
            channel: Some("news".into()),
            data: Bytes::from_static(br#"{"a":[1,2.5,"x",null,true],"b":{}}"#),
            sender: None,
        }),
        ServerFrame::Msg(MsgFrame {
            id: MsgId(-3),
            ts: -1,
            channel: None,
            data: Bytes::from_static(b"\"\\u00e9\""),
            sender: None,
        }),
        ServerFrame::Error {
            seq: Some(4),
            code: ErrorCode::Draining,
            message: "draining reconnect_after_ms=500".into(),
            close: Some(CloseCode::Draining),
        },
        ServerFrame::Error {
            seq: None,
            code: ErrorCode::BadChannel,
            message: String::new(),
            close: None,
        },
        ServerFrame::Error {
            seq: Some(7),
            code: ErrorCode::UnknownUser,
            message: "the recipient is not a known user".into(),
            close: None,
        },
    ]
}

/// Seeds of the JSON target: every sample frame's JSON text.
pub(crate) fn json_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in client_frames() {
        let mut b = Vec::new();
        json::encode_client(&f, &mut b);
        out.push(b);
    }
    for f in server_frames() {
        let mut b = Vec::new();
        json::encode_server(&f, &mut b);
        out.push(b);
    }
    out.push(br#" { "op" : "sub" , "channel" : "a\u002fb", "x": [{"y": -1e5}] } "#.to_vec());
    out
}

/// Seeds of the binary target: every sample frame's binary body.
pub(crate) fn binary_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in client_frames() {
        let mut b = Vec::new();
        binary::encode_client(&f, &mut b);
        out.push(b);
    }
    for f in server_frames() {
        let mut b = Vec::new();
        binary::encode_server(&f, &mut b);
        out.push(b);
    }
    out
}

/// Seeds of the stream target: the client frames, length-prefixed and
/// concatenated, under each limit mode.
pub(crate) fn stream_seeds() -> Vec<Vec<u8>> {
    let mut stream = Vec::new();
    for f in client_frames() {
        let mut b = Vec::new();
        binary::encode_client(&f, &mut b);
        binary::write_len(b.len(), &mut stream);
        stream.extend_from_slice(&b);
    }
    let mut out = Vec::new();
    for (lim, reads) in [(0u8, 0u8), (4 * 10 + 1, 3), (2, 9), (3, 200)] {
        let mut s = vec![lim, reads];
        s.extend_from_slice(&stream);
        out.push(s);
    }
    let mut big = vec![0u8, 5];
    binary::write_len(DEFAULT_MAX_FRAME, &mut big);
    out.push(big);
    out
}

/// Seeds of the token target: a minted token, and its payload and header
/// for the signed modes.
pub(crate) fn token_seeds() -> Vec<Vec<u8>> {
    let claims = Claims {
        sub: "alice".into(),
        exp: NOW + 60,
        dev: Some("phone".into()),
        channels: Some(vec!["news".into(), "chat:*".into(), "*".into()]),
        send: None,
        publish: None,
    };
    let tok = token::mint(&claims, SECRET).expect("mint");
    let payload = br#"{"sub":"alice","exp":1700000060,"dev":"phone","channels":["news","chat:*"]}"#;
    let mut out = vec![[&[0u8][..], tok.as_bytes()].concat()];
    out.push([&[1u8][..], payload].concat());
    out.push(
        [
            &[2u8][..],
            br#"{"alg":"HS256","typ":"JWT","kid":"k"}"#,
            b"\n",
            payload,
        ]
        .concat(),
    );
    out.push([&[2u8][..], br#"{"alg":"none"}"#, b"\n", payload].concat());
    out
}

//! Property tests: no decoder panics on any input, every frame round-trips in
//! both encodings, the binary encoding is canonical, and stream framing
//! reassembles frames however the bytes are split.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use proptest::prelude::*;
use proto::{binary, json};
use proto::{
    ClientFrame, CloseCode, ConnId, DecodeError, ErrorCode, MsgFrame, MsgId, PresenceChange,
    PresencePage, PresentUser, RoomId, Sender, ServerFrame, UserId,
};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9:._@/-]{0,12}",
        any::<String>(),
        "[\"\\\\\u{0}-\u{1f}\u{7f}é😀]{0,8}",
    ]
}

fn msg_id() -> impl Strategy<Value = MsgId> {
    prop_oneof![any::<i64>(), 0i64..1000].prop_map(MsgId)
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    let seq = any::<Option<u32>>();
    prop_oneof![
        (
            seq.clone(),
            text(),
            proptest::option::of(msg_id()),
            proptest::option::of(text())
        )
            .prop_map(|(seq, token, last_id, device)| ClientFrame::Auth {
                seq,
                token,
                last_id,
                device
            }),
        seq.clone().prop_map(|seq| ClientFrame::Ping { seq }),
        (
            seq.clone(),
            text(),
            proptest::option::of(msg_id()),
            any::<bool>()
        )
            .prop_map(|(seq, channel, last_id, presence)| ClientFrame::Sub {
                seq,
                channel,
                last_id,
                presence
            }),
        (seq.clone(), text()).prop_map(|(seq, channel)| ClientFrame::Presence { seq, channel }),
        (seq.clone(), text()).prop_map(|(seq, channel)| ClientFrame::Unsub { seq, channel }),
        (seq.clone(), msg_id()).prop_map(|(seq, id)| ClientFrame::Ack { seq, id }),
        (seq.clone(), text()).prop_map(|(seq, token)| ClientFrame::Refresh { seq, token }),
        (seq.clone(), text(), json_value(), text()).prop_map(|(seq, to, data, cid)| {
            ClientFrame::send(
                seq,
                UserId::from(to),
                Bytes::from(serde_json::to_vec(&data).unwrap()),
                cid,
            )
        }),
        (seq, text(), json_value(), text()).prop_map(|(seq, channel, data, cid)| {
            ClientFrame::publish(
                seq,
                channel,
                Bytes::from(serde_json::to_vec(&data).unwrap()),
                cid,
            )
        }),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    let seq = any::<Option<u32>>();
    let code = prop::sample::select(ErrorCode::ALL.to_vec());
    let close = proptest::option::of(prop::sample::select(
        (4001u16..=4007)
            .filter_map(CloseCode::from_u16)
            .collect::<Vec<_>>(),
    ));
    prop_oneof![
        (
            seq.clone(),
            any::<u64>(),
            text(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(seq, conn, user, room, heartbeat)| ServerFrame::AuthOk {
                seq,
                conn: ConnId(conn),
                user: UserId::from(user),
                room: RoomId(room),
                heartbeat
            }),
        seq.clone().prop_map(|seq| ServerFrame::Pong { seq }),
        (seq.clone(), text()).prop_map(|(seq, channel)| ServerFrame::SubOk { seq, channel }),
        (seq.clone(), text()).prop_map(|(seq, channel)| ServerFrame::UnsubOk { seq, channel }),
        (
            msg_id(),
            any::<i64>(),
            proptest::option::of(text()),
            json_value(),
            proptest::option::of((text(), text()))
        )
            .prop_map(
                |(id, ts, channel, data, sender)| ServerFrame::Msg(MsgFrame {
                    id,
                    ts,
                    channel,
                    data: Bytes::from(serde_json::to_vec(&data).unwrap()),
                    sender: sender.map(|(user, cid)| Sender {
                        user: UserId::from(user),
                        cid
                    }),
                })
            ),
        (seq.clone(), text(), msg_id()).prop_map(|(seq, cid, id)| ServerFrame::SendOk {
            seq,
            cid,
            id
        }),
        (seq.clone(), text(), msg_id()).prop_map(|(seq, cid, id)| ServerFrame::PubOk {
            seq,
            cid,
            id
        }),
        (seq.clone(), code, text(), close).prop_map(|(seq, code, message, close)| {
            ServerFrame::Error {
                seq,
                code,
                message,
                close,
            }
        }),
        (any::<bool>(), text(), text(), text()).prop_map(|(join, channel, user, device)| {
            let c = Box::new(PresenceChange {
                channel,
                user: UserId::from(user),
                device,
            });
            if join {
                ServerFrame::Join(c)
            } else {
                ServerFrame::Leave(c)
            }
        }),
        (
            seq,
            text(),
            prop::collection::vec((text(), any::<u32>()), 0..5),
            any::<bool>()
        )
            .prop_map(|(seq, channel, users, more)| ServerFrame::PresenceOk {
                seq,
                page: Box::new(PresencePage {
                    channel,
                    users: users
                        .into_iter()
                        .map(|(user, connections)| PresentUser {
                            user: UserId::from(user),
                            connections,
                        })
                        .collect(),
                    more,
                }),
            }),
    ]
}

/// Bytes that look a little like JSON frames, to get past the first checks.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        "\\{[\"a-z_:,0-9\\{\\}\\[\\] .eE+-]{0,60}\\}".prop_map(String::into_bytes),
        (client_frame(), 0usize..64, any::<u8>()).prop_map(|(f, at, b)| {
            let mut out = Vec::new();
            json::encode_client(&f, &mut out);
            let at = at % out.len();
            out[at] = b;
            out
        }),
        (server_frame(), 0usize..64, any::<u8>()).prop_map(|(f, at, b)| {
            let mut out = Vec::new();
            json::encode_server(&f, &mut out);
            let at = at % out.len();
            out[at] = b;
            out
        }),
    ]
}

/// Bytes that look a little like binary frames.
fn binaryish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        (
            prop::sample::select(vec![
                0x01u8, 0x02, 0x03, 0x04, 0x05, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86
            ]),
            0u8..8,
            any::<Vec<u8>>()
        )
            .prop_map(|(op, flags, rest)| {
                let mut v = vec![op, flags];
                v.extend(rest);
                v
            }),
        (client_frame(), 0usize..64, any::<u8>()).prop_map(|(f, at, b)| {
            let mut out = Vec::new();
            binary::encode_client(&f, &mut out);
            let at = at % out.len();
            out[at] = b;
            out
        }),
        (server_frame(), 0usize..64, any::<u8>()).prop_map(|(f, at, b)| {
            let mut out = Vec::new();
            binary::encode_server(&f, &mut out);
            let at = at % out.len();
            out[at] = b;
            out
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn json_decoders_never_panic(bytes in jsonish()) {
        let _ = json::decode_client(&bytes);
        let _ = json::decode_server(&bytes);
    }

    #[test]
    fn binary_decoders_never_panic_and_are_canonical(bytes in binaryish()) {
        if let Ok(f) = binary::decode_client(&bytes) {
            let mut out = Vec::new();
            binary::encode_client(&f, &mut out);
            prop_assert_eq!(out, bytes.clone());
        }
        if let Ok(f) = binary::decode_server(&bytes) {
            let mut out = Vec::new();
            binary::encode_server(&f, &mut out);
            prop_assert_eq!(out, bytes.clone());
        }
    }

    #[test]
    fn frame_len_never_panics(bytes in any::<Vec<u8>>(), max in 0usize..1 << 20) {
        match binary::frame_len(&bytes, max) {
            Ok(Some((header, len))) => {
                prop_assert!((1..=5).contains(&header));
                prop_assert!(header <= bytes.len());
                prop_assert!(len <= max);
            }
            Ok(None) => prop_assert!(bytes.len() < 5),
            Err(DecodeError::TooLarge { len, max: m }) => {
                prop_assert_eq!(m, max);
                prop_assert!(len > max);
            }
            Err(e) => prop_assert_eq!(e, DecodeError::BadField("length")),
        }
    }

    #[test]
    fn client_frames_round_trip(f in client_frame()) {
        let mut j = Vec::new();
        json::encode_client(&f, &mut j);
        prop_assert_eq!(json::decode_client(&j), Ok(f.clone()));
        // The encoder's output is what serde_json would parse as the same object.
        prop_assert!(serde_json::from_slice::<serde_json::Value>(&j).is_ok());
        let mut b = Vec::new();
        binary::encode_client(&f, &mut b);
        prop_assert_eq!(binary::decode_client(&b), Ok(f));
    }

    #[test]
    fn server_frames_round_trip(f in server_frame()) {
        let mut j = Vec::new();
        json::encode_server(&f, &mut j);
        prop_assert_eq!(json::decode_server(&j), Ok(f.clone()));
        prop_assert!(serde_json::from_slice::<serde_json::Value>(&j).is_ok());
        let mut b = Vec::new();
        binary::encode_server(&f, &mut b);
        prop_assert_eq!(binary::decode_server(&b), Ok(f));
    }

    #[test]
    fn stream_reassembles_any_split(
        frames in prop::collection::vec(server_frame(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let max = 1 << 20;
        let mut stream = Vec::new();
        for f in &frames {
            let mut body = Vec::new();
            binary::encode_server(f, &mut body);
            binary::write_len(body.len(), &mut stream);
            stream.extend_from_slice(&body);
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        // Feed the stream in chunks, decoding whatever is complete, as a
        // transport's codec would.
        let mut buf: Vec<u8> = Vec::new();
        let mut got = Vec::new();
        let mut from = 0;
        for p in points {
            buf.extend_from_slice(&stream[from..p]);
            from = p;
            while let Some((header, len)) = binary::frame_len(&buf, max).map_err(fail)? {
                if buf.len() < header + len {
                    break;
                }
                got.push(binary::decode_server(&buf[header..header + len]).map_err(fail)?);
                buf.drain(..header + len);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, frames);
    }
}

fn fail(e: DecodeError) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

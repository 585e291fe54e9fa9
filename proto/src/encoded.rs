//! [`EncodedMsg`]: a pushed message encoded once in both encodings (the
//! one place that needs both encoders, kept out of `frame` so the frame
//! types do not depend on the codecs that depend on them).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::frame::{MsgFrame, ServerFrame};
use crate::ids::MsgId;

/// A pushed message encoded once, in both encodings, for fan-out: every
/// connection gets a cheap clone of the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodedMsg {
    /// Message id (for de-duplication against replayed messages).
    pub id: MsgId,
    /// Whether this is a channel message.
    pub channel: bool,
    /// Whether this message is in the user's stored queue, so that a replay
    /// may already have sent it (only such messages are de-duplicated by a
    /// session against its replay; broadcasts and `store: false` pushes never are).
    pub stored: bool,
    /// The JSON encoding (a WebSocket text frame's payload).
    pub json: Bytes,
    /// The binary encoding, without any length prefix.
    pub bin: Bytes,
    /// A connection that must not get it: the one that sent it (`send`,
    /// `pub`), which has its `send_ok`/`pub_ok` instead.
    pub except: Option<crate::ids::ConnId>,
}

impl EncodedMsg {
    /// Encodes `msg` in both encodings.
    pub fn new(msg: &MsgFrame) -> EncodedMsg {
        let frame = ServerFrame::Msg(msg.clone());
        let mut json = Vec::with_capacity(msg.data.len() + 64);
        crate::json::encode_server(&frame, &mut json);
        let mut bin = Vec::with_capacity(msg.data.len() + 32);
        crate::binary::encode_server(&frame, &mut bin);
        EncodedMsg {
            id: msg.id,
            channel: msg.channel.is_some(),
            stored: false,
            json: Bytes::from(json),
            bin: Bytes::from(bin),
            except: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_msg_matches_both_encoders() {
        let m = MsgFrame {
            id: MsgId(7),
            ts: 1_700_000_000_000,
            channel: Some("news".into()),
            data: Bytes::from_static(br#"{"k":[1,"two"]}"#),
            sender: None,
        };
        let e = EncodedMsg::new(&m);
        assert_eq!(e.id, MsgId(7));
        assert!(e.channel);
        assert_eq!(
            &e.json[..],
            br#"{"op":"msg","id":7,"channel":"news","data":{"k":[1,"two"]},"ts":1700000000000}"#
        );
        let frame = ServerFrame::Msg(m);
        assert_eq!(crate::json::decode_server(&e.json), Ok(frame.clone()));
        assert_eq!(crate::binary::decode_server(&e.bin), Ok(frame));
    }
}

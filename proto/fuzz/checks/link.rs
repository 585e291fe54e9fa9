//! Properties of the internal link decoders (`link/src/wire.rs`): the
//! length-delimited framing (tokio-util's `LengthDelimitedCodec`, 4-byte
//! big-endian length, as `wire::framed` configures it), then postcard
//! bodies: the hello, the welcome, and `(request id, body)` frames. Shared
//! by the `link_wire` fuzz target and `link/tests/fuzz_smoke.rs`; the
//! services' request and answer types are checked by `services.rs`.
#![allow(dead_code)]

use bytes::{BufMut, BytesMut};
use link::{Hello, Welcome};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

/// The same shape as link's private `wire::Reply` (postcard encodes an enum
/// by variant index, so a mirror with the same variants in the same order
/// reads the same bytes).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply<R> {
    Ok(R),
    Err(String),
}

/// A stream of link frames: the first byte picks the frame limit, the rest
/// is what a peer sent. Every frame the codec yields is within the limit and
/// is fed to the hello, the welcome and `bodies` (after its request id),
/// which must not panic. Returns whether some body decoded.
pub(crate) fn link_frames(data: &[u8], bodies: &dyn Fn(&[u8]) -> bool) -> bool {
    let [lim, stream @ ..] = data else {
        return false;
    };
    let max = match lim % 4 {
        0 => link::DEFAULT_MAX_FRAME,
        1 => usize::from(*lim),
        2 => 0,
        _ => 4096,
    };
    let mut codec = LengthDelimitedCodec::builder()
        .max_frame_length(max)
        .new_codec();
    let mut buf = BytesMut::from(stream);
    let mut accepted = false;
    loop {
        let before = buf.len();
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => {
                assert!(frame.len() <= max, "{} over {max}", frame.len());
                assert!(buf.len() < before, "a frame that took no bytes");
                accepted |= frame_body(&frame, bodies);
            }
            Ok(None) => break,
            // Too long, or bytes left at the end of the stream.
            Err(_) => break,
        }
    }
    accepted
}

/// One frame's body, read every way a peer reads one.
pub(crate) fn frame_body(frame: &[u8], bodies: &dyn Fn(&[u8]) -> bool) -> bool {
    let mut accepted = round_trip::<Hello>(frame);
    accepted |= round_trip::<Welcome>(frame);
    if let Ok((_id, body)) = postcard::take_from_bytes::<u64>(frame) {
        accepted |= bodies(body);
    }
    accepted
}

/// Request and answer bodies of generic shapes (the link tests' services).
pub(crate) fn generic_bodies(body: &[u8]) -> bool {
    let mut accepted = round_trip::<Reply<String>>(body);
    accepted |= round_trip::<Reply<u64>>(body);
    accepted |= round_trip::<Reply<(u64, Vec<u8>, Option<bool>)>>(body);
    accepted |= round_trip::<(String, u32)>(body);
    accepted
}

/// Decodes `bytes` as a `T`; a value that decodes encodes to bytes that
/// decode and encode to the same bytes again. Returns whether it decoded.
pub(crate) fn round_trip<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> bool {
    let Ok(v) = postcard::from_bytes::<T>(bytes) else {
        return false;
    };
    let enc = postcard::to_stdvec(&v).expect("a decoded value encodes");
    let v2: T = postcard::from_bytes(&enc).expect("an encoded value decodes");
    let enc2 = postcard::to_stdvec(&v2).expect("a decoded value encodes");
    assert_eq!(enc, enc2, "postcard round trip");
    true
}

/// A frame as the link codec writes it: 4-byte big-endian length, body.
pub(crate) fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u32(u32::try_from(body.len()).expect("small body"));
    out.extend_from_slice(body);
    out.to_vec()
}

/// `(id, body)` as link's `wire::encode` writes it.
pub(crate) fn with_id<T: Serialize>(id: u64, body: &T) -> Vec<u8> {
    postcard::to_stdvec(&(id, body)).expect("encodes")
}

/// Seeds: a hello and both welcomes, then pipelined generic requests and
/// replies, under each limit mode.
pub(crate) fn link_seeds() -> Vec<Vec<u8>> {
    let hello = Hello {
        magic: link::MAGIC,
        version: link::VERSION,
        service: "register".into(),
        key: "cluster-key".into(),
    };
    let mut stream = framed(&postcard::to_stdvec(&hello).expect("encodes"));
    stream.extend(framed(
        &postcard::to_stdvec(&Welcome::Ok { instance: 1 << 40 }).expect("encodes"),
    ));
    stream.extend(framed(
        &postcard::to_stdvec(&Welcome::Refused {
            reason: "wrong cluster key".into(),
        })
        .expect("encodes"),
    ));
    stream.extend(framed(&with_id(1, &("x".to_owned(), 7u32))));
    stream.extend(framed(&with_id(300, &Reply::<String>::Ok("ok".into()))));
    stream.extend(framed(&with_id(u64::MAX, &Reply::<u64>::Err("no".into()))));
    let mut out = Vec::new();
    for lim in [0u8, 4 * 40 + 1, 2, 3] {
        out.push([&[lim][..], &stream].concat());
    }
    out
}

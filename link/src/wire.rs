//! The frames of a link, in postcard inside length-delimited frames.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// First four bytes of every hello: `PGL1`.
pub const MAGIC: u32 = 0x5047_4c31;
/// Version of the link protocol.
pub const VERSION: u16 = 1;

/// The first frame a client sends.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    /// [`MAGIC`].
    pub magic: u32,
    /// [`VERSION`].
    pub version: u16,
    /// Which service the client expects to talk to.
    pub service: String,
    /// The cluster key (empty when the cluster runs without one).
    pub key: String,
}

/// The server's answer to a [`Hello`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Welcome {
    /// Accepted; `instance` is random per server process start.
    Ok {
        /// The server's instance id.
        instance: u64,
    },
    /// Refused (wrong service, key or version); the server closes next.
    Refused {
        /// Why.
        reason: String,
    },
}

/// A reply to one request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply<R> {
    Ok(R),
    Err(String),
}

pub(crate) type Conn = Framed<TcpStream, LengthDelimitedCodec>;

pub(crate) fn framed(stream: TcpStream, max_frame: usize) -> Conn {
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(max_frame)
        .new_codec();
    Framed::new(stream, codec)
}

/// `(id, body)` in postcard.
pub(crate) fn encode<T: Serialize + ?Sized>(id: u64, body: &T) -> Result<Bytes, postcard::Error> {
    postcard::to_stdvec(&(id, body)).map(Bytes::from)
}

/// Splits a frame into its request id and the rest.
pub(crate) fn split_id(frame: &[u8]) -> Result<(u64, &[u8]), postcard::Error> {
    postcard::take_from_bytes::<u64>(frame)
}

/// Decodes a body.
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn id_and_body_round_trip() {
        let f = encode(300, &("x".to_owned(), 7u32)).unwrap();
        let (id, rest) = split_id(&f).unwrap();
        assert_eq!(id, 300);
        let body: (String, u32) = decode(rest).unwrap();
        assert_eq!(body, ("x".to_owned(), 7));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(split_id(&[0xff; 11]).is_err());
        let (_, rest) = split_id(&[1, 0xff]).unwrap();
        assert!(decode::<Reply<String>>(rest).is_err());
    }
}

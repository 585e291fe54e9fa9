//! The stream transport codec: length-prefixed binary frames both ways
//! (`proto::binary::frame_len` / `write_len`).
//!
//! Memory: decoding works on a borrowed slice (a frame read whole needs no
//! buffer at all) and encoding appends to the caller's buffer; the TCP
//! transport keeps no buffer allocated while a connection is idle.

use proto::{binary, ClientFrame, ServerFrame};

use crate::error::{RecvError, SendError};
use crate::io::OutFrame;

/// Length-prefixed binary frames: decodes client frames, encodes server frames.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BinCodec {
    max_frame: usize,
}

impl BinCodec {
    /// A codec refusing frames longer than `max_frame` bytes.
    pub(crate) fn new(max_frame: usize) -> BinCodec {
        BinCodec { max_frame }
    }

    /// Decodes the first frame of `src`: [`Decoded::Partial`] when more bytes
    /// are needed, else the frame and the bytes it took. An announced length
    /// over the maximum is an error as soon as the prefix is read.
    pub(crate) fn decode(&self, src: &[u8]) -> Result<Decoded, RecvError> {
        let Some((head, body)) = binary::frame_len(src, self.max_frame)? else {
            return Ok(Decoded::Partial);
        };
        let total = head + body;
        if src.len() < total {
            return Ok(Decoded::Partial);
        }
        let frame = binary::decode_client(&src[head..total])?;
        Ok(Decoded::Frame(frame, total))
    }

    /// Appends the encoding of `item` to `dst`.
    pub(crate) fn encode(&self, item: OutFrame, dst: &mut Vec<u8>) -> Result<(), SendError> {
        match item {
            OutFrame::Push(p) => {
                dst.extend_from_slice(&p.bin_prefix);
                dst.extend_from_slice(&p.bin);
            }
            OutFrame::Frame(f) => self.encode_frame(&f, dst),
            // The final error frame already carries the close code.
            OutFrame::Close(..) => {}
        }
        Ok(())
    }
}

impl BinCodec {
    /// Appends `f` with its length prefix to `dst`.
    pub(crate) fn encode_frame(&self, f: &ServerFrame, dst: &mut Vec<u8>) {
        binary::encode_server_framed(f, dst);
    }
}

/// What [`BinCodec::decode`] found.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A frame, and how many bytes it took.
    Frame(ClientFrame, usize),
    /// More bytes are needed.
    Partial,
}

//! The stream transport codec: length-prefixed binary frames both ways
//! (`proto::binary::frame_len` / `write_len`), for `tokio_util`'s `Framed`.
//!
//! Memory: `Framed::with_capacity` starts both buffers small; after a large
//! frame has gone through, an emptied buffer is swapped for a small one so an
//! idle connection does not keep a large allocation.

use bytes::BytesMut;
use proto::binary;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::{RecvError, SendError};
use crate::io::{Inbound, OutFrame};

/// Initial capacity of a TCP connection's read and write buffers.
pub(crate) const INITIAL_BUFFER: usize = 256;

/// Emptied buffers larger than this are replaced by small ones.
const SHRINK_ABOVE: usize = 4096;

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
}

fn shrink_if_idle(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > SHRINK_ABOVE {
        *buf = BytesMut::with_capacity(INITIAL_BUFFER);
    }
}

impl Decoder for BinCodec {
    type Item = Inbound;
    type Error = RecvError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, RecvError> {
        let Some((head, body)) = binary::frame_len(src, self.max_frame)? else {
            return Ok(None);
        };
        let total = head + body;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let frame = src.split_to(total);
        let decoded = binary::decode_client(&frame[head..])?;
        drop(frame);
        shrink_if_idle(src);
        Ok(Some(Inbound::Frame(decoded)))
    }
}

impl Encoder<OutFrame> for BinCodec {
    type Error = SendError;

    fn encode(&mut self, item: OutFrame, dst: &mut BytesMut) -> Result<(), SendError> {
        shrink_if_idle(dst);
        match item {
            OutFrame::Push(p) => {
                dst.extend_from_slice(&p.bin_prefix);
                dst.extend_from_slice(&p.bin);
            }
            OutFrame::Frame(f) => {
                let mut body = Vec::with_capacity(64);
                binary::encode_server(&f, &mut body);
                let mut prefix = Vec::with_capacity(8);
                binary::write_len(body.len(), &mut prefix);
                dst.extend_from_slice(&prefix);
                dst.extend_from_slice(&body);
            }
            // The final error frame already carries the close code.
            OutFrame::Close(..) => {}
        }
        Ok(())
    }
}

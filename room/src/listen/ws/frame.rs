//! RFC 6455 framing, sans-IO: parse a client frame's header, unmask its
//! payload, write a server frame's header, read a close frame's body.
//!
//! A server only ever receives masked frames and sends unmasked ones
//! (§5.1), and no extension is negotiated, so the reserved bits must be
//! zero (§5.2). Lengths are checked against the caller's limit before a
//! byte of the payload is kept, so an announced 2^63-byte frame costs
//! nothing.

/// Continuation of a fragmented message.
pub(crate) const OP_CONTINUATION: u8 = 0x0;
/// A text (UTF-8) data frame.
pub(crate) const OP_TEXT: u8 = 0x1;
/// A binary data frame.
pub(crate) const OP_BINARY: u8 = 0x2;
/// Close (control).
pub(crate) const OP_CLOSE: u8 = 0x8;
/// Ping (control).
pub(crate) const OP_PING: u8 = 0x9;
/// Pong (control).
pub(crate) const OP_PONG: u8 = 0xA;

/// Longest payload of a control frame (§5.5).
pub(crate) const MAX_CONTROL: usize = 125;
/// Longest header a server writes: 2 bytes, 8 bytes of length, no mask.
pub(crate) const MAX_SERVER_HEAD: usize = 10;

/// A client frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    /// The final fragment of its message.
    pub(crate) fin: bool,
    /// One of the `OP_*` codes.
    pub(crate) opcode: u8,
    /// The masking key.
    pub(crate) mask: [u8; 4],
    /// Payload length in bytes (at most the caller's limit).
    pub(crate) len: usize,
    /// Header length in bytes: the payload starts there.
    pub(crate) head_len: usize,
}

impl Head {
    /// Header plus payload.
    pub(crate) fn frame_len(&self) -> usize {
        self.head_len + self.len
    }
}

/// Why a frame header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Not a valid client frame; the text says what was wrong.
    Protocol(&'static str),
    /// A data frame longer than the limit.
    TooLarge {
        /// Announced payload length (saturated to `usize`).
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Parses the header at the start of `buf`; `Ok(None)` while it is
/// incomplete. Data frames longer than `max` are refused.
pub(crate) fn parse_head(buf: &[u8], max: usize) -> Result<Option<Head>, HeadError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(HeadError::Protocol(
            "reserved bits set without an extension",
        ));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        _ => return Err(HeadError::Protocol("unknown opcode")),
    }
    if b1 & 0x80 == 0 {
        return Err(HeadError::Protocol("unmasked frame from a client"));
    }
    let (len, at): (u64, usize) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => {
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(HeadError::Protocol("frame length has its top bit set"));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let control = opcode & 0x8 != 0;
    if control && !fin {
        return Err(HeadError::Protocol("fragmented control frame"));
    }
    if control && len > MAX_CONTROL as u64 {
        return Err(HeadError::Protocol("control frame longer than 125 bytes"));
    }
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max {
        return Err(HeadError::TooLarge { len, max });
    }
    let Some(mask) = buf
        .get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
    else {
        return Ok(None);
    };
    Ok(Some(Head {
        fin,
        opcode,
        mask,
        len,
        head_len: at + 4,
    }))
}

/// Unmasks (or masks: it is an xor) `data`, which starts `offset` bytes into
/// its frame's payload.
pub(crate) fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut key = mask;
    key.rotate_left(offset % 4);
    let word = u32::from_ne_bytes(key);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

/// A final, unmasked server frame header for `len` payload bytes: the
/// buffer and how many of its bytes are the header.
pub(crate) fn server_head(opcode: u8, len: usize) -> ([u8; MAX_SERVER_HEAD], usize) {
    let mut h = [0u8; MAX_SERVER_HEAD];
    h[0] = 0x80 | opcode;
    if len < 126 {
        // Fits the 7-bit length: `as` cannot truncate.
        h[1] = len as u8;
        (h, 2)
    } else if let Ok(len) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&len.to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// Appends a final, unmasked server frame header for `len` payload bytes.
pub(crate) fn write_head(out: &mut Vec<u8>, opcode: u8, len: usize) {
    let (h, n) = server_head(opcode, len);
    out.extend_from_slice(&h[..n]);
}

/// Appends a server Close frame with `code` and `reason` (at most 123 bytes).
pub(crate) fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    write_head(out, OP_CLOSE, 2 + reason.len());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
}

/// Reads a Close frame's (unmasked) body: `Ok(None)` for an empty body,
/// else the status code, checked (§7.4), and the reason, checked UTF-8.
pub(crate) fn parse_close(body: &[u8]) -> Result<Option<(u16, &str)>, &'static str> {
    match body {
        [] => Ok(None),
        [_] => Err("close frame with a 1-byte body"),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_allowed(code) {
                return Err("close frame with an invalid status code");
            }
            match std::str::from_utf8(reason) {
                Ok(reason) => Ok(Some((code, reason))),
                Err(_) => Err("close reason is not utf-8"),
            }
        }
    }
}

/// Whether a peer may send `code` in a Close frame: the defined codes
/// (1005, 1006 and 1015 are never sent), the IANA-registered 1012-1014,
/// and the ranges for libraries (3000-3999) and applications (4000-4999).
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser sends it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![u8::from(fin) << 7 | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        unmask(&mut body, mask, 0);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn rfc_example_masked_hello() {
        // RFC 6455 §5.7: a single-frame masked text message "Hello".
        let mut frame = vec![
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let head = parse_head(&frame, 1024).unwrap().unwrap();
        assert_eq!(
            head,
            Head {
                fin: true,
                opcode: OP_TEXT,
                mask: [0x37, 0xfa, 0x21, 0x3d],
                len: 5,
                head_len: 6
            }
        );
        let body = &mut frame[head.head_len..head.frame_len()];
        unmask(body, head.mask, 0);
        assert_eq!(body, b"Hello");
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        for len in [0, 5, 125, 126, 300, 65535, 65536, 70000] {
            let frame = client_frame(true, OP_BINARY, &vec![7; len], [1, 2, 3, 4]);
            let head = parse_head(&frame, 1 << 20).unwrap().unwrap();
            assert_eq!(head.len, len);
            assert_eq!(head.frame_len(), frame.len());
            for cut in 0..head.head_len {
                assert_eq!(
                    parse_head(&frame[..cut], 1 << 20),
                    Ok(None),
                    "{len} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn unmask_at_any_offset_matches_bytewise_xor() {
        let mask = [0xde, 0xad, 0xbe, 0xef];
        let data: Vec<u8> = (0..=255).collect();
        for offset in 0..8 {
            let mut fast = data.clone();
            unmask(&mut fast, mask, offset);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[(i + offset) % 4])
                .collect();
            assert_eq!(fast, slow, "offset {offset}");
        }
    }

    #[test]
    fn refuses_what_a_client_must_not_send() {
        let proto = |buf: &[u8]| match parse_head(buf, 1 << 20) {
            Err(HeadError::Protocol(why)) => why,
            other => panic!("{buf:x?}: {other:?}"),
        };
        assert_eq!(
            proto(&[0xc1, 0x80]),
            "reserved bits set without an extension"
        );
        assert_eq!(proto(&[0x83, 0x80]), "unknown opcode");
        assert_eq!(proto(&[0x8b, 0x80]), "unknown opcode");
        assert_eq!(proto(&[0x81, 0x05]), "unmasked frame from a client");
        assert_eq!(proto(&[0x09, 0x80]), "fragmented control frame");
        assert_eq!(
            proto(&[0x89, 0xfe, 0, 126]),
            "control frame longer than 125 bytes"
        );
        let mut huge = vec![0x82, 0xff];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(proto(&huge), "frame length has its top bit set");
    }

    #[test]
    fn too_large_is_refused_from_the_header_alone() {
        let mut head = vec![0x82, 0xff];
        head.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(
            parse_head(&head, 65536),
            Err(HeadError::TooLarge {
                len: 1 << 40,
                max: 65536
            })
        );
        let ok = client_frame(true, OP_TEXT, &[b'x'; 100], [9; 4]);
        assert!(parse_head(&ok, 100).unwrap().is_some());
        assert_eq!(
            parse_head(&ok, 99),
            Err(HeadError::TooLarge { len: 100, max: 99 })
        );
    }

    #[test]
    fn server_heads_use_the_shortest_length() {
        for (len, want) in [
            (0usize, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65535, vec![0x81, 126, 0xff, 0xff]),
            (65536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut out = Vec::new();
            write_head(&mut out, OP_TEXT, len);
            assert_eq!(out, want, "{len}");
            assert!(out.len() <= MAX_SERVER_HEAD);
        }
    }

    #[test]
    fn close_bodies() {
        assert_eq!(parse_close(b""), Ok(None));
        assert_eq!(parse_close(&[3]), Err("close frame with a 1-byte body"));
        assert_eq!(parse_close(&1000u16.to_be_bytes()), Ok(Some((1000, ""))));
        let mut with_reason = 4001u16.to_be_bytes().to_vec();
        with_reason.extend_from_slice("bye ✓".as_bytes());
        assert_eq!(parse_close(&with_reason), Ok(Some((4001, "bye ✓"))));
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert_eq!(
                parse_close(&bad.to_be_bytes()),
                Err("close frame with an invalid status code"),
                "{bad}"
            );
        }
        let mut bad_utf8 = 1000u16.to_be_bytes().to_vec();
        bad_utf8.extend_from_slice(&[0xce, 0xba, 0xe1, 0xbd]);
        assert_eq!(parse_close(&bad_utf8), Err("close reason is not utf-8"));
        let mut out = Vec::new();
        write_close(&mut out, 4006, "slow");
        assert_eq!(out, [0x88, 6, 0x0f, 0xa6, b's', b'l', b'o', b'w']);
    }
}

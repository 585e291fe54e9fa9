//! Just enough WebSocket (RFC 6455) for the floor server: the answer to the
//! HTTP/1.1 upgrade request, the header of a masked client frame, unmasking,
//! and the header of an unmasked server frame. Pure functions over bytes.

/// Continuation frame.
pub(crate) const OP_CONT: u8 = 0x0;
/// Text message.
pub(crate) const OP_TEXT: u8 = 0x1;
/// Binary message.
pub(crate) const OP_BINARY: u8 = 0x2;
/// Close control frame.
pub(crate) const OP_CLOSE: u8 = 0x8;
/// Ping control frame.
pub(crate) const OP_PING: u8 = 0x9;
/// Pong control frame.
pub(crate) const OP_PONG: u8 = 0xA;

/// Largest upgrade request accepted.
pub(crate) const MAX_HEAD: usize = 8 * 1024;

/// The header of one client frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// The final fragment of a message.
    pub(crate) fin: bool,
    /// The opcode (`OP_*`).
    pub(crate) opcode: u8,
    /// Bytes of header, masking key included.
    pub(crate) header_len: usize,
    /// Bytes of payload after the header.
    pub(crate) payload_len: usize,
    /// The masking key (client frames are always masked).
    pub(crate) mask: [u8; 4],
}

/// What [`parse_header`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// More bytes are needed for the header.
    Need,
    /// A complete header (the payload may not all be there yet).
    Frame(Header),
    /// A protocol error: close the connection with 1002 (or 1009 when too big).
    Bad(&'static str),
}

/// Parses the header of the client frame at the start of `buf`; frames with
/// a payload over `max` are refused.
pub(crate) fn parse_header(buf: &[u8], max: usize) -> Parsed {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Parsed::Need;
    };
    if b0 & 0x70 != 0 {
        return Parsed::Bad("reserved bits set (no extension was negotiated)");
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    if b1 & 0x80 == 0 {
        return Parsed::Bad("client frame not masked");
    }
    let (len, mut at) = match b1 & 0x7f {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Parsed::Need;
            };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Parsed::Need;
            };
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            (u64::from_be_bytes(a), 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode >= 0x8 && (!fin || len > 125) {
        return Parsed::Bad("fragmented or oversized control frame");
    }
    let Ok(payload_len) = usize::try_from(len) else {
        return Parsed::Bad("frame too large");
    };
    if payload_len > max {
        return Parsed::Bad("frame too large");
    }
    let Some(m) = buf.get(at..at + 4) else {
        return Parsed::Need;
    };
    let mask = [m[0], m[1], m[2], m[3]];
    at += 4;
    Parsed::Frame(Header {
        fin,
        opcode,
        header_len: at,
        payload_len,
        mask,
    })
}

/// Unmasks a client payload in place.
pub(crate) fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends the header of an unmasked, final server frame of `len` bytes.
pub(crate) fn server_header(opcode: u8, len: usize, out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(l) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// A whole server frame: header and payload.
pub(crate) fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    server_header(opcode, payload.len(), &mut out);
    out.extend_from_slice(payload);
    out
}

/// A close frame carrying `code`.
pub(crate) fn close_frame(code: u16) -> Vec<u8> {
    server_frame(OP_CLOSE, &code.to_be_bytes())
}

/// Where the request head ends (just after its blank line), if it is all there.
pub(crate) fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The value of header `name` (case-insensitive) in a request head.
pub(crate) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The `101 Switching Protocols` answer to an upgrade request head, or why
/// it is refused.
pub(crate) fn upgrade_response(head: &[u8]) -> Result<Vec<u8>, &'static str> {
    let head = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    if !head.starts_with("GET ") {
        return Err("not a GET request");
    }
    let upgrade = header(head, "upgrade").ok_or("no Upgrade header")?;
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return Err("Upgrade is not websocket");
    }
    let key = header(head, "sec-websocket-key").ok_or("no Sec-WebSocket-Key")?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![b0];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        unmask(&mut p, mask);
        out.extend_from_slice(&p);
        out
    }

    #[test]
    fn accept_key_of_the_rfc_example() {
        let req = b"GET /ws HTTP/1.1\r\nHost: x\r\nupgrade: WebSocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert_eq!(head_end(req), Some(req.len()));
        let resp = String::from_utf8(upgrade_response(req).unwrap()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 "), "{resp}");
        assert!(
            resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{resp}"
        );
        assert!(upgrade_response(b"POST / HTTP/1.1\r\n\r\n").is_err());
        assert!(upgrade_response(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").is_err());
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn parses_masked_frames_of_every_length() {
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mask = [1, 2, 3, 4];
            let f = masked(0x81, &payload, mask);
            let Parsed::Frame(h) = parse_header(&f, 1 << 20) else {
                panic!("len {len}")
            };
            assert!(h.fin);
            assert_eq!(h.opcode, OP_TEXT);
            assert_eq!(h.payload_len, len);
            assert_eq!(h.header_len + len, f.len());
            let mut p = f[h.header_len..].to_vec();
            unmask(&mut p, h.mask);
            assert_eq!(p, payload);
            // Every strict prefix of the header asks for more.
            for cut in 0..h.header_len {
                assert_eq!(
                    parse_header(&f[..cut], 1 << 20),
                    Parsed::Need,
                    "{len} {cut}"
                );
            }
        }
    }

    #[test]
    fn refuses_bad_frames() {
        // Unmasked.
        assert!(matches!(
            parse_header(&[0x81, 0x01, b'x'], 100),
            Parsed::Bad(_)
        ));
        // Reserved bit.
        assert!(matches!(
            parse_header(&masked(0xC1, b"x", [0; 4]), 100),
            Parsed::Bad(_)
        ));
        // Fragmented ping.
        assert!(matches!(
            parse_header(&masked(0x09, b"x", [0; 4]), 100),
            Parsed::Bad(_)
        ));
        // Too large.
        assert!(matches!(
            parse_header(&masked(0x81, &[0; 200], [0; 4]), 100),
            Parsed::Bad(_)
        ));
    }

    #[test]
    fn server_frames() {
        assert_eq!(server_frame(OP_TEXT, b"hi"), vec![0x81, 2, b'h', b'i']);
        let f = server_frame(OP_TEXT, &[0; 300]);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        assert_eq!(f.len(), 304);
        let f = server_frame(OP_BINARY, &[0; 70_000]);
        assert_eq!(f[1], 127);
        assert_eq!(f.len(), 70_010);
        assert_eq!(close_frame(1000), vec![0x88, 2, 0x03, 0xe8]);
    }
}

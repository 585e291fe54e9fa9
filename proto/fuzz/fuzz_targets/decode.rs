//! Feeds arbitrary bytes to every decoder of the client protocol: none may
//! panic, and whatever decodes must encode back (exactly, for the canonical
//! binary encoding) and decode again to the same frame.
//!
//! Run with `cargo +nightly fuzz run decode` from `proto/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::{binary, json, DEFAULT_MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = json::decode_client(data) {
        let mut out = Vec::new();
        json::encode_client(&f, &mut out);
        assert_eq!(json::decode_client(&out), Ok(f));
    }
    if let Ok(f) = json::decode_server(data) {
        let mut out = Vec::new();
        json::encode_server(&f, &mut out);
        assert_eq!(json::decode_server(&out), Ok(f));
    }
    if let Ok(f) = binary::decode_client(data) {
        let mut out = Vec::new();
        binary::encode_client(&f, &mut out);
        assert_eq!(out, data);
    }
    if let Ok(f) = binary::decode_server(data) {
        let mut out = Vec::new();
        binary::encode_server(&f, &mut out);
        assert_eq!(out, data);
    }
    // Stream framing: walk the input as a sequence of length-prefixed frames.
    let mut rest = data;
    while let Ok(Some((header, len))) = binary::frame_len(rest, DEFAULT_MAX_FRAME) {
        assert!(len <= DEFAULT_MAX_FRAME);
        let Some(body) = rest.get(header..header + len) else {
            break;
        };
        let _ = binary::decode_client(body);
        let _ = binary::decode_server(body);
        rest = &rest[header + len..];
    }
});

//! Checks the test vectors printed in docs/PROTOCOL.md against the codecs, so
//! the document cannot drift from the code.
//!
//! A vector is a fenced block whose info string is `vector`:
//!
//! ```text
//! ```vector
//! client json: {"op":"ping","seq":7}
//! binary: 02 01 07
//! stream: 03 02 01 07
//! ```
//! ```
//!
//! Exactly one `client json:` or `server json:` line (the direction), one or
//! more `binary:` lines (hex bytes, concatenated), and optionally one or more
//! `stream:` lines (the same frame with its length prefix). Any other line is
//! an error. For each vector: the JSON and the binary decode to the same
//! frame, and encoding that frame gives back exactly the JSON text and the
//! binary bytes (and the stream bytes).
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;

use proto::{binary, json, ClientFrame, ServerFrame, DEFAULT_MAX_FRAME};

const DOC: &str = include_str!("../../docs/PROTOCOL.md");

#[derive(Debug)]
struct Vector {
    line: usize,
    client: bool,
    json: String,
    binary: Vec<u8>,
    stream: Option<Vec<u8>>,
}

fn hex(s: &str, line: usize) -> Vec<u8> {
    s.split_whitespace()
        .map(|h| {
            assert_eq!(h.len(), 2, "line {line}: bad hex byte {h:?}");
            u8::from_str_radix(h, 16).unwrap_or_else(|_| panic!("line {line}: bad hex {h:?}"))
        })
        .collect()
}

fn vectors() -> Vec<Vector> {
    let mut out = Vec::new();
    let mut lines = DOC.lines().enumerate();
    while let Some((i, l)) = lines.next() {
        if l.trim_end() != "```vector" {
            continue;
        }
        let mut json: Option<(bool, String)> = None;
        let mut bin = Vec::new();
        let mut stream: Option<Vec<u8>> = None;
        let mut closed = false;
        for (j, l) in lines.by_ref() {
            let n = j + 1;
            if l.trim_end() == "```" {
                closed = true;
                break;
            }
            if let Some(t) = l.strip_prefix("client json: ") {
                assert!(json.is_none(), "line {n}: second json line");
                json = Some((true, t.to_owned()));
            } else if let Some(t) = l.strip_prefix("server json: ") {
                assert!(json.is_none(), "line {n}: second json line");
                json = Some((false, t.to_owned()));
            } else if let Some(t) = l.strip_prefix("binary: ") {
                bin.extend(hex(t, n));
            } else if let Some(t) = l.strip_prefix("stream: ") {
                stream.get_or_insert_with(Vec::new).extend(hex(t, n));
            } else {
                panic!("line {n}: unexpected line in a vector block: {l:?}");
            }
        }
        assert!(closed, "line {}: vector block not closed", i + 1);
        let (client, json) = json.unwrap_or_else(|| panic!("line {}: no json line", i + 1));
        assert!(!bin.is_empty(), "line {}: no binary line", i + 1);
        out.push(Vector {
            line: i + 1,
            client,
            json,
            binary: bin,
            stream,
        });
    }
    out
}

fn client_op(f: &ClientFrame) -> &'static str {
    match f {
        ClientFrame::Auth { .. } => "auth",
        ClientFrame::Ping { .. } => "ping",
        ClientFrame::Sub { .. } => "sub",
        ClientFrame::Unsub { .. } => "unsub",
        ClientFrame::Ack { .. } => "ack",
        ClientFrame::Refresh { .. } => "refresh",
        ClientFrame::Send { .. } => "send",
        ClientFrame::Pub { .. } => "pub",
        ClientFrame::Presence { .. } => "presence",
    }
}

fn server_op(f: &ServerFrame) -> &'static str {
    match f {
        ServerFrame::AuthOk { .. } => "auth_ok",
        ServerFrame::Pong { .. } => "pong",
        ServerFrame::SubOk { .. } => "sub_ok",
        ServerFrame::UnsubOk { .. } => "unsub_ok",
        ServerFrame::RefreshOk { .. } => "refresh_ok",
        ServerFrame::SendOk { .. } => "send_ok",
        ServerFrame::PubOk { .. } => "pub_ok",
        ServerFrame::Msg(m) if m.sender.is_some() && m.channel.is_some() => "msg(pub)",
        ServerFrame::Msg(m) if m.sender.is_some() => "msg(send)",
        ServerFrame::Msg(m) if m.channel.is_some() => "msg(channel)",
        ServerFrame::Msg(_) => "msg(user)",
        ServerFrame::Error { close: Some(_), .. } => "error(fatal)",
        ServerFrame::Error { .. } => "error",
        ServerFrame::Join(_) => "join",
        ServerFrame::Leave(_) => "leave",
        ServerFrame::PresenceOk { .. } => "presence_ok",
    }
}

fn fmt_hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn doc_vectors_match_the_codecs() {
    let vs = vectors();
    let mut seen = BTreeSet::new();
    for v in &vs {
        let at = format!("docs/PROTOCOL.md line {}", v.line);
        let (json_out, bin_out) = if v.client {
            let fj = json::decode_client(v.json.as_bytes())
                .unwrap_or_else(|e| panic!("{at}: json does not decode: {e}"));
            let fb = binary::decode_client(&v.binary)
                .unwrap_or_else(|e| panic!("{at}: binary does not decode: {e}"));
            assert_eq!(fj, fb, "{at}: json and binary differ");
            seen.insert(format!("client {}", client_op(&fj)));
            let (mut j, mut b) = (Vec::new(), Vec::new());
            json::encode_client(&fj, &mut j);
            binary::encode_client(&fj, &mut b);
            (j, b)
        } else {
            let fj = json::decode_server(v.json.as_bytes())
                .unwrap_or_else(|e| panic!("{at}: json does not decode: {e}"));
            let fb = binary::decode_server(&v.binary)
                .unwrap_or_else(|e| panic!("{at}: binary does not decode: {e}"));
            assert_eq!(fj, fb, "{at}: json and binary differ");
            seen.insert(format!("server {}", server_op(&fj)));
            let (mut j, mut b) = (Vec::new(), Vec::new());
            json::encode_server(&fj, &mut j);
            binary::encode_server(&fj, &mut b);
            (j, b)
        };
        assert_eq!(
            String::from_utf8(json_out).unwrap(),
            v.json,
            "{at}: json encoding differs"
        );
        assert_eq!(
            fmt_hex(&bin_out),
            fmt_hex(&v.binary),
            "{at}: binary encoding differs"
        );
        if let Some(stream) = &v.stream {
            let mut framed = Vec::new();
            binary::write_len(bin_out.len(), &mut framed);
            framed.extend_from_slice(&bin_out);
            assert_eq!(fmt_hex(&framed), fmt_hex(stream), "{at}: stream differs");
            let (header, len) = binary::frame_len(stream, DEFAULT_MAX_FRAME)
                .unwrap()
                .unwrap_or_else(|| panic!("{at}: incomplete prefix"));
            assert_eq!(&stream[header..header + len], &v.binary[..], "{at}");
        }
    }
    let want = [
        "client auth",
        "client ping",
        "client sub",
        "client unsub",
        "client ack",
        "client refresh",
        "client send",
        "client pub",
        "client presence",
        "server auth_ok",
        "server pong",
        "server sub_ok",
        "server unsub_ok",
        "server refresh_ok",
        "server send_ok",
        "server pub_ok",
        "server msg(send)",
        "server msg(pub)",
        "server msg(user)",
        "server msg(channel)",
        "server error",
        "server error(fatal)",
        "server join",
        "server leave",
        "server presence_ok",
    ];
    for w in want {
        assert!(seen.contains(w), "docs/PROTOCOL.md has no vector for {w}");
    }
    assert!(
        vs.iter().any(|v| v.stream.is_some()),
        "docs/PROTOCOL.md has no stream vector"
    );
}

#[test]
fn parser_rejects_nothing_silently() {
    // The doc must hold vectors at all, and every ```vector fence must have
    // been parsed (a typo in the info string would hide a block).
    let fences = DOC.lines().filter(|l| l.starts_with("```vector")).count();
    assert!(fences >= 13, "only {fences} vector blocks");
    assert_eq!(fences, vectors().len());
}

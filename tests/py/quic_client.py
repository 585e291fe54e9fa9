#!/usr/bin/env python3
"""A minimal pushgate QUIC client written with aioquic (PyPI), from
docs/PROTOCOL.md alone: an implementation that shares no code with pushgate,
so tests/quic.rs checks the wire format against it.

It connects with ALPN pushgate/1, opens one bidirectional stream, sends the
binary auth frame (varint length prefix), checks auth_ok and a ping/pong,
prints auth_ok as one JSON line, then prints each pushed message as one JSON
line until --count messages arrived, and exits 0. A fatal error frame or a
timeout exits 1.

    python quic_client.py --host 127.0.0.1 --port 7702 --ca DATA/tls_cert.pem --token JWT
"""

import argparse
import asyncio
import json
import ssl
import sys

from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration

ALPN = "pushgate/1"

ERROR_CODES = {
    1: "auth_failed", 2: "auth_timeout", 3: "not_authenticated",
    4: "heartbeat_timeout", 5: "bad_frame", 6: "frame_too_large",
    7: "channel_forbidden", 8: "too_many_channels", 9: "bad_channel",
    10: "rate_limited", 11: "kicked", 12: "slow_consumer", 13: "draining",
    14: "overloaded", 15: "internal",
}


def varint(n):
    """Unsigned LEB128."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def string(s):
    b = s.encode("utf-8")
    return varint(len(b)) + b


def frame(body):
    """A frame on a stream transport: varint length, then the body."""
    return varint(len(body)) + body


def auth_frame(token, seq, device=None):
    flags = 0x01 | (0x04 if device else 0)
    body = bytes([0x01, flags]) + varint(seq) + string(token)
    if device:
        body += string(device)
    return frame(body)


def ping_frame(seq):
    return frame(bytes([0x02, 0x01]) + varint(seq))


class Reader:
    """Parses one frame body."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def u8(self):
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self):
        n, shift = 0, 0
        while True:
            b = self.u8()
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    def i64(self):
        n = self.varint()
        return n - (1 << 64) if n >= 1 << 63 else n

    def bytes_(self):
        n = self.varint()
        b = self.data[self.pos:self.pos + n]
        if len(b) != n:
            raise ValueError("truncated")
        self.pos += n
        return b

    def string(self):
        return self.bytes_().decode("utf-8")

    def done(self):
        if self.pos != len(self.data):
            raise ValueError("bytes after the last field")


def decode_server(body):
    r = Reader(body)
    op, flags = r.u8(), r.u8()
    out = {}
    if op != 0x85 and flags & 0x01:
        out["seq"] = r.varint()
    if op == 0x81:
        out.update(op="auth_ok", conn=str(r.varint()), user=r.string(),
                   room=str(r.varint()), heartbeat=r.varint())
    elif op == 0x82:
        out["op"] = "pong"
    elif op in (0x83, 0x84):
        out.update(op="sub_ok" if op == 0x83 else "unsub_ok", channel=r.string())
    elif op == 0x85:
        out.update(op="msg", id=r.i64(), ts=r.i64())
        if flags & 0x02:
            out["channel"] = r.string()
        out["data"] = json.loads(r.bytes_().decode("utf-8"))
    elif op == 0x86:
        code = r.u8()
        out.update(op="error", code=ERROR_CODES.get(code, str(code)), message=r.string())
        if flags & 0x02:
            hi, lo = r.u8(), r.u8()
            out["close"] = hi << 8 | lo
    else:
        raise ValueError("unknown server op 0x%02x" % op)
    r.done()
    return out


async def read_frame(reader):
    """Reads the varint length prefix, then the body."""
    n, shift = 0, 0
    while True:
        b = (await reader.readexactly(1))[0]
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
        if shift > 35:
            raise ValueError("length prefix too long")
    return decode_server(await reader.readexactly(n))


async def run(args):
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
    if args.ca:
        config.load_verify_locations(cafile=args.ca)
    else:
        config.verify_mode = ssl.CERT_NONE
    config.server_name = args.server_name
    async with connect(args.host, args.port, configuration=config) as client:
        reader, writer = await client.create_stream()
        writer.write(auth_frame(args.token, 1, "py"))
        ok = await read_frame(reader)
        if ok.get("op") != "auth_ok" or ok.get("seq") != 1:
            print(json.dumps(ok), file=sys.stderr)
            return 1
        writer.write(ping_frame(9))
        pong = await read_frame(reader)
        if pong != {"op": "pong", "seq": 9}:
            print("expected pong seq 9, got", json.dumps(pong), file=sys.stderr)
            return 1
        print(json.dumps(ok), flush=True)
        got = 0
        while got < args.count:
            f = await read_frame(reader)
            print(json.dumps(f, ensure_ascii=False), flush=True)
            if f.get("op") == "error" and "close" in f:
                return 1
            if f.get("op") == "msg":
                got += 1
        writer.write_eof()
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7702)
    p.add_argument("--server-name", default="localhost")
    p.add_argument("--ca", help="PEM file of the certificate (or CA) to trust; "
                   "without it the certificate is not verified")
    p.add_argument("--token", required=True)
    p.add_argument("--count", type=int, default=1, help="messages to receive")
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    try:
        code = asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except asyncio.TimeoutError:
        print("timed out", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()

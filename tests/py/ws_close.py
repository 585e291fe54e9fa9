#!/usr/bin/env python3
"""The WebSocket close handshake seen by an independent client: Python
`websockets` (PyPI), which shares no code with pushgate, so tests/ws_close.rs
checks RFC 6455's closing handshake against it.

Modes:
  client-close  connect, optionally authenticate, then close with --code and
                wait for the server's Close (the client library's close()).
  server-close  connect, authenticate, print {"op":"auth_ok",...} as one JSON
                line, then read until the server closes the connection.
  framing       connect, authenticate, then: a WebSocket Ping with a payload
                (its Pong awaited), a protocol ping sent as a message in three
                fragments, one with a 16-bit length (1,000 bytes), then one
                over the server's 64 KiB frame limit; prints
                {"pong": bool, "fragmented": reply, "medium": reply}
                before the close line.

Either way it prints one JSON line at the end:
  {"close_code": ..., "close_reason": ..., "rcvd": [code, reason] | null,
   "sent": [code, reason] | null, "rcvd_then_sent": bool | null}
`close_code` is what a browser reports as CloseEvent.code: 1006 when no
Close frame came back (the connection was not closed cleanly).

    python ws_close.py --url ws://127.0.0.1:7701/ws --mode client-close --token JWT
"""

import argparse
import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def frame(f):
    return None if f is None else [f.code, f.reason]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument(
        "--mode", choices=["client-close", "server-close", "framing"], required=True
    )
    ap.add_argument("--token", default="")
    ap.add_argument("--code", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args()

    async with connect(
        a.url,
        subprotocols=["pushgate.v1.json"],
        compression=None,
        ping_interval=None,
        close_timeout=a.timeout,
        proxy=None,
    ) as ws:
        if a.token:
            await ws.send(json.dumps({"op": "auth", "seq": 1, "token": a.token}))
            ok = json.loads(await asyncio.wait_for(ws.recv(), a.timeout))
            if ok.get("op") != "auth_ok":
                print(json.dumps({"unexpected": ok}), flush=True)
                sys.exit(1)
            if a.mode == "server-close":
                print(json.dumps(ok), flush=True)
        if a.mode == "framing":
            pong = await ws.ping(b"are you there")
            await asyncio.wait_for(pong, a.timeout)
            await ws.send(['{"op":', '"ping",', '"seq":7}'])
            fragmented = json.loads(await asyncio.wait_for(ws.recv(), a.timeout))
            await ws.send('{"op":"ping","seq":8' + " " * 1000 + "}")
            medium = json.loads(await asyncio.wait_for(ws.recv(), a.timeout))
            print(
                json.dumps({"pong": True, "fragmented": fragmented, "medium": medium}),
                flush=True,
            )
            await ws.send('{"op":"ping","seq":9' + " " * 70000 + "}")
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), a.timeout)
            except ConnectionClosed:
                pass
        elif a.mode == "client-close":
            await ws.close(code=a.code, reason="bye")
        else:
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), a.timeout)
            except ConnectionClosed:
                pass
        await asyncio.wait_for(ws.wait_closed(), a.timeout)
        p = ws.protocol
        print(
            json.dumps(
                {
                    "close_code": ws.close_code,
                    "close_reason": ws.close_reason,
                    "rcvd": frame(p.close_rcvd),
                    "sent": frame(p.close_sent),
                    "rcvd_then_sent": p.close_rcvd_then_sent,
                }
            ),
            flush=True,
        )


asyncio.run(main())

#!/usr/bin/env python3
"""A pushgate client in Python (asyncio, `pip install 'websockets>=13'`).

It follows the rules every pushgate client follows (docs/CLIENTS.md):

- authenticate with a token, resume with `last_id` = the highest id of a user
  message received, and subscribe channels again with their own last ids;
- send `ping` every `heartbeat` seconds from `auth_ok`;
- reconnect with jittered exponential backoff, and after a 4007 close
  (server draining) wait exactly the `reconnect_after_ms` it names;
- drop duplicates by id (a bounded set of recent ids); ack user messages
  once the caller has taken them;
- with a token provider (a function, sync or async, instead of a token),
  ask it for a new token when 90 % of the current one's lifetime has passed
  and send it with `refresh`, and reconnect with a new one after a 4008
  (token expired) close.

Python's json keeps 64-bit ids exact (ints have no 2^53 limit).

As a program it prints each message as one JSON line:

    python3 pushgate_client.py --url ws://127.0.0.1:7700/ws --token "$TOKEN" \\
        --channel news --count 10

or with `--token-cmd 'pushgate token --user alice --ttl 3600'` instead of
`--token`: a shell command run for every token (the first and each refresh)

and exits after `--count` messages (0: never); every other frame (auth_ok,
sub_ok, errors) goes to stderr, one JSON line each. As a library:

    client = Client(url, token, channels=["news"])  # or a token function
    async for msg in client.messages():
        print(msg["id"], msg.get("channel"), msg["data"])
"""

import argparse
import asyncio
import base64
import collections
import inspect
import json
import random
import re
import subprocess
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

SUBPROTOCOL = "pushgate.v1.json"
DRAINING = 4007
# Closes after which reconnecting with the same token cannot help.
FATAL = {4001: "auth failed", 4008: "token expired"}


class Client:
    """One logical connection: reconnects, resumes and de-duplicates."""

    def __init__(self, url, token, channels=(), device=None,
                 backoff_initial=0.5, backoff_max=30.0, recent=4096,
                 on_event=None):
        self.url = url
        # Called with every frame that is not a message (auth_ok, sub_ok,
        # error, ...), e.g. to log them.
        self.on_event = on_event or (lambda frame: None)
        # A token, or a function (sync or async) that returns a fresh one.
        self.token = token
        self.device = device
        self.channels = {c: None for c in channels}  # channel -> last id
        self.last_id = None  # highest user-message id received
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._recent = collections.OrderedDict()
        self._recent_max = recent

    def _seen(self, msg_id):
        if msg_id in self._recent:
            return True
        self._recent[msg_id] = None
        if len(self._recent) > self._recent_max:
            self._recent.popitem(last=False)
        return False

    async def _fresh_token(self):
        if not callable(self.token):
            return self.token
        t = self.token()
        return await t if inspect.isawaitable(t) else t

    async def _refresh(self, ws, token):
        """Sends a new token before the current one expires, while the
        connection lives (only with a token function)."""
        exp = token_exp(token)
        seq = 1000
        while exp is not None:
            left = exp - time.time()
            await asyncio.sleep(max(0.5, left * 0.9))
            try:
                new = await self._fresh_token()
            except Exception as e:  # the provider failed: ask again later
                self.on_event({"op": "refresh_failed", "error": str(e)})
                continue
            new_exp = token_exp(new)
            if new_exp is None or new_exp <= exp:
                return  # nothing later to send; the server closes with 4008
            seq += 1
            await ws.send(json.dumps({"op": "refresh", "seq": seq, "token": new}))
            exp = new_exp

    async def messages(self):
        """Yields every message (a dict) once, across reconnects."""
        attempt = 0
        while True:
            delay = None
            try:
                token = await self._fresh_token()
                async with connect(self.url, subprotocols=[SUBPROTOCOL]) as ws:
                    auth = {"op": "auth", "token": token}
                    if self.last_id is not None:
                        auth["last_id"] = self.last_id
                    if self.device:
                        auth["device"] = self.device
                    await ws.send(json.dumps(auth))
                    ok = json.loads(await ws.recv())
                    if ok.get("op") != "auth_ok":
                        raise RuntimeError(f"auth refused: {ok}")
                    self.on_event(ok)
                    attempt = 0
                    for ch, last in self.channels.items():
                        sub = {"op": "sub", "channel": ch}
                        if last is not None:
                            sub["last_id"] = last
                        await ws.send(json.dumps(sub))
                    pinger = asyncio.create_task(
                        self._ping(ws, ok.get("heartbeat", 30)))
                    refresher = asyncio.create_task(self._refresh(ws, token)) \
                        if callable(self.token) else None
                    try:
                        async for text in ws:
                            frame = json.loads(text)
                            op = frame.get("op")
                            if op == "msg":
                                msg = self._on_msg(frame)
                                if msg is None:
                                    continue
                                yield msg
                                # Acks are for the user's queue (channel
                                # messages are not queued): acked after the
                                # caller took it.
                                if "channel" not in frame:
                                    await ws.send(json.dumps(
                                        {"op": "ack", "id": frame["id"]}))
                            else:
                                self.on_event(frame)
                                if op == "error" and frame.get("code") in (
                                        "channel_forbidden", "too_many_channels"):
                                    self.channels.pop(frame.get("channel"), None)
                    finally:
                        pinger.cancel()
                        if refresher is not None:
                            refresher.cancel()
            except ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd else None
                reason = e.rcvd.reason if e.rcvd else ""
                if code == 4008 and callable(self.token):
                    pass  # reconnect with a new token from the function
                elif code in FATAL:
                    raise RuntimeError(f"closed {code}: {FATAL[code]}") from e
                m = re.search(r"reconnect_after_ms=(\d+)", reason or "")
                if code == DRAINING and m:
                    delay = min(int(m.group(1)), 600_000) / 1000
            except (OSError, asyncio.TimeoutError):
                pass
            if delay is None:
                cap = min(self.backoff_max, self.backoff_initial * 2 ** attempt)
                delay = random.uniform(cap / 2, cap)
                attempt += 1
            await asyncio.sleep(delay)

    def _on_msg(self, frame):
        msg_id = frame["id"]
        channel = frame.get("channel")
        if self._seen((channel, msg_id)):
            return None
        if channel is None:
            self.last_id = max(self.last_id or msg_id, msg_id)
        elif channel in self.channels:
            last = self.channels[channel]
            self.channels[channel] = max(last or msg_id, msg_id)
        return frame

    @staticmethod
    async def _ping(ws, heartbeat):
        while True:
            await asyncio.sleep(heartbeat)
            await ws.send(json.dumps({"op": "ping"}))


def token_exp(token):
    """The `exp` of a JWT, read without checking its signature (a client has
    no key): when to refresh. None when it has none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
        return exp if isinstance(exp, int) else None
    except (IndexError, ValueError, AttributeError):
        return None


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="ws://HOST:PORT/ws")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--token")
    who.add_argument("--token-cmd",
                     help="shell command printing a token, run for each one")
    p.add_argument("--channel", action="append", default=[])
    p.add_argument("--device")
    p.add_argument("--count", type=int, default=0,
                   help="exit after this many messages (0: never)")
    a = p.parse_args()
    token = a.token
    if a.token_cmd:
        def token():
            return subprocess.run(a.token_cmd, shell=True, check=True,
                                  capture_output=True, text=True).stdout.strip()
    client = Client(a.url, token, channels=a.channel, device=a.device,
                    on_event=lambda f: print(json.dumps(f), file=sys.stderr,
                                             flush=True))
    n = 0
    async for msg in client.messages():
        print(json.dumps(msg), flush=True)
        n += 1
        if a.count and n >= a.count:
            return


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)

#!/usr/bin/env python3
"""A local application hook that allows every message at once, for
`bench chat` with the hook on (bench/scripts/chat-hook.sh).

usage: bench/scripts/hook.py PORT
Answers POST /hook with {"allow":true} over HTTP/1.1 keep-alive, one thread
per connection; prints "hook listening on 127.0.0.1:PORT" when ready.
"""

import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = b'{"allow":true}'


RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(ANSWER)}\r\n\r\n".encode()
    + ANSWER
)


class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # No Nagle: an answer must not wait for the ACK of an earlier write.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self):  # noqa: N802 (http.server's name)
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        # One write: status line, headers and body together.
        self.wfile.write(RESPONSE)

    def log_message(self, *args):  # quiet
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    srv = ThreadingHTTPServer(("127.0.0.1", port), Hook)
    srv.daemon_threads = True
    print(f"hook listening on 127.0.0.1:{srv.server_address[1]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A local application hook that allows every message at once, for
`bench chat` with the hook on (bench/scripts/chat-hook.sh).

usage: bench/scripts/hook.py PORT
Answers POST /hook with {"allow":true} over HTTP/1.1 keep-alive, one thread
per connection; prints "hook listening on 127.0.0.1:PORT" when ready.
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = b'{"allow":true}'


class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (http.server's name)
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

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

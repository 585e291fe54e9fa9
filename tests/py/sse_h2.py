#!/usr/bin/env python3
"""A browser's EventSource on pushgate's https:// listener, driven by
tests/sse_h2.rs: headless Chromium (which negotiates HTTP/2 by ALPN by
itself) opens --url from a page of the same origin (the listener's 404
page: a page elsewhere would make it a cross-origin request to the local
network, which Chromium may hold back); the test's certificate is
accepted with --ignore-certificate-errors (its CA is not in the browser's
store).

Talks with the test line by line on stdout:
  "open"            the stream is open (its auth_ok arrived);
  "message <id>"    the first message event, with its lastEventId;
  "close <json>"    the close event's data; then the script exits 0.
Any wait over its limit exits 1 with what the page saw.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from console import browser  # noqa: E402  (same browser setup)

WAIT = 15.0

SCRIPT = """
window.got = [];
const es = new EventSource(arguments[0]);
window.es = es;
es.addEventListener('auth_ok', e => window.got.push({ev: 'auth_ok', data: e.data}));
es.onmessage = e => window.got.push({ev: 'message', id: e.lastEventId, data: e.data});
es.addEventListener('close', e => { window.got.push({ev: 'close', data: e.data}); es.close(); });
es.onerror = () => window.got.push({ev: 'error', state: es.readyState});
"""


def wait_for(d, kind):
    end = time.time() + WAIT
    while time.time() < end:
        for e in d.execute_script("return window.got;"):
            if e["ev"] == kind:
                return e
        time.sleep(0.05)
    got = d.execute_script("return window.got;")
    print(f"no {kind} event within {WAIT} s; the page saw {json.dumps(got)}", file=sys.stderr)
    for entry in d.get_log("browser"):
        print(f"browser: {entry}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    args = ap.parse_args()
    d = browser(["--ignore-certificate-errors"])
    try:
        origin = args.url.split("/sse", 1)[0]
        d.get(origin + "/")
        d.execute_script(SCRIPT, args.url)
        wait_for(d, "auth_ok")
        print("open", flush=True)
        m = wait_for(d, "message")
        print(f"message {m['id']}", flush=True)
        c = wait_for(d, "close")
        print(f"close {c['data']}", flush=True)
    finally:
        d.quit()


if __name__ == "__main__":
    main()

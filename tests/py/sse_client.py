"""An independent server-sent events client (Python's standard library
only): GET /sse with a token and an optional Last-Event-ID, events parsed
as the EventSource specification says (field lines, comments, a blank line
dispatches), each event printed as one JSON line on stdout.

Usage: sse_client.py HOST PORT TOKEN LAST_EVENT_ID|- MESSAGES TIMEOUT_S
Exits 0 after MESSAGES unnamed (message) events, 2 on a non-200 answer,
3 when the stream ends or the time runs out first.
"""

import http.client
import json
import sys


def main() -> int:
    host, port, token, last, want, limit = sys.argv[1:7]
    want, limit = int(want), float(limit)
    conn = http.client.HTTPConnection(host, int(port), timeout=limit)
    headers = {"Accept": "text/event-stream"}
    if last != "-":
        headers["Last-Event-ID"] = last
    conn.request("GET", "/sse?token=" + token, headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        print(json.dumps({"status": resp.status, "body": resp.read().decode()}), flush=True)
        return 2
    print(json.dumps({"status": 200, "type": resp.getheader("Content-Type")}), flush=True)
    event, data, ident, got = None, [], None, 0
    while got < want:
        raw = resp.readline()
        if not raw:
            return 3
        line = raw.decode("utf-8").rstrip("\r\n")
        if line == "":
            if data:
                print(json.dumps({"event": event, "id": ident, "data": "\n".join(data)}), flush=True)
                if event is None:
                    got += 1
            event, data = None, []
            continue
        if line.startswith(":"):
            continue  # a comment: the server's heartbeat
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            ident = value
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, http.client.HTTPException) as e:
        print(json.dumps({"error": str(e)}), flush=True)
        sys.exit(3)

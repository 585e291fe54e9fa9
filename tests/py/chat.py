#!/usr/bin/env python3
"""Two users talk through clients/js/chat.html (the JS client's example
page) in one headless Chromium, two tabs, as people would; tests/js_chat.rs
starts the server and checks the messages' ids against the store.

Steps (each within its wait, or the script exits 1 with screenshots under
--artifacts):
  1. both tabs load the page with their token in the address and come online;
  2. alice sends "hello bob" to bob: her line turns "sent #<id>", and bob's
     tab shows it from alice with that id;
  3. bob answers; alice's tab shows it from bob;
  4. both join --channel (a channel with presence): alice's tab shows bob
     joining, and bob's tab lists both as in the channel; alice publishes to
     it: bob's tab shows it from alice in the channel, alice's tab does not
     show it as received;
  5. the browser logged no script error.

Prints one JSON line: {"to_bob", "to_alice", "group"} (ids as decimal strings).
"""

import argparse
import json
import os
import sys
import time
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from console import INSTALL, browser  # noqa: E402  (same browser setup)

try:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as e:  # pragma: no cover
    print(f"selenium is missing ({e}); {INSTALL}", file=sys.stderr)
    sys.exit(2)

WAIT = 10.0


class Tab:
    def __init__(self, d, handle, name):
        self.d, self.handle, self.name = d, handle, name

    def go(self):
        self.d.switch_to.window(self.handle)
        return self

    def wait(self, what, cond, limit=WAIT):
        self.go()
        try:
            return WebDriverWait(self.d, limit, poll_frequency=0.05).until(lambda d: cond())
        except TimeoutException:
            raise AssertionError(f"{self.name}: timed out after {limit} s waiting for {what}") from None

    def css(self, sel):
        return self.d.find_elements(By.CSS_SELECTOR, sel)

    def fill(self, sel, value):
        self.go()
        e = self.d.find_element(By.CSS_SELECTOR, sel)
        e.clear()
        e.send_keys(value)

    def click(self, sel):
        self.go()
        self.d.find_element(By.CSS_SELECTOR, sel).click()

    def received(self, text):
        """The received line containing `text`, as (id, from), or None."""
        for e in self.css("#log .in"):
            if text in e.text:
                return e.get_attribute("data-id"), e.get_attribute("data-from")
        return None

    def sent_id(self, text):
        for e in self.css("#log .sent"):
            if text in e.text:
                return e.get_attribute("data-id")
        return None


def run(a):
    d = browser()
    try:
        page = "file://" + os.path.abspath(a.page)
        tabs = {}
        for name, token, peer in (("alice", a.alice_token, "bob"), ("bob", a.bob_token, "alice")):
            if tabs:
                d.switch_to.new_window("tab")
            d.get(f"{page}#ws={quote(a.ws)}&token={quote(token)}&to={peer}")
            tabs[name] = Tab(d, d.current_window_handle, name)
        alice, bob = tabs["alice"], tabs["bob"]
        for t in (alice, bob):
            t.wait("online", lambda t=t: t.css("#state") and t.css("#state")[0].text == f"online as {t.name}")

        # 1:1 both ways.
        alice.fill("#text", "hello bob")
        alice.click("#send")
        to_bob = alice.wait("alice's message to be sent", lambda: alice.sent_id("hello bob"))
        got = bob.wait("bob to receive it", lambda: bob.received("hello bob"))
        assert got == (to_bob, "alice"), got
        bob.fill("#text", "hi alice")
        bob.click("#send")
        to_alice = bob.wait("bob's answer to be sent", lambda: bob.sent_id("hi alice"))
        got = alice.wait("alice to receive it", lambda: alice.received("hi alice"))
        assert got == (to_alice, "bob"), got

        # A group: both join, alice publishes.
        for t in (alice, bob):
            t.fill("#channel", a.channel)
            t.click("#join")
            t.wait("joined", lambda t=t: any(f"joined {a.channel}" == e.text for e in t.css("#log .sys")))
        alice.wait("bob's join", lambda: any(f"bob joined {a.channel}" == e.text for e in alice.css("#log .presence")))
        bob.wait("the members", lambda: bob.css("#members")[0].text == f"in {a.channel}: alice, bob")
        alice.fill("#text", "hello room")
        alice.click("#send")
        group = alice.wait("the group message to be sent", lambda: alice.sent_id("hello room"))
        got = bob.wait("bob to receive the group message", lambda: bob.received("hello room"))
        assert got == (group, "alice"), got
        assert f"in {a.channel}" in [e.text for e in bob.css("#log .in") if "hello room" in e.text][0]
        time.sleep(0.3)
        assert alice.go().received("hello room") is None, "the sender's own tab must not receive it"

        for t in (alice, bob):
            t.go()
            errors = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]
            assert not errors, f"{t.name}: browser errors: {errors}"
        print(json.dumps({"to_bob": to_bob, "to_alice": to_alice, "group": group}))
    except Exception:
        os.makedirs(a.artifacts, exist_ok=True)
        for i, h in enumerate(d.window_handles):
            d.switch_to.window(h)
            d.save_screenshot(os.path.join(a.artifacts, f"tab{i}.png"))
            with open(os.path.join(a.artifacts, f"tab{i}.txt"), "w") as f:
                f.write(d.find_element(By.TAG_NAME, "body").text)
        raise
    finally:
        d.quit()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--page", required=True, help="path of clients/js/chat.html")
    p.add_argument("--ws", required=True, help="ws://HOST:PORT/ws")
    p.add_argument("--alice-token", required=True)
    p.add_argument("--bob-token", required=True)
    p.add_argument("--channel", required=True)
    p.add_argument("--artifacts", required=True)
    a = p.parse_args()
    try:
        run(a)
    except AssertionError as e:
        print(f"FAILED: {e} (screenshots in {a.artifacts})", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

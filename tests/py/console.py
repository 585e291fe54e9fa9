#!/usr/bin/env python3
"""Drives the ops console (/console) in a real headless Chromium through
Selenium (PyPI `selenium`, Debian `chromium` and `chromium-driver`), as an
operator would; tests/console.rs starts the server and the clients and
checks what they saw.

Steps (each must happen within its wait, or the script exits 1 with a
screenshot and the page's text under --artifacts):
  1. `/` leads to the console; a wrong key shows the 401 error;
  2. the right key shows --connections, --users and one room;
  3. a second poll gives the chart two samples and a pushes/s rate;
  4. looking --kick-user up lists its one connection (--kick-conn, device
     --kick-device, room --room);
  5. Kick (confirmed) says 1 connection was kicked, and the connection count
     falls by one;
  6. a push to --push-user shows its message id; data that is not JSON is
     refused in the page; a push to --channel shows another id;
  7. a broadcast (confirmed) fills the progress bar to 100 % and ends `done`;
  8. the browser logged no CSP violation and no script error.

Prints one JSON line at the end: {"user_id", "channel_id", "broadcast_id",
"task", "seconds"} (ids as the page showed them, decimal strings).

    python console.py --url http://127.0.0.1:7780 --key KEY --connections 3 ...
"""

import argparse
import json
import os
import shutil
import sys
import time

INSTALL = (
    "the console test needs Chromium, its WebDriver and Python selenium:\n"
    "  apt-get install -y chromium chromium-driver   (Debian package names)\n"
    "  $VENV/bin/pip install selenium                 (or run scripts/test)"
)

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(f"selenium is missing ({e}); {INSTALL}", file=sys.stderr)
    sys.exit(2)

WAIT = 10.0
USER_DATA = '{"text": "from the console", "big": 12345678901234567890}'


def find(names):
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    return None


def browser(extra=()):
    chromium = find(["chromium", "chromium-browser"])
    driver = find(["chromedriver"]) or (
        "/usr/lib/chromium/chromedriver" if os.path.exists("/usr/lib/chromium/chromedriver") else None
    )
    if not chromium or not driver:
        print(f"chromium={chromium} chromedriver={driver}: {INSTALL}", file=sys.stderr)
        sys.exit(2)
    # Selenium Manager must not try to download anything.
    os.environ.setdefault("SE_OFFLINE", "true")
    opts = Options()
    opts.binary_location = chromium
    for a in (
        "--headless=new",
        "--no-sandbox",  # root in containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--disable-background-networking",
        "--no-first-run",
        "--window-size=1280,1100",
        "--lang=en-US",
        *extra,
    ):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


class Console:
    def __init__(self, d, base):
        self.d = d
        self.base = base

    def el(self, css):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def text(self, css):
        els = self.d.find_elements(By.CSS_SELECTOR, css)
        return els[0].text if els else ""

    def wait(self, what, cond, limit=WAIT):
        try:
            return WebDriverWait(self.d, limit, poll_frequency=0.05).until(lambda d: cond())
        except TimeoutException:
            raise AssertionError(f"timed out after {limit} s waiting for: {what}") from None

    def fill(self, css, value):
        e = self.el(css)
        e.clear()
        e.send_keys(value)

    def set_data(self, value):
        # send_keys types braces fine, but a textarea keeps what it had:
        # clear it first.
        self.fill("#push-data", value)

    def accept_confirm(self, what):
        try:
            WebDriverWait(self.d, WAIT).until(EC.alert_is_present())
        except TimeoutException:
            raise AssertionError(f"no confirmation dialog for {what}") from None
        alert = self.d.switch_to.alert
        msg = alert.text
        alert.accept()
        return msg


def run(a):
    t0 = time.monotonic()
    d = browser()
    c = Console(d, a.url)
    try:
        # 1. The page, from /, and a wrong key.
        d.get(a.url + "/")
        c.wait("/ to lead to /console", lambda: d.current_url.rstrip("/").endswith("/console"))
        assert d.title == "pushgate console", d.title
        c.fill("#key", "wrong-" + a.key)
        c.el("#key-save").click()
        c.wait(
            "the 401 error for a wrong key",
            lambda: c.el("#error").is_displayed() and "401" in c.text("#error"),
        )
        assert "unauthorized" in c.text("#error"), c.text("#error")
        step("wrong key refused", c.text("#error"))

        # 2. The right key: totals and the room.
        c.fill("#key", a.key)
        c.el("#key-save").click()
        c.wait(
            f"{a.connections} connections shown",
            lambda: c.text("#stat-connections") == str(a.connections),
        )
        assert not c.el("#error").is_displayed(), c.text("#error")
        assert c.text("#stat-users") == str(a.users), c.text("#stat-users")
        assert c.text("#stat-rooms") == "1", c.text("#stat-rooms")
        rows = [r.text.split() for r in d.find_elements(By.CSS_SELECTOR, "#rooms tbody tr")]
        assert rows == [[a.room, str(a.connections)]], rows
        step("totals", {"connections": a.connections, "rooms": rows})

        # 3. A second poll: two chart samples, and rates.
        c.wait(
            "two chart samples and a pushes/s rate",
            lambda: int(c.el("#chart").get_attribute("data-samples") or 0) >= 2
            and c.text("#stat-pushes") not in ("", "–"),
            limit=8,
        )
        step("chart", c.el("#chart").get_attribute("aria-label"))

        # 4. User lookup.
        c.fill("#user", a.kick_user)
        c.el("#user-form button[type=submit]").click()
        c.wait(
            f"{a.kick_user}'s connection listed",
            lambda: len(d.find_elements(By.CSS_SELECTOR, "#user-connections tbody tr")) == 1,
        )
        cells = d.find_elements(By.CSS_SELECTOR, "#user-connections tbody tr td")
        assert cells[0].text == a.kick_conn, (cells[0].text, a.kick_conn)
        assert cells[1].text == a.room, (cells[1].text, a.room)
        assert cells[2].text == a.kick_device, (cells[2].text, a.kick_device)
        assert "is online with 1 connection" in c.text("#user-summary"), c.text("#user-summary")
        step("lookup", [x.text for x in cells])

        # 5. Kick, confirmed.
        c.el("#kick").click()
        msg = c.accept_confirm("the kick")
        assert a.kick_user in msg and "4005" in msg, msg
        c.wait("the kick's result", lambda: "Kicked 1 connection of" in c.text("#kick-note"))
        c.wait(
            "the connection count to fall by one",
            lambda: c.text("#stat-connections") == str(a.connections - 1),
        )
        step("kicked", c.text("#kick-note"))

        # 6. Pushes: to a user, bad data, to a channel.
        c.el("input[name=target][value=users]").click()
        c.fill("#push-users", a.push_user)
        c.set_data(USER_DATA)
        c.el("#push-send").click()
        c.wait("the user push's id", lambda: c.text("#push-id") != "")
        user_id = c.text("#push-id")
        assert f"sent to user {a.push_user}: delivered to 1 connection" in c.text("#push-result"), c.text(
            "#push-result"
        )

        c.set_data('{"text": oops}')
        c.el("#push-send").click()
        c.wait("the page to refuse data that is not JSON", lambda: "not valid JSON" in c.text("#push-result .fail"))
        assert not d.find_elements(By.CSS_SELECTOR, "#push-id")

        c.el("input[name=target][value=channel]").click()
        assert not c.el("#push-users").is_displayed()
        c.fill("#push-channel", a.channel)
        c.set_data('{"n": 2}')
        c.el("#push-send").click()
        c.wait("the channel push's id", lambda: c.text("#push-id") not in ("", user_id))
        channel_id = c.text("#push-id")
        assert f"sent to channel {a.channel}: delivered to 1 connection" in c.text("#push-result"), c.text(
            "#push-result"
        )
        step("pushed", {"user": user_id, "channel": channel_id})

        # 7. Broadcast, confirmed, followed to 100 %.
        c.el("input[name=target][value=broadcast]").click()
        c.set_data('{"n": 3}')
        c.el("#push-send").click()
        c.accept_confirm("the broadcast")
        c.wait("the broadcast's id", lambda: c.text("#push-id") not in ("", user_id, channel_id))
        broadcast_id = c.text("#push-id")
        c.wait(
            "the progress bar at 100 % and the task done",
            lambda: c.el("#task-progress").get_attribute("value") == "100"
            and c.el("#task").get_attribute("data-state") == "done",
        )
        task = c.text("#task-id")
        assert task.startswith("b-"), task
        assert "100 % · done" in c.text("#task-text"), c.text("#task-text")
        step("broadcast", c.text("#task-text"))

        # 8. Nothing blocked by the CSP, no script error.
        bad = [
            e["message"]
            for e in d.get_log("browser")
            if "Content Security Policy" in e["message"] or "Uncaught" in e["message"]
        ]
        assert not bad, bad

        if a.screenshot:
            d.save_screenshot(a.screenshot)
        print(
            json.dumps(
                {
                    "user_id": user_id,
                    "channel_id": channel_id,
                    "broadcast_id": broadcast_id,
                    "task": task,
                    "seconds": round(time.monotonic() - t0, 1),
                }
            ),
            flush=True,
        )
    except (AssertionError, WebDriverException) as e:
        print(f"console test failed: {type(e).__name__}: {e}", file=sys.stderr)
        if a.artifacts:
            os.makedirs(a.artifacts, exist_ok=True)
            try:
                d.save_screenshot(os.path.join(a.artifacts, "console-failure.png"))
                with open(os.path.join(a.artifacts, "console-failure.txt"), "w") as f:
                    f.write(d.find_element(By.TAG_NAME, "body").text)
                    f.write("\n\n--- browser log ---\n")
                    for e2 in d.get_log("browser"):
                        f.write(f"{e2['level']} {e2['message']}\n")
                print(f"screenshot and page text in {a.artifacts}", file=sys.stderr)
            except WebDriverException:
                pass
        sys.exit(1)
    finally:
        d.quit()


def step(name, detail):
    print(json.dumps({"step": name, "detail": detail}), file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True, help="http://HOST:PORT of the center")
    p.add_argument("--key", required=True)
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--kick-user", required=True)
    p.add_argument("--kick-conn", required=True)
    p.add_argument("--kick-device", required=True)
    p.add_argument("--push-user", required=True)
    p.add_argument("--channel", required=True)
    p.add_argument("--screenshot", help="save a screenshot of the page here at the end")
    p.add_argument("--artifacts", help="on failure, a screenshot and the page's text go here")
    run(p.parse_args())


if __name__ == "__main__":
    main()

// pushgate ops console (served at /console by the center; docs/OPERATIONS.md).
// Plain JavaScript, no framework, nothing loaded from elsewhere: the
// Content-Security-Policy allows this origin only and no inline code.
//
// The API key is typed in by the operator and kept in sessionStorage (this
// tab only); every /api/v1 call sends it as `Authorization: Bearer`. Rates
// come from /metrics (no key needed), differenced between two polls.
//
// Ids (messages, connections, rooms) are 64-bit: answers are parsed with
// parseExact, which turns every integer beyond 2^53 into a decimal string
// before JSON.parse sees it, and push bodies carry the operator's JSON data
// as typed (only checked with JSON.parse), so no id or number is rounded.
"use strict";

(function () {
  const KEY_STORE = "pushgate-console-key";
  const POLL_MS = 2000;
  const WINDOW_MS = 5 * 60 * 1000;
  const TASK_POLL_MS = 300;
  const CHANNEL_RE = /^[A-Za-z0-9_.:@/-]{1,128}$/;

  const $ = (id) => document.getElementById(id);
  const fmt = new Intl.NumberFormat("en");

  // ---------------------------------------------------------------------
  // Exact JSON
  // ---------------------------------------------------------------------

  /**
   * JSON text with every integer literal that a JavaScript number cannot
   * hold exactly (beyond ±2^53) written as a string: "459878756426983680"
   * instead of 459878756426983680. Strings are skipped, escapes included,
   * so text inside them is never touched.
   */
  function quoteBigInts(text) {
    let out = "";
    let last = 0;
    let i = 0;
    const n = text.length;
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 34 /* " */) {
        i++;
        while (i < n && text.charCodeAt(i) !== 34) {
          i += text.charCodeAt(i) === 92 /* \ */ ? 2 : 1;
        }
        i++;
      } else if (c === 45 /* - */ || (c >= 48 && c <= 57)) {
        let j = i + 1;
        while (j < n && /[0-9eE+\-.]/.test(text[j])) j++;
        const tok = text.slice(i, j);
        if (/^-?\d+$/.test(tok) && !Number.isSafeInteger(Number(tok))) {
          out += text.slice(last, i) + '"' + tok + '"';
          last = j;
        }
        i = j;
      } else {
        i++;
      }
    }
    return out + text.slice(last);
  }

  /** JSON.parse, with 64-bit integers kept exact as decimal strings. */
  function parseExact(text) {
    return JSON.parse(quoteBigInts(text));
  }

  // ---------------------------------------------------------------------
  // DOM helpers (textContent only: nothing from the server becomes markup)
  // ---------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function num(v) {
    return typeof v === "number" ? fmt.format(v) : String(v);
  }

  function rate(v) {
    if (v === null || v === undefined) return "–";
    return v < 10 ? v.toFixed(1) : fmt.format(Math.round(v));
  }

  function duration(ms) {
    const s = Math.floor(ms / 1000);
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + (s % 60) + " s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + " h " + (m % 60) + " min";
    return Math.floor(h / 24) + " d " + (h % 24) + " h";
  }

  function showError(msg) {
    const e = $("error");
    e.textContent = msg;
    e.hidden = false;
  }

  function clearError() {
    const e = $("error");
    e.textContent = "";
    e.hidden = true;
  }

  /** An error message in a section's result area. */
  function failIn(target, err) {
    target.replaceChildren(el("p", { class: "fail", role: "alert", text: String(err) }));
  }

  // ---------------------------------------------------------------------
  // The API
  // ---------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
    toString() {
      let s = (this.status ? this.status + " " : "") + this.code + ": " + this.message;
      if (this.status === 401) s += " (check the API key)";
      return s;
    }
  }

  function key() {
    return sessionStorage.getItem(KEY_STORE) || "";
  }

  /** Calls /api/v1 + path; the parsed answer, or throws an ApiError. */
  async function api(method, path, bodyText) {
    const k = key();
    if (!k) throw new ApiError(0, "no_key", "enter the API key first");
    const headers = { Authorization: "Bearer " + k };
    if (bodyText !== undefined) headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await fetch("/api/v1" + path, {
        method,
        headers,
        body: bodyText,
        cache: "no-store",
        credentials: "omit",
      });
    } catch (e) {
      throw new ApiError(0, "network", "cannot reach the server (" + e.message + ")");
    }
    const text = await res.text();
    let body = null;
    try {
      body = text ? parseExact(text) : null;
    } catch (_) {
      body = null;
    }
    if (!res.ok) {
      const err = body && body.error ? body.error : {};
      throw new ApiError(res.status, err.code || "http_error", err.message || text.slice(0, 200));
    }
    return body;
  }

  // ---------------------------------------------------------------------
  // Metrics
  // ---------------------------------------------------------------------

  /**
   * The sum of every series of `name` in Prometheus text (0 when it has
   * none yet: a labelled counter appears with its first increment).
   */
  function metricSum(text, name) {
    let sum = 0;
    for (const line of text.split("\n")) {
      if (!line.startsWith(name)) continue;
      let rest = line.slice(name.length);
      if (rest[0] === "{") {
        // Skip the labels; values may hold } inside quotes.
        let i = 1;
        let quoted = false;
        for (; i < rest.length; i++) {
          const c = rest[i];
          if (quoted && c === "\\") i++;
          else if (c === '"') quoted = !quoted;
          else if (c === "}" && !quoted) break;
        }
        rest = rest.slice(i + 1);
      } else if (rest[0] !== " ") {
        continue; // another metric with this prefix
      }
      const v = Number(rest.trim().split(/\s+/)[0]);
      if (Number.isFinite(v)) sum += v;
    }
    return sum;
  }

  async function readCounters() {
    try {
      const res = await fetch("/metrics", { cache: "no-store", credentials: "omit" });
      if (!res.ok) return null;
      const text = await res.text();
      return {
        pushes: metricSum(text, "pushgate_center_pushes_total"),
        deliveries: metricSum(text, "pushgate_center_deliveries_total"),
      };
    } catch (_) {
      return null;
    }
  }

  // ---------------------------------------------------------------------
  // Polling: totals, rooms, chart
  // ---------------------------------------------------------------------

  const samples = []; // {t, conn, pushes, deliveries} (rates per second or null)
  let prevCounters = null; // {t, pushes, deliveries}
  let pollGen = 0;
  let pollTimer = null;

  function perSecond(cur, prev, dt) {
    if (cur === null || prev === null || dt <= 0) return null;
    return Math.max(0, cur - prev) / dt;
  }

  async function poll(gen) {
    if (gen !== pollGen) return;
    let stats;
    try {
      stats = await api("GET", "/stats");
    } catch (e) {
      if (gen !== pollGen) return;
      showError("Stats: " + e);
      if (e.status === 401) {
        // A refused key never starts working: ask for it again.
        sessionStorage.removeItem(KEY_STORE);
        stopPolling("Not connected: the key was refused.");
        $("key").focus();
        return;
      }
      $("live").textContent = "Connection problem; retrying every " + POLL_MS / 1000 + " s.";
      pollTimer = setTimeout(() => poll(gen), POLL_MS);
      return;
    }
    const counters = await readCounters();
    if (gen !== pollGen) return;
    clearError();
    const now = Date.now();
    let pushes = null;
    let deliveries = null;
    if (counters && prevCounters) {
      const dt = (now - prevCounters.t) / 1000;
      pushes = perSecond(counters.pushes, prevCounters.pushes, dt);
      deliveries = perSecond(counters.deliveries, prevCounters.deliveries, dt);
    }
    prevCounters = counters ? { t: now, ...counters } : null;
    samples.push({ t: now, conn: stats.connections, pushes, deliveries });
    while (samples.length && samples[0].t < now - WINDOW_MS) samples.shift();

    $("stat-connections").textContent = num(stats.connections);
    $("stat-users").textContent = num(stats.users);
    $("stat-rooms").textContent = num(stats.rooms.length);
    $("stat-pushes").textContent = rate(pushes);
    $("stat-deliveries").textContent = rate(deliveries);
    renderRooms(stats.rooms);
    drawChart();
    $("live").textContent = "Connected · updated " + new Date(now).toLocaleTimeString();
    pollTimer = setTimeout(() => poll(gen), POLL_MS);
  }

  function startPolling() {
    stopPolling("Connecting…");
    pollGen++;
    poll(pollGen);
  }

  function stopPolling(why) {
    pollGen++;
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = null;
    prevCounters = null;
    $("live").textContent = why;
  }

  function renderRooms(rooms) {
    const body = $("rooms").tBodies[0];
    const sorted = rooms.slice().sort((a, b) => b.connections - a.connections);
    if (!sorted.length) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: "2", class: "muted", text: "no live room" })));
      return;
    }
    body.replaceChildren(
      ...sorted.map((r) =>
        el("tr", {}, el("td", {}, el("code", { text: String(r.room) })), el("td", { class: "num", text: num(r.connections) })),
      ),
    );
  }

  // ---------------------------------------------------------------------
  // The chart: two panels on one canvas, drawn by hand
  // ---------------------------------------------------------------------

  const COLORS = { conn: "#2563eb", pushes: "#ea580c", deliveries: "#16a34a", grid: "#e5e7eb", text: "#4b5563" };

  /** A round axis maximum at or above v (1, 2, 5 × 10^n). */
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function drawChart() {
    const canvas = $("chart");
    const dpr = window.devicePixelRatio || 1;
    const cssW = canvas.clientWidth || 900;
    const cssH = canvas.clientHeight || 260;
    if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
      canvas.width = Math.round(cssW * dpr);
      canvas.height = Math.round(cssH * dpr);
    }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, cssW, cssH);
    g.font = "11px system-ui, sans-serif";

    const now = samples.length ? samples[samples.length - 1].t : Date.now();
    const left = 52;
    const right = cssW - 10;
    const gap = 22;
    const panelH = (cssH - 32 - gap) / 2; // room below for the time axis
    const x = (t) => right - ((now - t) / WINDOW_MS) * (right - left);

    const panels = [
      { top: 6, series: [["conn", COLORS.conn]], title: "connections" },
      { top: 6 + panelH + gap, series: [["pushes", COLORS.pushes], ["deliveries", COLORS.deliveries]], title: "per second" },
    ];
    for (const p of panels) {
      let max = 0;
      for (const s of samples) for (const [k] of p.series) if (s[k] !== null) max = Math.max(max, s[k]);
      max = niceMax(max);
      const y = (v) => p.top + panelH - (v / max) * panelH;
      // Grid and labels.
      g.strokeStyle = COLORS.grid;
      g.fillStyle = COLORS.text;
      g.lineWidth = 1;
      g.textAlign = "right";
      g.textBaseline = "middle";
      for (const f of [0, 0.5, 1]) {
        const yy = Math.round(y(max * f)) + 0.5;
        g.beginPath();
        g.moveTo(left, yy);
        g.lineTo(right, yy);
        g.stroke();
        g.fillText(max * f >= 10 ? fmt.format(Math.round(max * f)) : String(+(max * f).toFixed(2)), left - 6, yy);
      }
      g.textAlign = "left";
      g.textBaseline = "top";
      g.fillText(p.title, left + 4, p.top);
      // Lines.
      for (const [k, color] of p.series) {
        g.strokeStyle = color;
        g.lineWidth = 2;
        g.beginPath();
        let pen = false;
        for (const s of samples) {
          if (s[k] === null) {
            pen = false;
            continue;
          }
          if (pen) g.lineTo(x(s.t), y(s[k]));
          else g.moveTo(x(s.t), y(s[k]));
          pen = true;
        }
        g.stroke();
      }
    }
    // Time axis.
    g.fillStyle = COLORS.text;
    g.textBaseline = "bottom";
    g.textAlign = "center";
    for (const m of [5, 4, 3, 2, 1, 0]) {
      const at = Math.max(left + 20, Math.min(right - 12, x(now - m * 60000)));
      g.fillText(m ? "−" + m + " min" : "now", at, cssH);
    }
    canvas.dataset.samples = String(samples.length);
    const last = samples[samples.length - 1];
    if (last) {
      canvas.setAttribute(
        "aria-label",
        "Last 5 minutes: now " + last.conn + " connections, " + rate(last.pushes) + " pushes/s, " +
          rate(last.deliveries) + " deliveries/s",
      );
    }
  }

  // ---------------------------------------------------------------------
  // User lookup and kick
  // ---------------------------------------------------------------------

  async function lookup(user, note) {
    const out = $("user-result");
    let v;
    try {
      v = await api("GET", "/users/" + encodeURIComponent(user));
    } catch (e) {
      failIn(out, "Look up " + user + ": " + e);
      return;
    }
    const conns = v.connections || [];
    const parts = [];
    if (note) parts.push(el("p", { class: "ok", role: "status", id: "kick-note", text: note }));
    parts.push(
      el(
        "p",
        { id: "user-summary" },
        el("strong", { text: v.user }),
        v.online ? " is online with " + conns.length + " connection" + (conns.length === 1 ? "" : "s") : " is offline",
        " · total time online " + duration(Number(v.online_ms) || 0),
      ),
    );
    if (conns.length) {
      const hasTransport = conns.some((c) => c.transport !== undefined);
      const head = ["Connection", "Room", "Device"].concat(hasTransport ? ["Transport"] : [], ["Since"]);
      const now = Date.now();
      const rows = conns.map((c) =>
        el(
          "tr",
          {},
          el("td", {}, el("code", { class: "conn-id", text: String(c.conn) })),
          el("td", {}, el("code", { text: String(c.room) })),
          el("td", { class: "device", text: c.device === null || c.device === undefined ? "–" : String(c.device) }),
          hasTransport ? el("td", { text: String(c.transport ?? "–") }) : null,
          el(
            "td",
            { title: new Date(Number(c.since)).toISOString() },
            new Date(Number(c.since)).toLocaleString() + " (" + duration(Math.max(0, now - Number(c.since))) + " ago)",
          ),
        ),
      );
      parts.push(
        el(
          "table",
          { id: "user-connections" },
          el("caption", { class: "visually-hidden", text: "Live connections of " + v.user }),
          el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col", text: h })))),
          el("tbody", {}, ...rows),
        ),
      );
      const kick = el("button", { type: "button", id: "kick", class: "danger", text: "Kick " + v.user });
      kick.addEventListener("click", () => doKick(v.user, conns.length, kick));
      parts.push(el("p", {}, kick));
    }
    out.replaceChildren(...parts);
  }

  async function doKick(user, n, button) {
    const sure = window.confirm(
      "Close " + (n === 1 ? "the connection" : "all " + n + " connections") + " of " + user +
        "? Clients get close code 4005 (kicked); they may reconnect.",
    );
    if (!sure) return;
    button.disabled = true;
    try {
      const r = await api("DELETE", "/users/" + encodeURIComponent(user) + "/connections");
      await lookup(user, "Kicked " + r.kicked + " connection" + (Number(r.kicked) === 1 ? "" : "s") + " of " + user + ".");
    } catch (e) {
      button.disabled = false;
      failIn($("user-result"), "Kick " + user + ": " + e);
    }
  }

  // ---------------------------------------------------------------------
  // Push
  // ---------------------------------------------------------------------

  function target() {
    const r = document.querySelector('input[name="target"]:checked');
    return r ? r.value : "users";
  }

  function showTargetRows() {
    const t = target();
    $("row-users").hidden = t !== "users";
    $("row-channel").hidden = t !== "channel";
  }

  /** The push request for the form, or throws a message for the operator. */
  function pushRequest() {
    const t = target();
    const data = $("push-data").value.trim();
    if (!data) throw new Error("Data is empty: enter a JSON value (null is one).");
    try {
      JSON.parse(data); // validity only: the text itself is sent, numbers exact
    } catch (e) {
      throw new Error("Data is not valid JSON: " + e.message);
    }
    if (t === "users") {
      const users = [...new Set($("push-users").value.split(",").map((u) => u.trim()).filter((u) => u))];
      if (!users.length) throw new Error("Enter at least one user id.");
      const store = $("push-store").checked;
      return {
        path: "/push/users",
        body: '{"users":' + JSON.stringify(users) + ',"data":' + data + ',"store":' + store + "}",
        what: users.length === 1 ? "user " + users[0] : users.length + " users",
      };
    }
    if (t === "channel") {
      const channel = $("push-channel").value.trim();
      if (!CHANNEL_RE.test(channel)) {
        throw new Error("Channel: 1 to 128 letters, digits and _ . : @ / -");
      }
      const history = $("push-history").checked;
      return {
        path: "/push/channel",
        body: '{"channel":' + JSON.stringify(channel) + ',"data":' + data + ',"history":' + history + "}",
        what: "channel " + channel,
      };
    }
    return { path: "/push/broadcast", body: '{"data":' + data + "}", what: "everyone", broadcast: true };
  }

  let taskGen = 0;

  async function doPush(ev) {
    ev.preventDefault();
    const out = $("push-result");
    let req;
    try {
      req = pushRequest();
    } catch (e) {
      failIn(out, e.message);
      return;
    }
    if (req.broadcast && !window.confirm("Broadcast to every live connection?")) return;
    const send = $("push-send");
    send.disabled = true;
    try {
      const r = await api("POST", req.path, req.body);
      const parts = [el("code", { class: "msg-id", id: "push-id", text: String(r.id) })];
      let text;
      if (req.broadcast) {
        text = " accepted for everyone: task " + r.task;
      } else {
        text = " sent to " + req.what + ": delivered to " + num(r.delivered) + " connection" + (r.delivered === 1 ? "" : "s");
        if (r.stored !== undefined) text += ", stored for " + num(r.stored) + " user" + (r.stored === 1 ? "" : "s");
      }
      out.replaceChildren(el("p", { class: "ok", role: "status" }, "Message ", ...parts, text + "."));
      if (req.broadcast) followTask(r.task);
    } catch (e) {
      failIn(out, "Push to " + req.what + ": " + e);
    } finally {
      send.disabled = false;
    }
  }

  async function followTask(task) {
    const gen = ++taskGen;
    const box = $("task");
    const bar = $("task-progress");
    const text = $("task-text");
    $("task-id").textContent = task;
    bar.value = 0;
    bar.textContent = "0 %";
    text.textContent = "queued";
    box.hidden = false;
    box.dataset.state = "queued";
    for (;;) {
      let v;
      try {
        v = await api("GET", "/tasks/" + encodeURIComponent(task));
      } catch (e) {
        if (gen !== taskGen) return;
        text.textContent = "cannot follow the task: " + e;
        box.dataset.state = "error";
        return;
      }
      if (gen !== taskGen) return;
      const total = Number(v.rooms_total) || 0;
      const done = Number(v.rooms_done) || 0;
      const finished = v.state === "done" || v.state === "failed";
      const pct = total ? Math.round((done / total) * 100) : finished ? 100 : 0;
      bar.value = pct;
      bar.textContent = pct + " %";
      text.textContent =
        pct + " % · " + v.state + " · rooms " + done + "/" + total +
        (Number(v.rooms_failed) ? " (" + v.rooms_failed + " failed)" : "") +
        " · delivered to " + num(v.delivered);
      box.dataset.state = v.state;
      if (finished) return;
      await new Promise((r) => setTimeout(r, TASK_POLL_MS));
    }
  }

  // ---------------------------------------------------------------------
  // Wiring
  // ---------------------------------------------------------------------

  function init() {
    $("key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const k = $("key").value.trim();
      if (!k) return;
      sessionStorage.setItem(KEY_STORE, k);
      $("key").value = "";
      clearError();
      startPolling();
    });
    $("key-forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORE);
      stopPolling("Not connected: enter the API key.");
      for (const id of ["stat-connections", "stat-users", "stat-rooms", "stat-pushes", "stat-deliveries"]) {
        $(id).textContent = "–";
      }
    });
    $("user-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const u = $("user").value.trim();
      if (u) lookup(u);
    });
    for (const r of document.querySelectorAll('input[name="target"]')) r.addEventListener("change", showTargetRows);
    showTargetRows();
    $("push-form").addEventListener("submit", doPush);
    window.addEventListener("resize", drawChart);
    drawChart();
    if (key()) startPolling();
    else $("key").focus();
  }

  // For tests and the curious (window.pushgateConsole.parseExact("…")).
  window.pushgateConsole = { parseExact, quoteBigInts, metricSum };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();

/*
 * pushgate browser client: WebSocket, JSON subprotocol (pushgate.v1.json).
 *
 * One file, no build, no dependencies. Load it either way:
 *
 *   <script src="pushgate.js"></script>              then window.pushgate.connect(...)
 *   <script type="module">
 *     import "./pushgate.js";                         then globalThis.pushgate.connect(...)
 *   </script>
 *
 * (A file cannot both `export` and run as a classic script, so it defines
 * the global `pushgate`, and `module.exports` under CommonJS / Node.)
 *
 *   const client = pushgate.connect(["wss://push.example.com/ws"], fetchToken, {
 *     device: "browser-" + myInstallationId,
 *     channels: ["news"],
 *     onMessage: (m) => console.log(m.id, m.channel, m.data),
 *   });
 *   client.subscribe("chat:42");
 *   const sent = await client.send("bob", { text: "hi" });   // {id, cid} once stored
 *   await client.publish("chat:42", { text: "hi all" });     // needs the token's `pub` claim
 *   client.close();
 *
 * What it does (docs/PROTOCOL.md, docs/CLIENTS.md):
 * - auth first, with a token from `tokenFn` (called before every connection,
 *   so an expired token can be replaced), the device id, and `last_id`;
 * - ping every `heartbeat` seconds (from auth_ok); a connection silent for
 *   two heartbeats is considered dead and replaced;
 * - reconnect with exponential backoff and jitter, rotating through `urls`;
 *   after a 4007 close (server draining) wait exactly `reconnect_after_ms`;
 * - resume with `last_id` = the highest id of a user message received;
 * - drop duplicates by id (a bounded set of recent ids, never "id <= last");
 * - re-subscribe channels after a reconnect, with each channel's last id;
 * - `send` and `publish` return promises settled by `send_ok`/`pub_ok` (or
 *   rejected with the server's {code, message}); a message whose connection
 *   ends before its answer is sent again on the next one with the same cid,
 *   so it is delivered once.
 *
 * Message ids are 64-bit and exceed 2^53, which JSON.parse cannot hold
 * exactly: this client reads them from the frame text and hands them to you
 * as decimal strings (compare with BigInt(id)). `ts` is a number.
 */
(function (root) {
  "use strict";

  var SUBPROTOCOL = "pushgate.v1.json";
  var DRAINING = 4007;
  // send/pub waiting for an answer at most.
  var MAX_OUTGOING = 1024;

  // The id of a send_ok/pub_ok frame, exactly: the server writes it last.
  var OK_ID = /"id"\s*:\s*(-?\d+)\s*\}\s*$/;

  /** A fresh client message id: 32 random hex digits. */
  function newCid() {
    var b = new Uint8Array(16);
    var c = root.crypto;
    if (c && c.getRandomValues) c.getRandomValues(b);
    else for (var i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
    return Array.prototype.map.call(b, function (x) { return (x < 16 ? "0" : "") + x.toString(16); }).join("");
  }

  // The id of a msg frame, exactly, from its text. The server writes
  // {"op":"msg","id":<digits>,...}; any other layout falls back to JSON.parse.
  var MSG_ID = /^\{\s*"op"\s*:\s*"msg"\s*,\s*"id"\s*:\s*(-?\d+)/;

  function delayFromReason(reason) {
    var m = /reconnect_after_ms=(\d+)/.exec(reason || "");
    if (!m) return null;
    return Math.min(Number(m[1]), 600000);
  }

  function isInteger(s) {
    return typeof s === "string" && /^-?\d+$/.test(s);
  }

  // The greater of two decimal id strings (either may be null).
  function maxId(a, b) {
    if (a === null || a === undefined) return b;
    if (b === null || b === undefined) return a;
    return BigInt(a) >= BigInt(b) ? a : b;
  }

  // JSON text of a frame whose 64-bit id fields (last_id, id) are written
  // exactly from decimal strings.
  function frameText(obj, idFields) {
    var plain = {};
    var extra = "";
    for (var k in obj) {
      if (!Object.prototype.hasOwnProperty.call(obj, k) || obj[k] === undefined || obj[k] === null) continue;
      if (idFields.indexOf(k) >= 0) {
        var v = String(obj[k]);
        if (!isInteger(v)) throw new Error("pushgate: " + k + " must be an integer, got " + v);
        extra += "," + JSON.stringify(k) + ":" + v;
      } else {
        plain[k] = obj[k];
      }
    }
    var text = JSON.stringify(plain);
    return text.slice(0, -1) + extra + "}";
  }

  /** A bounded set of recent ids: remembers the newest `capacity`. */
  function RecentIds(capacity) {
    this.capacity = Math.max(1, capacity | 0);
    this.set = new Set();
    this.order = [];
    this.head = 0;
  }
  /** Records `id`; false when it was already there (a duplicate). */
  RecentIds.prototype.insert = function (id) {
    if (this.set.has(id)) return false;
    this.set.add(id);
    this.order.push(id);
    if (this.order.length - this.head > this.capacity) {
      this.set.delete(this.order[this.head]);
      this.order[this.head] = undefined;
      this.head++;
      if (this.head > 1024 && this.head * 2 > this.order.length) {
        this.order = this.order.slice(this.head);
        this.head = 0;
      }
    }
    return true;
  };

  /**
   * Connects to pushgate and keeps the session alive.
   *
   * @param {string|string[]} urls  ws:// or wss:// URLs of the WebSocket
   *   listener (path /ws), tried in turn; every reconnect uses the next one.
   * @param {string|function(): (string|Promise<string>)} tokenFn  the JWT, or
   *   a function returning it (called before every connection).
   * @param {object} [opts]
   * @param {string} [opts.device]  device id sent with auth (when the token has no `dev`).
   * @param {string|number} [opts.lastId]  resume after this id on the first connection.
   * @param {string[]} [opts.channels]  channels to subscribe to.
   * @param {boolean} [opts.autoAck=false]  ack user messages once onMessage returned.
   * @param {number} [opts.ackIntervalMs=1000]  acks are coalesced over this time.
   * @param {number} [opts.backoffInitialMs=500]  first reconnect delay bound.
   * @param {number} [opts.backoffMaxMs=30000]  largest reconnect delay bound.
   * @param {number} [opts.connectTimeoutMs=10000]  limit for open + auth_ok.
   * @param {number} [opts.dedupe=4096]  how many recent ids to remember.
   * @param {function} [opts.WebSocket]  WebSocket constructor (Node: require("ws")).
   * @param {function({id: string, ts: number, channel: (string|undefined), data: *, from: (string|undefined), cid: (string|undefined)})} [opts.onMessage]
   *   `from` and `cid` are set on messages another client sent (`send`, `publish`).
   * @param {function({conn: string, user: string, room: string, heartbeat: number, url: string, resumedFrom: (string|null)})} [opts.onConnect]
   * @param {function({code: (number|null), reason: string, url: string, retryInMs: number})} [opts.onDisconnect]
   * @param {function({channel: string})} [opts.onSubscribe]
   * @param {function({channel: string, code: string, message: string})} [opts.onSubscribeError]
   * @param {function({code: string, message: string})} [opts.onError]  non-fatal error frames
   * @param {function({channel: string, user: string, device: string})} [opts.onJoin]
   *   another member subscribed to a channel watched with `watchPresence`.
   * @param {function({channel: string, user: string, device: string})} [opts.onLeave]
   *   a member of a watched channel unsubscribed or went away.
   * @returns {{subscribe: function(string, (string|number)=): void,
   *            unsubscribe: function(string): void, ack: function((string|number)): void,
   *            send: function(string, *, string=): Promise<{id: string, cid: string}>,
   *            publish: function(string, *, string=): Promise<{id: string, cid: string}>,
   *            watchPresence: function(string): void,
   *            presence: function(string): Promise<{channel: string, users: Array<{user: string, connections: number}>, more: boolean}>,
   *            close: function(): void, lastId: (string|null), connected: boolean}}
   */
  function connect(urls, tokenFn, opts) {
    opts = opts || {};
    var list = Array.isArray(urls) ? urls.slice() : [urls];
    if (list.length === 0) throw new Error("pushgate: no url");
    var WS = opts.WebSocket || root.WebSocket;
    if (!WS) throw new Error("pushgate: no WebSocket implementation (pass opts.WebSocket)");
    var getToken = typeof tokenFn === "function" ? tokenFn : function () { return tokenFn; };
    var noop = function () {};
    var on = {
      message: opts.onMessage || noop,
      connect: opts.onConnect || noop,
      disconnect: opts.onDisconnect || noop,
      subscribe: opts.onSubscribe || noop,
      subscribeError: opts.onSubscribeError || noop,
      error: opts.onError || noop,
      join: opts.onJoin || noop,
      leave: opts.onLeave || noop,
    };
    var backoffInitial = opts.backoffInitialMs || 500;
    var backoffMax = Math.max(opts.backoffMaxMs || 30000, backoffInitial);
    var connectTimeout = opts.connectTimeoutMs || 10000;
    var ackInterval = opts.ackIntervalMs === undefined ? 1000 : opts.ackIntervalMs;

    var recent = new RecentIds(opts.dedupe || 4096);
    var lastId = opts.lastId === undefined || opts.lastId === null ? null : String(opts.lastId);
    var subs = new Map(); // channel -> last id seen on it (string) or null
    var watched = new Set(); // channels subscribed with presence events
    var presenceAsked = new Map(); // seq -> {resolve, reject} of presence()
    (opts.channels || []).forEach(function (c) { subs.set(c, null); });
    var ackWant = null, ackSent = null, ackTimer = null;

    var next = 0, attempt = 0, closed = false, connected = false;
    var ws = null, seq = 1, pendingSubs = new Map();
    // send/pub not yet written on a live connection, oldest first, and
    // those written awaiting their answer, by seq.
    var outbox = [], inflight = new Map();
    var pingTimer = null, deadTimer = null, retryTimer = null, openTimer = null;
    var heartbeatMs = 30000;
    var ended = false; // the current attempt has been handled as ended
    var curUrl = null, curResumedFrom = null;

    function log(fn, arg) {
      try { fn(arg); } catch (e) { setTimeout(function () { throw e; }); }
    }

    function send(obj, idFields) {
      if (ws && ws.readyState === 1) ws.send(frameText(obj, idFields || []));
    }

    function backoff() {
      var ceiling = Math.min(backoffMax, backoffInitial * Math.pow(2, Math.min(attempt, 30)));
      attempt++;
      return ceiling / 2 + Math.random() * (ceiling / 2);
    }

    function clearTimers() {
      clearInterval(pingTimer); pingTimer = null;
      clearTimeout(deadTimer); deadTimer = null;
      clearTimeout(openTimer); openTimer = null;
    }

    function alive() {
      clearTimeout(deadTimer);
      if (!connected) return;
      deadTimer = setTimeout(function () {
        end(null, "nothing received for 2 heartbeats");
      }, 2 * heartbeatMs);
    }

    function flushAck() {
      clearTimeout(ackTimer); ackTimer = null;
      if (!connected || ackWant === null) return;
      if (ackSent !== null && BigInt(ackSent) >= BigInt(ackWant)) return;
      ackSent = ackWant;
      send({ op: "ack", id: ackWant }, ["id"]);
    }

    function wantAck(id) {
      ackWant = maxId(ackWant, String(id));
      if (ackTimer === null) ackTimer = setTimeout(flushAck, ackInterval);
    }

    function writeOutgoing(o) {
      var s = ++seq;
      inflight.set(s, o);
      var f = o.channel !== undefined
        ? { op: "pub", seq: s, channel: o.channel, data: o.data, cid: o.cid }
        : { op: "send", seq: s, to: o.to, data: o.data, cid: o.cid };
      // Not through frameText, which leaves out null fields: data may be null.
      if (ws && ws.readyState === 1) ws.send(JSON.stringify(f));
    }

    function message(o) {
      return new Promise(function (resolve, reject) {
        if (closed) { reject({ code: "closed", message: "client closed" }); return; }
        if (typeof o.cid !== "string" || o.cid.length < 1 || o.cid.length > 64) {
          reject({ code: "bad_frame", message: "cid: 1 to 64 characters" }); return;
        }
        if (outbox.length + inflight.size >= MAX_OUTGOING) {
          reject({ code: "busy", message: "too many messages waiting for an answer" }); return;
        }
        o.resolve = resolve; o.reject = reject;
        if (connected) writeOutgoing(o); else outbox.push(o);
      });
    }

    function sendSub(channel, from) {
      var s = ++seq;
      pendingSubs.set(s, channel);
      var f = { op: "sub", seq: s, channel: channel, last_id: from };
      if (watched.has(channel)) f.presence = true;
      send(f, ["last_id"]);
    }

    // The current socket ended (close event, fatal error, dead, timeout):
    // report it and schedule the next attempt.
    function end(code, reason) {
      if (ended) return;
      ended = true;
      var sock = ws;
      ws = null;
      connected = false;
      clearTimers();
      if (sock) {
        sock.onopen = sock.onmessage = sock.onclose = sock.onerror = null;
        try { sock.close(1000); } catch (e) { /* already closed */ }
      }
      // Unanswered messages go again, with their cids, on the next connection.
      var again = Array.from(inflight.keys()).sort(function (a, b) { return a - b; })
        .map(function (k) { return inflight.get(k); });
      inflight = new Map();
      outbox = again.concat(outbox);
      presenceAsked.forEach(function (p) { p.reject({ code: "not_connected", message: "the connection ended" }); });
      presenceAsked = new Map();
      if (closed) {
        outbox.forEach(function (o) { o.reject({ code: "closed", message: "client closed" }); });
        outbox = [];
        return;
      }
      var asked = code === DRAINING ? delayFromReason(reason) : null;
      var retry = asked === null ? backoff() : asked;
      log(on.disconnect, { code: code, reason: reason || "", url: curUrl, retryInMs: retry });
      retryTimer = setTimeout(open, retry);
    }

    function onFrame(text) {
      var f;
      try { f = JSON.parse(text); } catch (e) { end(null, "bad frame from server"); return; }
      alive();
      switch (f.op) {
        case "auth_ok":
          connected = true;
          attempt = 0;
          clearTimeout(openTimer); openTimer = null;
          heartbeatMs = Math.max(1, f.heartbeat || 30) * 1000;
          pingTimer = setInterval(function () { send({ op: "ping" }); }, heartbeatMs);
          alive();
          log(on.connect, {
            conn: String(f.conn), user: f.user, room: String(f.room), heartbeat: f.heartbeat,
            url: curUrl, resumedFrom: curResumedFrom,
          });
          subs.forEach(function (from, channel) { sendSub(channel, from); });
          if (ackWant !== null) flushAck();
          var waiting = outbox;
          outbox = [];
          waiting.forEach(writeOutgoing);
          break;
        case "msg": {
          var m = MSG_ID.exec(text);
          var id = m ? m[1] : String(f.id);
          if (!recent.insert(id)) return; // a duplicate
          if (f.channel === undefined) {
            lastId = maxId(lastId, id);
          } else if (subs.has(f.channel)) {
            subs.set(f.channel, maxId(subs.get(f.channel), id));
          }
          log(on.message, { id: id, ts: f.ts, channel: f.channel, data: f.data, from: f.from, cid: f.cid });
          if (opts.autoAck && f.channel === undefined) wantAck(id);
          break;
        }
        case "sub_ok":
          pendingSubs.delete(f.seq);
          log(on.subscribe, { channel: f.channel });
          break;
        case "send_ok":
        case "pub_ok": {
          var o = inflight.get(f.seq);
          if (o) {
            inflight.delete(f.seq);
            var idm = OK_ID.exec(text);
            o.resolve({ id: idm ? idm[1] : String(f.id), cid: f.cid });
          }
          break;
        }
        case "join":
          log(on.join, { channel: f.channel, user: f.user, device: f.device });
          break;
        case "leave":
          log(on.leave, { channel: f.channel, user: f.user, device: f.device });
          break;
        case "presence_ok": {
          var asked = presenceAsked.get(f.seq);
          if (asked) {
            presenceAsked.delete(f.seq);
            asked.resolve({ channel: f.channel, users: f.users, more: f.more });
          }
          break;
        }
        case "unsub_ok":
        case "pong":
          break;
        case "error":
          if (f.close !== undefined) { end(f.close, f.message); return; }
          if (f.seq !== undefined && presenceAsked.has(f.seq)) {
            presenceAsked.get(f.seq).reject({ code: f.code, message: f.message });
            presenceAsked.delete(f.seq);
            break;
          }
          if (f.seq !== undefined && inflight.has(f.seq)) {
            var refused = inflight.get(f.seq);
            inflight.delete(f.seq);
            refused.reject({ code: f.code, message: f.message });
            break;
          }
          if (f.seq !== undefined && pendingSubs.has(f.seq)) {
            var ch = pendingSubs.get(f.seq);
            pendingSubs.delete(f.seq);
            subs.delete(ch);
            watched.delete(ch);
            log(on.subscribeError, { channel: ch, code: f.code, message: f.message });
          } else {
            log(on.error, { code: f.code, message: f.message });
          }
          break;
        default:
          break; // unknown ops from a newer server are ignored
      }
    }

    function open() {
      retryTimer = null;
      if (closed) return;
      var url = list[next % list.length];
      next++;
      curUrl = url;
      curResumedFrom = lastId;
      ended = false;
      seq = 1;
      pendingSubs = new Map();
      // A token that never comes is a failed attempt too.
      openTimer = setTimeout(function () { end(null, "connect timed out"); }, connectTimeout);
      Promise.resolve()
        .then(getToken)
        .then(function (token) {
          if (closed || ended) return;
          var sock;
          try {
            sock = new WS(url, SUBPROTOCOL);
          } catch (e) {
            end(null, "connect: " + e.message);
            return;
          }
          ws = sock;
          sock.onopen = function () {
            send({ op: "auth", seq: 1, token: String(token), device: opts.device, last_id: curResumedFrom }, ["last_id"]);
          };
          sock.onmessage = function (ev) {
            if (typeof ev.data === "string") onFrame(ev.data);
          };
          sock.onerror = function () { /* the close event follows */ };
          sock.onclose = function (ev) {
            end(ev.code === 1006 || ev.code === 1005 ? null : ev.code, ev.reason || "connection closed");
          };
        })
        .catch(function (e) {
          end(null, "token: " + (e && e.message ? e.message : e));
        });
    }

    open();

    return {
      /** Subscribes to `channel` (now and after every reconnect). */
      subscribe: function (channel, fromId) {
        var from = fromId === undefined || fromId === null ? subs.get(channel) || null : String(fromId);
        subs.set(channel, from);
        if (connected) sendSub(channel, from);
      },
      /**
       * Subscribes to `channel` (a channel with presence on the server) and
       * asks for its `join`/`leave` events (opts.onJoin, opts.onLeave), now
       * and after every reconnect.
       */
      watchPresence: function (channel) {
        watched.add(channel);
        if (!subs.has(channel)) subs.set(channel, null);
        if (connected) sendSub(channel, subs.get(channel));
      },
      /**
       * Who is in `channel` (subscribed, with presence): resolves with
       * {channel, users: [{user, connections}], more} (the first 1,000
       * users), rejects with {code, message} (`forbidden`, or
       * `not_connected` when there is no connection or it ended).
       */
      presence: function (channel) {
        return new Promise(function (resolve, reject) {
          if (!connected) { reject({ code: "not_connected", message: "not connected" }); return; }
          var s = ++seq;
          presenceAsked.set(s, { resolve: resolve, reject: reject });
          send({ op: "presence", seq: s, channel: String(channel) });
        });
      },
      /** Unsubscribes from `channel`. */
      unsubscribe: function (channel) {
        watched.delete(channel);
        subs.delete(channel);
        if (connected) send({ op: "unsub", seq: ++seq, channel: channel });
      },
      /** Acks every user message up to `id` (coalesced). */
      ack: function (id) { wantAck(id); },
      /**
       * Sends a 1:1 message to user `to`; resolves with {id, cid} once the
       * server stored it, rejects with {code, message} when it refused it
       * (nothing delivered). Pass `cid` to retry a message across page loads.
       */
      send: function (to, data, cid) {
        return message({ to: String(to), data: data, cid: cid === undefined ? newCid() : cid });
      },
      /** Publishes a group message to `channel`; as `send` otherwise. */
      publish: function (channel, data, cid) {
        return message({ channel: String(channel), data: data, cid: cid === undefined ? newCid() : cid });
      },
      /** Stops: sends the pending ack, closes, never reconnects. */
      close: function () {
        if (closed) return;
        flushAck();
        closed = true;
        clearTimeout(retryTimer);
        clearTimeout(ackTimer);
        end(1000, "client closed");
      },
      /** The highest user-message id received (a decimal string), or null. */
      get lastId() { return lastId; },
      /** Whether the client is connected and authenticated. */
      get connected() { return connected; },
    };
  }

  var api = { connect: connect, RecentIds: RecentIds, delayFromReason: delayFromReason, newCid: newCid };
  root.pushgate = api;
  if (typeof module === "object" && module && module.exports) module.exports = api;
})(typeof globalThis !== "undefined" ? globalThis : typeof self !== "undefined" ? self : this);

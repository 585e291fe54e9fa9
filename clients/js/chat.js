/*
 * The chat example's logic (chat.html): one pushgate client per tab, 1:1
 * messages with client.send, group messages with client.publish, and what
 * arrives shown with its sender. Ids stay decimal strings (64-bit). On a
 * channel with presence (server flag --presence-channels), who is in it
 * and who comes and goes.
 */
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var client = null;
  var me = null;

  function line(cls, text) {
    var div = document.createElement("div");
    div.className = "msg " + cls;
    div.textContent = text;
    $("log").appendChild(div);
    $("log").scrollTop = $("log").scrollHeight;
    return div;
  }

  function textOf(data) {
    return data && typeof data === "object" && typeof data.text === "string" ? data.text : JSON.stringify(data);
  }

  // Who is in `channel` now, shown above the log (nothing on a channel
  // without presence: the server refuses the question).
  function showMembers(channel) {
    client.presence(channel).then(function (p) {
      var names = p.users.map(function (u) { return u.user; });
      $("members").textContent = "in " + channel + ": " + names.join(", ") + (p.more ? ", …" : "");
    }, function () { /* no presence here */ });
  }

  function connect() {
    if (client) client.close();
    var url = $("ws").value.trim();
    var token = $("token").value.trim();
    if (!url || !token) { line("err", "give a server and a token"); return; }
    $("state").textContent = "connecting";
    client = pushgate.connect([url], token, {
      onConnect: function (c) {
        me = c.user;
        $("state").textContent = "online as " + c.user;
        $("send").disabled = false;
        line("sys", "connected as " + c.user + " (connection " + c.conn + ")");
      },
      onDisconnect: function (d) {
        $("state").textContent = "offline (" + (d.code || "") + " " + d.reason + ")";
        $("send").disabled = true;
      },
      onMessage: function (m) {
        var where = m.channel ? " in " + m.channel : "";
        var who = m.from === undefined ? "server" : m.from === me ? "me (another device)" : m.from;
        var div = line("in", who + where + ": " + textOf(m.data));
        div.dataset.id = m.id;
        div.dataset.from = m.from || "";
      },
      onSubscribe: function (s) {
        line("sys", "joined " + s.channel);
        showMembers(s.channel);
      },
      onJoin: function (j) {
        line("sys presence", j.user + " joined " + j.channel);
        showMembers(j.channel);
      },
      onLeave: function (l) {
        line("sys presence", l.user + " left " + l.channel);
        showMembers(l.channel);
      },
      onSubscribeError: function (e) { line("err", "cannot join " + e.channel + ": " + e.code); },
      onError: function (e) { line("err", e.code + ": " + e.message); },
    });
  }

  function send() {
    var text = $("text").value;
    if (!client || !text) return;
    var to = $("to").value.trim();
    var channel = $("channel").value.trim();
    var target = channel ? channel : to;
    if (!target) { line("err", "give a user or a channel"); return; }
    var div = line("mine", "me → " + target + ": " + text + " (sending…)");
    var p = channel ? client.publish(channel, { text: text }) : client.send(to, { text: text });
    $("text").value = "";
    p.then(function (ok) {
      div.textContent = "me → " + target + ": " + text + " (sent #" + ok.id + ")";
      div.dataset.id = ok.id;
      div.classList.add("sent");
    }, function (e) {
      div.textContent = "me → " + target + ": " + text + " (refused: " + e.code + ")";
      div.className = "msg err";
    });
  }

  function fromHash() {
    var h = new URLSearchParams(location.hash.slice(1));
    ["ws", "token", "to", "channel"].forEach(function (k) {
      if (h.get(k)) $(k).value = h.get(k);
    });
    return h.get("token") !== null;
  }

  $("connect").addEventListener("click", connect);
  $("send").addEventListener("click", send);
  $("text").addEventListener("keydown", function (e) { if (e.key === "Enter") send(); });
  $("join").addEventListener("click", function () {
    var ch = $("channel").value.trim();
    if (client && ch) client.watchPresence(ch);
  });
  if (fromHash()) {
    connect();
    var ch = $("channel").value.trim();
    if (ch) client.watchPresence(ch);
  }
})();

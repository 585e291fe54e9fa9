//! The room's counters and their Prometheus text rendering.
//!
//! Plain relaxed atomics: every hot path does at most a couple of
//! `fetch_add`s; gauges that the hub can compute (users, channels) are read
//! at scrape time instead of being maintained.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a message was not queued to a connection.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Drop {
    /// The connection's outbound queue was full (it is then closed with 4006).
    QueueFull,
    /// The connection was already closing.
    Closed,
    /// A live user message already sent by the replay.
    Duplicate,
    /// A presence event (`join`/`leave`) to a watcher whose queue was full:
    /// dropped, and the watcher kept (events are best effort).
    PresenceSkipped,
}

const DROP_LABELS: [&str; 4] = ["queue_full", "closed", "duplicate", "presence_skipped"];

/// Close labels, see `CloseReason::label`.
const CLOSE_LABELS: [&str; 10] = [
    "peer", "io", "4001", "4002", "4003", "4004", "4005", "4006", "4007", "4008",
];

/// Token refresh outcomes.
const REFRESH_LABELS: [&str; 2] = ["ok", "refused"];
/// Outcomes of client `send` and `pub` frames.
const MESSAGE_LABELS: [&str; 2] = ["accepted", "refused"];

/// Auth failure reasons.
const AUTH_LABELS: [&str; 4] = ["token", "not_authenticated", "timeout", "device"];

/// Auth failure kinds, indexes into the auth failure counters.
#[derive(Clone, Copy, Debug)]
pub(crate) enum AuthFailure {
    /// Bad, expired or malformed token.
    Token = 0,
    /// The first frame was not auth.
    NotAuthenticated = 1,
    /// No auth frame in time.
    Timeout = 2,
    /// Unusable device id.
    Device = 3,
}

/// Transports, for the accept counters.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Transport {
    /// WebSocket listener.
    Ws = 0,
    /// Raw TCP listener.
    Tcp = 1,
    /// QUIC listener.
    Quic = 2,
    /// Server-sent events (`GET /sse` on the WebSocket listener).
    Sse = 3,
}

const TRANSPORT_LABELS: [&str; 4] = ["ws", "tcp", "quic", "sse"];

impl Transport {
    /// The transport's name, as in the metrics' labels.
    pub(crate) fn label(self) -> &'static str {
        TRANSPORT_LABELS[self as usize]
    }
}

/// HTTP versions of server-sent event streams, for their gauge.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Http {
    /// HTTP/1.1: the stream is the connection.
    H1 = 0,
    /// HTTP/2: one stream of a connection that may carry more.
    H2 = 1,
}

const HTTP_LABELS: [&str; 2] = ["1.1", "2"];

/// All counters of one room.
#[derive(Default, Debug)]
pub(crate) struct Metrics {
    pub(crate) sockets: AtomicU64,
    pub(crate) accepted: [AtomicU64; 4],
    pub(crate) refused: [AtomicU64; 4],
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) quic_retries: AtomicU64,
    pub(crate) frames_in: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    pub(crate) presence_events: AtomicU64,
    pub(crate) queue_full: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) replays_skipped: AtomicU64,
    pub(crate) resyncs: AtomicU64,
    pub(crate) replay_retries: AtomicU64,
    pub(crate) replay_turns_missed: AtomicU64,
    pub(crate) replays_waiting: AtomicU64,
    pub(crate) backend_errors: AtomicU64,
    /// Open HTTP/2 connections (https:// with ALPN h2).
    pub(crate) h2_connections: AtomicU64,
    /// Open server-sent event streams, by [`Http`] version.
    sse_open: [AtomicU64; 2],
    drops: [AtomicU64; 4],
    closes: [AtomicU64; 10],
    refreshes: [AtomicU64; 2],
    messages: [AtomicU64; 2],
    auth_failures: [AtomicU64; 4],
}

/// Adds `n` to a counter.
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Adds one to a counter.
pub(crate) fn inc(c: &AtomicU64) {
    add(c, 1);
}

impl Metrics {
    /// Counts a dropped message.
    pub(crate) fn dropped(&self, why: Drop) {
        let i = match why {
            Drop::QueueFull => 0,
            Drop::Closed => 1,
            Drop::Duplicate => 2,
            Drop::PresenceSkipped => 3,
        };
        inc(&self.drops[i]);
    }

    /// Counts a session end by its label (`CloseReason::label`).
    pub(crate) fn closed(&self, label: &str) {
        if let Some(i) = CLOSE_LABELS.iter().position(|l| *l == label) {
            inc(&self.closes[i]);
        }
    }

    /// Counts a `refresh` frame: accepted or refused.
    pub(crate) fn refreshed(&self, ok: bool) {
        inc(&self.refreshes[usize::from(!ok)]);
    }

    /// Counts a `send` or `pub` frame: accepted or refused (any error).
    pub(crate) fn message(&self, ok: bool) {
        inc(&self.messages[usize::from(!ok)]);
    }

    /// Counts an auth failure.
    pub(crate) fn auth_failed(&self, why: AuthFailure) {
        inc(&self.auth_failures[why as usize]);
    }

    /// Counts a refused connection (room full).
    pub(crate) fn refused(&self, t: Transport) {
        inc(&self.refused[t as usize]);
    }

    /// Counts a server-sent event stream opened (`true`) or ended (`false`).
    pub(crate) fn sse_open(&self, http: Http, open: bool) {
        let c = &self.sse_open[http as usize];
        if open {
            inc(c);
        } else {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts an accepted connection.
    pub(crate) fn accepted(&self, t: Transport) {
        inc(&self.accepted[t as usize]);
    }

    /// Appends the Prometheus text exposition of these counters plus the
    /// hub gauges passed in.
    pub(crate) fn write(&self, out: &mut String, conns: u64, users: u64, channels: u64) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        gauge(
            out,
            "pushgate_room_connections",
            "Authenticated connections.",
            conns,
        );
        gauge(
            out,
            "pushgate_room_sockets",
            "Open client sockets, authenticated or not.",
            get(&self.sockets),
        );
        gauge(
            out,
            "pushgate_room_users",
            "Distinct users connected.",
            users,
        );
        gauge(
            out,
            "pushgate_room_channels",
            "Channels with at least one subscriber.",
            channels,
        );
        gauge(
            out,
            "pushgate_room_h2_connections",
            "Open HTTP/2 connections (https:// with ALPN h2, carrying server-sent event streams).",
            get(&self.h2_connections),
        );
        labelled_kind(
            out,
            "pushgate_room_sse_connections",
            "Open server-sent event streams, by HTTP version (each is one connection).",
            "gauge",
            ("http", &HTTP_LABELS),
            &self.sse_open,
        );
        labelled(
            out,
            "pushgate_room_accepted_total",
            "Sockets accepted, by transport (an SSE stream's socket counts under ws when accepted and under sse once its stream opens; each HTTP/2 stream counts under sse).",
            "transport",
            &TRANSPORT_LABELS,
            &self.accepted,
        );
        labelled(
            out,
            "pushgate_room_refused_total",
            "Sockets refused because the room was full, by transport (sse: HTTP/2 streams refused).",
            "transport",
            &TRANSPORT_LABELS,
            &self.refused,
        );
        counter(
            out,
            "pushgate_room_handshake_failures_total",
            "WebSocket, TLS and QUIC handshakes that failed or timed out.",
            get(&self.handshake_failures),
        );
        counter(
            out,
            "pushgate_room_quic_retries_total",
            "QUIC connection attempts answered with a Retry (address validation).",
            get(&self.quic_retries),
        );
        counter(
            out,
            "pushgate_room_frames_in_total",
            "Client frames received.",
            get(&self.frames_in),
        );
        counter(
            out,
            "pushgate_room_frames_out_total",
            "Frames sent to clients.",
            get(&self.frames_out),
        );
        counter(
            out,
            "pushgate_room_deliveries_total",
            "Pushed messages queued to a connection.",
            get(&self.deliveries),
        );
        counter(
            out,
            "pushgate_room_presence_events_total",
            "join and leave frames queued to connections watching a channel's presence.",
            get(&self.presence_events),
        );
        labelled(
            out,
            "pushgate_room_drops_total",
            "Pushed messages not delivered to a connection, by reason.",
            "reason",
            &DROP_LABELS,
            &self.drops,
        );
        labelled(
            out,
            "pushgate_room_closes_total",
            "Sessions ended, by close code (peer = client closed, io = transport error).",
            "code",
            &CLOSE_LABELS,
            &self.closes,
        );
        labelled(
            out,
            "pushgate_room_auth_failures_total",
            "Failed authentications, by reason.",
            "reason",
            &AUTH_LABELS,
            &self.auth_failures,
        );
        labelled(
            out,
            "pushgate_room_token_refreshes_total",
            "Token refresh frames, by outcome (refused: invalid, expired or another user's token).",
            "outcome",
            &REFRESH_LABELS,
            &self.refreshes,
        );
        labelled(
            out,
            "pushgate_room_client_messages_total",
            "send and pub frames from clients, by outcome (refused: any error answer).",
            "outcome",
            &MESSAGE_LABELS,
            &self.messages,
        );
        counter(
            out,
            "pushgate_room_replayed_total",
            "Stored messages replayed to reconnecting clients.",
            get(&self.replayed),
        );
        counter(
            out,
            "pushgate_room_replays_skipped_total",
            "Replays answered without a store read: the store knew in memory that nothing was stored after the resume point (embedded store).",
            get(&self.replays_skipped),
        );
        counter(
            out,
            "pushgate_room_resyncs_total",
            "Connections asked to replay their stored messages in place after a fault (a register refilled, a center that could not reach this room).",
            get(&self.resyncs),
        );
        counter(
            out,
            "pushgate_room_replay_retries_total",
            "Replays that failed on the store and were retried in place a few seconds later (live messages held meanwhile) instead of closing the connection.",
            get(&self.replay_retries),
        );
        counter(
            out,
            "pushgate_room_replay_turns_missed_total",
            "Replays that waited half a heartbeat in all for turns at the store (--replays-at-once in flight) and were put off in place, live messages held meanwhile.",
            get(&self.replay_turns_missed),
        );
        gauge(
            out,
            "pushgate_room_replays_waiting",
            "Replays waiting for a turn at the store (--replays-at-once in flight).",
            get(&self.replays_waiting),
        );
        counter(
            out,
            "pushgate_room_queue_full_total",
            "Outbound queue overflows (each closes the connection with 4006).",
            get(&self.queue_full),
        );
        counter(
            out,
            "pushgate_room_backend_errors_total",
            "Backend calls that failed or timed out.",
            get(&self.backend_errors),
        );
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {v}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {v}");
}

fn labelled(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
    counters: &[AtomicU64],
) {
    labelled_kind(out, name, help, "counter", (label, values), counters);
}

fn labelled_kind(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    (label, values): (&str, &[&str]),
    counters: &[AtomicU64],
) {
    header(out, name, help, kind);
    for (v, c) in values.iter().zip(counters) {
        let _ = writeln!(
            out,
            "{name}{{{label}=\"{v}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_and_gauges() {
        let m = Metrics::default();
        m.closed("4006");
        m.closed("4006");
        m.dropped(Drop::Duplicate);
        m.auth_failed(AuthFailure::Timeout);
        let mut s = String::new();
        m.write(&mut s, 3, 2, 1);
        assert!(
            s.contains("pushgate_room_closes_total{code=\"4006\"} 2\n"),
            "{s}"
        );
        assert!(s.contains("pushgate_room_drops_total{reason=\"duplicate\"} 1\n"));
        assert!(s.contains("pushgate_room_auth_failures_total{reason=\"timeout\"} 1\n"));
        assert!(s.contains("pushgate_room_connections 3\n"));
        assert!(s.contains("pushgate_room_users 2\n"));
        assert!(s.contains("# TYPE pushgate_room_channels gauge\n"));
        m.sse_open(Http::H2, true);
        m.sse_open(Http::H2, true);
        m.sse_open(Http::H2, false);
        let mut s = String::new();
        m.write(&mut s, 0, 0, 0);
        assert!(s.contains("# TYPE pushgate_room_sse_connections gauge\n"));
        assert!(s.contains("pushgate_room_sse_connections{http=\"1.1\"} 0\n"));
        assert!(s.contains("pushgate_room_sse_connections{http=\"2\"} 1\n"));
    }
}

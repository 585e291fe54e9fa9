//! Presence over every room: a channel's members merged from each room's
//! own page (`GET /api/v1/channels/{channel}/presence`, and a client's
//! `presence` frame in a cluster), and the presence changes of one room
//! passed on to the others.
//!
//! Each room keeps its members of a channel in user order, so a page is a
//! range read there (O(log n + page)); a cluster page asks every live room
//! for its first `limit` members after the cursor and keeps the first
//! `limit` of their union, adding up the connections of a user present on
//! several rooms. Any unreturned member of a room sorts after that room's
//! last returned one, so the union's first `limit` are the cluster's.

use std::collections::BTreeMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use futures_util::future::join_all;
use proto::{MembersPage, PresenceChange, PresentUser, RoomId, UserId};
use register::Directory;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::{Center, Rooms, RoomsError};

/// Most members one page may hold.
pub const MAX_PAGE: u32 = 10_000;

/// Why a page of members could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The list of live rooms is unavailable.
    #[error("room list unavailable: {0}")]
    Directory(#[from] register::DirError),
    /// A live room did not answer: its members would be missing.
    #[error(transparent)]
    Room(#[from] RoomsError),
}

/// The members of `channel` over every live room after user `after` (from
/// the first when `None`), at most `limit` (1 to [`MAX_PAGE`]), in byte
/// order of the user id.
///
/// # Errors
/// [`PresenceError`] when the room list or a room is unavailable: a page
/// without some room's members would be wrong, not short.
pub async fn members(
    dir: &dyn Directory,
    rooms: &dyn Rooms,
    channel: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<MembersPage, PresenceError> {
    members_with(dir, rooms, channel, after, limit, None).await
}

/// [`members`] for a room that has its own page already (`local`: its id
/// and page, read with the same cursor and limit): that room is not asked
/// over its link, and counts even before the room list shows it.
///
/// # Errors
/// As [`members`].
pub async fn members_with(
    dir: &dyn Directory,
    rooms: &dyn Rooms,
    channel: &str,
    after: Option<&str>,
    limit: u32,
    local: Option<(RoomId, MembersPage)>,
) -> Result<MembersPage, PresenceError> {
    let limit = limit.clamp(1, MAX_PAGE);
    let me = local.as_ref().map(|(id, _)| *id);
    let live = dir.rooms().await?;
    let pages = join_all(
        live.iter()
            .filter(|r| Some(r.room) != me)
            .map(|r| rooms.channel_members(r.room, channel, after, limit)),
    )
    .await;
    let mut merged: BTreeMap<UserId, u32> = BTreeMap::new();
    let mut more = false;
    let local = local.map(|(_, page)| Ok(page));
    for page in pages.into_iter().chain(local) {
        let page = page?;
        more |= page.more;
        for u in page.users {
            let n = merged.entry(u.user).or_insert(0);
            *n = n.saturating_add(u.connections);
        }
    }
    let limit = limit as usize;
    more |= merged.len() > limit;
    let users = merged
        .into_iter()
        .take(limit)
        .map(|(user, connections)| PresentUser { user, connections })
        .collect();
    Ok(MembersPage { users, more })
}

/// Passes presence changes of room `from` to every other live room, in
/// order; returns the connections written. A room that cannot be reached
/// misses them (presence events are best effort; its clients can ask
/// `presence` again), and is logged.
pub async fn relay(
    dir: &dyn Directory,
    rooms: &dyn Rooms,
    from: RoomId,
    changes: &[(bool, PresenceChange)],
) -> u64 {
    let live = match dir.rooms().await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "room list unavailable: presence changes not relayed");
            return 0;
        }
    };
    let calls = live
        .iter()
        .filter(|r| r.room != from)
        .map(|r| rooms.presence_changes(r.room, changes));
    let mut written = 0;
    for r in join_all(calls).await {
        match r {
            Ok(n) => written += n,
            Err(e) => tracing::debug!(error = %e, "presence changes not relayed"),
        }
    }
    written
}

/// Default page of `GET /channels/{channel}/presence`.
pub const DEFAULT_PAGE: u32 = 100;

/// Query of `GET /channels/{channel}/presence`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PresenceQuery {
    /// Where the previous page ended: its `next`. Absent: from the first member.
    #[param(pattern = r"^([0-9a-f]{2}){1,256}$")]
    pub cursor: Option<String>,
    /// Most users to return (1 to 10,000, default 100).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

/// One member of a channel.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    /// The user.
    pub user: String,
    /// Their connections subscribed to the channel (over every room).
    pub connections: u32,
}

/// Answer of `GET /channels/{channel}/presence`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PresenceResp {
    /// The channel.
    pub channel: String,
    /// Members, in byte order of the user id.
    pub users: Vec<MemberView>,
    /// When more follow: the `cursor` of the next page; otherwise null.
    pub next: Option<String>,
}

/// Who is subscribed to a channel with presence (`--presence-channels`),
/// over every room, paged in user order. A channel without presence (or
/// without subscribers) has no members.
#[utoipa::path(
    get, path = "/api/v1/channels/{channel}/presence", tag = "channels",
    params(
        ("channel" = String, Path, description = "channel name", min_length = 1, max_length = 128, pattern = r"^[A-Za-z0-9_.:@/-]+$"),
        PresenceQuery
    ),
    responses(
        (status = 200, description = "a page of members", body = PresenceResp),
        (status = 400, description = "invalid channel name, cursor or limit", body = ErrorBody),
        (status = 401, description = "bad api key", body = ErrorBody),
        (status = 503, description = "a room or the room list could not answer", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn channel_presence(
    State(c): State<Center>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PresenceQuery>, QueryRejection>,
) -> Result<ApiJson<PresenceResp>, ApiError> {
    let Path(channel) = path.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let Query(q) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    if !proto::valid_channel(&channel) {
        return Err(ApiError::InvalidChannel);
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!(
            "limit must be 1 to {MAX_PAGE}"
        )));
    }
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            decode_cursor(c).ok_or_else(|| ApiError::InvalidRequest("invalid cursor".into()))?,
        ),
    };
    let deps = &c.inner.deps;
    let page = members(&*deps.dir, &*deps.rooms, &channel, after.as_deref(), limit)
        .await
        .map_err(|e| {
            tracing::debug!(error = %e, "channel presence unavailable");
            ApiError::Unavailable("rooms")
        })?;
    let next = match page.users.last() {
        Some(last) if page.more => Some(encode_cursor(last.user.as_str())),
        _ => None,
    };
    let users = page
        .users
        .into_iter()
        .map(|u| MemberView {
            user: u.user.as_str().to_owned(),
            connections: u.connections,
        })
        .collect();
    Ok(ApiJson(PresenceResp {
        channel,
        users,
        next,
    }))
}

/// The cursor after user `user`: its bytes in lowercase hex (opaque to
/// clients, and safe in a URL as it is).
fn encode_cursor(user: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(user.len() * 2);
    for b in user.bytes() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// Inverse of [`encode_cursor`]; `None` for what is not pairs of
/// lowercase hex digits. A cursor the server did not make (bytes that are
/// not UTF-8) still names a position: the page starts after its lossy
/// reading.
fn decode_cursor(c: &str) -> Option<String> {
    if c.is_empty() || c.len() % 2 != 0 || c.len() > 2 * proto::token::MAX_SUB_LEN {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let bytes: Option<Vec<u8>> = c
        .as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect();
    Some(String::from_utf8_lossy(&bytes?).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_they_did_not_make() {
        for u in ["a", "alice", "ü/é 1", &"x".repeat(256)] {
            let c = encode_cursor(u);
            assert!(c.bytes().all(|b| b.is_ascii_hexdigit()), "{c}");
            assert_eq!(decode_cursor(&c).as_deref(), Some(u));
        }
        for bad in ["", "a", "zz", "ABCD", &"61".repeat(257)] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
        // Not made by the server, still a position.
        assert_eq!(decode_cursor("ff").as_deref(), Some("\u{fffd}"));
    }
}

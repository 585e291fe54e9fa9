//! The store cases every backend must pass, shared by `suite.rs` (stores
//! in process) and `remote.rs` (stores behind savers, over links). Each case
//! is an `async fn(&dyn Store)`; the test files instantiate them per backend.

#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::time::{SystemTime, UNIX_EPOCH};

/// Calls macro `$m` with the name of every case below, so that each test
/// file instantiates all of them (a new case cannot be left out of one).
macro_rules! every_case {
    ($m:ident) => {
        $m!(
            append_read_order,
            after_id_filtering,
            trims_to_max,
            ttl_expiry,
            multi_user_append,
            reappend_same_id_is_idempotent,
            acks_are_monotonic,
            channel_history_bounds,
            limit_is_respected,
            concurrent_appends_all_durable,
            odd_names,
            closed_store_refuses,
            cids_are_remembered_until_they_expire,
            senders_are_kept,
            seen_users_are_known_until_they_expire,
            a_batch_of_appends_is_each_written,
        );
    };
}

use bytes::Bytes;
use futures_util::future::join_all;
use proto::{MsgId, UserId};
use saver::{Append, Bounds, Store, StoreError, StoredMsg};

pub const HOUR: i64 = 3_600_000;

pub fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

pub fn msg(id: i64, expires_at: i64) -> StoredMsg {
    StoredMsg {
        id: MsgId(id),
        ts: now(),
        expires_at,
        data: Bytes::from(format!("{{\"n\":{id}}}")),
        sender: None,
    }
}

pub fn u(s: &str) -> UserId {
    UserId::new(s)
}

pub fn ids(msgs: &[StoredMsg]) -> Vec<i64> {
    msgs.iter().map(|m| m.id.0).collect()
}

pub const BIG: Bounds = Bounds { max: 1000 };

pub async fn read_all(store: &dyn Store, user: &str) -> Vec<i64> {
    ids(&store
        .read_user(&u(user), MsgId(i64::MIN), now(), 10_000)
        .await
        .unwrap())
}

// ---- cases ---------------------------------------------------------------

pub async fn append_read_order(store: &dyn Store) {
    let t = now() + HOUR;
    for id in [3, 1, 2] {
        store
            .append_users(&[u("ann")], &msg(id, t), BIG)
            .await
            .unwrap();
    }
    let got = store
        .read_user(&u("ann"), MsgId(0), now(), 100)
        .await
        .unwrap();
    assert_eq!(ids(&got), [1, 2, 3]);
    assert_eq!(got[0], msg(1, t).clone_with_ts(got[0].ts));
    assert_eq!(got[2].data, Bytes::from("{\"n\":3}"));
}

pub async fn after_id_filtering(store: &dyn Store) {
    let t = now() + HOUR;
    for id in 1..=10 {
        store
            .append_users(&[u("bob")], &msg(id, t), BIG)
            .await
            .unwrap();
    }
    let r = |after| async move {
        ids(&store
            .read_user(&u("bob"), MsgId(after), now(), 100)
            .await
            .unwrap())
    };
    assert_eq!(r(5).await, [6, 7, 8, 9, 10]);
    assert_eq!(r(10).await, Vec::<i64>::new());
    assert_eq!(r(i64::MAX).await, Vec::<i64>::new());
    assert_eq!(r(-1).await, (1..=10).collect::<Vec<_>>());
}

pub async fn trims_to_max(store: &dyn Store) {
    let t = now() + HOUR;
    for id in 1..=12 {
        store
            .append_users(&[u("cat")], &msg(id, t), Bounds { max: 5 })
            .await
            .unwrap();
    }
    assert_eq!(read_all(store, "cat").await, [8, 9, 10, 11, 12]);
    // A smaller bound on a later push trims further.
    store
        .append_users(&[u("cat")], &msg(13, t), Bounds { max: 2 })
        .await
        .unwrap();
    assert_eq!(read_all(store, "cat").await, [12, 13]);
    // max 0 keeps nothing.
    store
        .append_users(&[u("cat")], &msg(14, t), Bounds { max: 0 })
        .await
        .unwrap();
    assert_eq!(read_all(store, "cat").await, Vec::<i64>::new());
}

pub async fn ttl_expiry(store: &dyn Store) {
    let base = now();
    let short = base + 1_000;
    let long = base + HOUR;
    for (id, exp) in [(1, short), (2, long), (3, short), (4, long)] {
        store
            .append_users(&[u("dan")], &msg(id, exp), BIG)
            .await
            .unwrap();
    }
    let at = |t| async move { ids(&store.read_user(&u("dan"), MsgId(0), t, 100).await.unwrap()) };
    assert_eq!(at(base).await, [1, 2, 3, 4]);
    assert_eq!(at(short - 1).await, [1, 2, 3, 4]);
    assert_eq!(at(short).await, [2, 4], "expired at expires_at");
    assert_eq!(at(base + 2_000).await, [2, 4]);
    assert_eq!(at(long + 1).await, Vec::<i64>::new());
}

pub async fn multi_user_append(store: &dyn Store) {
    let t = now() + HOUR;
    store
        .append_users(&[u("m1"), u("m2"), u("m3")], &msg(1, t), BIG)
        .await
        .unwrap();
    store
        .append_users(&[u("m2")], &msg(2, t), BIG)
        .await
        .unwrap();
    store.append_users(&[], &msg(3, t), BIG).await.unwrap();
    assert_eq!(read_all(store, "m1").await, [1]);
    assert_eq!(read_all(store, "m2").await, [1, 2]);
    assert_eq!(read_all(store, "m3").await, [1]);
    assert_eq!(read_all(store, "m4").await, Vec::<i64>::new());
}

pub async fn reappend_same_id_is_idempotent(store: &dyn Store) {
    let t = now() + HOUR;
    let m = msg(7, t);
    store.append_users(&[u("re")], &m, BIG).await.unwrap();
    store.append_users(&[u("re")], &m, BIG).await.unwrap();
    assert_eq!(read_all(store, "re").await, [7]);
}

pub async fn acks_are_monotonic(store: &dyn Store) {
    let user = u("eve");
    assert_eq!(store.acked(&user, "phone").await.unwrap(), None);
    store.ack(&user, "phone", MsgId(5)).await.unwrap();
    assert_eq!(store.acked(&user, "phone").await.unwrap(), Some(MsgId(5)));
    store.ack(&user, "phone", MsgId(3)).await.unwrap();
    assert_eq!(store.acked(&user, "phone").await.unwrap(), Some(MsgId(5)));
    store.ack(&user, "phone", MsgId(90)).await.unwrap();
    assert_eq!(store.acked(&user, "phone").await.unwrap(), Some(MsgId(90)));
    // Ids beyond f64 precision still compare exactly.
    let big = (1_i64 << 60) + 2;
    store.ack(&user, "phone", MsgId(big)).await.unwrap();
    store.ack(&user, "phone", MsgId(big - 1)).await.unwrap();
    assert_eq!(store.acked(&user, "phone").await.unwrap(), Some(MsgId(big)));
    store.ack(&user, "phone", MsgId(big + 1)).await.unwrap();
    assert_eq!(
        store.acked(&user, "phone").await.unwrap(),
        Some(MsgId(big + 1))
    );
    // Devices and users are separate.
    assert_eq!(store.acked(&user, "laptop").await.unwrap(), None);
    assert_eq!(store.acked(&u("eve2"), "phone").await.unwrap(), None);
    store.ack(&user, "laptop", MsgId(1)).await.unwrap();
    assert_eq!(store.acked(&user, "laptop").await.unwrap(), Some(MsgId(1)));
}

pub async fn channel_history_bounds(store: &dyn Store) {
    let t = now() + HOUR;
    for id in 1..=6 {
        store
            .append_channel("news", &msg(id, t), Bounds { max: 3 })
            .await
            .unwrap();
    }
    let r = |after, limit| async move {
        ids(&store
            .read_channel("news", MsgId(after), now(), limit)
            .await
            .unwrap())
    };
    assert_eq!(r(0, 100).await, [4, 5, 6]);
    assert_eq!(r(4, 100).await, [5, 6]);
    assert_eq!(r(0, 1).await, [4]);
    assert_eq!(
        ids(&store
            .read_channel("other", MsgId(0), now(), 10)
            .await
            .unwrap()),
        Vec::<i64>::new()
    );
    // Channel history and user queues do not mix.
    assert_eq!(read_all(store, "news").await, Vec::<i64>::new());
    // Expired history is filtered.
    store
        .append_channel("news", &msg(7, now() + 500), Bounds { max: 3 })
        .await
        .unwrap();
    let late = ids(&store
        .read_channel("news", MsgId(0), now() + 1_000, 10)
        .await
        .unwrap());
    assert_eq!(late, [5, 6]);
}

pub async fn limit_is_respected(store: &dyn Store) {
    let base = now();
    for id in 1..=20 {
        // Odd ids expire soon, even ones in an hour.
        let exp = if id % 2 == 1 {
            base + 1_000
        } else {
            base + HOUR
        };
        store
            .append_users(&[u("lim")], &msg(id, exp), BIG)
            .await
            .unwrap();
    }
    let r = |t, limit| async move {
        ids(&store
            .read_user(&u("lim"), MsgId(0), t, limit)
            .await
            .unwrap())
    };
    assert_eq!(r(base, 0).await, Vec::<i64>::new());
    assert_eq!(r(base, 4).await, [1, 2, 3, 4]);
    // Expired entries do not count towards the limit.
    assert_eq!(r(base + 2_000, 3).await, [2, 4, 6]);
    assert_eq!(
        r(base + 2_000, 100).await,
        (1..=10).map(|i| i * 2).collect::<Vec<_>>()
    );
}

pub async fn concurrent_appends_all_durable(store: &dyn Store) {
    let t = now() + HOUR;
    let n = 300i64;
    let calls = (1..=n).map(|i| async move {
        let users = [u("shared"), u(&format!("own-{i}"))];
        store.append_users(&users, &msg(i, t), BIG).await
    });
    for r in join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(read_all(store, "shared").await, (1..=n).collect::<Vec<_>>());
    for i in [1, n / 2, n] {
        assert_eq!(read_all(store, &format!("own-{i}")).await, [i]);
    }
    let shared = u("shared");
    let acks = (1..=50).map(|i| store.ack(&shared, "d", MsgId(i)));
    for r in join_all(acks).await {
        r.unwrap();
    }
    assert_eq!(
        store.acked(&u("shared"), "d").await.unwrap(),
        Some(MsgId(50))
    );
}

pub async fn odd_names(store: &dyn Store) {
    let t = now() + HOUR;
    let names = [
        "a:b",
        "{x}",
        "}{",
        "a}b",
        "a%7Db",
        "ünïcødé 😀",
        "pg:{u:z}:q",
        "",
    ];
    for (i, name) in names.iter().enumerate() {
        let id = i64::try_from(i).unwrap() + 1;
        store
            .append_users(&[u(name)], &msg(id, t), BIG)
            .await
            .unwrap();
        store.append_channel(name, &msg(id, t), BIG).await.unwrap();
        store.ack(&u(name), name, MsgId(id)).await.unwrap();
    }
    for (i, name) in names.iter().enumerate() {
        let id = i64::try_from(i).unwrap() + 1;
        assert_eq!(read_all(store, name).await, [id], "user {name:?}");
        let h = store.read_channel(name, MsgId(0), now(), 10).await.unwrap();
        assert_eq!(ids(&h), [id], "channel {name:?}");
        assert_eq!(store.acked(&u(name), name).await.unwrap(), Some(MsgId(id)));
    }
}

pub async fn closed_store_refuses(store: &dyn Store) {
    let t = now() + HOUR;
    store
        .append_users(&[u("cl")], &msg(1, t), BIG)
        .await
        .unwrap();
    store.close().await.unwrap();
    assert!(matches!(
        store.append_users(&[u("cl")], &msg(2, t), BIG).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.read_user(&u("cl"), MsgId(0), now(), 10).await,
        Err(StoreError::Closed)
    ));
    let batch = [users_write(&["cl"], 3, 10), users_write(&["cl2"], 4, 10)];
    let results = store.append_many(&batch).await;
    assert_eq!(results.len(), 2);
    assert!(
        results.iter().all(Result::is_err),
        "a closed store wrote a batch: {results:?}"
    );
    // Closing twice is fine.
    store.close().await.unwrap();
}

pub fn users_write(users: &[&str], id: i64, max: u32) -> Append {
    Append::Users {
        users: users.iter().map(|n| u(n)).collect(),
        msg: msg(id, now() + HOUR),
        bounds: Bounds { max },
    }
}

/// `append_many` does each write as its single call would: every user and
/// channel gets its messages in id order, trimmed per write's bounds, with
/// a result per write; a write to more users than one Redis transaction
/// holds is still whole; an empty batch is nothing.
pub async fn a_batch_of_appends_is_each_written(store: &dyn Store) {
    assert!(store.append_many(&[]).await.is_empty());
    let many: Vec<String> = (0..5000).map(|i| format!("m{i}")).collect();
    let mut big: Vec<&str> = many.iter().map(String::as_str).collect();
    big.push("a");
    let writes = vec![
        users_write(&["a", "b"], 1, 1000),
        users_write(&["b"], 2, 1000),
        Append::Channel {
            channel: "c1".to_owned(),
            msg: msg(3, now() + HOUR),
            bounds: Bounds { max: 10 },
        },
        users_write(&big, 4, 1000),
        users_write(&["a"], 5, 1000),
        users_write(&["t"], 6, 1),
        users_write(&["t"], 7, 1),
        users_write(&[], 8, 1000),
    ];
    let results = store.append_many(&writes).await;
    assert_eq!(results.len(), writes.len());
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "write {i}: {r:?}");
    }
    assert_eq!(read_all(store, "a").await, [1, 4, 5]);
    assert_eq!(read_all(store, "b").await, [1, 2]);
    assert_eq!(read_all(store, "m0").await, [4]);
    assert_eq!(read_all(store, "m4999").await, [4]);
    assert_eq!(read_all(store, "t").await, [7], "trimmed to the newest");
    let h = store.read_channel("c1", MsgId(0), now(), 10).await.unwrap();
    assert_eq!(ids(&h), [3]);
    // Again, the same ids: nothing is added twice.
    assert!(store.append_many(&writes).await.iter().all(Result::is_ok));
    assert_eq!(read_all(store, "a").await, [1, 4, 5]);
}

pub trait CloneWithTs {
    fn clone_with_ts(&self, ts: i64) -> StoredMsg;
}

impl CloneWithTs for StoredMsg {
    fn clone_with_ts(&self, ts: i64) -> StoredMsg {
        StoredMsg { ts, ..self.clone() }
    }
}

/// A cid's id is there after `cid_put`, per user, replaced by a later put,
/// and gone once expired.
pub async fn cids_are_remembered_until_they_expire(store: &dyn Store) {
    let t = now();
    assert_eq!(store.cid_get(&u("alice"), "c-1", t).await.unwrap(), None);
    store
        .cid_put(&u("alice"), "c-1", MsgId(10), t + HOUR)
        .await
        .unwrap();
    store
        .cid_put(&u("alice"), "c:{2}%", MsgId(11), t + HOUR)
        .await
        .unwrap();
    assert_eq!(
        store.cid_get(&u("alice"), "c-1", t).await.unwrap(),
        Some(MsgId(10))
    );
    assert_eq!(
        store.cid_get(&u("alice"), "c:{2}%", t).await.unwrap(),
        Some(MsgId(11))
    );
    // Per user.
    assert_eq!(store.cid_get(&u("bob"), "c-1", t).await.unwrap(), None);
    store
        .cid_put(&u("alice"), "c-1", MsgId(12), t + HOUR)
        .await
        .unwrap();
    assert_eq!(
        store.cid_get(&u("alice"), "c-1", t).await.unwrap(),
        Some(MsgId(12))
    );
    // Expiry: 300 ms ahead, read after it passed.
    store
        .cid_put(&u("carol"), "c-1", MsgId(13), now() + 300)
        .await
        .unwrap();
    assert_eq!(
        store.cid_get(&u("carol"), "c-1", now()).await.unwrap(),
        Some(MsgId(13))
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        store.cid_get(&u("carol"), "c-1", now()).await.unwrap(),
        None
    );
}

/// A user is known after `seen_put` until the record expires; a later put
/// extends it; odd names do not collide.
pub async fn seen_users_are_known_until_they_expire(store: &dyn Store) {
    let t = now();
    assert!(!store.seen_get(&u("alice"), t).await.unwrap());
    store.seen_put(&u("alice"), t + HOUR).await.unwrap();
    store.seen_put(&u("a{b}%"), t + HOUR).await.unwrap();
    assert!(store.seen_get(&u("alice"), t).await.unwrap());
    assert!(store.seen_get(&u("a{b}%"), t).await.unwrap());
    assert!(!store.seen_get(&u("bob"), t).await.unwrap());
    assert!(!store.seen_get(&u("a{b}"), t).await.unwrap());
    // Expiry: 300 ms ahead, read after it passed; a second put extends it.
    store.seen_put(&u("carol"), now() + 300).await.unwrap();
    store.seen_put(&u("dave"), now() + 300).await.unwrap();
    store.seen_put(&u("dave"), now() + HOUR).await.unwrap();
    assert!(store.seen_get(&u("carol"), now()).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(!store.seen_get(&u("carol"), now()).await.unwrap());
    assert!(store.seen_get(&u("dave"), now()).await.unwrap());
}

/// A message's sender (user and cid) comes back from queues and history.
pub async fn senders_are_kept(store: &dyn Store) {
    let mut m = msg(20, now() + HOUR);
    m.sender = Some(proto::Sender {
        user: u("alice"),
        cid: "c-20".into(),
    });
    store.append_users(&[u("bob")], &m, BIG).await.unwrap();
    store.append_channel("room:1", &m, BIG).await.unwrap();
    let got = store
        .read_user(&u("bob"), MsgId(0), now(), 10)
        .await
        .unwrap();
    assert_eq!(got, vec![m.clone()]);
    let got = store
        .read_channel("room:1", MsgId(0), now(), 10)
        .await
        .unwrap();
    assert_eq!(got, vec![m]);
}

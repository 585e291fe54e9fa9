//! One test suite, run against every backend: the embedded store on a temp
//! dir, `RedisStore` against a real `redis-server` on a free port, and
//! `RedisStore` against a real three-master Redis Cluster.
//!
//! Each case is an `async fn(&dyn Store)`; the `suite!` macro instantiates it
//! once per backend.

#![allow(clippy::unwrap_used)]

use futures_util::future::join_all;
use proto::{MsgId, UserId};
use saver::{Bounds, EmbeddedStore, RedisStore, Store, StoreError};

#[macro_use]
mod cases;
use cases::*;

// ---- backends ------------------------------------------------------------

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod on_embedded {
            use saver::Store as _;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = super::EmbeddedStore::open(&dir.path().join("pushgate.redb")).unwrap();
                    super::$case(&store).await;
                    store.close().await.unwrap();
                }
            )*
        }
        mod on_redis {
            use saver::Store as _;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let server = testkit::RedisServer::start();
                    let store = super::RedisStore::connect(&server.url()).await.unwrap();
                    super::$case(&store).await;
                    store.close().await.unwrap();
                }
            )*
        }
        mod on_redis_cluster {
            use saver::Store as _;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let cluster = testkit::RedisCluster::start();
                    let store = super::RedisStore::connect_cluster(&cluster.urls()).await.unwrap();
                    super::$case(&store).await;
                    store.close().await.unwrap();
                }
            )*
        }
    };
}

every_case!(suite);

// ---- backend-specific ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_reopen_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("pushgate.redb");
    let t = now() + HOUR;
    {
        let store = EmbeddedStore::open(&path).unwrap();
        let calls = (1..=100).map(|i| {
            let store = &store;
            async move {
                store
                    .append_users(&[u("r")], &msg(i, t), Bounds { max: 50 })
                    .await
            }
        });
        for r in join_all(calls).await {
            r.unwrap();
        }
        store.append_channel("ch", &msg(1, t), BIG).await.unwrap();
        store.ack(&u("r"), "d", MsgId(77)).await.unwrap();
        store.seen_put(&u("seen"), t).await.unwrap();
        // Dropped without close: like a crash after the calls returned.
        drop(store);
    }
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(read_all(&store, "r").await, (51..=100).collect::<Vec<_>>());
    assert_eq!(store.acked(&u("r"), "d").await.unwrap(), Some(MsgId(77)));
    assert!(store.seen_get(&u("seen"), now()).await.unwrap());
    let h = store.read_channel("ch", MsgId(0), now(), 10).await.unwrap();
    assert_eq!(ids(&h), [1]);
    // The trim count survived too: 50 more keep exactly the newest 50.
    for i in 101..=110 {
        store
            .append_users(&[u("r")], &msg(i, t), Bounds { max: 50 })
            .await
            .unwrap();
    }
    assert_eq!(read_all(&store, "r").await, (61..=110).collect::<Vec<_>>());
    store.close().await.unwrap();
    drop(store);
    // Closed and dropped: the file can be opened again.
    let again = EmbeddedStore::open(&path).unwrap();
    assert_eq!(read_all(&again, "r").await.len(), 50);
    again.close().await.unwrap();
}

/// `nothing_after` never hides a stored message: not after an append (it
/// is raised first), not after a reopen (rebuilt from the queues on disk);
/// and it proves users without messages empty, which is what lets a
/// connect skip the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_nothing_after_never_hides_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pushgate.redb");
    let t = now() + HOUR;
    {
        let store = EmbeddedStore::open(&path).unwrap();
        assert!(store.nothing_after(&u("fresh"), MsgId(0)));
        store
            .append_users(&[u("a"), u("b")], &msg(500, t), BIG)
            .await
            .unwrap();
        for user in ["a", "b"] {
            assert!(!store.nothing_after(&u(user), MsgId(0)), "{user}");
            assert!(!store.nothing_after(&u(user), MsgId(499)), "{user}");
            assert!(store.nothing_after(&u(user), MsgId(500)), "{user}");
        }
        drop(store);
    }
    let store = EmbeddedStore::open(&path).unwrap();
    assert!(!store.nothing_after(&u("a"), MsgId(499)), "rebuilt on open");
    assert!(!store.nothing_after(&u("b"), MsgId(0)), "rebuilt on open");
    assert!(store.nothing_after(&u("a"), MsgId(500)));
    let proven = (0..1000)
        .filter(|i| store.nothing_after(&u(&format!("user{i}")), MsgId(0)))
        .count();
    assert!(
        proven >= 990,
        "{proven} of 1000 users without messages proven empty"
    );
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_open_twice_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pushgate.redb");
    let store = EmbeddedStore::open(&path).unwrap();
    assert!(matches!(
        EmbeddedStore::open(&path),
        Err(StoreError::Embedded { .. })
    ));
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sweep_removes_expired_and_keeps_counts() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("pushgate.redb")).unwrap();
    let base = now();
    for id in 1..=10 {
        let exp = if id <= 6 { base + 1_000 } else { base + HOUR };
        store
            .append_users(&[u("sw")], &msg(id, exp), BIG)
            .await
            .unwrap();
        store
            .append_channel("sw", &msg(id, exp), BIG)
            .await
            .unwrap();
    }
    assert_eq!(store.sweep(base).await.unwrap(), 0);
    assert_eq!(store.sweep(base + 2_000).await.unwrap(), 12);
    assert_eq!(store.sweep(base + 2_000).await.unwrap(), 0);
    assert_eq!(read_all(&store, "sw").await, [7, 8, 9, 10]);
    // The count is right after the sweep: max 5 keeps 5, not fewer.
    store
        .append_users(&[u("sw")], &msg(11, base + HOUR), Bounds { max: 5 })
        .await
        .unwrap();
    assert_eq!(read_all(&store, "sw").await, [7, 8, 9, 10, 11]);
    store
        .append_users(&[u("sw")], &msg(12, base + HOUR), Bounds { max: 5 })
        .await
        .unwrap();
    assert_eq!(read_all(&store, "sw").await, [8, 9, 10, 11, 12]);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_key_layout_and_expiry() {
    let server = testkit::RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let t = now() + HOUR;
    store
        .append_users(&[u("k{1}")], &msg(1, t), BIG)
        .await
        .unwrap();
    store.ack(&u("k{1}"), "d", MsgId(1)).await.unwrap();
    store.append_channel("news", &msg(1, t), BIG).await.unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(
        keys,
        ["pg:{c:news}:h", "pg:{u:k%7B1%7D}:acks", "pg:{u:k%7B1%7D}:q"]
    );
    assert_eq!(keys[2], saver::queue_key("k{1}"));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&keys[2])
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= HOUR, "queue ttl {pttl}");
    // A later message with a shorter ttl does not shorten the queue's life.
    store
        .append_users(&[u("k{1}")], &msg(2, now() + 1_000), BIG)
        .await
        .unwrap();
    let pttl2: i64 = redis::cmd("PTTL")
        .arg(&keys[2])
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(pttl2 > 10_000, "queue ttl shortened to {pttl2}");
    // Redis Cluster hashes only the first `{...}`: both keys of the user share it.
    assert_eq!(hash_tag(&keys[1]), "u:k%7B1%7D");
    assert_eq!(hash_tag(&keys[1]), hash_tag(&keys[2]));
    assert_eq!(hash_tag(&saver::queue_key("a}b")), "u:a%7Db");
    // The seen record of `--send-known-users-only` sits in the user's slot
    // and expires with the record.
    store.seen_put(&u("k{1}"), t).await.unwrap();
    let seen = saver::seen_key("k{1}");
    assert_eq!(seen, "pg:{u:k%7B1%7D}:seen");
    assert_eq!(hash_tag(&seen), hash_tag(&keys[2]));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&seen)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= HOUR, "seen ttl {pttl}");
    store.close().await.unwrap();
}

#[tokio::test]
async fn redis_unreachable_is_an_error() {
    let port = testkit::free_port();
    let r = RedisStore::connect(&format!("redis://127.0.0.1:{port}/")).await;
    let Err(e) = r else {
        panic!("connected to a closed port")
    };
    assert!(matches!(e, StoreError::Redis { .. }), "{e:?}");
    assert!(e.is_retryable(), "{e:?}");
    assert!(std::error::Error::source(&e).is_some());
}

/// The part of `key` Redis Cluster hashes: between the first `{` and the next `}`.
fn hash_tag(key: &str) -> &str {
    let open = key.find('{').unwrap();
    let close = key[open + 1..].find('}').unwrap();
    &key[open + 1..open + 1 + close]
}

// ---- Redis Cluster -------------------------------------------------------

/// A plain (not cluster-aware) connection to one node: it sees only the keys
/// that node holds.
async fn node_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `CLUSTER KEYSLOT key`, asked of `conn`'s node.
async fn keyslot(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

/// Slot ranges and the client port of the master owning each, from `CLUSTER SLOTS`.
async fn slot_owners(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(i64, i64, u16)> {
    use redis::Value;
    let ranges: Vec<Vec<Value>> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(conn)
        .await
        .unwrap();
    ranges
        .into_iter()
        .map(|range| match range.as_slice() {
            [Value::Int(start), Value::Int(end), Value::Array(master), ..] => {
                let Some(Value::Int(port)) = master.get(1) else {
                    panic!("bad CLUSTER SLOTS master entry {master:?}")
                };
                (*start, *end, u16::try_from(*port).unwrap())
            }
            other => panic!("bad CLUSTER SLOTS entry {other:?}"),
        })
        .collect()
}

/// The port of the master that owns `slot`.
fn owner(owners: &[(i64, i64, u16)], slot: i64) -> u16 {
    owners
        .iter()
        .find(|(start, end, _)| (*start..=*end).contains(&slot))
        .map(|o| o.2)
        .unwrap_or_else(|| panic!("slot {slot} has no owner"))
}

/// Port → keys held by that node (`KEYS pg:*` on each node alone).
async fn keys_per_node(cluster: &testkit::RedisCluster) -> Vec<(u16, Vec<String>)> {
    let mut out = Vec::new();
    for (url, port) in cluster.urls().iter().zip(cluster.ports()) {
        let mut c = node_conn(url).await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("pg:*")
            .query_async(&mut c)
            .await
            .unwrap();
        out.push((port, keys));
    }
    out
}

fn cluster_users() -> Vec<String> {
    let odd = ["a}b", "{x}", "}{", "a%7Db", "ünïcødé 😀", "pg:{u:z}:q", ""];
    odd.iter()
        .map(|s| (*s).to_string())
        .chain((0..300).map(|i| format!("user-{i}")))
        .collect()
}

/// Every key of one user is in one slot (the slot of its hash tag
/// `u:<user>`), every key of one channel in the slot of `c:<channel>`, the
/// data really sits on the master owning that slot, and the users are spread
/// over all three masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_key_layout_one_slot_per_user() {
    let cluster = testkit::RedisCluster::start();
    let store = RedisStore::connect_cluster(&cluster.urls()).await.unwrap();
    let mut c = node_conn(&cluster.urls()[0]).await;
    let owners = slot_owners(&mut c).await;
    assert_eq!(
        owners.iter().map(|o| o.1 - o.0 + 1).sum::<i64>(),
        16_384,
        "every slot owned: {owners:?}"
    );
    let t = now() + HOUR;
    let users = cluster_users();
    let mut user_node = std::collections::HashMap::new();
    let mut slots = std::collections::HashSet::new();
    for (i, name) in users.iter().enumerate() {
        let id = i64::try_from(i).unwrap() + 1;
        store
            .append_users(&[u(name)], &msg(id, t), BIG)
            .await
            .unwrap();
        store.ack(&u(name), "phone", MsgId(id)).await.unwrap();
        store.append_channel(name, &msg(id, t), BIG).await.unwrap();

        let (q, acks, h) = (
            saver::queue_key(name),
            saver::acks_key(name),
            saver::history_key(name),
        );
        let slot = keyslot(&mut c, &q).await;
        assert_eq!(keyslot(&mut c, &acks).await, slot, "user {name:?}");
        // The slot is the slot of the hash tag alone, `u:<escaped user>`.
        assert_eq!(keyslot(&mut c, hash_tag(&q)).await, slot, "user {name:?}");
        assert_eq!(hash_tag(&q), hash_tag(&acks));
        assert!(hash_tag(&q).starts_with("u:"));
        let hslot = keyslot(&mut c, &h).await;
        assert_eq!(
            keyslot(&mut c, hash_tag(&h)).await,
            hslot,
            "channel {name:?}"
        );
        assert!(hash_tag(&h).starts_with("c:"));
        slots.insert(slot);
        user_node.insert(q, owner(&owners, slot));
        user_node.insert(acks, owner(&owners, slot));
        user_node.insert(h, owner(&owners, hslot));
    }
    assert!(slots.len() > 250, "users spread over {} slots", slots.len());

    // The data is where the slots say: each node holds exactly the keys of
    // the slots it owns, and a user's two keys are on the same node.
    let held = keys_per_node(&cluster).await;
    let mut seen = 0;
    for (port, keys) in &held {
        let users_here = keys.iter().filter(|k| k.ends_with(":q")).count();
        assert!(
            users_here > 50,
            "node {port} holds the queues of only {users_here} of {} users",
            users.len()
        );
        for key in keys {
            assert_eq!(user_node.get(key), Some(port), "key {key:?} on node {port}");
            seen += 1;
        }
    }
    assert_eq!(seen, users.len() * 3, "every key stored exactly once");
    for name in &users {
        let q_node = user_node[&saver::queue_key(name)];
        assert!(held
            .iter()
            .any(|(p, keys)| *p == q_node && keys.contains(&saver::acks_key(name))));
    }
    store.close().await.unwrap();
}

/// One push to many users whose queues sit in different slots on all three
/// masters lands in every user's queue, and the trim applies per user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_multi_user_append_lands_for_every_user() {
    let cluster = testkit::RedisCluster::start();
    let store = RedisStore::connect_cluster(&cluster.urls()).await.unwrap();
    let mut c = node_conn(&cluster.urls()[0]).await;
    let owners = slot_owners(&mut c).await;
    let names: Vec<String> = (0..200).map(|i| format!("mu-{i}")).collect();
    let mut slots = std::collections::HashSet::new();
    let mut nodes = std::collections::HashSet::new();
    for name in &names {
        let slot = keyslot(&mut c, &saver::queue_key(name)).await;
        slots.insert(slot);
        nodes.insert(owner(&owners, slot));
    }
    assert!(slots.len() > 150, "only {} slots", slots.len());
    assert_eq!(nodes.len(), 3, "users on every master");

    let users: Vec<UserId> = names.iter().map(|n| u(n)).collect();
    let t = now() + HOUR;
    store.append_users(&users, &msg(1, t), BIG).await.unwrap();
    let mut reversed = users.clone();
    reversed.reverse();
    store
        .append_users(&reversed, &msg(2, t), BIG)
        .await
        .unwrap();
    store
        .append_users(&users, &msg(3, t), Bounds { max: 2 })
        .await
        .unwrap();
    for name in &names {
        assert_eq!(read_all(&store, name).await, [2, 3], "user {name:?}");
    }
    // Each queue is on its slot's master with exactly two members.
    let held = keys_per_node(&cluster).await;
    for name in &names {
        let key = saver::queue_key(name);
        let port = owner(&owners, keyslot(&mut c, &key).await);
        let (_, keys) = held.iter().find(|(p, _)| *p == port).unwrap();
        assert!(keys.contains(&key), "{key} not on its master {port}");
        let url = format!("redis://127.0.0.1:{port}/");
        let card: i64 = redis::cmd("ZCARD")
            .arg(&key)
            .query_async(&mut node_conn(&url).await)
            .await
            .unwrap();
        assert_eq!(card, 2, "{key}");
    }
    store.close().await.unwrap();
}

/// When the master of some users dies, a push to users on several masters
/// fails (the caller gets an error) but is stored for the users whose
/// masters are alive: atomic per user, not across users. Retrying the same
/// message for them stores nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_node_failure_fails_the_push_but_keeps_other_users() {
    let cluster = testkit::RedisCluster::start();
    // Let the survivors keep serving their own slots once the dead node is
    // marked failed (the default refuses every command then).
    for url in cluster.urls() {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-require-full-coverage")
            .arg("no")
            .query_async(&mut node_conn(&url).await)
            .await
            .unwrap();
    }
    let store = RedisStore::connect_cluster(&cluster.urls()).await.unwrap();
    let mut c = node_conn(&cluster.urls()[0]).await;
    let owners = slot_owners(&mut c).await;
    let victim_port = cluster.ports()[2];
    let victim_pid = cluster.pids()[2];
    let (mut alive, mut doomed) = (Vec::new(), Vec::new());
    for i in 0..60 {
        let name = format!("nf-{i}");
        let slot = keyslot(&mut c, &saver::queue_key(&name)).await;
        if owner(&owners, slot) == victim_port {
            doomed.push(u(&name));
        } else {
            alive.push(u(&name));
        }
    }
    assert!(!doomed.is_empty() && alive.len() > 10);
    // The dead node's users first: the others are still written after they fail.
    let all: Vec<UserId> = doomed.iter().chain(&alive).cloned().collect();
    let t = now() + HOUR;
    store.append_users(&all, &msg(1, t), BIG).await.unwrap();

    let status = std::process::Command::new("kill")
        .args(["-9", &victim_pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let m2 = msg(2, t);
    let started = std::time::Instant::now();
    let r = store.append_users(&all, &m2, BIG).await;
    let Err(e @ StoreError::PartialWrite { .. }) = r else {
        panic!("push with a dead master: {r:?}")
    };
    let why = e.to_string();
    let counts = format!("{} of {} keys", doomed.len(), all.len());
    assert!(why.contains(&counts), "{why}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "push took {:?}",
        started.elapsed()
    );
    for user in &alive {
        assert_eq!(read_all(&store, user.as_str()).await, [1, 2], "{user:?}");
    }
    // Reads of the dead node's users fail too, within the client's bound.
    let started = std::time::Instant::now();
    assert!(store
        .read_user(&doomed[0], MsgId(0), now(), 10)
        .await
        .is_err());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "read took {:?}",
        started.elapsed()
    );
    // The caller retries the same message for the users it can reach: no duplicates.
    store.append_users(&alive, &m2, BIG).await.unwrap();
    for user in &alive {
        assert_eq!(read_all(&store, user.as_str()).await, [1, 2], "{user:?}");
    }
    store.close().await.unwrap();
}

/// A master that hangs (stopped, its socket open) does not hang the caller:
/// one user's write fails within the client's 5 s bound, and a push to
/// hundreds of users on it fails within the push deadline (10 s) plus that
/// bound, not after one 5 s timeout per 32 users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_hung_node_fails_within_bound() {
    let cluster = testkit::RedisCluster::start();
    let store = RedisStore::connect_cluster(&cluster.urls()).await.unwrap();
    let mut c = node_conn(&cluster.urls()[0]).await;
    let owners = slot_owners(&mut c).await;
    let victim_port = cluster.ports()[1];
    let users: Vec<UserId> = (0..600).map(|i| u(&format!("hung-{i}"))).collect();
    let mut on_victim = Vec::new();
    for user in &users {
        let slot = keyslot(&mut c, &saver::queue_key(user.as_str())).await;
        if owner(&owners, slot) == victim_port {
            on_victim.push(user.clone());
        }
    }
    // Enough users on the hung master to keep every in-flight slot busy for
    // more than the deadline: 32 at a time, 5 s each.
    assert!(
        on_victim.len() > 150,
        "{} users on the victim",
        on_victim.len()
    );
    let t = now() + HOUR;
    store.append_users(&users, &msg(1, t), BIG).await.unwrap();

    // SIGSTOP: the node keeps its connections but answers nothing. The
    // cluster's drop sends SIGKILL, which ends a stopped process too.
    let status = std::process::Command::new("kill")
        .args(["-STOP", &cluster.pids()[1].to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let started = std::time::Instant::now();
    let r = store.append_users(&on_victim[..1], &msg(2, t), BIG).await;
    let took = started.elapsed();
    assert!(
        matches!(
            r,
            Err(StoreError::Redis { .. } | StoreError::PartialWrite { .. })
        ),
        "{r:?}"
    );
    assert!(
        took < std::time::Duration::from_secs(8),
        "one write to a hung master took {took:?}"
    );

    let started = std::time::Instant::now();
    let r = store.append_users(&users, &msg(3, t), BIG).await;
    let took = started.elapsed();
    let Err(e @ StoreError::PartialWrite { .. }) = r else {
        panic!("push with a hung master: {r:?}")
    };
    let why = e.to_string();
    assert!(why.contains("of 600 keys"), "{why}");
    assert!(
        took < std::time::Duration::from_secs(20),
        "a push to {} users on a hung master took {took:?}",
        on_victim.len()
    );
    store.close().await.unwrap();
    drop(cluster);
}

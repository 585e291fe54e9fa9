//! The fault-injection suite (issue 13): steady stored pushes to online and
//! offline users while, one at a time, a process is `kill -9`ed and
//! restarted or an internal link is cut and healed (testkit::Proxy). Every
//! acknowledged push must reach every user: online users on the
//! connection they keep (or, after a room dies, the one they resume with
//! `last_id` = highest id received, as docs/PROTOCOL.md says), offline users
//! when they connect. Duplicates are allowed (same id); losses are not.
//!
//! Each test prints one line of figures (acknowledged, refused, lost,
//! duplicates, reconnects, recovery = from the end of the fault until every
//! push acknowledged by then had reached the online users). Timings are
//! printed, not asserted, except a generous bound on recovery.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{Cluster, Pusher, Resilient, RoomLinks};
use common::Event;
use parking_lot::Mutex;
use tokio::time::{sleep, Instant};

/// Time from the end of a fault within which every acknowledged push must
/// have arrived (the longest fault here lasts 5 s; clients back off up to 2 s).
const RECOVERY_BOUND: Duration = Duration::from_secs(20);

/// A cluster of two rooms with every link behind a proxy, 12 online users
/// (self-reconnecting clients spread over both rooms), 4 offline users, and
/// a pusher through center 0 (whose saver link is proxied too).
struct Scenario {
    c: Cluster,
    links: Vec<RoomLinks>,
    saver_link: testkit::Proxy,
    ws: Arc<Mutex<Vec<SocketAddr>>>,
    online: Vec<String>,
    offline: Vec<String>,
    clients: Vec<Resilient>,
    pusher: Option<Pusher>,
}

impl Scenario {
    async fn start(tag: &str) -> Scenario {
        Scenario::start_on(tag, testkit::RedisServer::start()).await
    }

    async fn start_on(tag: &str, redis: testkit::RedisServer) -> Scenario {
        let mut c = Cluster::start_on(redis, 0, 0).await;
        let (_, saver_link) = c.add_center_behind_saver_proxy().await;
        let mut links = Vec::new();
        for id in 1..=2 {
            links.push(c.add_room_behind_proxies(id).await.1);
        }
        c.wait_rooms(2).await;
        let ws = Arc::new(Mutex::new(vec![c.ws(0), c.ws(1)]));
        let online: Vec<String> = (0..12).map(|i| format!("{tag}-on{i}")).collect();
        let offline: Vec<String> = (0..4).map(|i| format!("{tag}-off{i}")).collect();
        let clients = c.online_clients(&ws, &online).await;
        let everyone: Vec<String> = online.iter().chain(&offline).cloned().collect();
        let pusher = Some(c.pusher(0, everyone, Duration::from_millis(20)));
        let s = Scenario {
            c,
            links,
            saver_link,
            ws,
            online,
            offline,
            clients,
            pusher,
        };
        // Some traffic before the fault.
        sleep(Duration::from_millis(800)).await;
        s
    }

    fn acked(&self) -> usize {
        self.pusher.as_ref().map_or(0, Pusher::acked)
    }

    /// Keeps pushing `after` past the end of the fault, then checks that
    /// every acknowledged push reached its user; prints the figures.
    async fn finish(mut self, fault: &str, healed: Instant, after: Duration) {
        // Recovery: until everything acknowledged by the end of the fault
        // has reached the online users.
        let owed = self.pusher.as_ref().unwrap().snapshot();
        for (r, want) in self.clients.iter().zip(&owed) {
            common::cluster::wait_ids(r, want, RECOVERY_BOUND).await;
        }
        let recovery = healed.elapsed();
        sleep(after.saturating_sub(recovery)).await;
        let (acked, refused) = self.pusher.take().unwrap().stop().await;
        let total: usize = acked.iter().map(BTreeSet::len).sum();
        assert!(
            total > 50,
            "{fault}: only {total} pushes acknowledged ({refused} refused)"
        );
        for (r, want) in self.clients.iter().zip(&acked) {
            common::cluster::wait_ids(r, want, RECOVERY_BOUND).await;
        }
        // Offline users get everything when they connect (no last_id, no acks).
        for (k, u) in self.offline.iter().enumerate() {
            let want = &acked[self.online.len() + k];
            let mut got = BTreeSet::new();
            let mut cl = self.c.login(k % self.c.rooms.len(), u, None).await;
            let deadline = Instant::now() + Duration::from_secs(10);
            while !want.is_subset(&got) && Instant::now() < deadline {
                if let Some(Event::Frame(m)) = cl.recv(Duration::from_millis(500)).await {
                    if m["op"] == "msg" {
                        got.insert(m["id"].as_i64().unwrap());
                    }
                }
            }
            let missing: Vec<&i64> = want.difference(&got).collect();
            assert!(
                missing.is_empty(),
                "{fault}: offline {u} never got {missing:?}"
            );
            cl.close().await;
        }
        let (mut dups, mut reconnects) = (0, 0);
        for r in self.clients {
            dups += *r.dups.lock();
            reconnects += r.finish().await.1;
        }
        eprintln!(
            "FAULT {fault}: acknowledged {total}, refused {refused}, lost 0, duplicates {dups}, \
             client reconnects {reconnects}, recovery {:.2} s",
            recovery.as_secs_f64()
        );
        assert!(
            recovery < RECOVERY_BOUND,
            "{fault}: recovery took {recovery:?}"
        );
        drop(self.links);
        drop(self.saver_link);
        drop(self.ws);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn center_to_room_link_blackholed_then_healed() {
    let s = Scenario::start("fcr").await;
    s.links[0].centers.blackhole();
    sleep(Duration::from_secs(3)).await;
    s.links[0].centers.heal();
    let healed = Instant::now();
    s.finish(
        "center-room link blackholed 3 s",
        healed,
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn center_to_room_link_reset_twice() {
    let s = Scenario::start("fcx").await;
    s.links[0].centers.reset();
    sleep(Duration::from_millis(700)).await;
    s.links[0].centers.reset();
    let healed = Instant::now();
    s.finish(
        "center-room link reset twice",
        healed,
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_to_register_links_blackholed_past_the_lease() {
    let s = Scenario::start("frr").await;
    for p in &s.links[0].registers {
        p.blackhole();
    }
    // Longer than the 3 s lease: the registers drop the room and its users.
    sleep(Duration::from_secs(5)).await;
    for p in &s.links[0].registers {
        p.heal();
    }
    let healed = Instant::now();
    s.finish(
        "room-register links blackholed 5 s",
        healed,
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn center_to_saver_link_blackholed_then_healed() {
    let s = Scenario::start("fcs").await;
    s.saver_link.blackhole();
    sleep(Duration::from_secs(3)).await;
    s.saver_link.heal();
    let healed = Instant::now();
    s.finish(
        "center-saver link blackholed 3 s",
        healed,
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_kill9_and_restart() {
    let mut s = Scenario::start("fkr").await;
    s.c.registers[0].kill9().await;
    sleep(Duration::from_secs(1)).await;
    s.c.registers[0].restart().await;
    let healed = Instant::now();
    let n = s.acked();
    s.finish(
        &format!("register kill -9, restarted after 1 s ({n} acked by then)"),
        healed,
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saver_kill9_and_restart() {
    let mut s = Scenario::start("fks").await;
    s.c.savers[0].kill9().await;
    sleep(Duration::from_secs(1)).await;
    s.c.savers[0].restart().await;
    let healed = Instant::now();
    s.finish(
        "saver kill -9, restarted after 1 s",
        healed,
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idgen_kill9_and_restart() {
    let mut s = Scenario::start("fki").await;
    s.c.idgens[0].kill9().await;
    s.c.idgens[1].kill9().await;
    sleep(Duration::from_secs(1)).await;
    s.c.idgens[0].restart().await;
    s.c.idgens[1].restart().await;
    let healed = Instant::now();
    s.finish(
        "both idgens kill -9, restarted after 1 s",
        healed,
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_kill9_and_restart() {
    let mut s = Scenario::start("fkm").await;
    let dead = s.c.ws(0);
    s.c.rooms[0].kill9().await;
    s.ws.lock().retain(|a| *a != dead);
    sleep(Duration::from_secs(1)).await;
    // Same id and internal address (behind the same proxy): a new instance.
    s.c.rooms[0].restart().await;
    let fresh = s.c.ws(0);
    s.ws.lock().push(fresh);
    let healed = Instant::now();
    s.finish(
        "room kill -9, restarted after 1 s",
        healed,
        Duration::from_secs(2),
    )
    .await;
}

/// Redis killed with SIGKILL and restarted on its append-only file: with
/// `appendfsync always` and `everysec` alike nothing acknowledged is lost,
/// because Redis writes the AOF (to the page cache) before it replies, and a
/// killed process does not take the page cache with it. What `everysec`
/// risks is the last second on a crash of the whole machine (power, kernel),
/// which this suite cannot stage; see docs/OPERATIONS.md.
async fn redis_kill9(appendfsync: &str, tag: &str) {
    let mut s = Scenario::start_on(tag, testkit::RedisServer::start_with_aof(appendfsync)).await;
    s.c.redis.kill9_and_restart();
    let healed = Instant::now();
    s.finish(
        &format!("redis-server kill -9 and restart, appendfsync {appendfsync}"),
        healed,
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kill9_with_aof_fsync_always() {
    redis_kill9("always", "fra").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kill9_with_aof_fsync_everysec() {
    redis_kill9("everysec", "fre").await;
}

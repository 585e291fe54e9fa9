//! The register over real links on 127.0.0.1: partitioning, leases, expiry,
//! restart and refill, release, and a register that is down.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use link::{ClientConfig, ServerConfig};
use proto::{ConnId, RoomId, UserId};
use register::{
    ClusterDirectory, ConnInfo, DirStats, Directory, LeaseOutcome, RegisterService, RoomInfo,
    RoomLease,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const KEY: &str = "test-cluster-key";

/// One register process, in this test process: a link server and its sweeper.
struct Reg {
    addr: SocketAddr,
    svc: Arc<RegisterService>,
    stop: CancellationToken,
    serve: JoinHandle<()>,
}

impl Reg {
    async fn start(ttl: Duration) -> Reg {
        Reg::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), ttl)
    }

    /// A new, empty register on the port a stopped one used.
    async fn restart_at(addr: SocketAddr, ttl: Duration) -> Reg {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => return Reg::start_on(l, ttl),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebind {addr}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("could not rebind {addr}: {e}"),
            }
        }
    }

    fn start_on(listener: TcpListener, ttl: Duration) -> Reg {
        let addr = listener.local_addr().unwrap();
        let svc = RegisterService::new(ttl);
        let stop = CancellationToken::new();
        svc.spawn_sweeper(stop.clone());
        let serve = tokio::spawn(link::serve(
            listener,
            svc.clone(),
            ServerConfig::new(KEY),
            stop.clone(),
        ));
        Reg {
            addr,
            svc,
            stop,
            serve,
        }
    }

    /// Stops serving (closes the listener and every link) and the sweeper.
    async fn stop(mut self) -> SocketAddr {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), &mut self.serve)
            .await
            .expect("serve stops within 5 s")
            .unwrap();
        self.addr
    }
}

impl Drop for Reg {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn cfg() -> ClientConfig {
    let mut c = ClientConfig::new(KEY);
    c.call_timeout = Duration::from_secs(2);
    c.connect_timeout = Duration::from_secs(1);
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(100);
    c
}

async fn start_all(n: usize, ttl: Duration) -> (Vec<Reg>, Arc<ClusterDirectory>) {
    let mut regs = Vec::new();
    for _ in 0..n {
        regs.push(Reg::start(ttl).await);
    }
    let dir = ClusterDirectory::new(regs.iter().map(|r| r.addr.to_string()).collect(), cfg());
    (regs, dir)
}

fn now_ms() -> i64 {
    proto::unix_ms(std::time::SystemTime::now())
}

fn conn(user: &str, room: u32, n: u64, since: i64) -> ConnInfo {
    ConnInfo {
        user: UserId::new(user),
        conn: ConnId::new(RoomId(room), n),
        room: RoomId(room),
        device: Some(format!("dev{n}")),
        since,
    }
}

fn lease(room: u32, instance: u64, connections: u64) -> RoomLease {
    RoomLease {
        room: RoomId(room),
        addr: format!("10.0.0.{room}:77{instance}"),
        instance,
        connections,
    }
}

fn sorted(mut v: Vec<ConnInfo>) -> Vec<ConnInfo> {
    v.sort_by_key(|c| c.conn);
    v
}

/// Syncs every connection of `conns` (all of one room) to its user's register.
async fn sync_all(dir: &ClusterDirectory, room: u32, conns: &[ConnInfo]) {
    for p in 0..dir.partitions() {
        let mine: Vec<ConnInfo> = conns
            .iter()
            .filter(|c| dir.partition_of(&c.user) == p)
            .cloned()
            .collect();
        dir.sync(p, RoomId(room), mine, true, true, i64::MAX)
            .await
            .unwrap();
    }
}

/// Polls `check` every 20 ms until it holds; panics after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    loop {
        if check().await {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_spread_over_three_registers_and_lookup_keeps_input_order() {
    let (regs, dir) = start_all(3, Duration::from_secs(5)).await;
    assert_eq!(dir.partitions(), 3);
    let since = now_ms() - 1_000;
    let mut all = Vec::new();
    for i in 0..60u64 {
        let user = format!("user-{i}");
        all.push(conn(&user, 1, i, since));
        if i % 5 == 0 {
            all.push(conn(&user, 2, 100 + i, since));
        }
    }
    for c in &all {
        dir.connected(c.clone()).await.unwrap();
    }

    // Each register holds exactly the users of its partition.
    let mut per_reg = [0u64; 3];
    for i in 0..60u64 {
        let u = UserId::from(format!("user-{i}"));
        let p = dir.partition_of(&u);
        for (r, reg) in regs.iter().enumerate() {
            let n = reg.svc.directory().get(&u).len();
            if r == p {
                assert_eq!(
                    n,
                    if i % 5 == 0 { 2 } else { 1 },
                    "user {u} on its register"
                );
                per_reg[r] += 1;
            } else {
                assert_eq!(n, 0, "user {u} must not be on register {r}");
            }
        }
    }
    assert!(per_reg.iter().all(|&n| n > 0), "users spread: {per_reg:?}");

    // Batched lookup: mixed partitions, unknown users, a repeat; input order kept.
    let mut asked: Vec<UserId> = (0..60u64)
        .rev()
        .map(|i| UserId::from(format!("user-{i}")))
        .collect();
    asked.insert(7, UserId::new("nobody"));
    asked.push(UserId::new("user-10"));
    let got = dir.lookup(&asked).await.unwrap();
    assert_eq!(got.len(), asked.len());
    for (u, list) in asked.iter().zip(got) {
        let want: Vec<ConnInfo> = all.iter().filter(|c| &c.user == u).cloned().collect();
        assert_eq!(sorted(list), sorted(want), "lookup of {u}");
    }
    assert!(dir.lookup(&[]).await.unwrap().is_empty());

    // Stats sum over the partitions.
    let stats = dir.stats().await.unwrap();
    assert_eq!(
        stats,
        DirStats {
            connections: 72,
            users: 60
        }
    );
    let summed = regs.iter().fold(DirStats::default(), |mut acc, r| {
        let t = r.svc.directory().totals();
        acc.connections += t.connections;
        acc.users += t.users;
        acc
    });
    assert_eq!(stats, summed);

    // Disconnect and online time go to the user's partition.
    let u0 = UserId::new("user-0");
    dir.disconnected(&u0, ConnId::new(RoomId(1), 0), since + 1_500)
        .await
        .unwrap();
    dir.disconnected(&u0, ConnId::new(RoomId(2), 100), since + 500)
        .await
        .unwrap();
    assert!(dir.lookup(std::slice::from_ref(&u0)).await.unwrap()[0].is_empty());
    assert_eq!(dir.online_ms(&u0, now_ms()).await.unwrap(), 2_000);
    let u1 = UserId::new("user-1");
    let online = dir.online_ms(&u1, since + 3_000).await.unwrap();
    assert_eq!(online, 3_000, "a live connection counts up to now");
    assert_eq!(dir.stats().await.unwrap().users, 59);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_is_fresh_then_renewed_and_conflicts_until_it_expires() {
    let ttl = Duration::from_millis(300);
    let (_regs, dir) = start_all(3, ttl).await;
    let a = lease(5, 1, 0);
    let b = lease(5, 2, 0);

    let first: Vec<LeaseOutcome> = dir
        .lease(&a)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(first, vec![LeaseOutcome::Fresh; 3]);
    let again: Vec<LeaseOutcome> = dir
        .lease(&a)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(again, vec![LeaseOutcome::Renewed; 3]);

    // A second process with the same room id is refused while a's lease lives.
    let conflict = LeaseOutcome::Conflict {
        holder_addr: a.addr.clone(),
    };
    for _ in 0..3 {
        let out: Vec<LeaseOutcome> = dir
            .lease(&b)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(out, vec![conflict.clone(); 3]);
        // a keeps renewing, well within the TTL.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let out: Vec<LeaseOutcome> = dir
            .lease(&a)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(out, vec![LeaseOutcome::Renewed; 3]);
    }
    dir.refresh().await.unwrap();
    assert_eq!(dir.room_addr(RoomId(5)), Some(a.addr.clone()));

    // a stops renewing: after the TTL, b gets the lease.
    let t0 = Instant::now();
    let took = eventually(Duration::from_secs(3), "b gets the lease", || async {
        let out: Vec<LeaseOutcome> = dir
            .lease(&b)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        // Each register times the lease out on its own clock, a few ms
        // apart: wait until no register holds it for a. Where b asked
        // before, it already holds the lease (renewed).
        if out.contains(&conflict) {
            return false;
        }
        assert!(
            out.iter()
                .all(|o| matches!(o, LeaseOutcome::Fresh | LeaseOutcome::Renewed)),
            "{out:?}"
        );
        true
    })
    .await;
    assert!(t0.elapsed() >= ttl - Duration::from_millis(150), "{took:?}");
    let out: Vec<LeaseOutcome> = dir
        .lease(&a)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        out,
        vec![
            LeaseOutcome::Conflict {
                holder_addr: b.addr.clone()
            };
            3
        ]
    );
    dir.refresh().await.unwrap();
    assert_eq!(dir.room_addr(RoomId(5)), Some(b.addr.clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_drops_the_rooms_connections_and_membership() {
    let ttl = Duration::from_millis(300);
    let (_regs, dir) = start_all(2, ttl).await;
    let since = now_ms() - 2_000;
    let dying: Vec<ConnInfo> = (0..20)
        .map(|i| conn(&format!("d{i}"), 7, i, since))
        .collect();
    let living: Vec<ConnInfo> = (0..20)
        .map(|i| conn(&format!("l{i}"), 8, i, since))
        .collect();

    assert!(dir.lease(&lease(7, 1, 20)).await.iter().all(|o| o.is_ok()));
    assert!(dir.lease(&lease(8, 1, 20)).await.iter().all(|o| o.is_ok()));
    sync_all(&dir, 7, &dying).await;
    sync_all(&dir, 8, &living).await;
    // Room 8 keeps renewing.
    let keep = CancellationToken::new();
    let renewer = {
        let (dir, keep) = (dir.clone(), keep.clone());
        tokio::spawn(async move {
            while !keep.is_cancelled() {
                for o in dir.lease(&lease(8, 1, 20)).await {
                    assert_eq!(o.unwrap(), LeaseOutcome::Renewed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    dir.refresh().await.unwrap();
    assert_eq!(
        dir.rooms().await.unwrap(),
        vec![
            RoomInfo {
                room: RoomId(7),
                connections: 20
            },
            RoomInfo {
                room: RoomId(8),
                connections: 20
            }
        ]
    );
    assert_eq!(dir.room_addr(RoomId(7)), Some(lease(7, 1, 0).addr));
    let users: Vec<UserId> = dying.iter().map(|c| c.user.clone()).collect();
    assert!(dir
        .lookup(&users)
        .await
        .unwrap()
        .iter()
        .all(|l| l.len() == 1));
    assert_eq!(dir.stats().await.unwrap().connections, 40);

    // Room 7 stopped renewing at `last`: gone within TTL + refresh (+ slack),
    // without anyone calling refresh().
    let last = Instant::now();
    eventually(
        Duration::from_secs(3),
        "room 7's connections dropped",
        || async { dir.lookup(&users).await.unwrap().iter().all(Vec::is_empty) },
    )
    .await;
    eventually(
        Duration::from_secs(3),
        "room 7 leaves the membership",
        || async { dir.room_addr(RoomId(7)).is_none() },
    )
    .await;
    let took = last.elapsed();
    assert!(
        took < ttl + Duration::from_secs(1) + Duration::from_millis(500),
        "membership lost room 7 after {took:?}"
    );
    assert_eq!(
        dir.rooms().await.unwrap(),
        vec![RoomInfo {
            room: RoomId(8),
            connections: 20
        }]
    );
    assert_eq!(dir.stats().await.unwrap().connections, 20);
    let l: Vec<UserId> = living.iter().map(|c| c.user.clone()).collect();
    assert!(dir.lookup(&l).await.unwrap().iter().all(|l| l.len() == 1));
    // Online time of the dropped connections is counted up to the expiry.
    let online = dir.online_ms(&users[0], now_ms() + 60_000).await.unwrap();
    assert!(
        (2_250..2_900).contains(&online),
        "online {online} ms: 2000 before the sync + about the TTL"
    );
    keep.cancel();
    renewer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_restarted_empty_is_refilled_by_a_sync() {
    let ttl = Duration::from_secs(3);
    let (mut regs, dir) = start_all(3, ttl).await;
    let since = now_ms();
    let conns: Vec<ConnInfo> = (0..30)
        .map(|i| conn(&format!("u{i}"), 3, i, since))
        .collect();
    let users: Vec<UserId> = conns.iter().map(|c| c.user.clone()).collect();
    let l = lease(3, 9, 30);
    for o in dir.lease(&l).await {
        assert_eq!(o.unwrap(), LeaseOutcome::Fresh);
    }
    sync_all(&dir, 3, &conns).await;
    assert!(dir
        .lookup(&users)
        .await
        .unwrap()
        .iter()
        .all(|l| l.len() == 1));

    // Register 1 restarts empty on the same port.
    let addr = regs.remove(1).stop().await;
    regs.insert(1, Reg::restart_at(addr, ttl).await);
    let on_1: Vec<usize> = (0..users.len())
        .filter(|&i| dir.partition_of(&users[i]) == 1)
        .collect();
    assert!(!on_1.is_empty());

    // The room's next renewal: Fresh at the restarted register only.
    let t0 = Instant::now();
    let outcomes = loop {
        let outcomes = dir.lease(&l).await;
        if outcomes[1].is_ok() {
            break outcomes;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "register 1 unreachable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let outcomes: Vec<LeaseOutcome> = outcomes.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        outcomes,
        vec![
            LeaseOutcome::Renewed,
            LeaseOutcome::Fresh,
            LeaseOutcome::Renewed
        ]
    );
    // Until the room syncs, register 1's users are not found; the others are.
    let got = dir.lookup(&users).await.unwrap();
    for (i, list) in got.iter().enumerate() {
        assert_eq!(list.len(), usize::from(!on_1.contains(&i)), "user {i}");
    }
    let mine: Vec<ConnInfo> = on_1.iter().map(|&i| conns[i].clone()).collect();
    let (head, tail) = mine.split_at(mine.len() / 2);
    dir.sync(1, RoomId(3), head.to_vec(), true, false, i64::MAX)
        .await
        .unwrap();
    dir.sync(1, RoomId(3), tail.to_vec(), false, true, i64::MAX)
        .await
        .unwrap();
    let got = dir.lookup(&users).await.unwrap();
    for (c, list) in conns.iter().zip(got) {
        assert_eq!(list, vec![c.clone()]);
    }
    assert_eq!(dir.stats().await.unwrap().connections, 30);
    for o in dir.lease(&l).await {
        assert_eq!(o.unwrap(), LeaseOutcome::Renewed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_drops_a_room_at_once() {
    let (_regs, dir) = start_all(2, Duration::from_secs(5)).await;
    let since = now_ms();
    let r1: Vec<ConnInfo> = (0..10)
        .map(|i| conn(&format!("a{i}"), 1, i, since))
        .collect();
    let r2: Vec<ConnInfo> = (0..10)
        .map(|i| conn(&format!("b{i}"), 2, i, since))
        .collect();
    let u1: Vec<UserId> = r1.iter().map(|c| c.user.clone()).collect();
    let u2: Vec<UserId> = r2.iter().map(|c| c.user.clone()).collect();
    dir.lease(&lease(1, 11, 10)).await;
    dir.lease(&lease(2, 22, 10)).await;
    sync_all(&dir, 1, &r1).await;
    sync_all(&dir, 2, &r2).await;
    dir.refresh().await.unwrap();
    assert_eq!(dir.rooms().await.unwrap().len(), 2);

    // Only the instance holding the lease releases it.
    dir.release(RoomId(1), 12).await.unwrap();
    assert!(dir.lookup(&u1).await.unwrap().iter().all(|l| l.len() == 1));
    dir.refresh().await.unwrap();
    assert!(dir.room_addr(RoomId(1)).is_some());

    dir.release(RoomId(1), 11).await.unwrap();
    assert!(
        dir.room_addr(RoomId(1)).is_none(),
        "gone from the cache at once"
    );
    assert!(dir.lookup(&u1).await.unwrap().iter().all(Vec::is_empty));
    assert!(dir.lookup(&u2).await.unwrap().iter().all(|l| l.len() == 1));
    dir.refresh().await.unwrap();
    assert_eq!(
        dir.rooms().await.unwrap(),
        vec![RoomInfo {
            room: RoomId(2),
            connections: 10
        }]
    );
    // The room id is free again.
    for o in dir.lease(&lease(1, 13, 0)).await {
        assert_eq!(o.unwrap(), LeaseOutcome::Fresh);
    }
    dir.release(RoomId(1), 13).await.unwrap();

    // room_down releases whoever holds it.
    dir.room_down(RoomId(2)).await.unwrap();
    assert!(dir.rooms().await.unwrap().is_empty());
    assert!(dir.lookup(&u2).await.unwrap().iter().all(Vec::is_empty));
    assert_eq!(dir.stats().await.unwrap(), DirStats::default());
    dir.refresh().await.unwrap();
    assert!(dir.rooms().await.unwrap().is_empty());
    // Online time of released connections is kept.
    assert!(dir.online_ms(&u2[0], now_ms()).await.unwrap() < 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_chunks_add_and_the_last_removes_the_unlisted() {
    let (_regs, dir) = start_all(1, Duration::from_secs(5)).await;
    let since = now_ms() - 1_000;
    dir.lease(&lease(4, 1, 0)).await;
    let old = vec![conn("x", 4, 1, since), conn("y", 4, 2, since)];
    dir.sync(0, RoomId(4), old.clone(), true, true, i64::MAX)
        .await
        .unwrap();
    dir.sync(
        0,
        RoomId(4),
        vec![conn("z", 4, 3, since)],
        false,
        false,
        i64::MAX,
    )
    .await
    .unwrap();
    assert_eq!(dir.stats().await.unwrap().connections, 3);
    // A new snapshot without y and z: they end, x keeps its time.
    dir.sync(0, RoomId(4), vec![old[0].clone()], true, true, i64::MAX)
        .await
        .unwrap();
    let got = dir
        .lookup(&[UserId::new("x"), UserId::new("y"), UserId::new("z")])
        .await
        .unwrap();
    assert_eq!(got, vec![vec![old[0].clone()], vec![], vec![]]);
    let x = dir
        .online_ms(&UserId::new("x"), since + 1_000)
        .await
        .unwrap();
    assert_eq!(x, 1_000, "a kept connection is not counted twice");
    // A chunk carrying another room's connection is refused as a whole.
    let bad = vec![conn("w", 4, 9, since), conn("v", 5, 1, since)];
    assert!(dir
        .sync(0, RoomId(4), bad, false, true, i64::MAX)
        .await
        .is_err());
    assert!(dir.lookup(&[UserId::new("w")]).await.unwrap()[0].is_empty());
    assert!(
        dir.sync(1, RoomId(4), vec![], true, true, i64::MAX)
            .await
            .is_err(),
        "no partition 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_register_down_the_others_still_answer() {
    let (mut regs, dir) = start_all(3, Duration::from_secs(5)).await;
    let since = now_ms();
    let conns: Vec<ConnInfo> = (0..45)
        .map(|i| conn(&format!("u{i}"), 1, i, since))
        .collect();
    // Fresh drops any entries of the room: lease first, then connections.
    for o in dir.lease(&lease(1, 1, 45)).await {
        assert_eq!(o.unwrap(), LeaseOutcome::Fresh);
    }
    for c in &conns {
        dir.connected(c.clone()).await.unwrap();
    }
    dir.refresh().await.unwrap();
    let users: Vec<UserId> = conns.iter().map(|c| c.user.clone()).collect();
    let down_users: Vec<usize> = (0..users.len())
        .filter(|&i| dir.partition_of(&users[i]) == 2)
        .collect();
    assert!(!down_users.is_empty());

    regs.remove(2).stop().await;

    let t0 = Instant::now();
    let got = dir.lookup(&users).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    for (i, (c, list)) in conns.iter().zip(got).enumerate() {
        if down_users.contains(&i) {
            assert!(list.is_empty(), "user {i} of the down register");
        } else {
            assert_eq!(list, vec![c.clone()], "user {i}");
        }
    }

    // Calls for the down partition fail fast.
    let victim = conns[down_users[0]].clone();
    for _ in 0..3 {
        let t0 = Instant::now();
        assert!(dir.connected(victim.clone()).await.is_err());
        assert!(dir.online_ms(&victim.user, since).await.is_err());
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "failed after {:?}",
            t0.elapsed()
        );
    }

    // Stats and membership come from the registers that answer.
    let stats = dir.stats().await.unwrap();
    assert_eq!(stats.connections, (conns.len() - down_users.len()) as u64);
    let outcomes = dir.lease(&lease(1, 1, 45)).await;
    assert!(outcomes[0].is_ok() && outcomes[1].is_ok() && outcomes[2].is_err());
    dir.refresh().await.unwrap();
    assert_eq!(dir.room_addr(RoomId(1)), Some(lease(1, 1, 0).addr));

    // All down: stats and refresh fail, the cached membership stays.
    for r in regs.drain(..) {
        r.stop().await;
    }
    assert!(dir.stats().await.is_err());
    assert!(dir.refresh().await.is_err());
    assert_eq!(dir.rooms().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_a_room_without_a_lease_are_dropped_after_a_ttl() {
    let ttl = Duration::from_millis(300);
    let (_regs, dir) = start_all(1, ttl).await;
    // A room whose lease expired (or that never leased) still reports a
    // connection, then dies: the entry must not stay forever.
    let c = conn("ghost", 6, 1, now_ms());
    dir.connected(c.clone()).await.unwrap();
    assert_eq!(
        dir.lookup(std::slice::from_ref(&c.user)).await.unwrap()[0].len(),
        1
    );
    let took = eventually(Duration::from_secs(3), "orphan entry dropped", || async {
        dir.lookup(std::slice::from_ref(&c.user)).await.unwrap()[0].is_empty()
    })
    .await;
    assert!(took >= ttl - Duration::from_millis(100), "{took:?}");
    assert_eq!(dir.stats().await.unwrap(), DirStats::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_refill_never_hides_listed_connections() {
    let (_regs, dir) = start_all(1, Duration::from_secs(5)).await;
    let since = now_ms() - 60_000;
    dir.lease(&lease(6, 1, 0)).await;
    let all: Vec<ConnInfo> = (0..10)
        .map(|i| conn(&format!("c{i}"), 6, i, since))
        .collect();
    dir.sync(0, RoomId(6), all.clone(), true, true, i64::MAX)
        .await
        .unwrap();
    // A new refill in two chunks: between them, every connection is still listed.
    dir.sync(0, RoomId(6), all[..5].to_vec(), true, false, i64::MAX)
        .await
        .unwrap();
    assert_eq!(dir.stats().await.unwrap().connections, 10);
    // The last chunk leaves out c9: it ends; the others stay.
    dir.sync(0, RoomId(6), all[5..9].to_vec(), false, true, i64::MAX)
        .await
        .unwrap();
    assert_eq!(dir.stats().await.unwrap().connections, 9);
}

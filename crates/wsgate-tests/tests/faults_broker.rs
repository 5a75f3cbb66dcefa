//! Broker faults under traffic: real redis-server and nats-server processes (SIGKILLed,
//! restarted with and without persistence, stalled), links cut and stalled by a proxy the
//! test controls, two wsgate nodes, publishers posting through both nodes' API the whole
//! time and clients that resume by offset. Every test asserts the one figure that matters:
//! accepted publications (2xx) that a client neither received nor was told it lost = 0.
//!
//! Each test prints its figures (`FIGURES | …`, a row of docs/reliability.md's "Broker
//! faults" table); `cargo test -p wsgate-tests --test faults_broker -- --nocapture
//! --test-threads 1` reproduces them.

use std::time::{Duration, Instant};

use serde_json::json;
use wsgate_tests::cluster::{Cluster, Node, Persistence, RedisServer, Via};
use wsgate_tests::proxy::Proxy;
use wsgate_tests::traffic::{Account, Ledger};
use wsgate_tests::{Client, WAIT, eventually};

/// Two nodes, each reaching Redis through its own proxy, with four clients (two per node)
/// following one channel and a publisher per node.
struct Run {
    cluster: Cluster,
    /// Node A's and node B's links to Redis.
    links: [Proxy; 2],
    nodes: [Node; 2],
    ledger: Ledger,
}

impl Run {
    async fn start(via: Via, persistence: Persistence) -> Self {
        let cluster = Cluster::with_redis(via, RedisServer::start_with(persistence).await).await;
        let links = [
            Proxy::start(cluster.redis.addr()).await,
            Proxy::start(cluster.redis.addr()).await,
        ];
        let nats = cluster.nats.as_ref().map(|n| n.url());
        let mut nodes = Vec::new();
        for (name, link) in ["fa", "fb"].iter().zip(&links) {
            let node = cluster
                .node_at(name, &link.redis_url(), nats.as_deref(), &[], &[])
                .await;
            nodes.push(node);
        }
        let nodes: [Node; 2] = nodes.try_into().ok().unwrap();
        let ws = |i: usize| nodes[i].ws_url();
        let mut ledger = Ledger::follow("faults:feed", &[ws(0), ws(0), ws(1), ws(1)]).await;
        ledger.publish(&[nodes[0].url(""), nodes[1].url("")], PACE);
        ledger.await_accepted(40, WAIT).await;
        Self {
            cluster,
            links,
            nodes,
            ledger,
        }
    }

    /// The fault begins: one client per node drops its connection and resumes by offset
    /// while the fault lasts.
    fn resume_some(&self) {
        self.ledger.resume(0);
        self.ledger.resume(2);
    }

    /// After the fault: traffic flows again, then every publication is accounted for.
    async fn settle(mut self, fault: &str, restored: Instant) -> Account {
        for node in &self.nodes {
            node.await_ready(true).await;
        }
        self.ledger.await_accepted(40, RECOVERY).await;
        let account = self.ledger.finish(DRAIN).await;
        let recovery = self.ledger.recovery_after(restored);
        report(fault, self.cluster.via, &account, recovery);
        assert_eq!(
            account.wrong, 0,
            "{fault}: a message not what was accepted there"
        );
        assert_eq!(
            account.lost, 0,
            "{fault}: accepted publications lost without a notice: {:?}",
            account.examples
        );
        assert_eq!(account.duplicates, 0, "{fault}: duplicates");
        account
    }
}

/// Each publisher's pause between publications (two publishers: about 100 per second).
const PACE: Duration = Duration::from_millis(20);
/// How long traffic may take to flow again after a fault ends.
const RECOVERY: Duration = Duration::from_secs(20);
/// How long the last publications may take to reach every client.
const DRAIN: Duration = Duration::from_secs(15);

fn report(fault: &str, via: Via, a: &Account, recovery: Option<Duration>) {
    let recovery = recovery.map_or("-".to_string(), |d| format!("{} ms", d.as_millis()));
    let clients = 4;
    println!(
        "FIGURES | {fault} | {via:?} | {} | {} | {} of {} | {} | {} | {} | {recovery} |",
        a.accepted,
        a.refused,
        a.delivered,
        a.accepted * clients,
        a.covered,
        a.notices,
        a.lost,
    );
}

/// SIGKILL, restart on the same port, traffic goes on; every client is told the stream
/// changed (without persistence it is gone; with an AOF it is another Redis timeline, which
/// may miss its last second: a new epoch either way).
async fn redis_sigkilled_and_restarted(persistence: Persistence, fault: &str) {
    let mut run = Run::start(Via::Redis, persistence).await;
    run.resume_some();
    run.cluster.redis.kill().await;
    run.cluster.redis.restart().await;
    let restored = Instant::now();
    let a = run.settle(fault, restored).await;
    assert!(a.notices >= 4, "every client was told the stream changed");
}

#[tokio::test]
async fn redis_sigkilled_and_restarted_empty() {
    let fault = "Redis SIGKILL, restart without persistence";
    redis_sigkilled_and_restarted(Persistence::None, fault).await;
}

#[tokio::test]
async fn redis_sigkilled_and_restarted_from_its_append_only_file() {
    let fault = "Redis SIGKILL, restart with AOF";
    redis_sigkilled_and_restarted(Persistence::Aof, fault).await;
}

#[tokio::test]
async fn redis_stalled_for_two_seconds() {
    let run = Run::start(Via::Redis, Persistence::None).await;
    run.resume_some();
    run.cluster.redis.cli(&["DEBUG", "SLEEP", "2"]).await;
    let restored = Instant::now();
    run.settle("Redis stalled 2 s (DEBUG SLEEP)", restored)
        .await;
}

/// A fault on the nodes' links to Redis for `length`, then both links restored.
async fn link_fault(fault: &str, length: Duration, inject: impl FnOnce(&[Proxy; 2])) {
    let run = Run::start(Via::Redis, Persistence::None).await;
    run.resume_some();
    inject(&run.links);
    tokio::time::sleep(length).await; // the fault's length
    run.links.iter().for_each(Proxy::restore);
    let restored = Instant::now();
    run.settle(fault, restored).await;
}

#[tokio::test]
async fn link_to_redis_stalled_for_three_seconds() {
    let fault = "node A's link stalled 3 s, B's delayed 50 ms";
    link_fault(fault, Duration::from_secs(3), |links| {
        links[0].stall();
        links[1].delay(Duration::from_millis(50));
    })
    .await;
}

#[tokio::test]
async fn link_to_redis_cut_for_five_seconds() {
    let fault = "node A's link to Redis cut 5 s";
    link_fault(fault, Duration::from_secs(5), |links| links[0].cut()).await;
}

#[tokio::test]
async fn nats_sigkilled_and_restarted() {
    let mut run = Run::start(Via::Nats, Persistence::None).await;
    run.resume_some();
    let nats = run.cluster.nats.as_mut().expect("nats");
    nats.kill().await;
    nats.restart().await;
    let restored = Instant::now();
    run.settle("NATS SIGKILL and restart", restored).await;
}

/// Regression: Redis restored from an older snapshot kept the channel's epoch with a lower
/// offset; the next publication got an offset the node had already delivered, under the
/// same epoch, and was dropped as a duplicate: accepted, never delivered, no notice.
#[tokio::test]
async fn a_restore_from_an_older_snapshot_rotates_the_epoch() {
    let redis = RedisServer::start_with(Persistence::Snapshot).await;
    let mut cluster = Cluster::with_redis(Via::Redis, redis).await;
    let a = cluster.node("snap-a", &[]).await;
    let mut c = Client::connect(&a.ws_url()).await;
    let old = c.subscribe("snap").await["epoch"].clone();
    for i in 1..=6 {
        assert_eq!(a.publish("snap", json!(i)).await, i);
        assert_eq!(c.recv().await["offset"], i);
        if i == 3 {
            assert!(cluster.redis.cli(&["SAVE"]).await.contains("OK"));
        }
    }
    cluster.redis.kill().await;
    cluster.redis.restart().await;

    let body = eventually("a publication accepted after the restore", || async {
        let (status, body) = a
            .post("/api/v1/publish", json!({"channel":"snap","data":7}))
            .await;
        (status == 200).then_some(body)
    })
    .await;
    assert_ne!(
        body["epoch"], old,
        "offsets went back: the epoch must change"
    );
    let notice = c.recv().await;
    assert_eq!(
        (&notice["op"], &notice["channel"], &notice["epoch"]),
        (&json!("epoch_changed"), &json!("snap"), &body["epoch"]),
        "{notice}"
    );
    let m = c.recv().await;
    assert_eq!((&m["offset"], &m["data"]), (&body["offset"], &json!(7)));
}

//! Ownership of upstream connections across a cluster, with real processes: SIGKILL and
//! SIGTERM fail-over, no duplicates under repeated kills, forwarding to the owner,
//! `CLEAR_ALL_ON_START`, rebuild after restart, and secrets sealed in Redis.

use wsgate_tests as support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cluster::{Cluster, Node, Via, poll};
use support::{Client, SIGKILL, SIGTERM, WAIT, within};
use wsgate_client::Message;
use wsgate_client::test_support::{TestServer as Upstream, TestServerConfig as UpstreamConfig};

const SECRET_AUTH: &str = "auth-s3cr3t";
const SECRET_HEADER: &str = "hdr-s3cr3t";

fn fast_reconnect() -> Value {
    json!({"initial_ms": 5, "max_ms": 50, "max_attempts": null, "jitter": 0.0})
}

/// Connects an upstream through `node`; returns its id.
async fn connect(node: &Node, up: &Upstream, topic: Option<&str>) -> String {
    let mut body = json!({
        "url": up.url(),
        "headers": {"x-api-key": SECRET_HEADER},
        "auth": {"messages": [{"op": "auth", "token": SECRET_AUTH}], "expect": {"op": "auth_ok"}},
        "subscriptions": [{"key": "trades", "message": "SUB trades"}],
        "correlation": {"mode": "json-field", "field": "id"},
        "reconnect": fast_reconnect(),
    });
    if let Some(t) = topic {
        body["publish_topic"] = json!(t);
    }
    let (status, r) = node.post("/api/v1/upstreams", body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["state"], "connected", "{r}");
    r["connection_id"].as_str().unwrap().to_string()
}

async fn owner_of(cluster: &Cluster, id: &str) -> Option<String> {
    let raw = cluster
        .redis
        .cli(&["GET", &format!("{}:websocket-{id}", cluster.prefix)])
        .await;
    let v: Value = serde_json::from_str(raw.trim()).ok()?;
    v["owner"].as_str().map(str::to_string)
}

async fn metric(node: &Node, series: &str) -> f64 {
    let text = support::get_text(&node.url("/metrics")).await;
    support::metric_value(&text, series).unwrap_or(0.0)
}

/// An upstream that wants `SECRET_AUTH`, and a Redis cluster (no nodes yet) to connect to it.
async fn upstream_and_cluster() -> (Upstream, Cluster) {
    let up = Upstream::start(UpstreamConfig::default().require_auth(SECRET_AUTH)).await;
    (up, Cluster::start(Via::Redis).await)
}

/// `node-a`, `node-b` and `node-c`, started in that order.
async fn three_nodes(cluster: &Cluster) -> [Node; 3] {
    [
        cluster.node("node-a", &[]).await,
        cluster.node("node-b", &[]).await,
        cluster.node("node-c", &[]).await,
    ]
}

/// Asserts that `up` sees no handshake past the `n`th for `quiet`.
async fn assert_no_handshake_past(up: &Upstream, n: u64, quiet: Duration, what: &str) {
    assert!(
        up.wait_for(quiet, |l| l.handshakes > n).await.is_err(),
        "{what}"
    );
}

async fn kill(node: &mut Node, sig: i32) {
    node.0.signal(sig);
    within("wsgate to exit", node.0.child.wait()).await.unwrap();
}

#[tokio::test]
async fn sigkill_owner_fails_over_to_exactly_one_survivor() {
    let (up, cluster) = upstream_and_cluster().await;
    let [mut a, b, c] = three_nodes(&cluster).await;
    let id = connect(&a, &up, Some("feed")).await;
    assert_eq!(owner_of(&cluster, &id).await.as_deref(), Some("node-a"));

    // A browser on a surviving node follows the upstream's topic.
    let mut browser = Client::subscribed(&b.ws_url(), "topic:feed").await;
    up.broadcast(Message::from(r#"{"n":1}"#));
    assert_eq!(browser.recv().await["data"], json!({"n": 1}));

    // Secrets at rest are sealed: redis-cli sees ciphertext only.
    let raw = cluster
        .redis
        .cli(&["GET", &format!("{}:websocket-{id}", cluster.prefix)])
        .await;
    assert!(raw.contains("\"sealed\""), "{raw}");
    assert!(
        !raw.contains(SECRET_AUTH) && !raw.contains(SECRET_HEADER),
        "{raw}"
    );

    let before = up.log().handshakes;
    assert_eq!(before, 1);
    let t0 = Instant::now();
    kill(&mut a, SIGKILL).await;
    let log = up
        .wait_for(Duration::from_secs(10), |l| l.handshakes > before)
        .await
        .expect("a survivor re-establishes the connection");
    let failover = t0.elapsed();
    println!("SIGKILL failover (kill -> new upstream handshake), default lease: {failover:?}");
    // Issue 5's bound with default settings (the team aims at < 1 s; see docs/cluster.md).
    assert!(failover < Duration::from_secs(2), "{failover:?}");
    let conn = log.handshakes;

    // Auth first, then the subscription, replayed on the new connection.
    let log = up
        .wait_for(WAIT, |l| l.texts_on(conn).len() >= 2)
        .await
        .unwrap();
    let texts = log.texts_on(conn);
    assert!(texts[0].contains(SECRET_AUTH), "{texts:?}");
    assert_eq!(texts[1], "SUB trades", "{texts:?}");
    assert_eq!(
        log.header("x-api-key"),
        Some(SECRET_HEADER),
        "headers decrypted"
    );

    // The publish topic resumed: the browser on B receives upstream broadcasts again.
    let new_owner = poll("a new owner", WAIT, || async {
        owner_of(&cluster, &id)
            .await
            .filter(|o| o == "node-b" || o == "node-c")
    })
    .await;
    up.broadcast(Message::from(r#"{"n":2}"#));
    let m = browser.recv().await;
    assert_eq!(m["data"], json!({"n": 2}), "{m}");

    // Exactly one survivor took it: one reclaim in total, and no further handshake while
    // both survivors keep sweeping (a bounded observation window, ~8 sweeps).
    let reclaimed = metric(&b, "wsgate_upstream_reclaimed_total").await
        + metric(&c, "wsgate_upstream_reclaimed_total").await;
    assert_eq!(reclaimed, 1.0);
    assert_no_handshake_past(
        &up,
        conn,
        Duration::from_secs(2),
        "a second survivor re-established it too",
    )
    .await;
    assert_eq!(up.log().max_active, 1);
    let holder = if new_owner == "node-b" { &b } else { &c };
    let (status, v) = holder.get(&format!("/connections/{id}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["connection"]["state"], "connected", "{v}");
    assert_eq!(v["connection"]["node"], new_owner.as_str(), "{v}");
}

#[tokio::test]
async fn repeated_kills_never_duplicate_a_connection() {
    let (up, cluster) = upstream_and_cluster().await;
    let env = [("WSGATE_LEASE_TTL_MS", "600")];
    let names = ["node-a", "node-b", "node-c"];
    let mut nodes = Vec::new();
    for n in names {
        nodes.push(Some(cluster.node_env(n, &[], &env).await));
    }
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(connect(nodes[i % 3].as_ref().unwrap(), &up, None).await);
    }
    let mut expected_handshakes = 4u64;
    for round in 0..5 {
        let victim = round % 3;
        let name = names[victim];
        let mut owned = 0u64;
        for id in &ids {
            if owner_of(&cluster, id).await.as_deref() == Some(name) {
                owned += 1;
            }
        }
        let t0 = Instant::now();
        let mut node = nodes[victim].take().unwrap();
        kill(&mut node, SIGKILL).await;
        expected_handshakes += owned;
        up.wait_for(Duration::from_secs(10), |l| {
            l.handshakes >= expected_handshakes && l.active == 4
        })
        .await
        .expect("every connection back");
        println!(
            "round {round}: {owned} connection(s) of {name} back after {:?}",
            t0.elapsed()
        );
        for id in &ids {
            let o = owner_of(&cluster, id).await.unwrap();
            assert_ne!(o, name, "{id} still names the dead node");
        }
        // The dead node comes back under the same id (nothing of it left to rebuild).
        nodes[victim] = Some(cluster.node_env(name, &[], &env).await);
    }
    let log = up.log();
    assert_eq!(log.handshakes, expected_handshakes, "no connection twice");
    assert_eq!(log.max_active, 4, "never two connections for one record");
    assert_eq!(log.auth_failures, 0);
}

#[tokio::test]
async fn sigterm_hands_over_within_the_bound() {
    let (up, cluster) = upstream_and_cluster().await;
    let [mut a, _b, _c] = three_nodes(&cluster).await;
    let id = connect(&a, &up, None).await;
    let t0 = Instant::now();
    a.0.signal(SIGTERM);
    up.wait_for(Duration::from_secs(5), |l| {
        l.handshakes == 2 && l.active == 1
    })
    .await
    .expect("a survivor takes the connection");
    let took = t0.elapsed();
    println!("SIGTERM hand-over (signal -> new upstream handshake): {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    within("node-a to exit", a.0.child.wait()).await.unwrap();
    let o = owner_of(&cluster, &id).await.unwrap();
    assert!(o == "node-b" || o == "node-c", "{o}");
    assert_no_handshake_past(&up, 2, Duration::from_millis(1500), "taken twice").await;
}

#[tokio::test]
async fn calls_to_a_non_owner_are_forwarded_and_a_dead_owner_is_named() {
    let (up, cluster) = upstream_and_cluster().await;
    // A lease far longer than the test: a killed owner stays unreclaimed.
    let env = [("WSGATE_LEASE_TTL_MS", "60000")];
    let mut a = cluster.node_env("node-a", &[], &env).await;
    let b = cluster.node_env("node-b", &[], &env).await;
    let id = connect(&a, &up, None).await;

    b.upstream_call(&id, "send", json!({"message": "via-b"}), 200)
        .await;
    up.wait_for(WAIT, |l| l.texts_on(1).iter().any(|t| t == "via-b"))
        .await
        .unwrap();
    let r = b
        .upstream_call(
            &id,
            "send-async",
            json!({"message": {"op": "request", "id": "q1", "n": 7}, "timeout_ms": 5000}),
            200,
        )
        .await;
    assert_eq!(r["response"]["id"], "q1", "{r}");
    assert_eq!(r["response"]["echo"]["n"], 7, "{r}");
    // Errors come back as the owner answered them.
    for (key, message, status) in [("", "x", 400), ("book", "SUB book", 200)] {
        let add = json!({"add": [{"key": key, "message": message}]});
        b.upstream_call(&id, "subscriptions", add, status).await;
    }
    assert_eq!(metric(&b, "wsgate_upstream_forwarded_total").await, 3.0);
    assert_eq!(up.log().handshakes, 1, "nothing re-established");

    kill(&mut a, SIGKILL).await;
    let r = b
        .upstream_call(&id, "send", json!({"message": "x"}), 409)
        .await;
    assert_eq!(
        r,
        json!({"success": false, "error": "Connection owned by different instance: node-a"})
    );
}

#[tokio::test]
async fn restart_rebuilds_and_clear_all_on_start_wipes() {
    let (up, cluster) = upstream_and_cluster().await;
    let mut a = cluster.node("node-a", &[]).await;
    let id = connect(&a, &up, None).await;
    kill(&mut a, SIGKILL).await;

    // Same instance id, no survivor: the node rebuilds its connection from the store.
    let mut a = cluster.node("node-a", &[]).await;
    up.wait_for(WAIT, |l| l.handshakes == 2 && l.active == 1)
        .await
        .expect("rebuilt");
    let log = up
        .wait_for(WAIT, |l| l.texts_on(2).len() >= 2)
        .await
        .unwrap();
    assert_eq!(log.texts_on(2)[1], "SUB trades");
    let (status, v) = a.get(&format!("/connections/{id}")).await;
    assert_eq!(status, 200, "{v}");
    kill(&mut a, SIGKILL).await;

    let a = cluster
        .node_env("node-a", &[], &[("CLEAR_ALL_ON_START", "TRUE")])
        .await;
    let index = format!("{}:websocket-index", cluster.prefix);
    poll("records wiped", WAIT, || async {
        (cluster.redis.cli(&["SCARD", &index]).await.trim() == "0").then_some(())
    })
    .await;
    let (status, r) = a.get(&format!("/api/v1/upstreams/{id}")).await;
    assert_eq!(status, 404, "{r}");
    assert_eq!(owner_of(&cluster, &id).await, None);
    assert_no_handshake_past(
        &up,
        2,
        Duration::from_millis(800),
        "a wiped record was re-established",
    )
    .await;
}

#[tokio::test]
async fn rolling_restart_never_leaves_the_upstream_down_longer_than_the_hand_over() {
    let (up, cluster) = upstream_and_cluster().await;
    let names = ["node-a", "node-b", "node-c"];
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(cluster.node(name, &[]).await);
    }
    let id = connect(&nodes[0], &up, None).await;
    // Restart every node in turn, as a Kubernetes rolling update does.
    for i in 0..names.len() {
        let owner = owner_of(&cluster, &id)
            .await
            .expect("a record with an owner");
        let before = up.log().handshakes;
        let t0 = Instant::now();
        nodes[i].0.signal(SIGTERM);
        within("node to exit", nodes[i].0.child.wait())
            .await
            .unwrap();
        if owner == names[i] {
            up.wait_for(Duration::from_secs(5), |l| {
                l.handshakes == before + 1 && l.active == 1
            })
            .await
            .expect("a survivor takes the connection");
            let down = t0.elapsed();
            println!("rolling restart: {} handed over in {down:?}", names[i]);
            assert!(down < Duration::from_secs(2), "{down:?}");
        }
        nodes[i] = cluster.node(names[i], &[]).await;
        let log = up.log();
        let expected = before + u64::from(owner == names[i]);
        assert_eq!(
            log.handshakes, expected,
            "restarting {} moved nothing else",
            names[i]
        );
        assert_eq!(
            log.active, 1,
            "exactly one connection after restarting {}",
            names[i]
        );
    }
}

/// The upstream's handshakes and the reclaims stay as they were while Redis stalls for
/// `DEBUG SLEEP 1` (or, `restart`, is SIGKILLed and restarted from its append-only file):
/// every lease runs out meanwhile, but a survivor claims only a lease seen missing twice,
/// more than one TTL apart, and the owner takes its own again within a renewal. The owner
/// may close its connection while it cannot renew (it cannot prove that nobody claims it)
/// and start it again itself: never two connections at once, never another owner.
async fn redis_fault_makes_no_second_owner(restart: bool) {
    let up = Upstream::start(UpstreamConfig::default().require_auth(SECRET_AUTH)).await;
    let mut cluster = if restart {
        Cluster::start_persistent().await
    } else {
        Cluster::start(Via::Redis).await
    };
    // The owner is the node started last (its Redis connections are the newest).
    let [a, b, c] = three_nodes(&cluster).await;
    let id = connect(&c, &up, Some("feed")).await;
    let mut browser = Client::subscribed(&a.ws_url(), "topic:feed").await;
    up.broadcast(Message::from(r#"{"n":1}"#));
    assert_eq!(browser.recv().await["data"], json!({"n": 1}));

    let t0 = Instant::now();
    if restart {
        cluster.redis.kill_and_restart().await;
    } else {
        cluster.redis.stall(1.0).await;
    }
    println!(
        "redis fault (restart: {restart}) over after {:?}",
        t0.elapsed()
    );
    // Watched for several lease TTLs (400 ms), ~40 sweeps of each survivor, after it.
    assert!(
        up.wait_for(Duration::from_secs(2), |l| l.max_active > 1
            || l.handshakes > 2)
            .await
            .is_err(),
        "a second owner: {:?}",
        (up.log().handshakes, up.log().max_active)
    );
    let log = up
        .wait_for(WAIT, |l| l.active == 1)
        .await
        .expect("the connection is up");
    println!(
        "after the fault: {} handshake(s), at most {} at once",
        log.handshakes, log.max_active
    );
    assert_eq!(owner_of(&cluster, &id).await.as_deref(), Some("node-c"));
    for n in [&a, &b] {
        assert_eq!(metric(n, "wsgate_upstream_reclaimed_total").await, 0.0);
    }
    assert_eq!(log.max_active, 1, "never two connections at once");
    if restart {
        // The owner restarted its connection only if Redis was away for ~570 ms or more.
        assert!(log.handshakes <= 2, "{} handshakes", log.handshakes);
    } else {
        // A 1 s stall outlasts the owner's 700 ms fence: it closed its connection during
        // the stall, and started it again itself once it renewed.
        assert_eq!(log.handshakes, 2);
        assert_eq!(log.client_closes, 1);
    }
    let (status, v) = c.get(&format!("/connections/{id}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["connection"]["node"], "node-c", "{v}");
}

#[tokio::test]
async fn redis_stall_makes_no_second_owner() {
    redis_fault_makes_no_second_owner(false).await;
}

#[tokio::test]
async fn redis_restart_makes_no_second_owner() {
    redis_fault_makes_no_second_owner(true).await;
}

/// Redis away for 1.5 s (SIGKILL, restart from its append-only file), longer than the
/// lease and the owner's fence: the connection may move (the rule allows a claim once the
/// lease stayed missing for a TTL), but the owner closed its copy before any claim was
/// possible, so the upstream never sees two at once.
#[tokio::test]
async fn redis_down_longer_than_the_lease_never_runs_two_copies() {
    let up = Upstream::start(UpstreamConfig::default().require_auth(SECRET_AUTH)).await;
    let mut cluster = Cluster::start_persistent().await;
    let [_a, _b, c] = three_nodes(&cluster).await;
    let id = connect(&c, &up, None).await;
    cluster.redis.kill().await;
    // The outage itself (a fault parameter, not a wait for an event).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.redis.restart().await;
    let owner = poll("one owner running it", WAIT, || async {
        let o = owner_of(&cluster, &id).await?;
        (up.log().active == 1).then_some(o)
    })
    .await;
    // Settled: no further handshake, never two at once.
    let n = up.log().handshakes;
    let moved = up
        .wait_for(Duration::from_secs(2), |l| l.handshakes > n)
        .await;
    assert!(
        moved.is_err(),
        "moved again after it settled on {owner}: {:?}, now owned by {:?}",
        (up.log().handshakes, up.log().max_active),
        owner_of(&cluster, &id).await
    );
    let log = up.log();
    println!(
        "Redis down 1.5 s: owner {owner}, {} handshake(s), at most {} at once",
        log.handshakes, log.max_active
    );
    assert_eq!(log.max_active, 1, "two copies at once");
    assert_eq!(log.active, 1);
}

/// A record write the store refuses (the record was deleted by its owner, or names another
/// one) stops the local connection at once, and the record is never re-created.
#[tokio::test]
async fn a_refused_record_write_stops_the_connection_at_once() {
    let (up, cluster) = upstream_and_cluster().await;
    // A long lease: sweeps every 500 ms, so what stops the connection is the refusal.
    let a = cluster
        .node_env("node-a", &[], &[("WSGATE_LEASE_TTL_MS", "60000")])
        .await;
    let key = |id: &str| format!("{}:websocket-{id}", cluster.prefix);

    // Refused on an API call: answered 404, and the connection is gone when it answers.
    let id = connect(&a, &up, None).await;
    cluster.redis.cli(&["DEL", &key(&id)]).await;
    let r = a
        .upstream_call(&id, "publish/start", json!({"topic": "t"}), 404)
        .await;
    assert_eq!(r["error"], "Connection not found", "{r}");
    let (status, v) = a.get(&format!("/api/v1/upstreams/{id}")).await;
    assert_eq!(status, 404, "{v}");
    up.wait_for(WAIT, |l| l.active == 0).await.expect("closed");

    // Refused on the pump's state write (the upstream dropped it): stopped, not re-created.
    let id = connect(&a, &up, None).await;
    cluster.redis.cli(&["DEL", &key(&id)]).await;
    up.drop_all();
    up.wait_for(WAIT, |l| l.active == 0 && l.handshakes >= 2)
        .await
        .expect("dropped");
    let n = up.log().handshakes;
    assert_no_handshake_past(&up, n + 1, Duration::from_millis(1500), "kept reconnecting").await;
    assert_eq!(up.log().active, 0);
    assert_eq!(cluster.redis.cli(&["EXISTS", &key(&id)]).await.trim(), "0");
    let (status, v) = a.get(&format!("/api/v1/upstreams/{id}")).await;
    assert_eq!(status, 404, "{v}");
}

/// `kills` SIGKILLs of the node that owns the most connections, each followed by a restart
/// under the same id, while the upstream broadcasts every 20 ms: the upstream counts exactly
/// one new handshake per moved connection (no duplicate owner, ever two at once), and the
/// fail-over (kill → the last moved connection's handshake) is reported as p50/p99.
async fn sigkill_loop(kills: usize) {
    const CONNS: usize = 6;
    let (up, cluster) = upstream_and_cluster().await;
    let up = std::sync::Arc::new(up);
    let names = ["node-a", "node-b", "node-c"];
    let mut nodes = Vec::new();
    for n in names {
        nodes.push(Some(cluster.node(n, &[]).await));
    }
    let mut ids = Vec::new();
    for i in 0..CONNS {
        ids.push(connect(nodes[i % 3].as_ref().unwrap(), &up, Some("feed")).await);
    }
    let traffic = {
        let up = up.clone();
        tokio::spawn(async move {
            for n in 0u64.. {
                up.broadcast(Message::from(format!(r#"{{"n":{n}}}"#)));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut expected = CONNS as u64;
    let mut failovers = Vec::new();
    for round in 0..kills {
        let mut owned = [0u64; 3];
        for id in &ids {
            let o = owner_of(&cluster, id).await.expect("an owner");
            owned[names.iter().position(|n| *n == o).expect("a known node")] += 1;
        }
        let victim = (0..3).max_by_key(|i| (owned[*i], *i == round % 3)).unwrap();
        let t0 = Instant::now();
        let mut node = nodes[victim].take().unwrap();
        kill(&mut node, SIGKILL).await;
        expected += owned[victim];
        up.wait_for(Duration::from_secs(10), |l| {
            l.handshakes >= expected && l.active == CONNS
        })
        .await
        .expect("every connection back");
        let took = t0.elapsed();
        println!(
            "kill {round}: {} connection(s) of {} back after {took:?}",
            owned[victim], names[victim]
        );
        failovers.push(took);
        nodes[victim] = Some(cluster.node(names[victim], &[]).await);
        let log = up.log();
        assert_eq!(
            log.handshakes, expected,
            "round {round}: a connection twice"
        );
        assert!(log.max_active <= CONNS, "round {round}: two owners at once");
    }
    traffic.abort();
    // The last restart rebuilt nothing and nobody claims late.
    assert_no_handshake_past(&up, expected, Duration::from_secs(1), "a late duplicate").await;
    let log = up.log();
    assert_eq!(
        log.max_active, CONNS,
        "never two connections for one record"
    );
    assert_eq!(log.auth_failures, 0);
    failovers.sort();
    let pct = |p: usize| failovers[(failovers.len() * p).div_ceil(100).max(1) - 1];
    println!(
        "SIGKILL x{kills}: duplicate upstream owners 0, fail-over p50 {:?}, p99 {:?}, max {:?}",
        pct(50),
        pct(99),
        failovers[failovers.len() - 1]
    );
    assert!(pct(50) < Duration::from_secs(2), "p50 {:?}", pct(50));
}

#[tokio::test]
async fn sigkill_loop_under_traffic_never_duplicates_an_owner() {
    sigkill_loop(10).await;
}

/// The ×50 run behind docs/reliability.md ("Upstream ownership"):
/// `cargo test -p wsgate-tests --test failover sigkill_x50 -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "about a minute; run by hand for docs/reliability.md"]
async fn sigkill_x50_under_traffic() {
    sigkill_loop(50).await;
}

/// Anybody who can write to Redis can publish on `P:rpc:<node>`; without the cluster key
/// their calls are dropped (counted), while the nodes' own signed calls still run.
#[tokio::test]
async fn forged_forwarded_calls_are_dropped() {
    let (up, cluster) = upstream_and_cluster().await;
    let a = cluster.node("node-a", &[]).await;
    let b = cluster.node("node-b", &[]).await;
    let id = connect(&a, &up, None).await;
    let channel = format!("{}:rpc:node-a", cluster.prefix);
    let disconnect = json!({"op": "disconnect", "id": id}).to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let forged = [
        // The previous, unsigned frame, and one with a made-up signature.
        json!({"k": "q", "id": 1, "from": "evil", "b": disconnect}),
        json!({"k": "q", "id": 2, "from": "evil", "b": disconnect, "to": "node-a", "t": now,
               "m": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}),
    ];
    for frame in &forged {
        // Published again until node-a's subscription received it (PUBLISH counts).
        poll("node-a to receive the frame", WAIT, || async {
            let n = cluster
                .redis
                .cli(&["PUBLISH", &channel, &frame.to_string()])
                .await;
            (n.trim() == "1").then_some(())
        })
        .await;
    }
    let refused = || async { metric(&a, "wsgate_cluster_malformed_total").await };
    poll("both frames refused", WAIT, || async {
        (refused().await >= 2.0).then_some(())
    })
    .await;
    assert_eq!(
        up.log().active,
        1,
        "a forged call disconnected the upstream"
    );
    let (status, v) = a.get(&format!("/api/v1/upstreams/{id}")).await;
    assert_eq!(status, 200, "{v}");
    // A real forwarded call (signed by node-b) runs.
    b.upstream_call(&id, "send", json!({"message": "via-b"}), 200)
        .await;
    up.wait_for(WAIT, |l| l.texts_on(1).iter().any(|t| t == "via-b"))
        .await
        .unwrap();
    assert_eq!(refused().await, 2.0);
}

/// The spec is sealed whole: somebody who can write to Redis but has no cluster key cannot
/// make a survivor reclaim a connection towards a server of theirs, neither by editing a
/// record nor by planting one in the previous (format 1) layout.
#[tokio::test]
async fn a_redis_writer_cannot_redirect_a_reclaim() {
    let (up, cluster) = upstream_and_cluster().await;
    let evil = Upstream::start(UpstreamConfig::default()).await;
    let mut a = cluster.node("node-a", &[]).await;
    let b = cluster.node("node-b", &[]).await;
    let id = connect(&a, &up, None).await;
    let key = format!("{}:websocket-{id}", cluster.prefix);
    let raw = cluster.redis.cli(&["GET", &key]).await;
    let mut rec: Value = serde_json::from_str(raw.trim()).unwrap();
    assert_eq!(rec["v"], 2, "{rec}");
    assert!(
        rec.get("spec").is_none() && !raw.contains("SUB trades"),
        "{raw}"
    );
    // Redirect attempts: the clear URL, and a spec in clear beside the sealed one.
    rec["url"] = json!(evil.url());
    rec["spec"] = json!({"url": evil.url()});
    cluster.redis.cli(&["SET", &key, &rec.to_string()]).await;
    // A planted format 1 record of a dead node, pointing at the same server.
    let planted = json!({"id": "feed-node-z", "owner": "node-z", "state": "connected",
        "created_at_ms": 1, "spec": {"url": evil.url()}});
    let index = format!("{}:websocket-index", cluster.prefix);
    cluster
        .redis
        .cli(&[
            "SET",
            &format!("{}:websocket-feed-node-z", cluster.prefix),
            &planted.to_string(),
        ])
        .await;
    cluster.redis.cli(&["SADD", &index, "feed-node-z"]).await;

    kill(&mut a, SIGKILL).await;
    up.wait_for(WAIT, |l| l.handshakes == 2 && l.active == 1)
        .await
        .expect("reclaimed towards the sealed URL");
    assert_eq!(owner_of(&cluster, &id).await.as_deref(), Some("node-b"));
    assert_eq!(metric(&b, "wsgate_upstream_reclaimed_total").await, 1.0);
    // Long enough for the planted record's owner to be seen missing twice (full scans
    // run every 20 sweeps, 1 s).
    assert!(
        evil.wait_for(Duration::from_secs(3), |l| l.attempts > 0)
            .await
            .is_err(),
        "a reclaim went to the planted server"
    );
    assert_eq!(
        owner_of(&cluster, "feed-node-z").await.as_deref(),
        Some("node-z")
    );
}

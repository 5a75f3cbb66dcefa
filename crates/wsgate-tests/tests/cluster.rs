//! Cluster mode end to end: real `redis-server`, `nats-server` and `wsgate serve` processes.

use wsgate_tests as support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cluster::{Cluster, Via, poll};
use support::{Client, SIGKILL, WAIT, hs256_token, in_a_minute};

/// Reads channel messages until `n` arrived; returns their offsets in arrival order.
async fn offsets(c: &mut Client, n: usize) -> Vec<u64> {
    let mut seen = Vec::with_capacity(n);
    while seen.len() < n {
        let m = c.recv().await;
        assert_eq!(m["op"], "message", "{m}");
        seen.push(m["offset"].as_u64().expect("offset"));
    }
    seen
}

/// The tests `$redis` and `$nats` run `$scenario` (an `async fn(Via)`) over each broker.
macro_rules! per_broker {
    ($scenario:ident: $redis:ident, $nats:ident) => {
        #[tokio::test]
        async fn $redis() {
            $scenario(Via::Redis).await;
        }

        #[tokio::test]
        async fn $nats() {
            $scenario(Via::Nats).await;
        }
    };
}

async fn cross_node_delivery_and_presence(via: Via) {
    let cluster = Cluster::start(via).await;
    let a = cluster.node("node-a", &[]).await;
    let b = cluster.node("node-b", &[]).await;

    let mut on_b = Client::connect(&b.ws_url()).await;
    assert_eq!(on_b.hello["node"], "node-b");
    on_b.subscribe("room").await;

    // Channel: published through A, delivered on B.
    assert_eq!(a.publish("room", json!({"text":"hi"})).await, 1);
    assert_eq!(
        on_b.recv().await,
        json!({"op":"message","channel":"room","offset":1,"data":{"text":"hi"}})
    );

    // User: sent through A, delivered to the user's connection on B; then the connection id
    // held by B, sent through A.
    let targets = [
        (format!("/api/v1/users/{}/send", on_b.user()), "user"),
        (format!("/api/v1/connections/{}/send", on_b.id()), "conn"),
    ];
    for (path, to) in targets {
        let (status, body) = a.post(&path, json!({"data":{"to":to}})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(on_b.recv().await, json!({"op":"message","data":{"to":to}}));
    }
    // A connection of a node that does not exist is not found, not silently dropped.
    let (status, _) = a
        .post(
            "/api/v1/connections/0123456789abcdef-node-z/send",
            json!({"data":1}),
        )
        .await;
    assert_eq!(status, 404);

    // Presence is cluster-wide: seen from both nodes, with members on both.
    let mut on_a = Client::subscribed(&a.ws_url(), "room").await;
    let mut users = vec![on_a.user(), on_b.user()];
    users.sort();
    for node in [&a, &b] {
        let p = node.presence("room").await;
        assert_eq!(p["connections"], 2, "{p}");
        assert_eq!(p["users"], json!(users));
    }
    // And a publication reaches subscribers on both nodes with the same offset.
    assert_eq!(b.publish("room", json!(2)).await, 2);
    assert_eq!(on_a.recv().await["offset"], 2);
    assert_eq!(on_b.recv().await["offset"], 2);
}

per_broker!(cross_node_delivery_and_presence: redis_cross_node_delivery_and_presence, nats_cross_node_delivery_and_presence);

const SECRET: &str = "cluster-test-secret";
const JWT: [(&str, &str); 2] = [
    ("WSGATE_AUTH__MODE", "jwt"),
    ("WSGATE_AUTH__JWT_SECRET", SECRET),
];

/// A client of `user` on `node`.
async fn connect_as(node: &support::cluster::Node, user: &str) -> Client {
    let token = hs256_token(SECRET, json!({"sub": user, "exp": in_a_minute()}));
    Client::connect(&format!("{}?token={token}", node.ws_url())).await
}

/// How many nodes receive a Redis pub/sub channel (`PUBSUB NUMSUB`).
async fn receivers(cluster: &Cluster, channel: &str) -> u64 {
    let out = cluster.redis.cli(&["PUBSUB", "NUMSUB", channel]).await;
    out.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(u64::MAX)
}

/// Sends `data` to `user` through `node`; returns how many nodes it reached.
async fn send_to_user(node: &support::cluster::Node, user: &str, data: Value) -> Value {
    let (status, body) = node
        .post(&format!("/api/v1/users/{user}/send"), json!({"data": data}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["delivered"].clone()
}

/// Issue 16: a send to a user reaches the nodes holding one of its connections, and no
/// other (per-channel pub/sub, the default): each node receives a user's own pub/sub
/// channel from before its first connection's `hello` until its last one closes.
#[tokio::test]
async fn user_sends_reach_only_the_nodes_holding_the_user() {
    let cluster = Cluster::start(Via::Redis).await;
    let a = cluster.node_env("user-a", &[], &JWT).await;
    let b = cluster.node_env("user-b", &[], &JWT).await;
    let c = cluster.node_env("user-c", &[], &JWT).await;
    let ann = format!("{}:{{ann}}:user", cluster.prefix);
    assert_eq!(receivers(&cluster, &ann).await, 0);

    // Received by B before its `hello`: a send right after it arrives.
    let mut on_b = connect_as(&b, "ann").await;
    assert_eq!(receivers(&cluster, &ann).await, 1);
    assert_eq!(send_to_user(&a, "ann", json!(1)).await, 1);
    assert_eq!(on_b.recv().await, json!({"op":"message","data":1}));

    // A second connection on B changes nothing; one on C adds C.
    let mut again_b = connect_as(&b, "ann").await;
    let mut on_c = connect_as(&c, "ann").await;
    assert_eq!(receivers(&cluster, &ann).await, 2);
    assert_eq!(send_to_user(&a, "ann", json!(2)).await, 2);
    for client in [&mut on_b, &mut again_b, &mut on_c] {
        assert_eq!(client.recv().await, json!({"op":"message","data":2}));
    }
    // Server-side subscriptions go the same way.
    let (status, r) = a
        .post("/api/v1/users/ann/subscribe", json!({"channel": "room"}))
        .await;
    assert_eq!((status, r["delivered"].clone()), (200, json!(2)), "{r}");
    for client in [&mut on_b, &mut again_b, &mut on_c] {
        assert_eq!(client.recv().await["op"], "subscribed");
    }

    // B's last connection of the user closes: B stops receiving the user's sends.
    drop((on_b, again_b));
    poll("user-b stops receiving ann's sends", WAIT, || async {
        (receivers(&cluster, &ann).await == 1).then_some(())
    })
    .await;
    assert_eq!(send_to_user(&a, "ann", json!(3)).await, 1);
    assert_eq!(on_c.recv().await, json!({"op":"message","data":3}));
    drop(on_c);
    poll("no node receives ann's sends", WAIT, || async {
        (receivers(&cluster, &ann).await == 0).then_some(())
    })
    .await;
    // Nobody holds the user: accepted, delivered nowhere, and said so.
    assert_eq!(send_to_user(&a, "ann", json!(4)).await, 0);
}

async fn order_across_nodes(via: Via) {
    const PER_PUBLISHER: u64 = 100;
    let cluster = Cluster::start(via).await;
    let nodes = [
        cluster.node("n1", &[]).await,
        cluster.node("n2", &[]).await,
        cluster.node("n3", &[]).await,
    ];
    let mut subs = Vec::new();
    for node in &nodes {
        for _ in 0..2 {
            let c = Client::subscribed(&node.ws_url(), "ordered").await;
            subs.push(c);
        }
    }
    // Two concurrent publishers per node on two of the nodes.
    let started = Instant::now();
    let mut publishers = Vec::new();
    for node in &nodes[..2] {
        for p in 0..2 {
            let url = node.url("/api/v1/publish");
            let each = PER_PUBLISHER / 2;
            publishers.push(tokio::spawn(support::publish_numbered(
                url, "ordered", p, each,
            )));
        }
    }
    for p in publishers {
        support::within("publishers", p).await.unwrap();
    }
    let total = 2 * PER_PUBLISHER;
    let expected: Vec<u64> = (1..=total).collect();
    for (i, c) in subs.iter_mut().enumerate() {
        assert_eq!(
            offsets(c, total as usize).await,
            expected,
            "subscriber {i} saw a hole or a reordering"
        );
    }
    eprintln!(
        "{via:?}: {total} publications from 4 HTTP publishers on 2 nodes reached {} subscribers on 3 nodes, in order, in {:?}",
        subs.len(),
        started.elapsed()
    );
    // Every reordering was repaired from history, none lost.
    for node in &nodes {
        let metrics = support::get_text(&node.url("/metrics")).await;
        assert_eq!(
            support::metric_value(&metrics, "wsgate_cluster_gap_lost_total"),
            Some(0.0),
            "{metrics}"
        );
    }
}

per_broker!(order_across_nodes: redis_per_channel_order_across_nodes, nats_per_channel_order_across_nodes);

async fn subscribe_since(c: &mut Client, channel: &str, offset: u64, epoch: &str) -> Value {
    let r = c
        .request(
            json!({"op":"subscribe","channel":channel,"since":{"offset":offset,"epoch":epoch}}),
        )
        .await;
    assert_eq!(r["op"], "subscribed", "{r}");
    r
}

#[tokio::test]
async fn history_follows_a_client_to_the_other_node_and_epochs_change_with_redis() {
    let mut cluster = Cluster::start(Via::Redis).await;
    let a = cluster.node("hist-a", &["--history-size", "100"]).await;
    let b = cluster.node("hist-b", &["--history-size", "100"]).await;

    let mut c = Client::connect(&a.ws_url()).await;
    let sub = c.subscribe("feed").await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    a.publish("feed", json!(1)).await;
    a.publish("feed", json!(2)).await;
    assert_eq!(offsets(&mut c, 2).await, [1, 2]);
    drop(c);

    // Missed while away, published through both nodes.
    for i in 3..=6 {
        let node = if i % 2 == 0 { &a } else { &b };
        assert_eq!(node.publish("feed", json!(i)).await, i);
    }
    let mut back = Client::connect(&b.ws_url()).await;
    let r = subscribe_since(&mut back, "feed", 2, &epoch).await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["offset"], 6);
    assert_eq!(r["epoch"], epoch.as_str());
    let missed: Vec<Value> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(back.recv().await);
        }
        v
    };
    assert_eq!(
        missed
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [3, 4, 5, 6]
    );
    assert_eq!(missed[0]["data"], 3);
    // Live traffic continues after the recovered part, without a duplicate.
    a.publish("feed", json!(7)).await;
    assert_eq!(back.recv().await["offset"], 7);

    // Redis restarts empty: the old position must not be mistaken for the new stream's.
    cluster.redis.kill().await;
    cluster.redis.restart().await;
    b.await_ready(true).await;
    let mut late = Client::connect(&b.ws_url()).await;
    let r = subscribe_since(&mut late, "feed", 7, &epoch).await;
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["gap"], "epoch_changed");
    assert_ne!(r["epoch"], epoch.as_str());
    assert_eq!(r["offset"], 0);
}

#[tokio::test]
async fn redis_outage_turns_ready_off_and_traffic_resumes() {
    let mut cluster = Cluster::start(Via::Redis).await;
    let mut a = cluster.node("out-a", &[]).await;
    let mut b = cluster.node("out-b", &[]).await;
    let mut on_b = Client::subscribed(&b.ws_url(), "live").await;
    assert_eq!(a.publish("live", json!("before")).await, 1);
    assert_eq!(on_b.recv().await["data"], "before");

    // Traffic keeps going while Redis dies: publishers get errors, nobody panics.
    let url = a.url("/api/v1/publish");
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let traffic = tokio::spawn(async move {
        let http = support::http();
        let (mut ok, mut failed) = (0u32, 0u32);
        loop {
            if stop_rx.try_recv().is_ok() {
                return (ok, failed);
            }
            match http
                .post(&url)
                .json(&json!({"channel":"busy","data":1}))
                .send()
                .await
            {
                Ok(r) if r.status().as_u16() == 200 => ok += 1,
                Ok(r) => {
                    assert_eq!(r.status().as_u16(), 503, "an outage is 503, not a crash");
                    failed += 1;
                }
                Err(e) => panic!("node stopped answering: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    cluster.redis.kill().await;
    a.await_ready(false).await;
    b.await_ready(false).await;
    let (status, body) = a
        .post("/api/v1/publish", json!({"channel":"live","data":"lost"}))
        .await;
    assert_eq!(status, 503, "{body}");
    let (status, _) = b.get("/health").await;
    assert_eq!(status, 200, "liveness is not readiness");
    // A client connecting meanwhile is let in (its user's sends cannot be routed to B yet).
    let mut during = Client::connect(&b.ws_url()).await;

    cluster.redis.restart().await;
    a.await_ready(true).await;
    b.await_ready(true).await;
    let _ = stop_tx.send(());
    let (ok, failed) = support::within("traffic", traffic).await.unwrap();
    assert!(ok > 0 && failed > 0, "ok {ok}, failed {failed}");
    // Once Redis is back, B receives that user's sends too.
    let to_during = format!("/api/v1/users/{}/send", during.user());
    poll(
        "a send reaches the user who connected during the outage",
        WAIT,
        || async {
            let (status, r) = a.post(&to_during, json!({"data": "found"})).await;
            (status == 200 && r["delivered"] == 1).then_some(())
        },
    )
    .await;
    assert_eq!(during.recv().await, json!({"op":"message","data":"found"}));

    // Publishing resumes and reaches the old subscription on the other node (the new
    // stream starts again at offset 1: Redis lost everything), behind the notice that the
    // stream changed.
    assert_eq!(a.publish("live", json!("after")).await, 1);
    let notice = on_b.recv().await;
    assert_eq!(
        (&notice["op"], &notice["offset"]),
        (&json!("epoch_changed"), &json!(0)),
        "{notice}"
    );
    let m = on_b.recv().await;
    assert_eq!(
        (m["offset"].as_u64(), &m["data"]),
        (Some(1), &json!("after"))
    );
    assert!(a.is_running() && b.is_running());
}

#[tokio::test]
async fn presence_of_a_killed_node_expires_within_the_ttl() {
    const TTL_MS: u64 = 600;
    let cluster = Cluster::start(Via::Redis).await;
    let ttl = TTL_MS.to_string();
    let a = cluster.node("doomed", &["--presence-ttl-ms", &ttl]).await;
    let b = cluster.node("survivor", &["--presence-ttl-ms", &ttl]).await;
    let on_a = Client::subscribed(&a.ws_url(), "lobby").await;
    let on_b = Client::subscribed(&b.ws_url(), "lobby").await;
    assert_eq!(b.presence("lobby").await["connections"], 2);

    a.0.signal(SIGKILL);
    let killed = Instant::now();
    let p = poll("the dead node's presence to expire", WAIT, || async {
        let p = b.presence("lobby").await;
        (p["connections"] == 1).then_some(p)
    })
    .await;
    let took = killed.elapsed();
    assert_eq!(p["users"], json!([on_b.user()]));
    // The bound: one TTL after the last refresh (refreshes come every TTL/3).
    assert!(
        took <= Duration::from_millis(TTL_MS + 400),
        "dead entries took {took:?} to expire"
    );
    eprintln!("presence of a SIGKILLed node expired after {took:?} (ttl {TTL_MS} ms)");
    drop(on_a);
}

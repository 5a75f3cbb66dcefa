//! wsgate on a real Redis Cluster: three `redis-server --cluster-enabled yes` masters joined
//! by `redis-cli --cluster create`, two `wsgate serve` nodes on it (`--redis-cluster`).

use wsgate_tests as support;

use std::collections::HashSet;

use serde_json::{Value, json};
use support::cluster::{Node, RedisClusterServer, poll};
use support::{Client, SIGKILL, WAIT, within};
use wsgate_client::test_support::{TestServer as Upstream, TestServerConfig as UpstreamConfig};

const PREFIX: &str = "rc";

/// The key every channel's offset lives in (its slot is the channel's slot).
fn meta(channel: &str) -> String {
    format!("{PREFIX}:{{{channel}}}:meta")
}

/// The shared slot: leases, instances, upstream records.
fn shared(rest: &str) -> String {
    format!("{PREFIX}:{{shared}}:{rest}")
}

async fn owner_of(redis: &RedisClusterServer, id: &str) -> Option<String> {
    let raw = redis
        .cli(&["GET", &shared(&format!("websocket-{id}"))])
        .await;
    let v: Value = serde_json::from_str(raw.trim()).ok()?;
    v["owner"].as_str().map(str::to_string)
}

/// Reads until a channel message carrying `data` arrives; returns the frames before it
/// (bounded by `WAIT`).
async fn recv_data(c: &mut Client, data: Value) -> Vec<Value> {
    within("the message", async {
        let mut before = Vec::new();
        loop {
            let m = c.recv().await;
            if m["op"] == "message" && m["data"] == data {
                return before;
            }
            before.push(m);
        }
    })
    .await
}

/// A channel name whose keys live on master `on` (`true`) or off it (`false`).
async fn channel_placed(redis: &RedisClusterServer, master: usize, on: bool) -> String {
    for i in 0..64 {
        let name = format!("room-{i}");
        if (redis.master_of(&meta(&name)).await == master) == on {
            return name;
        }
    }
    panic!("no channel placed as asked in 64 tries");
}

async fn publish_status(node: &Node, channel: &str, data: Value) -> (u16, Value) {
    node.post("/api/v1/publish", json!({"channel": channel, "data": data}))
        .await
}

#[tokio::test]
async fn two_nodes_share_channels_history_presence_and_upstreams_over_the_cluster() {
    let redis = RedisClusterServer::start().await;
    let a = redis.node("rc-a", PREFIX, &["--history-size", "100"]).await;
    let b = redis.node("rc-b", PREFIX, &["--history-size", "100"]).await;

    // Subscribe on A, publish through B.
    let mut c = Client::connect(&a.ws_url()).await;
    let sub = c.subscribe("room").await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    assert_eq!(b.publish("room", json!(1)).await, 1);
    assert_eq!(
        c.recv().await,
        json!({"op":"message","channel":"room","offset":1,"data":1})
    );

    // Channels spread over the shards: their keys are in the cluster, on several masters.
    let mut masters = HashSet::new();
    for i in 0..8 {
        let channel = format!("spread-{i}");
        assert_eq!(b.publish(&channel, json!(i)).await, 1);
        masters.insert(redis.master_of(&meta(&channel)).await);
    }
    assert!(
        masters.len() >= 2,
        "8 channels all on one master: {masters:?}"
    );

    // Presence and a user send, across the nodes.
    let p = b.presence("room").await;
    assert_eq!(p["connections"], 1, "{p}");
    let (status, body) = b
        .post(
            &format!("/api/v1/users/{}/send", c.user()),
            json!({"data": "to-user"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(c.recv().await, json!({"op":"message","data":"to-user"}));

    // Recovery from history: missed while away, read back through the other node.
    drop(c);
    for i in 2..=4 {
        assert_eq!(a.publish("room", json!(i)).await, i);
    }
    let mut back = Client::connect(&b.ws_url()).await;
    let r = back
        .request(json!({"op":"subscribe","channel":"room","since":{"offset":1,"epoch":epoch}}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["offset"], 4, "{r}");
    for i in 2..=4u64 {
        assert_eq!(back.recv().await["offset"], i);
    }

    // Upstream ownership: the record is in the shared slot and names its owner; a call
    // through the other node is forwarded; the owner's SIGKILL hands it to the survivor.
    let up = Upstream::start(UpstreamConfig::default()).await;
    let (status, r) = a
        .post(
            "/api/v1/upstreams",
            json!({"url": up.url(), "reconnect": {"initial_ms": 5, "max_ms": 50, "max_attempts": null, "jitter": 0.0}}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let id = r["connection_id"].as_str().unwrap().to_string();
    assert_eq!(owner_of(&redis, &id).await.as_deref(), Some("rc-a"));
    b.upstream_call(&id, "send", json!({"message": "via-b"}), 200)
        .await;
    up.wait_for(WAIT, |l| l.texts_on(1).iter().any(|t| t == "via-b"))
        .await
        .unwrap();
    let mut a = a;
    a.0.signal(SIGKILL);
    within("wsgate to exit", a.0.child.wait()).await.unwrap();
    up.wait_for(WAIT, |l| l.handshakes >= 2)
        .await
        .expect("the survivor re-establishes the upstream connection");
    poll("rc-b owns the record", WAIT, || async {
        owner_of(&redis, &id).await.filter(|o| o == "rc-b")
    })
    .await;
}

/// A master SIGKILLed (no replicas): its shard's channels refuse publications until it is
/// back, the other shards' channels carry on, and once it returns (empty) its channels
/// start a new epoch and the gateway delivers again.
#[tokio::test]
async fn a_killed_master_costs_its_shard_only_and_the_gateway_recovers() {
    let mut redis = RedisClusterServer::start().await;
    let a = redis.node("rk-a", PREFIX, &[]).await;
    let b = redis.node("rk-b", PREFIX, &[]).await;
    // Kill a master that does not hold the shared slot (leases stay up; see the docs for
    // the shared shard's own loss), with one channel on it and one elsewhere.
    let shared_master = redis.master_of(&shared("instances")).await;
    let victim = (0..3).find(|m| *m != shared_master).unwrap();
    let lost = channel_placed(&redis, victim, true).await;
    let kept = channel_placed(&redis, victim, false).await;

    let mut c = Client::connect(&a.ws_url()).await;
    let old_epoch = c.subscribe(&lost).await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    c.subscribe(&kept).await;
    assert_eq!(b.publish(&lost, json!("before")).await, 1);
    recv_data(&mut c, json!("before")).await;

    redis.masters[victim].kill().await;
    // The dead shard's channel: a clear error, nothing half-written.
    let (status, body) = poll("publications to the dead shard refused", WAIT, || async {
        let (status, body) = publish_status(&b, &lost, json!("during")).await;
        (status != 200).then_some((status, body))
    })
    .await;
    assert!(status >= 500, "{status} {body}");
    // Another shard's channel still takes publications.
    let (status, body) = publish_status(&b, &kept, json!("kept-during")).await;
    assert_eq!(status, 200, "{body}");

    redis.restart(victim).await;
    a.await_ready(true).await;
    b.await_ready(true).await;
    // Delivered, live or caught up from history once the subscription is back.
    recv_data(&mut c, json!("kept-during")).await;
    // The restarted shard lost its channels' offsets and history: a new epoch.
    let (status, body) = poll("the shard takes publications again", WAIT, || async {
        let (status, body) = publish_status(&b, &lost, json!("after")).await;
        (status == 200).then_some((status, body))
    })
    .await;
    assert_eq!(status, 200, "{body}");
    // Announced to the live subscriber before the new stream's first publication.
    let before = recv_data(&mut c, json!("after")).await;
    let notice = before
        .iter()
        .find(|f| f["op"] == "epoch_changed" && f["channel"] == json!(lost))
        .unwrap_or_else(|| panic!("no epoch_changed before the new stream: {before:?}"));
    assert_ne!(notice["epoch"], json!(old_epoch), "{notice}");

    let mut late = Client::connect(&b.ws_url()).await;
    let r = late
        .request(json!({"op":"subscribe","channel":lost,"since":{"offset":1,"epoch":old_epoch}}))
        .await;
    assert_eq!(r["gap"], "epoch_changed", "{r}");
}

const PER_CHANNEL: [&str; 2] = ["--redis-per-channel-pubsub", "true"];

/// How many subscribers a channel's shard channel has, asked of the master that serves it.
async fn shard_subscribers(redis: &RedisClusterServer, channel: &str) -> u64 {
    shard_channel_subscribers(redis, channel, "pub").await
}

/// How many nodes receive the shard channel `P:{<tag>}:<what>` (a channel's publications,
/// `pub`, or a user's sends, `user`).
async fn shard_channel_subscribers(redis: &RedisClusterServer, tag: &str, what: &str) -> u64 {
    let master = redis.master_of(&meta(tag)).await;
    let out = redis.masters[master]
        .cli(&[
            "PUBSUB",
            "SHARDNUMSUB",
            &format!("{PREFIX}:{{{tag}}}:{what}"),
        ])
        .await;
    out.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn sharded_pubsub_reaches_only_the_nodes_with_subscribers() {
    let redis = RedisClusterServer::start().await;
    let a = redis.node("rs-a", PREFIX, &PER_CHANNEL).await;
    let b = redis.node("rs-b", PREFIX, &PER_CHANNEL).await;
    let _idle = redis.node("rs-c", PREFIX, &PER_CHANNEL).await;
    assert_eq!(shard_subscribers(&redis, "room").await, 0);

    // One node with a subscriber: one shard subscription, taken before `subscribed`.
    let mut c = Client::subscribed(&a.ws_url(), "room").await;
    assert_eq!(shard_subscribers(&redis, "room").await, 1);
    // In order, published through the other two nodes.
    for i in 1..=30u64 {
        let node = if i % 2 == 0 { &a } else { &b };
        assert_eq!(node.publish("room", json!(i)).await, i);
    }
    for i in 1..=30u64 {
        assert_eq!(
            c.recv().await,
            json!({"op":"message","channel":"room","offset":i,"data":i})
        );
    }
    // A second node with a subscriber joins the shard channel.
    let mut on_b = Client::subscribed(&b.ws_url(), "room").await;
    assert_eq!(shard_subscribers(&redis, "room").await, 2);
    // A send to a user goes to its own shard channel, which only its node receives.
    let user = on_b.user();
    assert_eq!(shard_channel_subscribers(&redis, &user, "user").await, 1);
    let (status, r) = a
        .post(
            &format!("/api/v1/users/{user}/send"),
            json!({"data": "you"}),
        )
        .await;
    assert_eq!((status, r["delivered"].clone()), (200, json!(1)), "{r}");
    assert_eq!(on_b.recv().await, json!({"op":"message","data":"you"}));
    a.publish("room", json!("both")).await;
    assert_eq!(on_b.recv().await["data"], "both");
    assert_eq!(c.recv().await["data"], "both");

    // The last local subscriber leaves: the node stops receiving the channel.
    drop(on_b);
    poll("rs-b unsubscribed from the shard", WAIT, || async {
        (shard_subscribers(&redis, "room").await == 1).then_some(())
    })
    .await;
    drop(c);
    poll("rs-a unsubscribed from the shard", WAIT, || async {
        (shard_subscribers(&redis, "room").await == 0).then_some(())
    })
    .await;

    // And subscribes again when a subscriber comes back, with history from its position.
    let mut again = Client::connect(&a.ws_url()).await;
    let r = again.subscribe("room").await;
    assert_eq!(r["offset"], 31, "{r}");
    assert_eq!(shard_subscribers(&redis, "room").await, 1);
    b.publish("room", json!("again")).await;
    assert_eq!(again.recv().await["offset"], 32);
}

/// CPU time (ns) of every thread of a process so far (`/proc/<pid>/task/*/schedstat`).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// docs/benchmarks.md: ten nodes on the three-master cluster, one channel subscribed on one
/// of them, 600 publications through that node: what the nine others spend, with every
/// publication announced to every node (`P:pub`) and with sharded pub/sub. Run with
/// `cargo test -p wsgate-tests --test redis_cluster -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement (about a minute), not a check"]
async fn measure_what_idle_nodes_spend_per_publication() {
    const NODES: usize = 10;
    const PUBLICATIONS: u64 = 600;
    const PUBLISHERS: u64 = 4;
    let redis = RedisClusterServer::start().await;
    for per_channel in [false, true] {
        let prefix = if per_channel { "m-shard" } else { "m-all" };
        let flag = if per_channel { "true" } else { "false" };
        let mut nodes = Vec::new();
        for i in 0..NODES {
            let extra = ["--redis-per-channel-pubsub", flag];
            nodes.push(redis.node(&format!("{prefix}-{i}"), prefix, &extra).await);
        }
        let mut sub = Client::subscribed(&nodes[0].ws_url(), "bench").await;
        let idle: Vec<u32> = nodes[1..].iter().map(|n| n.0.child.id().unwrap()).collect();
        let receivers = if per_channel {
            let master = redis.master_of(&format!("{prefix}:{{bench}}:meta")).await;
            redis.masters[master]
                .cli(&["PUBSUB", "SHARDNUMSUB", &format!("{prefix}:{{bench}}:pub")])
                .await
        } else {
            // Classic subscriptions are per server: ask every master.
            let mut n = 0u64;
            for m in &redis.masters {
                let out = m.cli(&["PUBSUB", "NUMSUB", &format!("{prefix}:pub")]).await;
                n += out
                    .lines()
                    .last()
                    .and_then(|l| l.trim().parse().ok())
                    .unwrap_or(0);
            }
            n.to_string()
        };
        let before: u64 = idle.iter().map(|p| cpu_ns(*p)).sum();
        let started = std::time::Instant::now();
        let url = nodes[0].url("/api/v1/publish");
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                let each = PUBLICATIONS / PUBLISHERS;
                tokio::spawn(support::publish_numbered(url.clone(), "bench", p, each))
            })
            .collect();
        for p in publishers {
            within("publishers", p).await.unwrap();
        }
        for _ in 0..PUBLICATIONS {
            sub.recv().await;
        }
        let elapsed = started.elapsed();
        let after: u64 = idle.iter().map(|p| cpu_ns(*p)).sum();
        let spent_us = (after - before) as f64 / 1e3;
        // The same nine over a window as long without traffic: leases, pings, sweeps.
        tokio::time::sleep(elapsed).await;
        let background_us = (idle.iter().map(|p| cpu_ns(*p)).sum::<u64>() - after) as f64 / 1e3;
        println!(
            "{}: {PUBLICATIONS} publications in {elapsed:?}; the 9 idle nodes spent {:.0} ms CPU (background alone over as long: {:.0} ms), {:.1} µs per publication beyond background (all 9 together); subscribers on the announce channel (Redis): {}",
            if per_channel {
                "sharded pub/sub"
            } else {
                "one channel to every node"
            },
            spent_us / 1e3,
            background_us / 1e3,
            (spent_us - background_us) / PUBLICATIONS as f64,
            receivers.split_whitespace().last().unwrap_or("?"),
        );
    }
}

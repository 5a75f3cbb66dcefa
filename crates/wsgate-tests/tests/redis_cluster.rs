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

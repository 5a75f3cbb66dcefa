//! The gateway's rules, driven without sockets (see [`super::testing`]): subscribe, recover,
//! heartbeats in virtual time, slow consumers.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use async_trait::async_trait;
use bytes::Bytes;

use super::Heartbeat;
use super::testing::{Node, Peer, Received, token};
use crate::memory::MemoryBroker;
use crate::protocol::close;
use crate::seams::{
    Broker, BrokerError, Deliver, Idempotency, Once, PublishRequest, Recipient, Recovery,
    ServerSubscription, StreamPosition, StreamReads,
};

/// Subscribes `peer` to `channel` and returns the `subscribed` answer (and anything after it).
async fn subscribe(node: &Node, peer: &mut Peer, frame: Value) -> Vec<Value> {
    peer.send(&node.gw, &frame.to_string())
        .await
        .expect("subscribe is answered");
    peer.take_json()
}

/// Subscribes `peer` to channel `c` since `offset` in `epoch`; the answer and the replay.
async fn recover(node: &Node, peer: &mut Peer, offset: u64, epoch: &Value) -> Vec<Value> {
    let since = json!({"offset": offset, "epoch": epoch});
    subscribe(
        node,
        peer,
        json!({"op":"subscribe","channel":"c","since":since}),
    )
    .await
}

/// A node keeping `history` publications per channel, with a channel `c` with `n`
/// publications (1..=n) and a first subscriber; returns the node and the channel's epoch.
async fn stream_of(history: usize, n: u64) -> (Node, Value) {
    let node = Node::new(history, |_| {});
    let channel = "c";
    let mut first = node.connect("first", 16);
    let answer = subscribe(
        &node,
        &mut first,
        json!({"op":"subscribe","channel":channel}),
    )
    .await;
    for i in 1..=n {
        node.publish(channel, &i.to_string()).await;
    }
    let epoch = answer[0]["epoch"].clone();
    (node, epoch)
}

fn offsets(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["op"] == "message")
        .map(|f| f["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn subscribe_answers_with_the_stream_position_then_delivers() {
    let node = Node::new(16, |_| {});
    node.publish("news", "1").await;
    node.publish("news", "2").await;
    let mut peer = node.connect("alice", 16);

    let answer = subscribe(
        &node,
        &mut peer,
        json!({"op":"subscribe","id":7,"channel":"news"}),
    )
    .await;
    assert_eq!(answer.len(), 1, "no history without `since`: {answer:?}");
    let a = &answer[0];
    assert_eq!(
        (&a["op"], &a["id"], &a["channel"], &a["offset"]),
        (&json!("subscribed"), &json!(7), &json!("news"), &json!(2))
    );
    assert!(a["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(a.get("recovered").is_none(), "only answered with `since`");

    node.publish("news", r#"{"n":3}"#).await;
    let live = peer.take_json();
    assert_eq!(
        live,
        vec![json!({"op":"message","channel":"news","offset":3,"data":{"n":3}})]
    );
}

#[tokio::test]
async fn recover_since_a_position_in_history_replays_in_order() {
    let (node, epoch) = stream_of(16, 4).await;

    let mut again = node.connect("alice", 16);
    let frames = recover(&node, &mut again, 1, &epoch).await;
    assert_eq!(frames[0]["op"], "subscribed");
    assert_eq!(frames[0]["offset"], 4);
    assert_eq!(frames[0]["recovered"], true);
    assert!(frames[0].get("gap").is_none());
    assert_eq!(
        offsets(&frames[1..]),
        vec![2, 3, 4],
        "missed ones, in order"
    );
    assert_eq!(frames[1]["data"], 2);

    node.publish("c", "5").await;
    assert_eq!(
        offsets(&again.take_json()),
        vec![5],
        "then live, no duplicate"
    );
}

#[tokio::test]
async fn recover_too_old_or_across_epochs_says_why() {
    let (node, epoch) = stream_of(2, 5).await;

    let mut late = node.connect("bob", 16);
    let frames = recover(&node, &mut late, 1, &epoch).await;
    assert_eq!(frames[0]["recovered"], false);
    assert_eq!(frames[0]["gap"], "history_truncated");
    assert_eq!(frames[0]["offset"], 5);
    assert_eq!(
        offsets(&frames[1..]),
        vec![4, 5],
        "what history still holds"
    );

    let mut stranger = node.connect("carol", 16);
    let frames = recover(&node, &mut stranger, 3, &json!("gone")).await;
    assert_eq!(frames[0]["recovered"], false);
    assert_eq!(frames[0]["gap"], "epoch_changed");
    assert_eq!(
        frames[0]["epoch"], epoch,
        "the current epoch to continue from"
    );
    assert_eq!(frames.len(), 1, "nothing replayed across epochs");
}

/// Pings go out once per interval; a peer that answers (any frame counts) stays; a silent one
/// is closed with 4008 once the timeout has passed, noticed within a quarter interval.
#[tokio::test(start_paused = true)]
async fn heartbeat_pings_each_interval_and_closes_the_silent() {
    let node = Node::new(0, |c| {
        c.heartbeat_interval = Duration::from_secs(30);
        c.heartbeat_timeout = Duration::from_secs(65);
    });
    let gw = &node.gw;
    let lively = node.connect("alice", 16);
    let silent = node.connect("bob", 16);
    let mut heartbeat = Heartbeat::new(gw);
    let mut lively_pings = Vec::new();
    let mut silent_pings = Vec::new();
    let mut silent_closed_at = None;

    while gw.clock.now_ms() < 120_000 {
        // The paused runtime jumps straight to the next tick.
        let report = heartbeat.tick(gw).await;
        let now = gw.clock.now_ms();
        for r in lively.take() {
            assert_eq!(r, Received::Ping);
            lively_pings.push(now);
            lively.conn().touch(now); // the pong
        }
        silent_pings.extend(silent.take().into_iter().map(|_| now));
        if report.closed > 0 {
            assert!(silent_closed_at.is_none(), "closed once");
            silent_closed_at = Some(now);
        }
    }

    assert_eq!(lively_pings, vec![30_000, 60_000, 90_000, 120_000]);
    assert_eq!(silent_pings, vec![30_000, 60_000]);
    assert_eq!(silent_closed_at, Some(67_500), "first tick past 65 s");
    assert_eq!(
        silent.closed(),
        Some((close::HEARTBEAT_TIMEOUT, "heartbeat_timeout"))
    );
    assert_eq!(lively.closed(), None);
    assert_eq!(gw.metrics.heartbeat_failures.get(), 1);
}

#[tokio::test]
async fn a_backlog_over_capacity_closes_a_slow_consumer() {
    let node = Node::new(0, |_| {});
    let mut slow = node.connect("alice", 2);
    let mut fast = node.connect("bob", 2);
    subscribe(&node, &mut slow, json!({"op":"subscribe","channel":"c"})).await;
    subscribe(&node, &mut fast, json!({"op":"subscribe","channel":"c"})).await;

    for n in 1..=3 {
        node.publish("c", &n.to_string()).await;
        fast.take();
    }
    assert_eq!(slow.closed(), Some((close::SLOW_CONSUMER, "slow_consumer")));
    assert_eq!(fast.closed(), None, "a reader that keeps up stays");
    assert_eq!(
        offsets(&slow.take_json()),
        vec![1, 2],
        "what fitted went out"
    );
    assert_eq!(node.gw.metrics.slow_consumers.get(), 1);
}

/// The node's delivery, as a relaying broker holds it.
fn sink(node: &Node) -> super::LocalDelivery {
    super::LocalDelivery {
        registry: node.gw.registry.clone(),
        metrics: node.gw.metrics.clone(),
        flushers: super::Flushers::new(1, 1.0, None),
    }
}

/// What a relaying broker hands this node after Redis lost the channel: publications of a
/// new epoch, whose offsets start again at 1.
fn from_new_epoch(node: &Node, epoch: &str, offsets: std::ops::RangeInclusive<u64>) {
    let sink = sink(node);
    for offset in offsets {
        let p = crate::seams::Publication {
            channel: "c".into(),
            offset,
            epoch: epoch.into(),
            data: Bytes::from(offset.to_string()),
            exclude_user: None,
            exclude_connection: None,
            event: None,
            published_at_us: 0,
        };
        crate::seams::Deliver::deliver(&sink, &crate::seams::Envelope::Channel(p));
    }
}

/// Regression: a subscriber that joined at offset 5 of the old epoch silently dropped offsets
/// 1..=5 of the new one (the skip compared offsets only), and `message` frames carry no epoch.
/// Now the new epoch's publications all arrive, behind one `epoch_changed`, for a subscriber
/// still skipping as for one that already passed its position.
#[tokio::test]
async fn an_epoch_change_is_announced_and_its_low_offsets_delivered() {
    let (node, old) = stream_of(16, 5).await;
    let mut joined = node.connect("late", 16);
    let answer = subscribe(&node, &mut joined, json!({"op":"subscribe","channel":"c"})).await;
    assert_eq!(answer[0]["offset"], 5);

    from_new_epoch(&node, "e2", 1..=3);

    let frames = joined.take_json();
    assert_eq!(
        frames[0],
        json!({"op":"epoch_changed","channel":"c","epoch":"e2","offset":0}),
        "{frames:?}"
    );
    assert_eq!(offsets(&frames), vec![1, 2, 3], "{frames:?}");
    assert_ne!(old, json!("e2"));
    assert_eq!(
        node.gw.metrics.epoch_notices.get(),
        1,
        "one change, one notice"
    );

    // A later change reaches everybody again, once each.
    from_new_epoch(&node, "e3", 4..=4);
    assert_eq!(
        joined.take_json(),
        vec![
            json!({"op":"epoch_changed","channel":"c","epoch":"e3","offset":3}),
            json!({"op":"message","channel":"c","offset":4,"data":4}),
        ]
    );
}

/// A subscriber whose answer already named the new epoch gets no notice for it.
#[tokio::test]
async fn no_notice_for_a_subscriber_that_joined_the_new_epoch() {
    let (node, _) = stream_of(16, 2).await;
    let mut early = node.connect("early", 16);
    subscribe(&node, &mut early, json!({"op":"subscribe","channel":"c"})).await;
    // The node still knows the old epoch; this subscriber's skip names "e2".
    early.transport_skip("c", "e2", 1);
    from_new_epoch(&node, "e2", 1..=2);
    assert_eq!(
        early.take_json(),
        vec![json!({"op":"message","channel":"c","offset":2,"data":2})]
    );
}

/// Publications the node could not get are announced to the subscribers that miss them,
/// and not to one whose subscription answer is past them.
#[tokio::test]
async fn a_loss_on_the_way_to_the_node_is_announced_to_who_misses_it() {
    let (node, epoch) = stream_of(16, 2).await;
    let mut early = node.connect("early", 16);
    subscribe(&node, &mut early, json!({"op":"subscribe","channel":"c"})).await;
    node.publish("c", "3").await;
    early.take();
    let mut late = node.connect("late", 16);
    subscribe(&node, &mut late, json!({"op":"subscribe","channel":"c"})).await;
    late.transport_skip("c", epoch.as_str().unwrap(), 5);

    let e: std::sync::Arc<str> = epoch.as_str().unwrap().into();
    crate::seams::Deliver::gap(&sink(&node), &"c".into(), &e, 5);
    assert_eq!(
        early.take_json(),
        vec![json!({"op":"gap","channel":"c","epoch":epoch,"offset":5})]
    );
    assert!(
        late.take_json().is_empty(),
        "its answer covered offsets up to 5"
    );
    assert_eq!(node.gw.metrics.gap_notices.get(), 1);
}

/// The code of the one error frame `peer` received.
fn error_code(peer: &Peer) -> Vec<Value> {
    peer.take_json()
        .into_iter()
        .map(|f| {
            assert_eq!(f["op"], "error", "{f}");
            f["code"].clone()
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_is_told_then_closed_after_the_grace_unless_refreshed() {
    let node = Node::new(0, |c| c.token_grace = Duration::from_secs(10));
    let gw = node.gw.clone();
    let expiries = tokio::spawn(async move { gw.run_expiries().await });
    let gw = &node.gw;
    let now = crate::clock::unix_ms() / 1000;
    let late = node.connect_token(&token("ann", now + 60), 16).await;
    let mut keen = node.connect_token(&token("bob", now + 60), 16).await;
    let forever = node.connect("carl", 16);

    tokio::time::sleep(Duration::from_secs(58)).await;
    assert!(late.take().is_empty() && keen.take().is_empty());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(error_code(&late), vec![json!("token_expired")]);
    assert_eq!(error_code(&keen), vec![json!("token_expired")]);
    assert_eq!(gw.expiries.len(), 2, "one grace each");

    // Another user's token, or an expired one, does not count.
    let other = json!({"op":"refresh","token":token("eve", now + 3600)});
    keen.send(gw, &other.to_string()).await.unwrap();
    assert_eq!(error_code(&keen), vec![json!("forbidden")]);
    let stale = json!({"op":"refresh","token":token("bob", now - 60),"id":1});
    keen.send(gw, &stale.to_string()).await.unwrap();
    assert_eq!(error_code(&keen), vec![json!("auth_expired")]);
    let fresh = json!({"op":"refresh","token":token("bob", now + 3600),"id":2});
    keen.send(gw, &fresh.to_string()).await.unwrap();
    assert_eq!(
        keen.take_json(),
        vec![json!({"op":"refreshed","id":2,"exp":now + 3600})]
    );

    // Expired at 60 s: the grace ends at 70 s.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(late.closed(), None, "still in its grace");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(late.closed(), Some((close::AUTH_FAILED, "token_expired")));
    assert_eq!(keen.closed(), None);
    assert_eq!(forever.closed(), None);

    // The refreshed token expires in its turn.
    // Refreshed at 61 s for an hour: due at 3661 s.
    tokio::time::sleep(Duration::from_secs(3585)).await;
    assert!(keen.take().is_empty());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(error_code(&keen), vec![json!("token_expired")]);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(keen.closed(), Some((close::AUTH_FAILED, "token_expired")));
    assert!(forever.take().is_empty() && forever.closed().is_none());

    // Closed connections leave nothing behind.
    for peer in [&late, &keen] {
        let _ = gw.close(peer.conn(), "test", None);
    }
    assert!(gw.expiries.is_empty());
    expiries.abort();
}

/// A recovery that would not fit the connection's byte budget replays nothing: the client
/// learns `too_large` and the current offset to go on from.
#[tokio::test]
async fn a_recovery_larger_than_the_budget_answers_too_large() {
    let (node, epoch) = stream_of(64, 0).await;
    let big = format!("\"{}\"", "x".repeat(4096));
    for _ in 0..64 {
        node.publish("c", &big).await;
    }
    let identity = || crate::auth::Identity {
        subscribe: Default::default(),
        user: "alice".into(),
        channels: Default::default(),
        expires_at: None,
    };
    let mut small = node.connect_with(identity(), 16, 64 * 1024);
    let frames = recover(&node, &mut small, 0, &epoch).await;
    assert_eq!(frames.len(), 1, "nothing replayed: {}", frames.len());
    assert_eq!(
        (
            &frames[0]["recovered"],
            &frames[0]["gap"],
            &frames[0]["offset"]
        ),
        (&json!(false), &json!("too_large"), &json!(64))
    );
    node.publish("c", "65").await;
    assert_eq!(offsets(&small.take_json()), vec![65], "live from there on");

    let mut roomy = node.connect_with(identity(), 128, 1024 * 1024);
    let frames = recover(&node, &mut roomy, 60, &epoch).await;
    assert_eq!(
        frames[0]["recovered"], true,
        "a recovery that fits is replayed"
    );
    assert_eq!(offsets(&frames[1..]), vec![61, 62, 63, 64, 65]);
}

/// Presence names users: a client must be subscribed to the channel (or hold an explicit
/// token grant for it); answers are capped and reused briefly.
#[tokio::test]
async fn presence_needs_a_subscription_and_is_capped_and_cached() {
    let node = Node::new(0, |c| {
        c.presence_max_users = 3;
        c.presence_cache = Duration::from_secs(3600);
    });
    let ask = json!({"op":"presence","channel":"room"}).to_string();
    let mut nosy = node.connect("nosy", 16);
    nosy.send(&node.gw, &ask).await.unwrap();
    let refused = nosy.take_json();
    assert_eq!(
        (&refused[0]["op"], &refused[0]["code"]),
        (&json!("error"), &json!("forbidden")),
        "{refused:?}"
    );

    let mut members = Vec::new();
    for u in 0..5 {
        let mut p = node.connect(&format!("u{u}"), 16);
        subscribe(&node, &mut p, json!({"op":"subscribe","channel":"room"})).await;
        members.push(p);
    }
    members[0].send(&node.gw, &ask).await.unwrap();
    let p = &members[0].take_json()[0];
    assert_eq!(p["op"], "presence");
    assert_eq!(p["users"].as_array().unwrap().len(), 3, "capped: {p}");
    assert_eq!(
        (&p["connections"], &p["truncated"]),
        (&json!(5), &json!(true))
    );

    // A token that grants the channel by name may look without subscribing.
    let granted = crate::auth::Identity {
        subscribe: Default::default(),
        user: "monitor".into(),
        channels: crate::auth::ChannelGrant::Only(vec!["room".to_string()].into()),
        expires_at: None,
    };
    let mut monitor = node.connect_with(granted, 16, usize::MAX);
    let mut late = node.connect("u5", 16);
    subscribe(&node, &mut late, json!({"op":"subscribe","channel":"room"})).await;
    monitor.send(&node.gw, &ask).await.unwrap();
    let cached = &monitor.take_json()[0];
    assert_eq!(cached["connections"], 5, "the cached answer: {cached}");
}

/// The memory engine, but the read of a recovery fails after a publication reached the
/// node (the store stalled mid-subscribe, as `DEBUG SLEEP` makes Redis do).
struct RecoveryFails(Arc<MemoryBroker>);

#[async_trait]
impl Broker for RecoveryFails {
    fn attach(&self, sink: Arc<dyn Deliver>) {
        self.0.attach(sink)
    }
    async fn publish(&self, req: PublishRequest) -> Result<(StreamPosition, usize), BrokerError> {
        self.0.publish(req).await
    }
    async fn publish_once(
        &self,
        req: PublishRequest,
        once: &Idempotency,
    ) -> Result<Once, BrokerError> {
        self.0.publish_once(req, once).await
    }
    fn reads(&self) -> &dyn StreamReads {
        self.0.reads()
    }
    async fn recover(&self, channel: &str, _: &StreamPosition) -> Result<Recovery, BrokerError> {
        let req = PublishRequest {
            history: Default::default(),
            channel: channel.into(),
            data: Bytes::from_static(b"\"in flight\""),
            exclude_user: None,
            exclude_connection: None,
            event: None,
        };
        self.0.publish(req).await?;
        Err(BrokerError::Unavailable("timed out".into()))
    }
    async fn send(&self, to: Recipient<'_>, data: Bytes) -> Result<usize, BrokerError> {
        self.0.send(to, data).await
    }
    async fn change_subscriptions(
        &self,
        user: &str,
        change: &ServerSubscription,
    ) -> Result<usize, BrokerError> {
        self.0.change_subscriptions(user, change).await
    }
    fn is_healthy(&self) -> bool {
        true
    }
}

/// Regression (a duplicate in the broker fault suite): a subscription that failed released
/// what its hold had kept of the channel, so the client got a message after its `error`,
/// took it for its position, and counted it twice when its next `since` replayed it.
#[tokio::test]
async fn a_failed_subscription_sends_nothing_of_its_channel() {
    let node = Node::with_broker(
        |_| {},
        |config| {
            let inner = MemoryBroker::new(config.node.clone(), 16);
            Arc::new(RecoveryFails(Arc::new(inner)))
        },
    );
    node.publish("c", "1").await;
    let mut peer = node.connect("alice", 16);
    let answer = recover(&node, &mut peer, 1, &json!("any")).await;
    assert_eq!(answer.len(), 1, "the error and nothing else: {answer:?}");
    assert_eq!(
        (&answer[0]["op"], &answer[0]["code"]),
        (&json!("error"), &json!("unavailable"))
    );
    node.publish("c", "3").await;
    assert!(peer.take_json().is_empty(), "not subscribed");
}

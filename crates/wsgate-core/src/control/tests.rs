//! The façade driven without sockets: memory broker and store, a transport that drops
//! everything, no upstream server (operations on unknown or foreign connections only), and
//! for cluster routing two nodes joined by an in-process forwarding channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::memory::{MemoryBroker, MemoryStore};
use crate::seams::upstream::UpstreamSpec;
use crate::seams::{
    Forwarding, LeaseError, Ownership, RequestHandler, StoreError, Sweep, UpstreamRecord,
    UpstreamRecords,
};
use bytes::Bytes;
use parking_lot::Mutex;
use wsgate_client::Message;

use super::*;
use crate::auth::{ChannelGrant, Identity};
use crate::gateway::{GatewayConfig, Outbound, Overflow, Transport};
use crate::metrics::Metrics;
use crate::upstream::UpstreamParts;

#[derive(Debug)]
struct Nowhere;

impl Transport for Nowhere {
    fn send(&self, _: &Outbound) -> Result<(), Overflow> {
        Ok(())
    }
    fn send_control(&self, _: Bytes) {}
    fn hold(&self) {}
    fn skip_through(&self, _: Arc<str>, _: Arc<str>, _: u64) {}
    fn forget_channel(&self, _: &str) {}
    fn backlog(&self) -> usize {
        0
    }
}

struct Fixture {
    control: Arc<Control>,
    gateway: Arc<Gateway>,
    store: Arc<MemoryStore>,
}

fn fixture() -> Fixture {
    node_fixture("n1", Arc::new(MemoryStore::new()))
}

/// Node `node` of a cluster whose nodes share `store`.
fn node_fixture(node: &str, store: Arc<MemoryStore>) -> Fixture {
    let node: crate::seams::NodeId = node.into();
    let metrics = Metrics::default();
    let gateway = Gateway::new(
        GatewayConfig::new(node.clone()),
        Arc::new(MemoryBroker::new(node.clone(), 16)),
        store.clone(),
        metrics.clone(),
    );
    let upstreams = UpstreamManager::new(UpstreamParts {
        node,
        records: store.clone(),
        publisher: gateway.clone(),
        metrics,
    });
    let control = Arc::new(Control::new(
        gateway.clone(),
        upstreams,
        Access::new(None, Arc::new(())),
    ));
    Fixture {
        control,
        gateway,
        store,
    }
}

fn payload(text: &str) -> Payload {
    Payload::parse(text).unwrap()
}

/// The listing of a default query edited by `edit`, which the test expects to succeed.
async fn listed(control: &Control, edit: impl FnOnce(&mut ListConnections)) -> Listing {
    let mut q = ListConnections::default();
    edit(&mut q);
    control.list_connections(&q).await.unwrap()
}

fn assert_error<T: std::fmt::Debug>(r: Result<T, ControlError>, code: ErrorCode, message: &str) {
    let e = r.unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (code, message));
}

const BAD_CHANNEL: &str = "channel names are 1 to 256 bytes without control characters";

#[tokio::test]
async fn gateway_operations_validate_and_report_seed_000_errors() {
    let f = fixture();
    let c = &f.control;
    let publish = |channel: &str| Publish {
        channel: channel.into(),
        data: payload(r#"{"n":1}"#),
        exclude_user: None,
        exclude_connection: None,
        event: None,
        idempotency_key: None,
    };
    assert_error(
        c.publish(publish("")).await,
        ErrorCode::InvalidArgument,
        BAD_CHANNEL,
    );
    let p = c.publish(publish("news")).await.unwrap();
    assert_eq!((p.channel.as_str(), p.offset, p.delivered), ("news", 1, 0));
    assert_error(
        c.presence("a\u{7}b").await,
        ErrorCode::InvalidArgument,
        BAD_CHANNEL,
    );
    assert_eq!(c.presence("news").await.unwrap().connections, 0);
    assert_eq!(c.send_to_user("nobody", payload("1")).await.unwrap(), 0);
    assert_error(
        c.send_to_connection("0123-n1", payload("1")).await,
        ErrorCode::NotFound,
        "Connection not found",
    );
    assert_error(
        c.disconnect_client("0123-n1", None).await,
        ErrorCode::NotFound,
        "Connection not found",
    );
}

#[tokio::test]
async fn listings_page_and_filter_both_kinds() {
    let f = fixture();
    let identity = |user: &str| Identity {
        subscribe: Default::default(),
        user: user.into(),
        channels: ChannelGrant::default(),
        expires_at: None,
    };
    let conns: Vec<_> = ["ann", "bob", "ann"]
        .into_iter()
        .map(|u| f.gateway.open(identity(u), None, Arc::new(Nowhere)))
        .collect();
    f.gateway.registry.subscribe(&Arc::from("news"), &conns[1]);

    let all = f
        .control
        .list_connections(&ListConnections::default())
        .await
        .unwrap()
        .page;
    assert_eq!((all.total, all.items.len(), all.next_offset), (3, 3, None));
    let ids: Vec<&str> = all.items.iter().map(ConnectionView::id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);

    let page = listed(&f.control, |q| q.limit = Some(2)).await.page;
    assert_eq!((page.items.len(), page.next_offset), (2, Some(2)));
    let ann = listed(&f.control, |q| q.user = Some("ann".into()))
        .await
        .page;
    assert_eq!(ann.total, 2);
    let news = listed(&f.control, |q| q.channel = Some("news".into()))
        .await
        .page;
    assert_eq!(news.items[0].id(), &*conns[1].id);
    let upstreams = listed(&f.control, |q| q.kind = Some(ConnectionKind::Upstream))
        .await
        .page;
    assert_eq!(upstreams.total, 0);

    let one = f.control.get_connection(&conns[0].id).await.unwrap();
    assert!(matches!(one, ConnectionView::Gateway(i) if i.user == "ann"));
    assert_error(
        f.control.get_connection("nope").await,
        ErrorCode::NotFound,
        "Connection not found",
    );
    f.control
        .disconnect_client(&conns[0].id, Some("bye"))
        .await
        .unwrap();
}

#[tokio::test]
async fn upstream_operations_are_checked_then_routed() {
    let f = fixture();
    let c = &f.control;
    // Arguments are checked before the connection is looked up.
    assert_error(
        c.send_async("nope", Message::from("q"), Some(0)).await,
        ErrorCode::InvalidArgument,
        "timeout_ms must be between 1 and 300000",
    );
    assert_error(
        c.start_publish("nope", String::new()).await,
        ErrorCode::InvalidArgument,
        "topic names are 1 to 250 bytes without control characters",
    );
    let keyless = Subscribe {
        key: Some(String::new()),
        message: "m".into(),
        unsubscribe: None,
    };
    assert_error(
        c.update_subscriptions("nope", vec![keyless], vec![]).await,
        ErrorCode::InvalidArgument,
        "subscription keys must not be empty",
    );
    assert_error(
        c.connect(Connect {
            url: "http://h/".into(),
            ..Default::default()
        })
        .await,
        ErrorCode::InvalidArgument,
        "url must start with ws:// or wss://",
    );
    // Unknown here and in the store.
    assert_error(
        c.send("nope", "hi".into()).await,
        ErrorCode::NotFound,
        "Connection not found",
    );
    assert_error(
        c.disconnect_upstream("nope").await,
        ErrorCode::NotFound,
        "Connection not found",
    );
    // Recorded as another node's, and no cluster to forward through.
    f.store.upstream_put(record("abcd-n2", "n2")).await.unwrap();
    let owned = "Connection owned by different instance: n2";
    assert_error(
        c.send_raw("abcd-n2", Bytes::from_static(b"\x00")).await,
        ErrorCode::Conflict,
        owned,
    );
    assert_error(c.get_upstream("abcd-n2").await, ErrorCode::Conflict, owned);
    assert_error(c.stop_publish("abcd-n2").await, ErrorCode::Conflict, owned);
    assert!(c.list_upstreams().is_empty());
}

fn record(id: &str, owner: &str) -> UpstreamRecord {
    UpstreamRecord {
        id: id.into(),
        owner: owner.into(),
        state: "connected".into(),
        created_at_ms: 0,
        spec: UpstreamSpec::new("ws://h/"),
    }
}

/// The forwarding channel of a cluster in one process: each node's handler by name.
#[derive(Default)]
struct Wire(Mutex<HashMap<String, RequestHandler>>);

/// One node's ends of the [`Wire`]; everything but forwarding is unused here.
struct Peer {
    me: String,
    wire: Arc<Wire>,
}

#[async_trait::async_trait]
impl Ownership for Peer {
    async fn acquire_lease(&self) -> Result<(), LeaseError> {
        Ok(())
    }
    async fn is_alive(&self, node: &str) -> Result<bool, StoreError> {
        Ok(self.wire.0.lock().contains_key(node))
    }
    async fn live_nodes(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.wire.0.lock().keys().cloned().collect())
    }
    async fn sweep(&self, _: &[String]) -> Result<Sweep, LeaseError> {
        Ok(Sweep::default())
    }
    async fn release(&self, _: &[String]) -> Result<usize, StoreError> {
        Ok(0)
    }
    async fn clear_all(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
    fn sweep_interval(&self) -> Duration {
        Duration::from_secs(3600)
    }
    fn lease_ttl(&self) -> Duration {
        Duration::from_secs(3600)
    }
}

#[async_trait::async_trait]
impl Forwarding for Peer {
    async fn request(
        &self,
        node: &str,
        body: String,
        _: Duration,
    ) -> Result<Option<String>, StoreError> {
        let handler = self.wire.0.lock().get(node).cloned();
        match handler {
            Some(h) => Ok(Some(h(body).await)),
            None => Ok(None),
        }
    }
    fn serve(&self, handler: RequestHandler) {
        self.wire.0.lock().insert(self.me.clone(), handler);
    }
}

/// Nodes `n1` and `n2` sharing `store`, on one in-process wire, each holding its lease (a
/// node answers forwarded calls once it holds its id's lease).
async fn cluster_on(store: &Arc<MemoryStore>) -> Vec<Fixture> {
    let wire = Arc::new(Wire::default());
    let nodes: Vec<Fixture> = ["n1", "n2"]
        .into_iter()
        .map(|n| {
            let f = node_fixture(n, store.clone());
            let peer = Arc::new(Peer {
                me: n.into(),
                wire: wire.clone(),
            });
            f.control.attach_cluster(peer.clone(), peer);
            f
        })
        .collect();
    for f in &nodes {
        f.control.upstreams.take_lease().await.unwrap();
    }
    nodes
}

#[tokio::test]
async fn operations_on_a_live_owners_connection_are_forwarded_once() {
    let store = Arc::new(MemoryStore::new());
    let nodes = cluster_on(&store).await;
    let forwarded = |f: &Fixture| f.gateway.metrics.upstream_forwarded.get();
    // n2's record, but n2 holds no such connection: n1 forwards, n2 answers, n1 reports
    // n2's answer.
    store.upstream_put(record("abcd-n2", "n2")).await.unwrap();
    let n1 = &nodes[0].control;
    assert_error(
        n1.send("abcd-n2", "hi".into()).await,
        ErrorCode::NotFound,
        "Connection not found",
    );
    assert_error(
        n1.update_subscriptions("abcd-n2", vec![], vec!["k".into()])
            .await,
        ErrorCode::NotFound,
        "Connection not found",
    );
    assert_eq!(forwarded(&nodes[0]), 2);
    // Checked before routing: nothing forwarded.
    assert!(
        n1.send_async("abcd-n2", Message::from("q"), Some(0))
            .await
            .is_err()
    );
    assert_eq!(forwarded(&nodes[0]), 2);
    // An owner that is not alive is seed 000's error, not a forward.
    store.upstream_put(record("abcd-n3", "n3")).await.unwrap();
    assert_error(
        n1.disconnect_upstream("abcd-n3").await,
        ErrorCode::Conflict,
        "Connection owned by different instance: n3",
    );
    assert_eq!((forwarded(&nodes[0]), forwarded(&nodes[1])), (2, 0));
}

/// Two nodes on one in-process wire, with `users[i]` connected to node `i`.
async fn two_nodes(users: [&str; 2]) -> (Vec<Fixture>, Vec<Arc<crate::gateway::Connection>>) {
    let store = Arc::new(MemoryStore::new());
    let nodes = cluster_on(&store).await;
    let conns = nodes
        .iter()
        .zip(users)
        .map(|(f, u)| {
            let who = Identity {
                subscribe: Default::default(),
                user: u.into(),
                channels: ChannelGrant::default(),
                expires_at: None,
            };
            f.gateway.open(who, None, Arc::new(Nowhere))
        })
        .collect();
    (nodes, conns)
}

#[tokio::test]
async fn listings_and_views_cover_every_live_node() {
    let (nodes, conns) = two_nodes(["ann", "bob"]).await;
    let n1 = &nodes[0].control;
    let all = n1
        .list_connections(&ListConnections::default())
        .await
        .unwrap();
    assert!(!all.is_partial());
    let mut want: Vec<&str> = conns.iter().map(|c| &*c.id).collect();
    want.sort();
    let ids: Vec<&str> = all.page.items.iter().map(ConnectionView::id).collect();
    assert_eq!((all.page.total, ids), (2, want.clone()));
    let nodes_named: Vec<&str> = all.page.items.iter().map(ConnectionView::node).collect();
    assert!(nodes_named.contains(&"n1") && nodes_named.contains(&"n2"));
    // Paging cuts the merged order; filters apply on every node.
    let second = listed(n1, |q| (q.offset, q.limit) = (1, Some(1))).await;
    assert_eq!(second.page.items[0].id(), want[1]);
    assert_eq!((second.page.total, second.page.next_offset), (2, None));
    let bob = listed(n1, |q| q.user = Some("bob".into())).await;
    assert_eq!(bob.page.items[0].id(), &*conns[1].id);
    // This node only.
    let mine = listed(n1, |q| q.scope = Scope::Node).await;
    assert_eq!(mine.page.total, 1);

    // One connection of another node, then its disconnect, from n1.
    let view = n1.get_connection(&conns[1].id).await.unwrap();
    assert!(matches!(view, ConnectionView::Gateway(i) if i.user == "bob" && i.node == "n2"));
    n1.disconnect_client(&conns[1].id, Some("bye"))
        .await
        .unwrap();
    assert!(conns[1].close_request().is_some());
    assert_error(
        n1.disconnect_client("0123456789abcdef-n2", None).await,
        ErrorCode::NotFound,
        "Connection not found",
    );
    assert_error(
        n1.get_connection("0123456789abcdef-n9").await,
        ErrorCode::NotFound,
        "Connection not found",
    );
}

fn keyed(channel: &str, data: &str, key: &str) -> Publish {
    Publish {
        channel: channel.into(),
        data: payload(data),
        exclude_user: None,
        exclude_connection: None,
        event: None,
        idempotency_key: Some(key.into()),
    }
}

/// The embedded engine: a repeat answers the first publication, concurrent repeats publish
/// once, another payload under the key is a conflict, another channel is another scope.
#[tokio::test]
async fn idempotency_keys_publish_once() {
    let f = fixture();
    let c = &f.control;
    let first = c.publish(keyed("news", "1", "k1")).await.unwrap();
    assert!(!first.replayed);
    let again = c.publish(keyed("news", "1", "k1")).await.unwrap();
    assert!(again.replayed);
    assert_eq!((again.offset, &again.epoch), (first.offset, &first.epoch));
    assert_error(
        c.publish(keyed("news", "2", "k1")).await,
        ErrorCode::Conflict,
        "idempotency_key already used for a different publication on this channel",
    );
    assert!(!c.publish(keyed("other", "1", "k1")).await.unwrap().replayed);
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let c = f.control.clone();
            tokio::spawn(async move { c.publish(keyed("race", "1", "same")).await.unwrap() })
        })
        .collect();
    let mut fresh = 0;
    for r in racers {
        let p = r.await.unwrap();
        assert_eq!(p.offset, 1);
        fresh += usize::from(!p.replayed);
    }
    assert_eq!(fresh, 1, "exactly one of the racers published");
    assert_eq!(f.gateway.broker.position("race").await.unwrap().offset, 1);
    assert_error(
        c.publish(keyed("news", "1", "")).await,
        ErrorCode::InvalidArgument,
        "idempotency_key must be 1 to 128 bytes without control characters",
    );
}

#[tokio::test]
async fn idempotency_window_expires() {
    let f = fixture();
    let c = Control::new(
        f.gateway.clone(),
        UpstreamManager::new(UpstreamParts {
            node: "n1".into(),
            records: f.store.clone(),
            publisher: f.gateway.clone(),
            metrics: Metrics::default(),
        }),
        Access::new(None, Arc::new(())),
    )
    .with_idempotency_window(Duration::from_millis(50));
    assert!(!c.publish(keyed("w", "1", "k")).await.unwrap().replayed);
    assert!(c.publish(keyed("w", "1", "k")).await.unwrap().replayed);
    tokio::time::sleep(Duration::from_millis(80)).await;
    let later = c.publish(keyed("w", "1", "k")).await.unwrap();
    assert_eq!((later.replayed, later.offset), (false, 2));
}

#[tokio::test]
async fn broadcast_and_batch_answer_each_in_order() {
    let f = fixture();
    let c = &f.control;
    let b = Broadcast {
        channels: vec!["a".into(), "".into(), "b".into(), "a".into()],
        data: payload("7"),
        exclude_user: None,
        exclude_connection: None,
        event: None,
        idempotency_key: None,
    };
    let results = c.broadcast(b.clone()).await.unwrap();
    let offsets: Vec<Option<u64>> = results
        .iter()
        .map(|r| r.as_ref().ok().map(|p| p.offset))
        .collect();
    assert_eq!(offsets[1], None);
    assert_eq!(offsets[2], Some(1));
    let mut a = [offsets[0].unwrap(), offsets[3].unwrap()];
    a.sort();
    assert_eq!(a, [1, 2]);
    let mut none = b.clone();
    none.channels.clear();
    assert_eq!(
        c.broadcast(none).await.unwrap_err().code,
        ErrorCode::InvalidArgument
    );

    let results = c
        .batch(vec![
            Ok(Command::Publish(keyed("x", "1", "k"))),
            Ok(Command::SendToConnection {
                connection_id: "nope-n1".into(),
                data: payload("1"),
            }),
            Err(ControlError::invalid("bad command")),
            Ok(Command::Publish(keyed("x", "1", "k"))),
            Ok(Command::Subscribe {
                user: "ann".into(),
                channel: "x".into(),
            }),
        ])
        .await
        .unwrap();
    assert!(matches!(&results[0], Ok(CommandResult::Published(p)) if !p.replayed));
    assert_eq!(results[1].as_ref().unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(results[2].as_ref().unwrap_err().message, "bad command");
    assert!(matches!(&results[3], Ok(CommandResult::Published(p)) if p.replayed));
    assert_eq!(results[4], Ok(CommandResult::Delivered(0)));
    assert_eq!(
        c.batch(Vec::new()).await.unwrap_err().code,
        ErrorCode::InvalidArgument
    );
}

//! The façade driven without sockets: memory broker and store, a transport that drops
//! everything, no upstream server (operations on unknown or foreign connections only).

use std::sync::Arc;

use bytes::Bytes;
use wsgate_client::Message;
use wsgate_cluster::memory::{MemoryBroker, MemoryStore};
use wsgate_cluster::upstream::UpstreamSpec;
use wsgate_cluster::{Store, UpstreamRecord};

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
    fn skip_through(&self, _: Arc<str>, _: u64) {}
    fn forget_skip(&self, _: &str) {}
    fn backlog(&self) -> usize {
        0
    }
}

struct Fixture {
    control: Control,
    gateway: Arc<Gateway>,
    store: Arc<MemoryStore>,
}

fn fixture() -> Fixture {
    let node: wsgate_cluster::NodeId = "n1".into();
    let store = Arc::new(MemoryStore::new());
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
    let control = Control::new(gateway.clone(), upstreams, Access::new(None, Arc::new(())));
    Fixture {
        control,
        gateway,
        store,
    }
}

fn payload(text: &str) -> Payload {
    Payload::parse(text).unwrap()
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
        c.disconnect_client("0123-n1", None),
        ErrorCode::NotFound,
        "Connection not found",
    );
}

#[tokio::test]
async fn listings_page_and_filter_both_kinds() {
    let f = fixture();
    let identity = |user: &str| Identity {
        user: user.into(),
        channels: ChannelGrant::default(),
    };
    let conns: Vec<_> = ["ann", "bob", "ann"]
        .into_iter()
        .map(|u| f.gateway.open(identity(u), None, Arc::new(Nowhere)))
        .collect();
    f.gateway.registry.subscribe(&Arc::from("news"), &conns[1]);

    let all = f.control.list_connections(&ListConnections::default());
    assert_eq!((all.total, all.items.len(), all.next_offset), (3, 3, None));
    let ids: Vec<&str> = all.items.iter().map(ConnectionView::id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);

    let page = f.control.list_connections(&ListConnections {
        limit: Some(2),
        ..Default::default()
    });
    assert_eq!((page.items.len(), page.next_offset), (2, Some(2)));
    let ann = f.control.list_connections(&ListConnections {
        user: Some("ann".into()),
        ..Default::default()
    });
    assert_eq!(ann.total, 2);
    let news = f.control.list_connections(&ListConnections {
        channel: Some("news".into()),
        ..Default::default()
    });
    assert_eq!(news.items[0].id(), &*conns[1].id);
    let upstreams = f.control.list_connections(&ListConnections {
        kind: Some(ConnectionKind::Upstream),
        ..Default::default()
    });
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
    f.store
        .upstream_put(UpstreamRecord {
            id: "abcd-n2".into(),
            owner: "n2".into(),
            state: "connected".into(),
            created_at_ms: 0,
            spec: UpstreamSpec::new("ws://h/"),
        })
        .await
        .unwrap();
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

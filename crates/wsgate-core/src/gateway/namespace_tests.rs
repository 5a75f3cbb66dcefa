//! Namespace options as the session applies them, without sockets (see [`super::testing`]).

use serde_json::{Value, json};

use super::Membership;
use super::testing::{Node, Peer};
use crate::auth::{ChannelGrant, Identity};
use crate::gateway::ClientPublish;
use crate::namespace::{NamespaceOptions, Namespaces, SubscribeRule};

/// A node with namespace `chat` (options `chat`) beside the default ones.
fn node_with(chat: NamespaceOptions) -> Node {
    let node = Node::new(16, |_| {});
    node.gw.set_namespaces(
        Namespaces::new(Default::default(), [("chat".into(), chat)].into()).unwrap(),
    );
    node
}

async fn ask(node: &Node, peer: &mut Peer, frame: Value) -> Vec<Value> {
    peer.send(&node.gw, &frame.to_string()).await.unwrap();
    peer.take_json()
}

#[tokio::test]
async fn an_unknown_namespace_is_an_error_frame_and_an_api_error() {
    let node = node_with(NamespaceOptions::default());
    let mut p = node.connect("ann", 16);
    for op in [
        json!({"op":"subscribe","channel":"chta:1"}),
        json!({"op":"publish","channel":"chta:1","data":1}),
        json!({"op":"presence","channel":"chta:1"}),
    ] {
        let r = ask(&node, &mut p, op).await;
        assert_eq!(
            (&r[0]["op"], &r[0]["code"], &r[0]["message"]),
            (
                &json!("error"),
                &json!("unknown_namespace"),
                &json!("unknown namespace")
            ),
            "{r:?}"
        );
    }
    let e = node
        .gw
        .publish("chta:1", "1".into(), None, None)
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "unknown namespace");
    // Known namespaces and plain channels still work.
    assert_eq!(
        ask(&node, &mut p, json!({"op":"subscribe","channel":"chat:1"})).await[0]["op"],
        "subscribed"
    );
    assert_eq!(
        ask(&node, &mut p, json!({"op":"subscribe","channel":"lobby"})).await[0]["op"],
        "subscribed"
    );
}

/// In namespace `chat` with `options`: a first subscriber, `n` publications (1..=n), then a
/// late subscriber asking for everything since offset 0; its answer and replay.
async fn late_recovery(options: NamespaceOptions, n: u64) -> Vec<Value> {
    let node = node_with(options);
    let mut first = node.connect("ann", 16);
    let a = ask(
        &node,
        &mut first,
        json!({"op":"subscribe","channel":"chat:1"}),
    )
    .await;
    for i in 1..=n {
        node.publish("chat:1", &i.to_string()).await;
    }
    let mut late = node.connect("bob", 16);
    let since = json!({"offset": 0, "epoch": a[0]["epoch"]});
    ask(
        &node,
        &mut late,
        json!({"op":"subscribe","channel":"chat:1","since":since}),
    )
    .await
}

#[tokio::test]
async fn recover_off_answers_recovered_false_and_replays_nothing() {
    let off = NamespaceOptions {
        recover: false,
        ..Default::default()
    };
    let r = late_recovery(off, 2).await;
    assert_eq!(r.len(), 1, "nothing replayed: {r:?}");
    assert_eq!(
        (&r[0]["recovered"], &r[0]["gap"], &r[0]["offset"]),
        (&json!(false), &json!("recovery_disabled"), &json!(2))
    );
}

#[tokio::test]
async fn history_size_is_the_namespaces() {
    let one = NamespaceOptions {
        history_size: Some(1),
        ..Default::default()
    };
    let r = late_recovery(one, 3).await;
    assert_eq!(r[0]["gap"], "history_truncated", "{r:?}");
    assert_eq!(r.len(), 2, "only the last publication is kept: {r:?}");
    assert_eq!(r[1]["offset"], 3);
}

#[tokio::test]
async fn subscribers_hear_joins_and_leaves_where_the_namespace_says() {
    let node = node_with(NamespaceOptions {
        join_leave: true,
        ..Default::default()
    });
    let mut ann = node.connect("ann", 16);
    let mut bob = node.connect("bob", 16);
    ask(
        &node,
        &mut ann,
        json!({"op":"subscribe","channel":"chat:1"}),
    )
    .await;
    let r = ask(
        &node,
        &mut bob,
        json!({"op":"subscribe","channel":"chat:1"}),
    )
    .await;
    assert_eq!(r[0]["op"], "subscribed");
    let join = json!({"op":"join","channel":"chat:1","user":"bob","connection_id":&*bob.conn().id});
    assert_eq!(ann.take_json(), std::slice::from_ref(&join));
    assert_eq!(r[1], join, "the joiner hears itself, after its answer");
    ask(
        &node,
        &mut bob,
        json!({"op":"unsubscribe","channel":"chat:1"}),
    )
    .await;
    let leave =
        json!({"op":"leave","channel":"chat:1","user":"bob","connection_id":&*bob.conn().id});
    assert_eq!(ann.take_json(), [leave]);
    // A closed connection leaves every channel.
    ask(
        &node,
        &mut bob,
        json!({"op":"subscribe","channel":"chat:1"}),
    )
    .await;
    ann.take_json();
    let channels = node.gw.close(bob.conn(), "client_closed", None);
    node.gw
        .leave_channels(&bob.conn().id, "bob", &channels)
        .await;
    assert_eq!(ann.take_json()[0]["op"], Membership::Leave.op());
    // The default namespace has no join_leave.
    ask(&node, &mut ann, json!({"op":"subscribe","channel":"lobby"})).await;
    let mut cy = node.connect("cy", 16);
    ask(&node, &mut cy, json!({"op":"subscribe","channel":"lobby"})).await;
    assert!(ann.take_json().is_empty());
}

#[tokio::test]
async fn subscribe_rule_client_publish_and_presence_follow_the_namespace() {
    let node = node_with(NamespaceOptions {
        subscribe: SubscribeRule::Any,
        client_publish: ClientPublish::Deny,
        presence: false,
        ..Default::default()
    });
    let only_news = Identity {
        user: "ann".into(),
        channels: ChannelGrant::Only(vec!["news".to_string()].into()),
        subscribe: Default::default(),
        expires_at: None,
    };
    let mut p = node.connect_with(only_news, 16, usize::MAX);
    // `token`: the grant decides; `any`: it does not.
    let r = ask(&node, &mut p, json!({"op":"subscribe","channel":"lobby"})).await;
    assert_eq!(r[0]["code"], "forbidden", "{r:?}");
    let r = ask(&node, &mut p, json!({"op":"subscribe","channel":"chat:1"})).await;
    assert_eq!(r[0]["op"], "subscribed", "{r:?}");
    let r = ask(
        &node,
        &mut p,
        json!({"op":"publish","channel":"chat:1","data":1}),
    )
    .await;
    assert_eq!(r[0]["code"], "forbidden", "client_publish = deny: {r:?}");
    let r = ask(&node, &mut p, json!({"op":"presence","channel":"chat:1"})).await;
    assert_eq!(r[0]["code"], "unsupported", "presence off: {r:?}");
    assert!(
        node.gw.presence("chat:1").await.unwrap().users.is_empty(),
        "no entry written"
    );
    // `proxy` without a hook: refused, clearly.
    node.gw.set_namespaces(
        Namespaces::new(
            Default::default(),
            [(
                "chat".into(),
                NamespaceOptions {
                    subscribe: SubscribeRule::Proxy,
                    ..Default::default()
                },
            )]
            .into(),
        )
        .unwrap(),
    );
    let r = ask(&node, &mut p, json!({"op":"subscribe","channel":"chat:2"})).await;
    assert_eq!(r[0]["message"], super::NO_SUBSCRIBE_HOOK, "{r:?}");
    node.gw.set_namespaces(
        Namespaces::new(
            Default::default(),
            [(
                "chat".into(),
                NamespaceOptions {
                    subscribe: SubscribeRule::Any,
                    publish_proxy: true,
                    ..Default::default()
                },
            )]
            .into(),
        )
        .unwrap(),
    );
    let r = ask(
        &node,
        &mut p,
        json!({"op":"publish","channel":"chat:1","data":1}),
    )
    .await;
    assert_eq!(r[0]["message"], super::NO_PUBLISH_HOOK, "{r:?}");
    // The subscription held before the reload stays.
    assert!(p.conn().is_subscribed("chat:1"));
}

//! Channel namespaces through real sockets: each option on one node, an unknown namespace,
//! a SIGHUP reload that keeps a live connection, and, on two nodes over Redis, join/leave
//! and channel info across the cluster.

use wsgate_tests as support;

use std::path::PathBuf;

use serde_json::{Value, json};
use support::cluster::{Cluster, Via};
use support::{Client, Process, TestServer, eventually, within};
use wsgate_core::gateway::ClientPublish;
use wsgate_core::namespace::SubscribeRule;
use wsgate_grpc::client::*;
use wsgate_server::namespaces::NamespaceSettings;

const SIGHUP: i32 = 1;

/// A node with `[namespaces.chat]` (join/leave, any client publishes) and
/// `[namespaces.quiet]` (no recovery, no presence, clients never publish).
async fn node() -> TestServer {
    TestServer::with(|c| {
        c.namespaces.namespaces.insert(
            "chat".into(),
            NamespaceSettings {
                join_leave: Some(true),
                client_publish: Some(ClientPublish::Any),
                ..Default::default()
            },
        );
        c.namespaces.namespaces.insert(
            "quiet".into(),
            NamespaceSettings {
                recover: Some(false),
                presence: Some(false),
                client_publish: Some(ClientPublish::Deny),
                subscribe: Some(SubscribeRule::Any),
                ..Default::default()
            },
        );
    })
    .await
}

/// Reads frames until one with `op` (others are skipped); returns it.
async fn next_op(c: &mut Client, op: &str) -> Value {
    loop {
        let f = c.recv().await;
        if f["op"] == op {
            return f;
        }
    }
}

/// Sends `frame` and returns its answer: the next frame that is not a channel's news
/// (`join`, `leave`, `message`), which may come before it.
async fn ask(c: &mut Client, frame: Value) -> Value {
    c.send(frame).await;
    loop {
        let f = c.recv().await;
        if !["join", "leave", "message"].contains(&f["op"].as_str().unwrap_or_default()) {
            return f;
        }
    }
}

/// [`ask`] to subscribe, which must be answered `subscribed`.
async fn subscribe(c: &mut Client, channel: &str) -> Value {
    let r = ask(c, json!({"op":"subscribe","channel":channel})).await;
    assert_eq!(r["op"], "subscribed", "{r}");
    r
}

/// Reads frames until `op` about connection `id`.
async fn membership(c: &mut Client, op: &str, id: &str) -> Value {
    loop {
        let f = next_op(c, op).await;
        if f["connection_id"] == id {
            return f;
        }
    }
}

#[tokio::test]
async fn unknown_namespaces_are_refused_to_clients_and_the_api() {
    let srv = node().await;
    let mut c = Client::connect(&srv.ws_url()).await;
    let r = ask(&mut c, json!({"op":"subscribe","channel":"chta:1","id":1})).await;
    assert_eq!(
        (&r["op"], &r["code"], &r["message"], &r["id"]),
        (
            &json!("error"),
            &json!("unknown_namespace"),
            &json!("unknown namespace"),
            &json!(1)
        )
    );
    let (status, body) = srv
        .post("/api/v1/publish", json!({"channel":"chta:1","data":1}))
        .await;
    assert_eq!((status, &body["error"]), (400, &json!("unknown namespace")));
    let (status, body) = srv.get("/api/v1/channels/chta:1").await;
    assert_eq!((status, &body["error"]), (400, &json!("unknown namespace")));
    // Declared namespaces, plain channels and `topic:` still work.
    subscribe(&mut c, "chat:1").await;
    subscribe(&mut c, "lobby").await;
    subscribe(&mut c, "topic:prices").await;
    srv.shutdown().await;
}

#[tokio::test]
async fn each_option_applies_to_clients_and_the_api() {
    let srv = node().await;
    let mut ann = Client::connect(&srv.ws_url()).await;
    let mut bob = Client::connect(&srv.ws_url()).await;

    // join_leave, seen by the other subscriber.
    subscribe(&mut ann, "chat:1").await;
    subscribe(&mut bob, "chat:1").await;
    let join = membership(&mut ann, "join", &bob.id()).await;
    assert_eq!(
        join,
        json!({"op":"join","channel":"chat:1","user":bob.user(),"connection_id":bob.id()})
    );
    // client_publish = any: to a channel of `chat` nobody subscribes to.
    let r = ask(
        &mut ann,
        json!({"op":"publish","channel":"chat:2","data":1}),
    )
    .await;
    assert_eq!(r["op"], "published", "{r}");
    ask(&mut bob, json!({"op":"unsubscribe","channel":"chat:1"})).await;
    let leave = membership(&mut ann, "leave", &bob.id()).await;
    assert_eq!(leave["user"], json!(bob.user()));

    // The default namespace: no join/leave, publishing only where subscribed.
    let r = ask(&mut ann, json!({"op":"publish","channel":"lobby","data":1})).await;
    assert_eq!(r["code"], "forbidden", "{r}");

    // `quiet`: recover off, presence off, clients never publish.
    let first = subscribe(&mut ann, "quiet:1").await;
    let (status, _) = srv
        .post("/api/v1/publish", json!({"channel":"quiet:1","data":1}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(next_op(&mut ann, "message").await["offset"], 1);
    let since = json!({"offset": 0, "epoch": first["epoch"]});
    let r = ask(
        &mut bob,
        json!({"op":"subscribe","channel":"quiet:1","since":since}),
    )
    .await;
    assert_eq!(
        (&r["recovered"], &r["gap"], &r["offset"]),
        (&json!(false), &json!("recovery_disabled"), &json!(1)),
        "{r}"
    );
    let r = ask(&mut bob, json!({"op":"presence","channel":"quiet:1"})).await;
    assert_eq!(r["code"], "unsupported", "{r}");
    let (status, _) = srv.get("/api/v1/channels/quiet:1/presence").await;
    assert_eq!(status, 400);
    let r = ask(
        &mut bob,
        json!({"op":"publish","channel":"quiet:1","data":1}),
    )
    .await;
    assert_eq!(r["code"], "forbidden", "{r}");

    // Channel info, over HTTP and gRPC alike.
    let (status, list) = srv.get("/api/v1/channels?prefix=quiet:").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        list["channels"],
        json!([{"channel":"quiet:1","subscribers":2}])
    );
    let (_, info) = srv.get("/api/v1/channels/quiet:1").await;
    assert_eq!(
        (&info["subscribers"], &info["offset"], &info["epoch"]),
        (&json!(2), &json!(1), &first["epoch"])
    );
    let endpoint = tonic::transport::Endpoint::from_shared(srv.grpc_url()).unwrap();
    let mut grpc = WsGateClient::new(within("gRPC", endpoint.connect()).await.unwrap());
    let listed = within(
        "ListChannels",
        grpc.list_channels(ListChannelsRequest {
            prefix: "quiet:".into(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert!(listed.success, "{}", listed.error);
    assert_eq!(
        listed
            .channels
            .iter()
            .map(|c| (c.channel.as_str(), c.subscribers))
            .collect::<Vec<_>>(),
        [("quiet:1", 2)]
    );
    let got = within(
        "GetChannel",
        grpc.get_channel(GetChannelRequest {
            channel: "chta:1".into(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        (got.success, got.error.as_str()),
        (false, "unknown namespace")
    );
    srv.shutdown().await;
}

/// A config file of this test, removed on drop.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("wsgate-{name}-{}.toml", std::process::id()));
        let file = Self(path);
        file.write(text);
        file
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).expect("config file written");
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn sighup_reloads_namespaces_and_keeps_connections() {
    let file = ConfigFile::new("reload", "[namespaces.chat]\n");
    let node = Process::spawn(&["--config", file.arg()]).await;
    let mut c = Client::connect(&node.ws_url()).await;
    subscribe(&mut c, "chat:1").await;
    let r = ask(&mut c, json!({"op":"subscribe","channel":"news:1"})).await;
    assert_eq!(r["code"], "unknown_namespace", "{r}");

    // `news` is declared and `chat` is gone: new operations follow, the held
    // subscription stays.
    file.write("[namespaces.news]\n");
    node.signal(SIGHUP);
    eventually("news to be a namespace", || {
        let url = node.ws_url();
        async move {
            let mut probe = Client::connect(&url).await;
            let r = ask(&mut probe, json!({"op":"subscribe","channel":"news:1"})).await;
            (r["op"] == "subscribed").then_some(())
        }
    })
    .await;
    subscribe(&mut c, "news:1").await;
    let (status, _) = support::post_json(
        &node.http("/api/v1/publish"),
        json!({"channel":"news:1","data":"n"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(next_op(&mut c, "message").await["data"], "n");
    let r = ask(&mut c, json!({"op":"subscribe","channel":"chat:2"})).await;
    assert_eq!(r["code"], "unknown_namespace", "{r}");

    // A file that is refused keeps the namespaces in use.
    file.write("[namespaces.\"bad name\"]\n");
    node.signal(SIGHUP);
    eventually("the refused reload to be logged", || {
        let logs = node.logs();
        async move {
            logs.contains("keeping the channel namespaces in use")
                .then_some(())
        }
    })
    .await;
    assert!(
        node.logs().contains("namespace names are"),
        "the reason is logged"
    );
    subscribe(&mut c, "news:2").await;
    let r = ask(&mut c, json!({"op":"ping"})).await;
    assert_eq!(r["op"], "pong", "the connection lived through both reloads");
}

#[tokio::test]
async fn join_leave_and_channel_info_span_two_nodes() {
    let file = ConfigFile::new("two-nodes", "[namespaces.chat]\njoin_leave = true\n");
    let cluster = Cluster::start(Via::Redis).await;
    let a = cluster.node("node-a", &["--config", file.arg()]).await;
    let b = cluster.node("node-b", &["--config", file.arg()]).await;
    let mut on_a = Client::connect(&a.ws_url()).await;
    subscribe(&mut on_a, "chat:1").await;
    let mut on_b = Client::connect(&b.ws_url()).await;
    subscribe(&mut on_b, "chat:1").await;
    let join = membership(&mut on_a, "join", &on_b.id()).await;
    assert_eq!(join["channel"], "chat:1");
    let mut other_b = Client::connect(&b.ws_url()).await;
    subscribe(&mut other_b, "chat:2").await;

    // Counts from both nodes, asked of either.
    a.publish("chat:1", json!("x")).await;
    for node in [&a, &b] {
        let (status, list) = node.get("/api/v1/channels?prefix=chat:").await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(
            list["channels"],
            json!([{"channel":"chat:1","subscribers":2},{"channel":"chat:2","subscribers":1}]),
        );
        assert_eq!(list["missing_nodes"], json!([]));
        let (_, info) = node.get("/api/v1/channels/chat:1").await;
        assert_eq!(
            (&info["subscribers"], &info["offset"]),
            (&json!(2), &json!(1)),
            "{info}"
        );
    }

    // b's client goes away: a's subscriber hears it leave, the counts follow.
    let gone = on_b.id();
    drop(on_b);
    let leave = membership(&mut on_a, "leave", &gone).await;
    assert_eq!(leave["channel"], "chat:1");
    let (_, info) = a.get("/api/v1/channels/chat:1").await;
    assert_eq!(info["subscribers"], 1, "{info}");
}

#[tokio::test]
async fn socketio_clients_get_join_leave_events_and_the_namespace_rules() {
    let file = ConfigFile::new("socketio", "[namespaces.chat]\njoin_leave = true\n");
    let node = Process::spawn(&["--config", file.arg()]).await;
    let mut sio = support::socketio::SioDriver::start().await;
    let base = node.http("");
    let line = sio
        .connect("a", &base, json!({"transports": ["websocket"]}))
        .await;
    assert_eq!(line["type"], "connect", "{line}");
    let ack = sio.emit("a", "subscribe", json!("chat:1")).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let ack = sio.emit("a", "subscribe", json!("chta:1")).await;
    assert_eq!(
        (&ack["ok"], &ack["error"]),
        (&json!(false), &json!("unknown_namespace")),
        "{ack}"
    );

    let mut ws = Client::connect(&node.ws_url()).await;
    subscribe(&mut ws, "chat:1").await;
    let wanted = json!({"channel":"chat:1","user":ws.user(),"connection_id":ws.id()});
    // The same members as the /ws frame, as the event of its op.
    loop {
        let args = sio.event("a", "join").await;
        if args == [wanted.clone()] {
            break;
        }
    }
    ask(&mut ws, json!({"op":"unsubscribe","channel":"chat:1"})).await;
    assert_eq!(sio.event("a", "leave").await, [wanted]);
}

//! The Socket.IO edge end to end: the real `socket.io-client` (npm, v4, under Node) against
//! the real `wsgate serve` program, one node or two on `redis-server` (docs/socketio.md).

use wsgate_tests as support;

use serde_json::{Value, json};
use support::cluster::{Cluster, Node, Via};
use support::socketio::SioDriver;
use support::{Client, Process, SIGTERM, hs256_token, in_a_minute};

const SECRET: &str = "sio-test-secret";

fn token(user: &str) -> String {
    hs256_token(SECRET, json!({"sub": user, "exp": in_a_minute()}))
}

/// One `wsgate serve` with JWT auth.
async fn jwt_node() -> Node {
    jwt_node_with(&[]).await
}

/// [`jwt_node`] with more settings.
async fn jwt_node_with(envs: &[(&str, &str)]) -> Node {
    let mut all = vec![
        ("WSGATE_AUTH__MODE", "jwt"),
        ("WSGATE_AUTH__JWT_SECRET", SECRET),
    ];
    all.extend_from_slice(envs);
    Node(Process::spawn_env(&[], &all).await)
}

/// The two ways in: WebSocket directly (served by the `/ws` machinery) and polling upgraded
/// to WebSocket (the client's default, served by socketioxide).
const WAYS: [&str; 2] = ["websocket", "polling-upgrade"];

/// The client options of one of [`WAYS`].
fn way(way: &str) -> Value {
    match way {
        "websocket" => json!({"transports": ["websocket"]}),
        _ => json!({}),
    }
}

fn base(node: &Node) -> String {
    node.url("")
}

/// `opts` plus the handshake's `auth: {token}` for `user`.
fn as_user(user: &str, mut opts: Value) -> Value {
    opts["auth"] = json!({"token": token(user)});
    opts
}

/// Connects socket `name` as `user`; returns its `connect` line (with its transport).
async fn connect_as(
    sio: &mut SioDriver,
    node: &Node,
    name: &str,
    user: &str,
    opts: Value,
) -> Value {
    let line = sio.connect(name, &base(node), as_user(user, opts)).await;
    assert_eq!(line["type"], "connect", "{line}");
    line
}

/// [`connect_as`] with that one transport (`websocket` or `polling`).
async fn connect_over(sio: &mut SioDriver, node: &Node, name: &str, user: &str, transport: &str) {
    let opts = json!({"transports": [transport]});
    let line = connect_as(sio, node, name, user, opts).await;
    assert_eq!(line["transport"], transport, "{line}");
}

/// A JWT node and a Node driver for its clients.
async fn node_and_driver() -> (Node, SioDriver) {
    (jwt_node().await, SioDriver::start().await)
}

/// [`connect_as`], then its `hello` (connection id, node, user).
async fn connected(sio: &mut SioDriver, node: &Node, name: &str, user: &str, opts: Value) -> Value {
    connect_as(sio, node, name, user, opts).await;
    sio.event(name, "hello").await.remove(0)
}

#[tokio::test]
async fn websocket_transport_subscribe_publish_presence_and_listing() {
    let (node, mut sio) = node_and_driver().await;
    connect_over(&mut sio, &node, "a", "ann", "websocket").await;
    let hello = sio.event("a", "hello").await.remove(0);
    assert_eq!(hello["user"], "ann");

    let ack = sio.emit("a", "subscribe", json!("news")).await;
    assert_eq!(
        (ack["ok"].clone(), ack["offset"].clone()),
        (json!(true), json!(0)),
        "{ack}"
    );
    let epoch = ack["epoch"].as_str().expect("epoch").to_string();

    assert_eq!(node.publish("news", json!({"n": 1})).await, 1);
    let msg = sio.event("a", "message").await;
    assert_eq!(
        msg,
        vec![json!({"channel": "news", "offset": 1, "epoch": epoch, "data": {"n": 1}})]
    );

    // A client publish: acknowledged with its offset, and delivered to the subscriber.
    let ack = sio
        .emit("a", "publish", json!({"channel": "news", "data": "hi"}))
        .await;
    assert_eq!(ack, json!({"ok": true, "channel": "news", "offset": 2}));
    assert_eq!(sio.event("a", "message").await[0]["data"], "hi");
    // The publish policy of /ws clients (`subscribed`): not to a channel it is not in.
    let ack = sio
        .emit("a", "publish", json!({"channel": "other", "data": 1}))
        .await;
    assert_eq!(
        (ack["ok"].clone(), ack["error"].clone()),
        (json!(false), json!("forbidden"))
    );

    let ack = sio.emit("a", "presence", json!("news")).await;
    assert_eq!(
        (ack["users"].clone(), ack["connections"].clone()),
        (json!(["ann"]), json!(1))
    );
    // Any other event is answered like an unknown op on /ws.
    let ack = sio.emit("a", "dance", json!({"step": 1})).await;
    assert_eq!(
        (ack["ok"].clone(), ack["error"].clone()),
        (json!(false), json!("unknown_op")),
        "{ack}"
    );
    let (status, list) = node.get("/connections?kind=socketio").await;
    assert_eq!(status, 200, "{list}");
    let items = list["connections"].as_array().expect("connections").clone();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(
        (
            items[0]["kind"].clone(),
            items[0]["user"].clone(),
            items[0]["id"].clone()
        ),
        (
            json!("socketio"),
            json!("ann"),
            hello["connection_id"].clone()
        )
    );
    assert_eq!(items[0]["channels"], json!(["news"]));
    let (_, ws_only) = node.get("/connections?kind=gateway").await;
    assert_eq!(ws_only["total"], 0, "{ws_only}");

    let ack = sio.emit("a", "unsubscribe", json!("news")).await;
    assert_eq!(ack["ok"], true);
    let metrics = support::get_text(&node.url("/metrics")).await;
    assert!(
        support::metric_value(&metrics, "websocket_active_connections") == Some(1.0),
        "a Socket.IO client counts as a connection"
    );
}

#[tokio::test]
async fn polling_only_and_polling_upgraded_to_websocket() {
    let (node, mut sio) = node_and_driver().await;
    connect_over(&mut sio, &node, "poll", "pat", "polling").await;
    // The default: polling first, then the upgrade (which may complete before `connect`).
    connect_as(&mut sio, &node, "up", "uma", json!({})).await;
    let up = sio
        .next_where("the upgrade", |l| {
            l["type"] == "upgrade" && l["name"] == "up"
        })
        .await;
    assert_eq!(up["transport"], "websocket");

    for name in ["poll", "up"] {
        let ack = sio
            .emit(name, "subscribe", json!({"channel": "room"}))
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    node.publish("room", json!("to both")).await;
    for name in ["poll", "up"] {
        assert_eq!(sio.event(name, "message").await[0]["data"], "to both");
    }
    assert!(
        !sio.saw(|l| l["type"] == "upgrade" && l["name"] == "poll"),
        "a polling-only client never upgrades"
    );
    // socketioxide's sockets are `socketio` connections too, beside a direct WebSocket one.
    connect_over(&mut sio, &node, "ws", "wes", "websocket").await;
    let (status, list) = node.get("/connections?kind=socketio").await;
    assert_eq!((status, list["total"].clone()), (200, json!(3)), "{list}");
    let mut users: Vec<_> = list["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| (c["user"].as_str().unwrap().to_owned(), c["kind"].clone()))
        .collect();
    users.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        users,
        [
            ("pat", "socketio"),
            ("uma", "socketio"),
            ("wes", "socketio")
        ]
        .map(|(u, k)| (u.to_owned(), json!(k)))
    );
}

#[tokio::test]
async fn bad_tokens_fail_with_connect_error_unauthorized() {
    let (node, mut sio) = node_and_driver().await;
    let expired = hs256_token(SECRET, json!({"sub": "eve", "exp": 1_000_000}));
    let forged = hs256_token(
        "another-secret",
        json!({"sub": "eve", "exp": in_a_minute()}),
    );
    for w in WAYS {
        for (name, extra) in [
            ("none", json!({})),
            ("garbage", json!({"auth": {"token": "garbage"}})),
            ("expired", json!({"auth": {"token": expired}})),
            ("forged", json!({"query": {"token": forged}})),
        ] {
            let mut opts = way(w);
            opts.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let name = format!("{name}-{w}");
            let line = sio.connect(&name, &base(&node), opts).await;
            assert_eq!(
                (line["type"].clone(), line["message"].clone()),
                (json!("connect_error"), json!("unauthorized")),
                "{name}: {line}"
            );
        }
        // `?token=` is read like `/ws` reads it.
        let mut opts = way(w);
        opts["query"] = json!({"token": token("quinn")});
        let name = format!("query-{w}");
        let line = sio.connect(&name, &base(&node), opts).await;
        assert_eq!(line["type"], "connect", "{line}");
        assert_eq!(sio.event(&name, "hello").await[0]["user"], "quinn");
    }
    let (_, list) = node.get("/connections?kind=socketio").await;
    assert_eq!(list["total"], 2, "only the two admitted ones: {list}");
}

#[tokio::test]
async fn named_events_user_and_connection_sends_over_websocket() {
    named_events_user_and_connection_sends(WAYS[0]).await;
}

#[tokio::test]
async fn named_events_user_and_connection_sends_over_polling_upgraded() {
    named_events_user_and_connection_sends(WAYS[1]).await;
}

async fn named_events_user_and_connection_sends(w: &str) {
    let (node, mut sio) = node_and_driver().await;
    let hello = connected(&mut sio, &node, "a", "ann", way(w)).await;
    sio.emit("a", "subscribe", json!("game")).await;
    let mut ws = Client::connect(&format!("{}?token={}", node.ws_url(), token("wes"))).await;
    ws.subscribe("game").await;

    let (status, body) = node
        .post(
            "/api/v1/publish",
            json!({"channel": "game", "data": {"home": 2}, "event": "score"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Socket.IO: the event itself, `data` its only argument (io.to(room).emit(name, data)).
    assert_eq!(sio.event("a", "score").await, vec![json!({"home": 2})]);
    // /ws: the usual message frame.
    let m = ws.recv().await;
    assert_eq!(
        (m["op"].clone(), m["data"].clone()),
        (json!("message"), json!({"home": 2}))
    );
    // Reserved Socket.IO events are refused.
    let (status, body) = node
        .post(
            "/api/v1/publish",
            json!({"channel": "game", "data": 1, "event": "disconnect"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = node
        .post("/api/v1/users/ann/send", json!({"data": {"to": "ann"}}))
        .await;
    assert_eq!(
        (status, body["delivered"].clone()),
        (200, json!(1)),
        "{body}"
    );
    assert_eq!(
        sio.event("a", "message").await,
        vec![json!({"data": {"to": "ann"}})]
    );
    let id = hello["connection_id"].as_str().unwrap();
    let (status, body) = node
        .post(
            &format!("/api/v1/connections/{id}/send"),
            json!({"data": "direct"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        sio.event("a", "message").await,
        vec![json!({"data": "direct"})]
    );

    // A kick: the `close` event with the /ws close code, then the server's disconnect.
    let (status, _) = node.delete(&format!("/api/v1/connections/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(sio.event("a", "close").await[0]["code"], 4003);
    let gone = sio
        .next_where("the disconnect", |l| l["type"] == "disconnect")
        .await;
    assert_eq!(gone["reason"], "io server disconnect");
}

#[tokio::test]
async fn a_publication_through_node_a_reaches_a_socketio_client_on_node_b() {
    let cluster = Cluster::start(Via::Redis).await;
    let a = cluster.node("node-a", &[]).await;
    let b = cluster.node("node-b", &[]).await;
    let mut sio = SioDriver::start().await;
    // One socket each way in, both on node B.
    for (name, w) in [("b", WAYS[1]), ("bw", WAYS[0])] {
        let line = sio.connect(name, &base(&b), way(w)).await;
        assert_eq!(line["type"], "connect", "{line}");
        let hello = sio.event(name, "hello").await.remove(0);
        assert_eq!(hello["node"], "node-b");
        let ack = sio.emit(name, "subscribe", json!("team:7")).await;
        assert_eq!(ack["ok"], true, "{ack}");
    }

    assert_eq!(a.publish("team:7", json!({"from": "a"})).await, 1);
    for name in ["b", "bw"] {
        let msg = sio.event(name, "message").await;
        assert_eq!(
            (msg[0]["offset"].clone(), msg[0]["data"].clone()),
            (json!(1), json!({"from": "a"})),
            "{name}"
        );
    }
    let (status, _) = a
        .post(
            "/api/v1/publish",
            json!({"channel": "team:7", "data": "named", "event": "news"}),
        )
        .await;
    assert_eq!(status, 200);
    for name in ["b", "bw"] {
        assert_eq!(
            sio.event(name, "news").await,
            vec![json!("named")],
            "{name}"
        );
    }
    // Presence is cluster-wide: node A sees the Socket.IO clients held by node B.
    assert_eq!(a.presence("team:7").await["connections"], 2);
}

#[tokio::test]
async fn publications_missed_while_disconnected_are_recovered_in_order_over_websocket() {
    publications_missed_while_disconnected_are_recovered_in_order(WAYS[0]).await;
}

#[tokio::test]
async fn publications_missed_while_disconnected_are_recovered_in_order_over_polling_upgraded() {
    publications_missed_while_disconnected_are_recovered_in_order(WAYS[1]).await;
}

async fn publications_missed_while_disconnected_are_recovered_in_order(w: &str) {
    let (node, mut sio) = node_and_driver().await;
    connected(&mut sio, &node, "a", "ann", way(w)).await;
    let ack = sio.emit("a", "subscribe", json!("feed")).await;
    let epoch = ack["epoch"].clone();
    node.publish("feed", json!(1)).await;
    let last = sio.event("a", "message").await[0]["offset"].clone();
    assert_eq!(last, 1);

    sio.cmd(json!({"cmd": "disconnect", "name": "a"})).await;
    sio.next_where("a disconnect", |l| l["type"] == "disconnect")
        .await;
    // Missed: one plain publication and one named event.
    node.publish("feed", json!(2)).await;
    let (status, _) = node
        .post(
            "/api/v1/publish",
            json!({"channel": "feed", "data": 3, "event": "tick"}),
        )
        .await;
    assert_eq!(status, 200);

    sio.cmd(json!({"cmd": "reconnect", "name": "a"})).await;
    sio.next_where("the reconnect", |l| l["type"] == "connect")
        .await;
    let ack = sio
        .emit(
            "a",
            "subscribe",
            json!({"channel": "feed", "since": {"offset": last, "epoch": epoch}}),
        )
        .await;
    assert_eq!(
        (
            ack["ok"].clone(),
            ack["recovered"].clone(),
            ack["offset"].clone()
        ),
        (json!(true), json!(true), json!(3)),
        "{ack}"
    );
    node.publish("feed", json!(4)).await;
    // Recovered ones first, in offset order, each as it was published; then live ones.
    assert_eq!(sio.event("a", "message").await[0]["offset"], 2);
    assert_eq!(sio.event("a", "tick").await, vec![json!(3)]);
    assert_eq!(sio.event("a", "message").await[0]["offset"], 4);
    // A position the stream never had is reported, not hidden.
    let ack = sio
        .emit(
            "a",
            "subscribe",
            json!({"channel": "feed", "since": {"offset": 1, "epoch": "gone"}}),
        )
        .await;
    assert_eq!(
        (ack["recovered"].clone(), ack["gap"].clone()),
        (json!(false), json!("epoch_changed"))
    );
}

#[tokio::test]
async fn sigterm_drains_socketio_clients() {
    let (node, mut sio) = node_and_driver().await;
    connect_over(&mut sio, &node, "a", "ann", "websocket").await;
    // socketioxide's: upgraded to WebSocket (a poll cut by the drain is a `transport error`).
    connect_as(&mut sio, &node, "p", "pat", way(WAYS[1])).await;
    sio.next_where("p's upgrade", |l| {
        l["type"] == "upgrade" && l["name"] == "p"
    })
    .await;
    node.0.signal(SIGTERM);
    for name in ["a", "p"] {
        let gone = sio
            .next_where(&format!("the drain's disconnect of {name}"), |l| {
                l["type"] == "disconnect" && l["name"] == name
            })
            .await;
        assert_eq!(gone["reason"], "transport close", "{gone}");
    }
    // Told why first, as `/ws` clients are (1001), and the transport closes without `41`: the
    // client reconnects by itself.
    let close = sio.event("a", "close").await;
    assert_eq!(close[0]["code"], 1001, "{close:?}");
}

/// Regression: socketioxide tells the client it is connected (`40`) before it runs the connect
/// handler, and `socket.io-client` sends what was emitted before that at once; the handlers
/// were registered by the connect handler, so such an event was sometimes dropped (no
/// acknowledgement ever: 14 of 2,000 bench clients). Events emitted before `connect` are all
/// answered now.
#[tokio::test]
async fn events_emitted_before_connect_are_all_answered() {
    let (node, mut sio) = node_and_driver().await;
    let sockets = 100;
    for i in 0..sockets {
        let name = format!("s{i}");
        let opts = as_user("ann", json!({"transports": ["websocket"]}));
        sio.cmd(json!({"cmd": "connect", "name": name, "url": base(&node), "opts": opts}))
            .await;
        // At once, before its `connect`: socket.io-client sends it right after `40`.
        sio.cmd(json!({"cmd": "emit", "name": name, "event": "subscribe", "args": "early", "tag": name}))
            .await;
    }
    for i in 0..sockets {
        let name = format!("s{i}");
        let line = sio
            .next_where(&format!("the ack of {name}'s early subscribe"), |l| {
                l["type"] == "ack" && l["tag"] == name.as_str()
            })
            .await;
        assert_eq!(line["ack"]["ok"], true, "{line}");
    }
}

/// Direct WebSocket clients are pinged by the node's heartbeat sweep (Engine.IO `2`): one
/// that answers (`3`) stays, one that stops answering is closed with the `close` event 4008
/// once the heartbeat timeout passed.
#[tokio::test]
async fn a_websocket_client_that_stops_answering_pings_is_closed_and_one_that_answers_stays() {
    let node = jwt_node_with(&[
        ("WSGATE_HEARTBEAT_INTERVAL_MS", "200"),
        ("WSGATE_HEARTBEAT_TIMEOUT_MS", "1200"),
    ])
    .await;
    let mut sio = SioDriver::start().await;
    connect_over(&mut sio, &node, "mute", "mo", "websocket").await;
    connect_over(&mut sio, &node, "live", "li", "websocket").await;
    let started = std::time::Instant::now();
    sio.cmd(json!({"cmd": "mute", "name": "mute"})).await;

    let close = sio.event("mute", "close").await;
    assert_eq!(
        close,
        vec![json!({"code": 4008, "reason": "heartbeat timeout"})]
    );
    let gone = sio
        .next_where("the mute one's disconnect", |l| {
            l["type"] == "disconnect" && l["name"] == "mute"
        })
        .await;
    assert_eq!(gone["reason"], "io server disconnect");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1000),
        "not before the timeout: {:?}",
        started.elapsed()
    );
    // Six ping intervals later, the one that answers is still there and served.
    assert!(!sio.saw(|l| l["type"] == "disconnect" && l["name"] == "live"));
    let ack = sio.emit("live", "subscribe", json!("x")).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let (_, list) = node.get("/connections?kind=socketio").await;
    assert_eq!(list["total"], 1, "{list}");
}

/// A direct WebSocket client that does not read is a slow consumer: its queue is dropped and
/// it gets the `close` event 4029, then the server's disconnect, while publishing goes on.
#[tokio::test]
async fn a_websocket_client_that_does_not_read_is_closed_as_a_slow_consumer() {
    let node = jwt_node_with(&[
        ("WSGATE_OUTBOX_CAPACITY", "8"),
        ("WSGATE_CLOSE_GRACE_MS", "10000"),
    ])
    .await;
    let proxy = support::proxy::Proxy::start(node.addr()).await;
    let mut sio = SioDriver::start().await;
    let url = format!("http://{}", proxy.addr());
    let line = sio
        .connect("slow", &url, as_user("sam", way("websocket")))
        .await;
    assert_eq!(line["type"], "connect", "{line}");
    let ack = sio.emit("slow", "subscribe", json!("firehose")).await;
    assert_eq!(ack["ok"], true, "{ack}");

    // The client stops reading (the proxy holds its bytes, so the node's socket fills).
    proxy.stall();
    let payload = "x".repeat(16 * 1024);
    let mut closed = false;
    for sent in 1..=4000u32 {
        let (status, body) = node
            .post(
                "/api/v1/publish",
                json!({"channel": "firehose", "data": payload}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        if sent % 25 == 0 {
            let metrics = support::get_text(&node.url("/metrics")).await;
            if support::metric_value(&metrics, "websocket_slow_consumers_total") == Some(1.0) {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the client was never found slow");
    proxy.restore();
    let close = sio.event("slow", "close").await;
    assert_eq!(close[0]["code"], 4029, "{close:?}");
    let gone = sio
        .next_where("the slow one's disconnect", |l| {
            l["type"] == "disconnect" && l["name"] == "slow"
        })
        .await;
    assert_eq!(gone["reason"], "io server disconnect");
}

/// What is not a Socket.IO v5 text packet gets the `error` event `invalid_frame` (and counts
/// as a protocol error, as a bad `/ws` frame does); the connection goes on.
#[tokio::test]
async fn a_malformed_packet_gets_an_invalid_frame_error_event() {
    let (node, mut sio) = node_and_driver().await;
    connect_over(&mut sio, &node, "a", "ann", "websocket").await;
    for raw in [
        "42[",
        "x",
        r#"42[7]"#,
        r#"451-["up",{"_placeholder":true,"num":0}]"#,
    ] {
        sio.cmd(json!({"cmd": "raw", "name": "a", "data": raw}))
            .await;
        let error = sio.event("a", "error").await;
        assert_eq!(
            (error[0]["ok"].clone(), error[0]["error"].clone()),
            (json!(false), json!("invalid_frame")),
            "{raw}: {error:?}"
        );
        assert!(error[0]["message"].is_string(), "{error:?}");
    }
    let ack = sio.emit("a", "subscribe", json!("still")).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let metrics = support::get_text(&node.url("/metrics")).await;
    assert!(
        metrics.contains("invalid_frame"),
        "counted as protocol errors"
    );
}

/// The limits of a `/ws` upgrade refuse a Socket.IO connect with their `connect_error` on
/// both ways in; the per-connection rate limits answer `rate_limited`, then close with 4029.
#[tokio::test]
async fn limits_refuse_and_rate_limits_close_on_both_ways_in() {
    let node = jwt_node_with(&[
        ("WSGATE_MAX_CONNECTIONS_PER_USER", "1"),
        ("WSGATE_CLIENT_MESSAGE_RATE", "1"),
        ("WSGATE_CLIENT_MESSAGE_BURST", "1"),
        ("WSGATE_RATE_LIMIT_STRIKES", "3"),
    ])
    .await;
    let mut sio = SioDriver::start().await;
    for w in WAYS {
        let first = format!("first-{w}");
        let line = sio.connect(&first, &base(&node), as_user(w, way(w))).await;
        assert_eq!(line["type"], "connect", "{line}");
        let line = sio
            .connect(&format!("second-{w}"), &base(&node), as_user(w, way(w)))
            .await;
        assert_eq!(
            (line["type"].clone(), line["message"].clone()),
            (
                json!("connect_error"),
                json!("too many connections for this user")
            ),
            "{w}: {line}"
        );
        // One event per second passes; the next ones are refused, and a streak closes.
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(sio.emit(&first, "subscribe", json!("fast")).await);
        }
        assert_eq!(answers[0]["ok"], true, "{w}: {answers:?}");
        assert_eq!(answers[1]["error"], "rate_limited", "{w}: {answers:?}");
        let tag = format!("last-{w}");
        sio.cmd(
            json!({"cmd": "emit", "name": first, "event": "subscribe", "args": "fast", "tag": tag}),
        )
        .await;
        let close = sio.event(&first, "close").await;
        assert_eq!(close[0]["code"], 4029, "{w}: {close:?}");
        let gone = sio
            .next_where(&format!("{first}'s disconnect"), |l| {
                l["type"] == "disconnect" && l["name"] == first.as_str()
            })
            .await;
        assert_eq!(gone["reason"], "io server disconnect", "{w}");
    }
}

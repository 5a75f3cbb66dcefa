//! Publishing end to end (docs/protocol.md, "Publishing"): idempotency keys, broadcast,
//! batch, `exclude_connection`, and server-side subscriptions (the token's `subs` claim and
//! `POST /api/v1/users/{user}/subscribe`), against the real `wsgate serve` program: one
//! node on the embedded engine, and two nodes on `redis-server`.

use wsgate_tests as support;

use serde_json::{Value, json};
use support::cluster::{Cluster, Node, Via};
use support::socketio::SioDriver;
use support::{Client, Process, hs256_token, in_a_minute};

const SECRET: &str = "publishing-test-secret";

fn token(claims: Value) -> String {
    let mut claims = claims;
    claims["exp"] = json!(in_a_minute());
    hs256_token(SECRET, claims)
}

const JWT: [(&str, &str); 2] = [
    ("WSGATE_AUTH__MODE", "jwt"),
    ("WSGATE_AUTH__JWT_SECRET", SECRET),
];

async fn node(envs: &[(&str, &str)]) -> Node {
    Node(Process::spawn_env(&[], envs).await)
}

async fn keyed(node: &Node, channel: &str, data: Value, key: &str) -> (u16, Value) {
    node.post(
        "/api/v1/publish",
        json!({"channel": channel, "data": data, "idempotency_key": key}),
    )
    .await
}

/// The client got nothing more: its next frame answers this ping.
async fn nothing_more(c: &mut Client) {
    let r = c.request(json!({"op":"ping","ts":"end"})).await;
    assert_eq!(
        (r["op"].clone(), r["ts"].clone()),
        (json!("pong"), json!("end")),
        "{r}"
    );
}

async fn message_offsets(c: &mut Client, n: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let m = c.recv().await;
        assert_eq!(m["op"], "message", "{m}");
        seen.push(m["offset"].as_u64().expect("offset"));
    }
    seen
}

/// Repeat, concurrent repeats, another payload under the key: `nodes` take turns answering.
async fn idempotency_scenario(nodes: &[&Node], sub: &mut Client) {
    let (status, first) = keyed(nodes[0], "orders", json!({"n": 1}), "order-1").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["offset"].clone(), first["replayed"].clone()),
        (json!(1), json!(false))
    );
    let (status, again) = keyed(nodes[nodes.len() - 1], "orders", json!({"n": 1}), "order-1").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (
            again["offset"].clone(),
            again["epoch"].clone(),
            again["replayed"].clone()
        ),
        (json!(1), first["epoch"].clone(), json!(true))
    );
    let (status, conflict) =
        keyed(nodes[nodes.len() - 1], "orders", json!({"n": 2}), "order-1").await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(
        conflict["error"],
        "idempotency_key already used for a different publication on this channel"
    );

    // Sixteen at once, through every node: one publishes, the others answer its offset.
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let url = nodes[i % nodes.len()].url("/api/v1/publish");
            tokio::spawn(async move {
                support::post_json(
                    &url,
                    json!({"channel": "orders", "data": {"n": 2}, "idempotency_key": "order-2"}),
                )
                .await
            })
        })
        .collect();
    let mut fresh = 0;
    for r in racers {
        let (status, body) = support::within("a racer", r).await.unwrap();
        assert_eq!((status, body["offset"].clone()), (200, json!(2)), "{body}");
        fresh += usize::from(body["replayed"] == false);
    }
    assert_eq!(fresh, 1, "exactly one racer published");
    assert_eq!(message_offsets(sub, 2).await, [1, 2]);
    nothing_more(sub).await;
}

/// Waits out the window: the key publishes again once it expired (not before).
async fn expiry_scenario(node: &Node, sub: &mut Client) {
    let (_, first) = keyed(node, "short", json!(1), "k").await;
    assert_eq!(first["replayed"], false, "{first}");
    let (_, again) = keyed(node, "short", json!(1), "k").await;
    assert_eq!(again["replayed"], true, "{again}");
    let later = support::eventually("the key to expire", || async {
        let (_, r) = keyed(node, "short", json!(1), "k").await;
        (r["replayed"] == false).then_some(r)
    })
    .await;
    assert_eq!(later["offset"], 2, "{later}");
    assert_eq!(message_offsets(sub, 2).await, [1, 2]);
    nothing_more(sub).await;
}

#[tokio::test]
async fn idempotency_keys_on_one_node() {
    let n = node(&[]).await;
    let mut sub = Client::subscribed(&n.ws_url(), "orders").await;
    idempotency_scenario(&[&n], &mut sub).await;
    let (status, bad) = keyed(&n, "orders", json!(1), &"k".repeat(129)).await;
    assert_eq!(status, 400, "{bad}");

    let short = node(&[("WSGATE_IDEMPOTENCY_WINDOW_MS", "300")]).await;
    let mut sub = Client::subscribed(&short.ws_url(), "short").await;
    expiry_scenario(&short, &mut sub).await;
}

#[tokio::test]
async fn idempotency_keys_across_two_nodes_on_redis() {
    let cluster = Cluster::start(Via::Redis).await;
    let a = cluster.node("idem-a", &[]).await;
    let b = cluster.node("idem-b", &[]).await;
    let mut sub = Client::subscribed(&b.ws_url(), "orders").await;
    idempotency_scenario(&[&a, &b], &mut sub).await;

    let window = [("WSGATE_IDEMPOTENCY_WINDOW_MS", "300")];
    let c = cluster.node_env("idem-c", &[], &window).await;
    let mut sub = Client::subscribed(&a.ws_url(), "short").await;
    expiry_scenario(&c, &mut sub).await;
}

/// NATS moves the messages; the Redis log checks and records the key with the append.
#[tokio::test]
async fn idempotency_keys_across_two_nodes_on_nats() {
    let cluster = Cluster::start(Via::Nats).await;
    let a = cluster.node("idem-na", &[]).await;
    let b = cluster.node("idem-nb", &[]).await;
    let mut sub = Client::subscribed(&b.ws_url(), "orders").await;
    idempotency_scenario(&[&a, &b], &mut sub).await;
}

#[tokio::test]
async fn exclude_connection_on_one_node_and_across_two_on_redis() {
    let single = node(&[]).await;
    let cluster = Cluster::start(Via::Redis).await;
    let a = cluster.node("excl-a", &[]).await;
    let b = cluster.node("excl-b", &[]).await;
    // (publishing node, node of the excluded client, node of the other client)
    for (via, left, right) in [(&single, &single, &single), (&a, &a, &b)] {
        let mut me = Client::subscribed(&left.ws_url(), "room").await;
        let mut other = Client::subscribed(&right.ws_url(), "room").await;
        let (status, r) = via
            .post(
                "/api/v1/publish",
                json!({"channel":"room","data":"hi","exclude_connection":me.id()}),
            )
            .await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(other.recv().await["data"], "hi");
        nothing_more(&mut me).await;
    }
}

#[tokio::test]
async fn broadcast_answers_each_channel_in_order() {
    let n = node(&[]).await;
    let mut a = Client::subscribed(&n.ws_url(), "a").await;
    let mut b = Client::subscribed(&n.ws_url(), "b").await;
    n.publish("b", json!(0)).await;
    assert_eq!(b.recv().await["offset"], 1);
    let (status, r) = n
        .post(
            "/api/v1/broadcast",
            json!({"channels": ["a", "", "b"], "data": {"x": 1}, "idempotency_key": "bc-1"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "{r}");
    assert_eq!(
        (results[0]["channel"].clone(), results[0]["offset"].clone()),
        (json!("a"), json!(1))
    );
    assert_eq!(results[1]["success"], false, "{r}");
    assert!(
        results[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("channel names"),
        "{r}"
    );
    assert_eq!(
        (results[2]["channel"].clone(), results[2]["offset"].clone()),
        (json!("b"), json!(2))
    );
    assert_eq!(a.recv().await["data"], json!({"x": 1}));
    assert_eq!(b.recv().await["data"], json!({"x": 1}));
    // The key holds per channel: the repeat publishes nowhere.
    let (_, again) = n
        .post(
            "/api/v1/broadcast",
            json!({"channels": ["a", "b"], "data": {"x": 1}, "idempotency_key": "bc-1"}),
        )
        .await;
    assert_eq!(again["results"][0]["replayed"], true, "{again}");
    assert_eq!(again["results"][1]["replayed"], true, "{again}");
    nothing_more(&mut a).await;
    nothing_more(&mut b).await;

    let too_many: Vec<String> = (0..1001).map(|i| format!("c{i}")).collect();
    let (status, r) = n
        .post(
            "/api/v1/broadcast",
            json!({"channels": too_many, "data": 1}),
        )
        .await;
    assert_eq!(status, 400, "{r}");
}

#[tokio::test]
async fn batch_runs_in_order_and_a_failing_command_fails_alone() {
    let n = node(&[]).await;
    let mut c = Client::subscribed(&n.ws_url(), "feed").await;
    let (status, r) = n
        .post(
            "/api/v1/batch",
            json!({"commands": [
                {"op": "publish", "channel": "feed", "data": 1},
                {"op": "send_to_connection", "connection_id": "0123456789abcdef-test-node", "data": 2},
                {"op": "teleport"},
                {"op": "publish", "channel": "feed"},
                {"op": "send_to_user", "user": c.user(), "data": "direct"},
                {"op": "subscribe", "user": c.user(), "channel": "extra"},
                {"op": "broadcast", "channels": ["feed", "extra"], "data": 3},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let results = r["results"].as_array().expect("results");
    let ok: Vec<bool> = results.iter().map(|r| r["success"] == true).collect();
    assert_eq!(ok, [true, false, false, false, true, true, true], "{r}");
    assert_eq!(results[0]["offset"], 1);
    assert_eq!(results[1]["error"], "Connection not found");
    assert!(
        results[2]["error"]
            .as_str()
            .unwrap()
            .contains("unknown command op `teleport`"),
        "{r}"
    );
    assert!(
        results[3]["error"]
            .as_str()
            .unwrap()
            .contains("missing field `data`"),
        "{r}"
    );
    assert_eq!(results[4]["delivered"], 1);
    assert_eq!(results[6]["results"][0]["offset"], 2, "{r}");

    assert_eq!(c.recv().await["offset"], 1);
    assert_eq!(c.recv().await, json!({"op":"message","data":"direct"}));
    // The server-side subscription is made by the connection's task, after the commands
    // before it: the broadcast's publication to `extra` may precede it (the frame's offset
    // says where the client starts), so only its order against `feed` is not asserted.
    let mut frames = [c.recv().await, c.recv().await];
    frames.sort_by_key(|f| f["op"].as_str().unwrap().to_string());
    assert_eq!(
        (frames[0]["op"].clone(), frames[0]["offset"].clone()),
        (json!("message"), json!(2))
    );
    assert_eq!(
        (
            frames[1]["op"].clone(),
            frames[1]["channel"].clone(),
            frames[1]["server"].clone()
        ),
        (json!("subscribed"), json!("extra"), json!(true)),
    );
    let (status, r) = n.post("/api/v1/batch", json!({"commands": []})).await;
    assert_eq!(status, 400, "{r}");
}

#[tokio::test]
async fn the_subs_claim_subscribes_at_connect() {
    let n = node(&JWT).await;
    let t = token(json!({"sub": "ann", "channels": ["chat:*"], "subs": ["news", "alerts:ann"]}));
    let mut c = Client::connect(&format!("{}?token={t}", n.ws_url())).await;
    for channel in ["news", "alerts:ann"] {
        let f = c.recv().await;
        assert_eq!(
            f,
            json!({"op":"subscribed","channel":channel,"offset":0,"epoch":f["epoch"].clone(),"server":true})
        );
    }
    n.publish("news", json!("breaking")).await;
    assert_eq!(c.recv().await["data"], "breaking");
    // `subs` grants nothing else: publishing there still needs the `channels` grant.
    let r = c
        .request(json!({"op":"publish","channel":"news","data":1}))
        .await;
    assert_eq!(
        (r["op"].clone(), r["code"].clone()),
        (json!("error"), json!("forbidden"))
    );
    // An unsubscribe from the client works as for its own subscriptions.
    let r = c
        .request(json!({"op":"unsubscribe","channel":"news"}))
        .await;
    assert_eq!(r["op"], "unsubscribed");
    n.publish("news", json!("gone")).await;
    nothing_more(&mut c).await;
}

#[tokio::test]
async fn users_subscribe_and_unsubscribe_reach_every_connection_on_two_nodes() {
    let cluster = Cluster::start(Via::Redis).await;
    let a = cluster.node_env("subs-a", &[], &JWT).await;
    let b = cluster.node_env("subs-b", &[], &JWT).await;
    let ann = token(json!({"sub": "ann"}));
    let bob = token(json!({"sub": "bob"}));
    let mut on_a = Client::connect(&format!("{}?token={ann}", a.ws_url())).await;
    let mut on_b = Client::connect(&format!("{}?token={ann}", b.ws_url())).await;
    let mut other = Client::connect(&format!("{}?token={bob}", b.ws_url())).await;

    let (status, r) = a
        .post("/api/v1/users/ann/subscribe", json!({"channel": "room"}))
        .await;
    assert_eq!(status, 200, "{r}");
    for c in [&mut on_a, &mut on_b] {
        let f = c.recv().await;
        assert_eq!(
            (
                f["op"].clone(),
                f["channel"].clone(),
                f["offset"].clone(),
                f["server"].clone()
            ),
            (json!("subscribed"), json!("room"), json!(0), json!(true)),
            "{f}"
        );
    }
    assert_eq!(b.publish("room", json!("hi")).await, 1);
    assert_eq!(on_a.recv().await["data"], "hi");
    assert_eq!(on_b.recv().await["data"], "hi");
    // Presence counts them like client subscriptions.
    assert_eq!(a.presence("room").await["users"], json!(["ann"]));

    // Subscribing again changes nothing and tells nothing.
    a.post("/api/v1/users/ann/subscribe", json!({"channel": "room"}))
        .await;
    let (status, r) = b
        .post("/api/v1/users/ann/unsubscribe", json!({"channel": "room"}))
        .await;
    assert_eq!(status, 200, "{r}");
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(
            c.recv().await,
            json!({"op":"unsubscribed","channel":"room","server":true})
        );
    }
    a.publish("room", json!("after")).await;
    for c in [&mut on_a, &mut on_b, &mut other] {
        nothing_more(c).await;
    }
    let (status, r) = a
        .post("/api/v1/users/ann/subscribe", json!({"channel": ""}))
        .await;
    assert_eq!(status, 400, "{r}");
}

/// The channel limit holds for server-side subscriptions: the one over it is an `error`
/// frame naming the channel, and the connection stays.
#[tokio::test]
async fn server_side_subscriptions_keep_the_channel_limit() {
    let n = node(&[("WSGATE_MAX_CHANNELS_PER_CONNECTION", "1")]).await;
    let mut c = Client::subscribed(&n.ws_url(), "mine").await;
    let (status, _) = n
        .post(
            &format!("/api/v1/users/{}/subscribe", c.user()),
            json!({"channel": "more"}),
        )
        .await;
    assert_eq!(status, 200);
    let f = c.recv().await;
    assert_eq!(
        (
            f["op"].clone(),
            f["code"].clone(),
            f["channel"].clone(),
            f["server"].clone()
        ),
        (
            json!("error"),
            json!("too_many_channels"),
            json!("more"),
            json!(true)
        ),
        "{f}"
    );
    nothing_more(&mut c).await;
}

#[tokio::test]
async fn socketio_clients_get_server_side_subscriptions_too() {
    let n = node(&JWT).await;
    let mut sio = SioDriver::start().await;
    let t = token(json!({"sub": "ann"}));
    let line = sio
        .connect(
            "s",
            &n.url(""),
            json!({"transports": ["websocket"], "auth": {"token": t}}),
        )
        .await;
    assert_eq!(line["type"], "connect", "{line}");
    sio.event("s", "hello").await;
    let (status, _) = n
        .post("/api/v1/users/ann/subscribe", json!({"channel": "room"}))
        .await;
    assert_eq!(status, 200);
    let sub = sio.event("s", "subscribed").await;
    assert_eq!(
        (
            sub[0]["channel"].clone(),
            sub[0]["offset"].clone(),
            sub[0]["server"].clone()
        ),
        (json!("room"), json!(0), json!(true)),
        "{sub:?}"
    );
    n.publish("room", json!({"n": 1})).await;
    assert_eq!(sio.event("s", "message").await[0]["data"], json!({"n": 1}));
    n.post("/api/v1/users/ann/unsubscribe", json!({"channel": "room"}))
        .await;
    let unsub = sio.event("s", "unsubscribed").await;
    assert_eq!(unsub[0], json!({"channel": "room", "server": true}));
}

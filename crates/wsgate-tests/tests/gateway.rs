//! The gateway end to end: real server, real sockets, the protocol as clients see it.

use wsgate_tests as support;

use std::collections::HashMap;

use serde_json::json;
use support::*;

#[tokio::test]
async fn hello_subscribe_publish_unsubscribe() {
    let srv = TestServer::start().await;
    let mut c = Client::connect(&srv.ws_url()).await;
    assert_eq!(c.hello["node"], "test-node");
    assert_eq!(c.hello["heartbeat_ms"], 30_000);
    assert!(c.id().ends_with("-test-node"));

    let sub = c.subscribe("team:42").await;
    assert_eq!(sub["channel"], "team:42");
    assert_eq!(sub["offset"], 0);

    let (status, body) = srv
        .post(
            "/api/v1/publish",
            json!({"channel":"team:42","data":{"text":"hi"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["offset"], 1);
    assert_eq!(body["delivered"], 1);
    let m = c.recv().await;
    assert_eq!(
        m,
        json!({"op":"message","channel":"team:42","offset":1,"data":{"text":"hi"}})
    );

    let r = c
        .request(json!({"op":"unsubscribe","channel":"team:42","id":"u1"}))
        .await;
    assert_eq!(
        r,
        json!({"op":"unsubscribed","id":"u1","channel":"team:42"})
    );
    let (_, body) = srv
        .post("/api/v1/publish", json!({"channel":"team:42","data":2}))
        .await;
    assert_eq!(body["delivered"], 0);
    // The next frame is the pong, not a message published after unsubscribing.
    let pong = c.request(json!({"op":"ping","ts":1234})).await;
    assert_eq!(pong, json!({"op":"pong","ts":1234}));
    srv.shutdown().await;
}

#[tokio::test]
async fn clients_publish_where_policy_allows() {
    let srv = TestServer::start().await;
    let mut a = Client::connect(&srv.ws_url()).await;
    let mut b = Client::subscribed(&srv.ws_url(), "room").await;
    // Default policy: only subscribers publish.
    let r = a
        .request(json!({"op":"publish","channel":"room","data":1}))
        .await;
    assert_eq!(r["code"], "forbidden");
    a.subscribe("room").await;
    // The publisher is a subscriber too: its own message is written into its socket while the
    // publication fans out, so it arrives just before the answer.
    let own = a
        .request(json!({"op":"publish","channel":"room","data":{"m":"x"}}))
        .await;
    assert_eq!(
        own,
        json!({"op":"message","channel":"room","offset":1,"data":{"m":"x"}})
    );
    let ack = a.recv().await;
    assert_eq!(ack, json!({"op":"published","channel":"room","offset":1}));
    assert_eq!(b.recv().await["data"], json!({"m":"x"}));
    srv.shutdown().await;
}

#[tokio::test]
async fn per_channel_order_holds_under_concurrent_publishers() {
    let srv = TestServer::start().await;
    let mut subs = Vec::new();
    for _ in 0..3 {
        let c = Client::subscribed(&srv.ws_url(), "orders").await;
        subs.push(c);
    }
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 50;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let url = srv.http("/api/v1/publish");
        tasks.push(tokio::spawn(publish_numbered(url, "orders", p, EACH)));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for c in &mut subs {
        let mut last_per_publisher = HashMap::new();
        for expected in 1..=PUBLISHERS * EACH {
            let m = c.recv().await;
            assert_eq!(
                m["offset"], expected,
                "offsets arrive in order without holes"
            );
            let p = m["data"]["p"].as_u64().unwrap();
            let i = m["data"]["i"].as_u64().unwrap();
            let prev = last_per_publisher.insert(p, i);
            assert!(
                prev.is_none_or(|prev| prev + 1 == i),
                "publisher {p} order kept"
            );
        }
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn exclude_user_skips_only_that_user() {
    let srv = TestServer::start().await;
    let mut a = Client::subscribed(&srv.ws_url(), "team:1").await;
    let mut b = Client::subscribed(&srv.ws_url(), "team:1").await;
    let (_, body) = srv
        .post(
            "/api/v1/publish",
            json!({"channel":"team:1","data":"typing","exclude_user":a.user()}),
        )
        .await;
    assert_eq!(body["delivered"], 1);
    assert_eq!(b.recv().await["data"], "typing");
    // a's next frame is its pong: the excluded message never reached it.
    assert_eq!(a.request(json!({"op":"ping"})).await["op"], "pong");
    srv.shutdown().await;
}

const SECRET: &str = "test-secret-do-not-log";

async fn jwt_server() -> TestServer {
    TestServer::with(|c| tune::jwt(c, SECRET)).await
}

#[tokio::test]
async fn user_send_reaches_every_connection_of_the_user() {
    let srv = jwt_server().await;
    let alice = hs256_token(SECRET, json!({"sub":"alice","exp":in_a_minute()}));
    let bob = hs256_token(SECRET, json!({"sub":"bob","exp":in_a_minute()}));
    let mut a1 = Client::connect(&format!("{}?token={alice}", srv.ws_url())).await;
    let mut a2 = Client::connect(&format!("{}?token={alice}", srv.ws_url())).await;
    let mut b = Client::connect(&format!("{}?token={bob}", srv.ws_url())).await;
    assert_eq!(a1.user(), "alice");
    let (status, body) = srv
        .post("/api/v1/users/alice/send", json!({"data":{"n":1}}))
        .await;
    assert_eq!((status, body["delivered"].clone()), (200, json!(2)));
    assert_eq!(a1.recv().await, json!({"op":"message","data":{"n":1}}));
    assert_eq!(a2.recv().await, json!({"op":"message","data":{"n":1}}));
    assert_eq!(b.request(json!({"op":"ping"})).await["op"], "pong");

    let (status, body) = srv
        .post(
            &format!("/api/v1/connections/{}/send", b.id()),
            json!({"data":"direct"}),
        )
        .await;
    assert_eq!((status, body["success"].clone()), (200, json!(true)));
    assert_eq!(b.recv().await["data"], "direct");
    srv.shutdown().await;
}

#[tokio::test]
async fn tokens_are_checked_and_claims_restrict_channels() {
    let srv = jwt_server().await;
    let url = srv.ws_url();
    for (token, why) in [
        (String::new(), "missing token"),
        ("garbage".to_string(), "invalid token"),
        (
            hs256_token(SECRET, json!({"sub":"u","exp":1000})),
            "token expired",
        ),
        (
            hs256_token("wrong", json!({"sub":"u","exp":in_a_minute()})),
            "invalid token",
        ),
    ] {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?token={token}"))
            .await
            .unwrap();
        let msg = within("auth close", futures_util::StreamExt::next(&mut ws))
            .await
            .unwrap()
            .unwrap();
        match msg {
            tokio_tungstenite::tungstenite::Message::Close(Some(f)) => {
                assert_eq!(u16::from(f.code), 4001, "{why}");
                assert!(f.reason.as_str().starts_with(why), "{why}: {}", f.reason);
            }
            other => panic!("{why}: expected close 4001, got {other:?}"),
        }
    }
    srv.await_metric(
        "websocket_connection_rejections_total{reason=\"auth_expired\"}",
        1.0,
    )
    .await;

    let limited = hs256_token(
        SECRET,
        json!({"sub":"u","exp":in_a_minute(),"channels":["team:*"]}),
    );
    let mut c = Client::subscribed(&format!("{url}?token={limited}"), "team:7").await;
    let r = c.request(json!({"op":"subscribe","channel":"admin"})).await;
    assert_eq!(r["code"], "forbidden");

    // The bearer header works as well as the query parameter.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {limited}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let hello = within("hello", futures_util::StreamExt::next(&mut ws))
        .await
        .unwrap()
        .unwrap();
    assert!(hello.to_text().unwrap().contains("\"user\":\"u\""));
    srv.shutdown().await;
}

#[tokio::test]
async fn presence_is_answered_by_api_and_protocol() {
    let srv = TestServer::start().await;
    let mut a = Client::subscribed(&srv.ws_url(), "lobby").await;
    let b = Client::subscribed(&srv.ws_url(), "lobby").await;
    let presence = "/api/v1/channels/lobby/presence";
    let (status, p) = srv.get(presence).await;
    assert_eq!(status, 200);
    assert_eq!(p["connections"], 2);
    let mut users = vec![a.user(), b.user()];
    users.sort();
    assert_eq!(p["users"], json!(users));
    let r = a.request(json!({"op":"presence","channel":"lobby"})).await;
    assert_eq!(r["connections"], 2);
    drop(b);
    // b's disconnect removes it from presence.
    srv.await_json(presence, "connections", json!(1)).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_connection_stays() {
    let srv = TestServer::with(|c| c.gateway.max_protocol_errors = 5).await;
    let mut c = Client::connect(&srv.ws_url()).await;
    for (frame, code) in [
        ("{not json", "invalid_json"),
        (r#"{"op":"fly"}"#, "unknown_op"),
        (r#"{"op":"subscribe"}"#, "invalid_frame"),
        (r#"{"channel":"x"}"#, "invalid_frame"),
    ] {
        c.send_text(frame).await;
        let e = c.recv().await;
        assert_eq!(e["op"], "error", "{frame}");
        assert_eq!(e["code"], code, "{frame}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Still up, and a good frame resets the abuse count.
    assert_eq!(c.request(json!({"op":"ping"})).await["op"], "pong");
    let (_, info) = srv.get(&format!("/connections/{}", c.id())).await;
    assert_eq!(info["connection"]["errors"], 4);
    // Five bad frames in a row: closed with 1008.
    for _ in 0..5 {
        c.send_text("nope").await;
    }
    let (code, texts) = c.closed().await;
    assert_eq!(code, 1008);
    assert_eq!(texts.len(), 4, "four error frames, then the close");
    srv.await_metric(
        "websocket_disconnections_total{reason=\"protocol_abuse\"}",
        1.0,
    )
    .await;
    srv.shutdown().await;
}

#[tokio::test]
async fn oversized_frames_close_with_1009() {
    let srv = TestServer::with(|c| c.ws.max_message_size = 1024).await;
    let mut c = Client::connect(&srv.ws_url()).await;
    let mut ok = Client::connect(&srv.ws_url()).await;
    let big = format!(r#"{{"op":"ping","ts":"{}"}}"#, "x".repeat(2000));
    c.send_text(&big).await;
    let (code, _) = c.closed().await;
    assert_eq!(code, 1009);
    // Others are unaffected.
    assert_eq!(ok.request(json!({"op":"ping"})).await["op"], "pong");
    srv.shutdown().await;
}

#[tokio::test]
async fn unknown_connection_ids_answer_connection_not_found() {
    let srv = TestServer::start().await;
    let id = "0123456789abcdef-test-node";
    let (s, b) = srv
        .post(&format!("/api/v1/connections/{id}/send"), json!({"data":1}))
        .await;
    assert_eq!(
        (s, b),
        (404, json!({"success":false,"error":"Connection not found"}))
    );
    let (s, b) = srv.delete(&format!("/api/v1/connections/{id}")).await;
    assert_eq!(
        (s, b),
        (404, json!({"success":false,"error":"Connection not found"}))
    );
    let (s, b) = srv.get(&format!("/connections/{id}")).await;
    assert_eq!(
        (s, b),
        (404, json!({"success":false,"error":"Connection not found"}))
    );
    let (s, b) = srv
        .post("/api/v1/connections/garbage/send", json!({"data":1}))
        .await;
    assert_eq!(
        (s, b["error"].clone()),
        (404, json!("Connection not found"))
    );
    // Bad bodies are JSON errors too.
    let (s, b) = srv.post("/api/v1/publish", json!({"channel":"a"})).await;
    assert_eq!(s, 422);
    assert_eq!(b["success"], false);
    assert!(b["error"].as_str().unwrap().contains("data"), "{b}");
    srv.shutdown().await;
}

#[tokio::test]
async fn kicked_connections_close_with_reason() {
    let srv = TestServer::start().await;
    let mut c = Client::connect(&srv.ws_url()).await;
    let (s, _) = srv
        .delete(&format!(
            "/api/v1/connections/{}?reason=maintenance",
            c.id()
        ))
        .await;
    assert_eq!(s, 200);
    let (code, _) = c.closed().await;
    assert_eq!(code, 4003);
    srv.shutdown().await;
}

#[tokio::test]
async fn connections_listing_and_debug_view() {
    let srv = TestServer::start().await;
    let mut a = Client::connect(&srv.ws_url()).await;
    let _b = Client::connect(&srv.ws_url()).await;
    a.subscribe("x").await;
    let (_, all) = srv.get("/connections").await;
    assert_eq!(all["total"], 2);
    let (_, only) = srv.get("/connections?channel=x").await;
    assert_eq!(only["total"], 1);
    assert_eq!(only["connections"][0]["id"], a.id());
    let (_, page) = srv.get("/connections?limit=1").await;
    assert_eq!(page["connections"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_offset"], 1);
    let (_, by_user) = srv.get(&format!("/connections?user={}", a.user())).await;
    assert_eq!(by_user["total"], 1);
    let (_, upstream) = srv.get("/connections?kind=upstream").await;
    assert_eq!(upstream["total"], 0);
    let (_, one) = srv.get(&format!("/connections/{}", a.id())).await;
    let info = &one["connection"];
    for field in [
        "id",
        "kind",
        "user",
        "channels",
        "connected_at_ms",
        "uptime_ms",
        "last_heartbeat_ms_ago",
        "messages_sent",
        "messages_received",
        "errors",
        "state",
        "node",
    ] {
        assert!(!info[field].is_null(), "debug view has {field}: {info}");
    }
    assert_eq!(info["channels"], json!(["x"]));
    assert_eq!(info["messages_received"], 1);
    assert_eq!(info["state"], "open");
    srv.shutdown().await;
}

#[tokio::test]
async fn operations_endpoints() {
    let srv = TestServer::start().await;
    let (s, h) = srv.get("/health").await;
    assert_eq!((s, h["status"].clone()), (200, json!("ok")));
    let (s, r) = srv.get("/ready").await;
    assert_eq!((s, r["ready"].clone()), (200, json!(true)));
    let (_, v) = srv.get("/version").await;
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["library_version"], wsgate_client::VERSION);
    assert_eq!(v["instance_id"], v["node"]);
    assert!(v["git_commit"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(v["build_time"].as_str().is_some_and(|c| !c.is_empty()));
    let _c = Client::connect(&srv.ws_url()).await;
    let m = srv.metrics().await;
    for series in [
        "websocket_connections_total",
        "websocket_heartbeat_failures_total",
        "websocket_active_connections",
        "websocket_messages_received_total",
        "websocket_messages_sent_total",
        "websocket_delivery_latency_seconds_bucket",
    ] {
        assert!(m.contains(series), "/metrics exports {series}");
    }
    assert_eq!(metric_value(&m, "websocket_active_connections"), Some(1.0));
    srv.shutdown().await;
}

#[tokio::test]
async fn api_key_guards_the_control_api_when_set() {
    let srv = TestServer::with(|c| tune::api_key(c, "k3y")).await;
    let (s, b) = srv
        .post("/api/v1/publish", json!({"channel":"a","data":1}))
        .await;
    assert_eq!((s, b["success"].clone()), (401, json!(false)));
    let r = http()
        .post(srv.http("/api/v1/publish"))
        .bearer_auth("k3y")
        .json(&json!({"channel":"a","data":1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Probes stay open.
    assert_eq!(srv.get("/health").await.0, 200);
    srv.shutdown().await;
}

#[tokio::test]
async fn recovery_with_since_fills_gaps_or_says_why_not() {
    let srv = TestServer::with(|c| c.cluster.history_size = 3).await;
    let mut c = Client::connect(&srv.ws_url()).await;
    let sub = c.subscribe("feed").await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    for i in 1..=5 {
        srv.post("/api/v1/publish", json!({"channel":"feed","data":i}))
            .await;
    }
    for i in 1..=5 {
        assert_eq!(c.recv().await["offset"], i);
    }
    drop(c);
    let mut c = Client::connect(&srv.ws_url()).await;
    let r = c
        .request(json!({"op":"subscribe","channel":"feed","since":{"offset":3,"epoch":epoch}}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["offset"], 5);
    assert_eq!(c.recv().await["offset"], 4);
    assert_eq!(c.recv().await["offset"], 5);
    srv.post("/api/v1/publish", json!({"channel":"feed","data":6}))
        .await;
    assert_eq!(
        c.recv().await["offset"],
        6,
        "live continues with no duplicate"
    );

    let mut d = Client::connect(&srv.ws_url()).await;
    let r = d
        .request(json!({"op":"subscribe","channel":"feed","since":{"offset":1,"epoch":epoch}}))
        .await;
    assert_eq!(
        (r["recovered"].clone(), r["gap"].clone()),
        (json!(false), json!("history_truncated"))
    );
    let mut e = Client::connect(&srv.ws_url()).await;
    let r = e
        .request(json!({"op":"subscribe","channel":"feed","since":{"offset":1,"epoch":"gone"}}))
        .await;
    assert_eq!(
        (r["recovered"].clone(), r["gap"].clone()),
        (json!(false), json!("epoch_changed"))
    );
    srv.shutdown().await;
}

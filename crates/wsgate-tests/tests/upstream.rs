//! The upstream manager end to end, through the HTTP API: a real wsgate node in process,
//! the `wsgate-client` test-support server as the remote upstream, real sockets.

use wsgate_tests as support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use support::*;
use wsgate_client::Message;
use wsgate_client::test_support::{
    Resources, ServerLog, TestServer as Upstream, TestServerConfig as UpstreamConfig,
};

/// Millisecond backoff without jitter, retrying forever.
/// A scripted upstream server with `config`, and a node (in this process) to connect to it.
async fn upstream_and_node(config: UpstreamConfig) -> (Upstream, TestServer) {
    (Upstream::start(config).await, TestServer::start().await)
}

/// [`upstream_and_node`] with an upstream that refuses handshakes until told otherwise.
/// A node with an upstream connection (asked for with `body(url)`) to a remote that refuses:
/// (the remote, the node, the connection id, the connect answer).
async fn refused_connection(
    body: impl FnOnce(String) -> Value,
) -> (Upstream, TestServer, String, Value) {
    let (up, srv) = upstream_and_node(UpstreamConfig::default()).await;
    up.set_refusing(true);
    let (id, r) = connect(&srv, body(up.url())).await;
    (up, srv, id, r)
}

fn fast_reconnect() -> Value {
    json!({"initial_ms": 2, "max_ms": 20, "max_attempts": null, "jitter": 0.0})
}

async fn connect(srv: &TestServer, body: Value) -> (String, Value) {
    let (status, r) = srv.post("/api/v1/upstreams", body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["success"], true, "{r}");
    (r["connection_id"].as_str().unwrap().to_string(), r)
}

/// The node's stored record of upstream connection `id` (`None` once it is removed).
async fn record(srv: &TestServer, id: &str) -> Option<wsgate_core::seams::UpstreamRecord> {
    srv.node
        .upstreams()
        .records()
        .upstream_get(id)
        .await
        .unwrap()
}

async fn view(srv: &TestServer, id: &str) -> Value {
    let (status, r) = srv.get(&format!("/connections/{id}")).await;
    assert_eq!(status, 200, "{r}");
    r["connection"].clone()
}

/// Polls `/connections/{id}` until `pred` holds (bounded by `within`).
async fn await_view(
    srv: &TestServer,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let pred = &pred;
    eventually(what, || async move {
        let v = view(srv, id).await;
        pred(&v).then_some(v)
    })
    .await
}

async fn upstream_log(up: &Upstream, pred: impl FnMut(&ServerLog) -> bool) -> ServerLog {
    up.wait_for(WAIT, pred).await.unwrap()
}

fn metric(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[tokio::test]
async fn reconnect_runs_auth_then_replays_subscriptions() {
    let (up, srv) = upstream_and_node(UpstreamConfig::default().require_auth("s3cr3t")).await;
    let auth = json!({"op": "auth", "token": "s3cr3t"});
    let (id, r) = connect(
        &srv,
        json!({
            "url": format!("{}?apikey=q5ecret", up.url()),
            "headers": {"x-api-key": "h5ecret"},
            "auth": {"messages": [auth], "expect": {"op": "auth_ok"}},
            "subscriptions": [
                {"key": "trades", "message": {"op": "subscribe", "ch": "trades"}},
                {"message": "SUB book"}
            ],
            "reconnect": fast_reconnect(),
        }),
    )
    .await;
    assert_eq!(r["state"], "connected");
    assert!(id.ends_with("-test-node"), "{id}");
    upstream_log(&up, |l| l.count_on(1) == 3).await;

    // A subscription added through the API is sent now and tracked.
    let r = srv.upstream_call(&id, "subscriptions", json!({"add": [{"key": "ticker", "message": "SUB ticker", "unsubscribe": "UNSUB ticker"}]}), 200).await;
    assert_eq!(r["subscriptions"], json!(["trades", "SUB book", "ticker"]));
    upstream_log(&up, |l| l.count_on(1) == 4).await;

    up.drop_all();
    let log = upstream_log(&up, |l| l.handshakes == 2 && l.count_on(2) == 4).await;
    assert_eq!(
        log.texts_on(2),
        vec![
            auth.to_string(),
            json!({"op": "subscribe", "ch": "trades"}).to_string(),
            "SUB book".to_string(),
            "SUB ticker".to_string(),
        ],
        "auth first, then every subscription in order"
    );
    assert_eq!(log.max_active, 1, "one connection at a time");
    assert_eq!(log.auth_failures, 0);
    assert!(log.header("x-api-key").is_some_and(|v| v == "h5ecret"));

    let v = await_view(&srv, &id, "reconnected view", |v| {
        v["reconnects"].as_u64() >= Some(1) && v["state"] == "connected"
    })
    .await;
    assert_eq!(v["kind"], "upstream");
    assert_eq!(v["node"], "test-node");
    assert_eq!(v["subscriptions"], json!(["trades", "SUB book", "ticker"]));
    assert_eq!(v["headers"], json!(["x-api-key"]));
    assert!(v["connected_since"].as_u64().is_some());
    assert!(v["messages_sent"].as_u64() >= Some(8), "{v}");
    assert!(v["bytes_received"].as_u64() > Some(0), "{v}");
    let text = v.to_string();
    for secret in ["s3cr3t", "h5ecret", "q5ecret", "apikey"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    // The listing shows it next to gateway connections, and `kind` filters.
    let (_, all) = srv.get("/connections").await;
    assert!(
        all["connections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id)
    );
    let (_, gw) = srv.get("/connections?kind=gateway").await;
    assert_eq!(gw["total"], 0);
    let (_, ups) = srv.get("/connections?kind=upstream").await;
    assert_eq!(ups["total"], 1);

    // The record follows the subscriptions (what cluster mode re-establishes from).
    let rec = record(&srv, &id).await.unwrap();
    let keys: Vec<&str> = rec
        .spec
        .subscriptions
        .iter()
        .map(|s| s.key.as_str())
        .collect();
    assert_eq!(keys, ["trades", "SUB book", "ticker"]);
    assert_eq!(rec.owner, "test-node");

    // Removing sends the unsubscribe message and drops it from the next replay.
    srv.upstream_call(&id, "subscriptions", json!({"remove": ["ticker"]}), 200)
        .await;
    upstream_log(&up, |l| {
        l.texts_on(2).last().is_some_and(|t| t == "UNSUB ticker")
    })
    .await;
    up.drop_all();
    let log = upstream_log(&up, |l| l.handshakes == 3 && l.count_on(3) == 3).await;
    assert_eq!(log.texts_on(3)[2], "SUB book");

    let m = srv.metrics().await;
    assert!(
        metric(&m, "wsgate_upstream_reconnections_total") >= 2.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "wsgate_upstream_connections{state=\"connected\"}"),
        1.0
    );

    let (status, _) = srv.delete(&format!("/api/v1/upstreams/{id}")).await;
    assert_eq!(status, 200);
    assert!(record(&srv, &id).await.is_none());
    let m = srv.metrics().await;
    assert_eq!(
        metric(&m, "wsgate_upstream_connections{state=\"connected\"}"),
        0.0
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn gives_up_after_max_attempts_and_shows_an_open_breaker() {
    let (up, srv, id, _) = refused_connection(|url| {
        json!({
            "url": url,
            "reconnect": {"initial_ms": 1, "max_ms": 4, "max_attempts": 3, "jitter": 0.0},
            "breaker": {"failure_threshold": 0, "cooldown_ms": 0},
        })
    })
    .await;
    let v = await_view(&srv, &id, "state failed", |v| v["state"] == "failed").await;
    assert!(
        v["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("gave up after 3")),
        "{v}"
    );
    assert_eq!(up.log().refused, 4, "the first attempt and 3 retries");
    assert_eq!(v["total_attempts"], 4);
    let m = srv.metrics().await;
    assert_eq!(metric(&m, "wsgate_upstream_give_ups_total"), 1.0);
    assert_eq!(
        metric(&m, "wsgate_upstream_connections{state=\"failed\"}"),
        1.0
    );
    // A failed connection refuses sends with seed 000's string.
    let (status, r) = srv
        .upstream_post(&id, "send", json!({"message": "x"}))
        .await;
    assert_eq!(
        (status, r["error"].as_str()),
        (409, Some("WebSocket is not connected"))
    );

    // With a breaker: two failures open it for a long cooldown.
    let (id2, _) = connect(
        &srv,
        json!({
            "url": up.url(),
            "wait_ms": 0,
            "reconnect": fast_reconnect(),
            "breaker": {"failure_threshold": 2, "cooldown_ms": 60000},
        }),
    )
    .await;
    let v = await_view(&srv, &id2, "circuit_open", |v| v["state"] == "circuit_open").await;
    assert_eq!(v["breaker"], "open");
    let m = srv.metrics().await;
    assert_eq!(metric(&m, "wsgate_upstream_breaker_opens_total"), 1.0);
    assert_eq!(
        metric(&m, "wsgate_upstream_connections{state=\"circuit_open\"}"),
        1.0
    );
    let refused = up.log().refused;
    // Disconnect ends the cooldown wait at once; no further attempt is made.
    let (status, _) = srv.delete(&format!("/api/v1/upstreams/{id2}")).await;
    assert_eq!(status, 200);
    assert_eq!(up.log().refused, refused);
    let m = srv.metrics().await;
    assert_eq!(
        metric(&m, "wsgate_upstream_connections{state=\"circuit_open\"}"),
        0.0
    );
    srv.shutdown().await;
}

async fn send_async(srv: &TestServer, id: &str, body: Value) -> (u16, Value) {
    srv.upstream_post(id, "send-async", body).await
}

#[tokio::test]
async fn send_async_json_field_matches_replies_and_drops_late_ones() {
    let (up, srv) = upstream_and_node(UpstreamConfig::default()).await;
    up.set_noise(3);
    let (id, _) = connect(
        &srv,
        json!({"url": up.url(), "correlation": {"mode": "json-field", "field": "id"}, "publish_topic": "noise"}),
    )
    .await;

    // Two requests in flight at once, each reply preceded by unrelated frames.
    let (a, b) = tokio::join!(
        send_async(
            &srv,
            &id,
            json!({"message": {"op": "request", "id": "r1", "n": 1}, "timeout_ms": 5000})
        ),
        send_async(
            &srv,
            &id,
            json!({"message": {"op": "request", "id": "r2", "n": 2, "delay_ms": 30}, "timeout_ms": 5000})
        ),
    );
    assert_eq!(a.0, 200, "{}", a.1);
    assert_eq!(a.1["response"]["id"], "r1");
    assert_eq!(a.1["response"]["echo"]["n"], 1);
    assert_eq!(b.1["response"]["id"], "r2");
    assert_eq!(b.1["response"]["echo"]["n"], 2);

    // No reply in time: 504 with seed 000's string.
    let (status, r) = send_async(
        &srv,
        &id,
        json!({"message": {"op": "request", "id": "late", "delay_ms": 400}, "timeout_ms": 100}),
    )
    .await;
    assert_eq!(
        (status, r["error"].as_str()),
        (504, Some("Request timeout")),
        "{r}"
    );
    // The next request is in flight when the late reply arrives; it gets its own reply.
    let (status, r) = send_async(
        &srv,
        &id,
        json!({"message": {"op": "request", "id": "next", "delay_ms": 800}, "timeout_ms": 5000}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["response"]["id"], "next");
    let v = view(&srv, &id).await;
    assert_eq!(v["late_replies"], 1, "{v}");
    let m = srv.metrics().await;
    assert_eq!(metric(&m, "wsgate_upstream_request_timeouts_total"), 1.0);
    // Replies go to their caller only: only noise frames were published.
    // 4 replies, each after 3 noise frames: exactly the 12 noise frames are published.
    let v = await_view(&srv, &id, "noise published", |v| {
        v["published"].as_u64() >= Some(12)
    })
    .await;
    assert_eq!(v["published"], 12, "{v}");
    let m = srv.metrics().await;
    assert_eq!(metric(&m, "wsgate_upstream_messages_received_total"), 12.0);

    // Bad input is 400.
    let (status, _) =
        send_async(&srv, &id, json!({"message": "not json", "timeout_ms": 100})).await;
    assert_eq!(status, 400);
    let (status, _) = send_async(&srv, &id, json!({"timeout_ms": 100})).await;
    assert_eq!(status, 400);
    srv.shutdown().await;
}

#[tokio::test]
async fn send_async_uuid_prefix_among_interleaved_traffic() {
    let (up, srv) = upstream_and_node(UpstreamConfig::default().uuid_replies()).await;
    up.set_noise(2);
    let (id, _) = connect(
        &srv,
        json!({"url": up.url(), "correlation": {"mode": "uuid-prefix"}}),
    )
    .await;

    let (a, b, c) = tokio::join!(
        send_async(
            &srv,
            &id,
            json!({"data_base64": B64.encode(b"ping-1"), "timeout_ms": 5000})
        ),
        send_async(
            &srv,
            &id,
            json!({"data_base64": B64.encode(b"ping-2"), "timeout_ms": 5000})
        ),
        send_async(&srv, &id, json!({"message": "hello", "timeout_ms": 5000})),
    );
    let decode = |r: &Value| B64.decode(r["response_base64"].as_str().unwrap()).unwrap();
    assert_eq!(decode(&a.1), b"reply:ping-1");
    assert_eq!(decode(&b.1), b"reply:ping-2");
    assert_eq!(decode(&c.1), b"reply:hello");
    // The server saw 16-byte prefixed frames.
    let log = up.log();
    assert!(log.received.iter().all(|r| r.msg.len() >= 16 + 5));
    srv.shutdown().await;
}

#[tokio::test]
async fn publish_reaches_gateway_subscribers_until_stopped() {
    let (up, srv) = upstream_and_node(UpstreamConfig::default()).await;
    let (id, _) = connect(&srv, json!({"url": up.url()})).await;
    let mut browser = Client::subscribed(&srv.ws_url(), "topic:feed").await;

    let r = srv
        .upstream_call(&id, "publish/start", json!({"topic": "feed"}), 200)
        .await;
    assert_eq!(r["channel"], "topic:feed");
    up.broadcast(Message::from(r#"{"px":1.5}"#));
    up.broadcast(Message::from("plain text"));
    up.broadcast(Message::binary(vec![1u8, 2, 3]));
    for (offset, data) in [
        (1, json!({"px": 1.5})),
        (2, json!("plain text")),
        (3, json!({"binary_base64": "AQID"})),
    ] {
        let m = browser.recv().await;
        assert_eq!(
            m,
            json!({"op": "message", "channel": "topic:feed", "offset": offset, "data": data})
        );
    }
    assert_eq!(view(&srv, &id).await["publish_topic"], "feed");
    let rec = record(&srv, &id).await.unwrap();
    assert_eq!(rec.spec.publish_topic.as_deref(), Some("feed"));

    srv.upstream_call(&id, "publish/stop", json!({}), 200).await;
    up.broadcast(Message::from(r#"{"px":2}"#));
    // The pump has handled the message (received counter) before the sentinel goes out.
    srv.await_metric("wsgate_upstream_messages_received_total", 4.0)
        .await;
    let (_, r) = srv
        .post(
            "/api/v1/publish",
            json!({"channel": "topic:feed", "data": "sentinel"}),
        )
        .await;
    assert_eq!(
        r["offset"], 4,
        "nothing from upstream was published after stop"
    );
    let m = browser.recv().await;
    assert_eq!(m["data"], "sentinel", "{m}");
    assert_eq!(view(&srv, &id).await["publish_topic"], Value::Null);
    let rec = record(&srv, &id).await.unwrap();
    assert_eq!(rec.spec.publish_topic, None);
    let m = srv.metrics().await;
    assert_eq!(metric(&m, "wsgate_upstream_published_total"), 3.0);
    // Graceful shutdown closes the upstream with a close frame, after the gateway drain.
    srv.shutdown().await;
    let log = upstream_log(&up, |l| l.active == 0).await;
    assert_eq!(log.client_closes, 1, "closed cleanly, not dropped");
}

#[tokio::test]
async fn paths_beside_the_upstream_routes_are_not_found() {
    let srv = TestServer::start().await;
    for path in [
        "/api/v1/upstreams/",
        "/api/v1/upstreamsx",
        "/api/v1/upstreams/x/nope",
        "/api/v1/upstreams/x/send/",
    ] {
        let (status, r) = srv.get(path).await;
        assert_eq!(status, 404, "{path}: {r}");
        assert_eq!(r, json!({"success": false, "error": "Not found"}), "{path}");
    }
    let wrong_method = http()
        .get(srv.http("/api/v1/upstreams/x/send"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405, "GET on a POST route");
}

#[tokio::test]
async fn seed_000_error_strings_over_http() {
    let srv = TestServer::start().await;
    let ghost = "0123456789abcdef-test-node";
    let routes: Vec<(&str, String, Value)> = vec![
        (
            "POST",
            format!("/api/v1/upstreams/{ghost}/send"),
            json!({"message": "x"}),
        ),
        (
            "POST",
            format!("/api/v1/upstreams/{ghost}/send-raw"),
            json!({"data_base64": "AA=="}),
        ),
        (
            "POST",
            format!("/api/v1/upstreams/{ghost}/send-async"),
            json!({"message": "x", "timeout_ms": 100}),
        ),
        (
            "POST",
            format!("/api/v1/upstreams/{ghost}/subscriptions"),
            json!({"remove": ["a"]}),
        ),
        (
            "POST",
            format!("/api/v1/upstreams/{ghost}/publish/start"),
            json!({"topic": "t"}),
        ),
        (
            "POST",
            format!("/api/v1/upstreams/{ghost}/publish/stop"),
            json!({}),
        ),
        ("DELETE", format!("/api/v1/upstreams/{ghost}"), Value::Null),
        ("GET", format!("/api/v1/upstreams/{ghost}"), Value::Null),
        ("GET", format!("/connections/{ghost}"), Value::Null),
    ];
    for (method, path, body) in &routes {
        let (status, r) = match *method {
            "POST" => srv.post(path, body.clone()).await,
            "DELETE" => srv.delete(path).await,
            _ => srv.get(path).await,
        };
        assert_eq!(status, 404, "{method} {path}: {r}");
        assert_eq!(
            r,
            json!({"success": false, "error": "Connection not found"}),
            "{method} {path}"
        );
    }

    // A record held by another node (cluster mode's case).
    let rec = srv.put_foreign_upstream().await;
    let (status, r) = srv
        .upstream_post(&rec.id, "send", json!({"message": "x"}))
        .await;
    assert_eq!(status, 409);
    assert_eq!(
        r["error"],
        "Connection owned by different instance: other-node"
    );

    // Disconnected in reject mode: 409 `WebSocket is not connected`.
    let up = Upstream::start(UpstreamConfig::default()).await;
    let (id, _) = connect(
        &srv,
        json!({"url": up.url(), "reconnect": {"initial_ms": 60000, "max_ms": 60000, "max_attempts": null, "jitter": 0.0},
               "correlation": {"mode": "uuid-prefix"}}),
    )
    .await;
    up.drop_all();
    await_view(&srv, &id, "reconnecting", |v| v["state"] == "reconnecting").await;
    for (route, body) in [
        ("send", json!({"message": {"op": "x"}})),
        ("send-raw", json!({"data_base64": "AAEC"})),
        ("send-async", json!({"message": "x", "timeout_ms": 1000})),
    ] {
        let (status, r) = srv
            .post(&format!("/api/v1/upstreams/{id}/{route}"), body)
            .await;
        assert_eq!(status, 409, "{route}: {r}");
        assert_eq!(
            r,
            json!({"success": false, "error": "WebSocket is not connected"})
        );
    }

    // Bad input: 400 with a JSON error.
    for body in [
        json!({"url": "http://example.invalid/"}),
        json!({"url": "ws://h/", "correlation": {"mode": "carrier-pigeon"}}),
        json!({"url": "ws://h/", "reconnect": {"initial_ms": 10, "max_ms": 1}}),
        json!({"nope": 1}),
    ] {
        let (status, r) = srv.post("/api/v1/upstreams", body.clone()).await;
        assert!(status == 400 || status == 422, "{body}: {status} {r}");
        assert_eq!(r["success"], false);
    }
    srv.upstream_call(&id, "send-raw", json!({"data_base64": "!!"}), 400)
        .await;
    srv.upstream_call(&id, "publish/start", json!({"topic": ""}), 400)
        .await;
    srv.shutdown().await;
}

#[tokio::test]
async fn outbox_mode_queues_while_disconnected() {
    let (up, srv, id, r) = refused_connection(|url| {
        json!({"url": url, "offline": "outbox", "wait_ms": 0,
               "subscriptions": [{"key": "a", "message": "SUB a"}],
               "reconnect": fast_reconnect(), "breaker": {"failure_threshold": 0, "cooldown_ms": 0}})
    })
    .await;
    assert_ne!(r["state"], "connected");
    srv.upstream_call(&id, "send", json!({"message": "queued"}), 200)
        .await;
    up.set_refusing(false);
    let log = upstream_log(&up, |l| l.count_on(1) == 2).await;
    assert_eq!(
        log.texts_on(1),
        ["SUB a", "queued"],
        "subscriptions before queued traffic"
    );
    srv.shutdown().await;
}

/// Forced reconnects through the manager (client driver + pump, with publishing on) leave
/// no extra tasks or file descriptors behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_reconnects_leak_no_tasks_or_fds() {
    const N: u64 = 1_000;
    let (up, srv) = upstream_and_node(UpstreamConfig::default().require_auth("tok")).await;
    let (id, _) = connect(
        &srv,
        json!({
            "url": up.url(),
            "auth": {"messages": ["tok"], "expect": "auth_ok"},
            "subscriptions": [{"key": "a", "message": "SUB a"}],
            // `initial_ms = 0` is refused; every forced drop counts as stable
            // (`min_stable_ms: 0`), so the attempt limit applies per drop.
            "reconnect": {"initial_ms": 1, "max_ms": 1, "max_attempts": 3, "jitter": 0.0, "min_stable_ms": 0},
            "heartbeat": {"interval_ms": 30000, "timeout_ms": 65000},
            "publish_topic": "leak",
        }),
    )
    .await;
    upstream_log(&up, |l| l.count_on(1) == 2).await;
    // Warm up every lazily created resource (HTTP pools, the view path).
    view(&srv, &id).await;
    let before = Resources::now();

    for i in 0..N {
        up.drop_all();
        let conn = i + 2;
        up.wait_for(WAIT, |l| l.active == 1 && l.count_on(conn) == 2)
            .await
            .unwrap();
    }
    let log = up.log();
    assert_eq!(log.handshakes, N + 1, "one connection per drop");
    assert_eq!(log.max_active, 1);
    let v = await_view(&srv, &id, "all reconnects seen", |v| {
        v["reconnects"].as_u64() == Some(N) && v["state"] == "connected"
    })
    .await;
    assert_eq!(v["subscriptions"], json!(["a"]));
    srv.await_metric("wsgate_upstream_reconnections_total", N as f64)
        .await;
    // Sockets of just-closed HTTP requests may take a moment to go; the counts must come
    // back to the baseline, not merely stop growing.
    let after = eventually("tasks and fds back to baseline", || async {
        let now = Resources::now();
        now.within(&before).then_some(now)
    })
    .await;
    assert!(after.tasks <= before.tasks && after.fds <= before.fds);
    srv.shutdown().await;
}

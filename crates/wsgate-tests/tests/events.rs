//! Events out (docs/events.md), end to end: real `wsgate serve` processes, real WebSocket
//! clients, and a webhook receiver run by the test (axum on a loopback port) that checks
//! every request's HMAC signature as a backend would; Redis Stream and NATS sinks read
//! back with XREAD and a NATS subscription.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{Value, json};
use sha2::Sha256;
use wsgate_tests::cluster::{Cluster, NatsServer, RedisServer, Via, free_port};
use wsgate_tests::{
    Client, Process, SIGKILL, SIGTERM, eventually, hs256_token, in_a_minute, metric_value, within,
};

const SECRET: &str = "whsec-test-0123456789";
const JWT: &str = "jwt-secret-for-events";

/// A backend's webhook endpoint: verifies the signature, then keeps the events. Answers
/// 500 to the first `fail` requests (after verifying them).
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

#[derive(Default)]
struct Seen {
    events: Mutex<Vec<Value>>,
    fail: AtomicUsize,
    bad_signatures: AtomicUsize,
    requests: AtomicUsize,
}

/// What a backend does with `X-Wsgate-Signature: t=<ts>,v1=<hex>`: recompute the HMAC over
/// `"<ts>.<body>"`, compare in constant time, refuse stale timestamps.
fn verified(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(sig) = headers
        .get("x-wsgate-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut t = None;
    let mut v1 = None;
    for part in sig.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = x.parse::<u64>().ok(),
            Some(("v1", x)) => v1 = Some(x.to_string()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let now = wsgate_core::clock::unix_ms() / 1000;
    if now.abs_diff(t) > 300 {
        return false;
    }
    let Some(digest) = (0..v1.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(v1.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&digest).is_ok()
}

async fn hook(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    seen.requests.fetch_add(1, SeqCst);
    if !verified(&headers, &body) {
        seen.bad_signatures.fetch_add(1, SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    if seen
        .fail
        .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let batch: Value = serde_json::from_slice(&body).unwrap();
    seen.events
        .lock()
        .extend(batch["events"].as_array().unwrap().iter().cloned());
    StatusCode::OK
}

impl Receiver {
    async fn start(fail: usize) -> Self {
        let seen = Arc::new(Seen::default());
        seen.fail.store(fail, SeqCst);
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn events(&self) -> Vec<Value> {
        self.seen.events.lock().clone()
    }

    /// Events of `kind` whose payload has `field` = `value`.
    fn matching(&self, kind: &str, field: &str, value: &str) -> Vec<Value> {
        of(&self.events(), kind, field, value)
    }

    /// Waits until `n` events of `kind` with `field` = `value` arrived; returns them.
    async fn await_n(&self, n: usize, kind: &str, field: &str, value: &str) -> Vec<Value> {
        eventually(&format!("{n} {kind} with {field} = {value}"), || {
            let got = self.matching(kind, field, value);
            std::future::ready((got.len() >= n).then_some(got))
        })
        .await
    }
}

fn of(events: &[Value], kind: &str, field: &str, value: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["type"] == kind && e["payload"][field] == value)
        .cloned()
        .collect()
}

/// The webhook settings for a node, with short batches.
fn webhook_env(r: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("WSGATE_EVENTS__WEBHOOK_URL", r.url()),
        ("WSGATE_EVENTS__WEBHOOK_SECRET", SECRET.into()),
        ("WSGATE_EVENTS__BATCH_LINGER_MS", "10".into()),
        ("WSGATE_EVENTS__RETRY_MAX_MS", "200".into()),
    ]
}

async fn node(envs: &[(&'static str, String)]) -> Process {
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Process::spawn_env(&["--node-id", "ev1"], &envs).await
}

fn token(user: &str) -> String {
    hs256_token(JWT, json!({"sub": user, "exp": in_a_minute()}))
}

async fn as_user(p: &Process, user: &str) -> Client {
    Client::connect(&format!("{}?token={}", p.ws_url(), token(user))).await
}

async fn leave(c: &mut Client, channel: &str) {
    let r = c
        .request(json!({"op": "unsubscribe", "channel": channel}))
        .await;
    assert_eq!(r["op"], "unsubscribed", "{r}");
}

async fn exit(p: &mut Process, sig: i32) {
    p.signal(sig);
    within("wsgate to exit", p.child.wait()).await.unwrap();
}

#[tokio::test]
async fn every_event_type_reaches_a_signed_webhook_once() {
    let r = Receiver::start(0).await;
    let mut env = webhook_env(&r);
    env.push(("WSGATE_AUTH__MODE", "jwt".into()));
    env.push(("WSGATE_AUTH__JWT_SECRET", JWT.into()));
    let mut n = node(&env).await;

    let mut a1 = as_user(&n, "alice").await;
    let mut a2 = as_user(&n, "alice").await;
    let mut b = as_user(&n, "bob").await;
    r.await_n(1, "connection.opened", "connection_id", &a1.id())
        .await;
    a1.subscribe("room:1").await;
    a2.subscribe("room:1").await;
    b.subscribe("room:1").await;
    r.await_n(1, "presence.joined", "user", "bob").await;
    // alice's second connection joined nobody new; one channel, occupied once.
    leave(&mut a1, "room:1").await;
    a2.ws.close(None).await.unwrap();
    r.await_n(1, "connection.closed", "connection_id", &a2.id())
        .await;
    let left = r.await_n(1, "presence.left", "user", "alice").await;
    assert_eq!(left[0]["payload"]["connection_id"], a2.id().as_str());
    leave(&mut b, "room:1").await;
    r.await_n(1, "channel.vacated", "channel", "room:1").await;

    // An upstream connection (to this node's own gateway) changes state.
    let url = format!("{}?token={}", n.ws_url(), token("backend"));
    let (status, up) = wsgate_tests::post_json(
        &n.http("/api/v1/upstreams"),
        json!({"url": url, "wait_ms": 5000}),
    )
    .await;
    assert_eq!(status, 200, "{up}");
    let up_id = up["connection_id"].as_str().unwrap().to_string();
    // The first state the node sees may already be `connected` (a fast local handshake).
    let states = eventually("upstream.state_changed to connected", || {
        let got = r.matching("upstream.state_changed", "upstream_id", &up_id);
        let done = got.iter().any(|e| e["payload"]["to"] == "connected");
        std::future::ready(done.then_some(got))
    })
    .await;
    assert_eq!(states[0]["payload"]["from"], Value::Null, "{states:#?}");
    for w in states.windows(2) {
        assert_eq!(
            w[1]["payload"]["from"], w[0]["payload"]["to"],
            "{states:#?}"
        );
    }

    // The drain sends what the shutdown caused before the process exits.
    exit(&mut n, SIGTERM).await;
    let events = r.events();
    let closed = of(&events, "connection.closed", "connection_id", &b.id());
    assert_eq!(closed.len(), 1, "{events:#?}");
    assert_eq!(closed[0]["payload"]["reason"], "shutdown");
    assert_eq!(closed[0]["payload"]["code"], 1001);

    let count = |kind: &str| events.iter().filter(|e| e["type"] == kind).count();
    // a1, a2, b and the upstream's own gateway connection.
    assert_eq!(count("connection.opened"), 4, "{events:#?}");
    assert_eq!(count("connection.closed"), 4, "{events:#?}");
    assert_eq!(count("channel.occupied"), 1, "{events:#?}");
    assert_eq!(count("channel.vacated"), 1, "{events:#?}");
    assert_eq!(count("presence.joined"), 2, "{events:#?}");
    assert_eq!(count("presence.left"), 2, "{events:#?}");
    let occupied = of(&events, "channel.occupied", "channel", "room:1");
    assert_eq!(occupied[0]["payload"]["connection_id"], a1.id().as_str());
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique");
    assert!(
        events
            .iter()
            .all(|e| e["node"] == "ev1" && e["time"].is_u64())
    );
    assert_eq!(r.seen.bad_signatures.load(SeqCst), 0);
}

#[tokio::test]
async fn a_receiver_answering_500_gets_every_event_once_it_recovers() {
    let r = Receiver::start(3).await;
    let n = node(&webhook_env(&r)).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let mut c = Client::connect(&n.ws_url()).await;
        ids.push(c.id());
        c.ws.close(None).await.unwrap();
    }
    for id in &ids {
        r.await_n(1, "connection.closed", "connection_id", id).await;
    }
    let events = r.events();
    for id in &ids {
        assert_eq!(
            of(&events, "connection.opened", "connection_id", id).len(),
            1
        );
        assert_eq!(
            of(&events, "connection.closed", "connection_id", id).len(),
            1
        );
    }
    assert_eq!(r.seen.fail.load(SeqCst), 0, "the 500s were served");
    let metrics = wsgate_tests::get_text(&n.http("/metrics")).await;
    let failed = metric_value(&metrics, "wsgate_events_failed_total{sink=\"webhook\"}");
    assert!(failed >= Some(3.0), "{failed:?}");
    let sent = metric_value(&metrics, "wsgate_events_sent_total{sink=\"webhook\"}");
    assert_eq!(sent, Some(10.0));
    let dropped = metric_value(&metrics, "wsgate_events_dropped_total{sink=\"webhook\"}");
    assert_eq!(dropped, Some(0.0));
}

#[tokio::test]
async fn a_receiver_that_is_down_costs_a_bounded_queue_and_counted_drops() {
    // Nobody listens on this port.
    let down = format!("http://127.0.0.1:{}/hook", free_port());
    let n = node(&[
        ("WSGATE_EVENTS__WEBHOOK_URL", down),
        ("WSGATE_EVENTS__WEBHOOK_SECRET", SECRET.into()),
        ("WSGATE_EVENTS__QUEUE_CAPACITY", "5".into()),
        ("WSGATE_EVENTS__BATCH_MAX", "2".into()),
        ("WSGATE_EVENTS__BATCH_LINGER_MS", "1".into()),
    ])
    .await;
    for _ in 0..10 {
        let mut c = Client::connect(&n.ws_url()).await;
        c.ws.close(None).await.unwrap();
        let _ = c.closed().await;
    }
    // 20 events: at most 2 in the batch being retried and 5 queued; the rest dropped.
    let series = |name: &str| format!("wsgate_events_{name}{{sink=\"webhook\"}}");
    let (dropped, depth) = eventually("13+ drops counted", || {
        let url = n.http("/metrics");
        let (d, q) = (series("dropped_total"), series("queue_depth"));
        async move {
            let m = wsgate_tests::get_text(&url).await;
            let dropped = metric_value(&m, &d)?;
            let depth = metric_value(&m, &q)?;
            (dropped >= 13.0 && dropped + depth >= 18.0).then_some((dropped, depth))
        }
    })
    .await;
    assert!(depth <= 5.0, "queue bounded: {depth}");
    assert!(dropped <= 15.0, "{dropped}");
    let m = wsgate_tests::get_text(&n.http("/metrics")).await;
    assert!(metric_value(&m, &series("failed_total")) >= Some(1.0));
    assert_eq!(metric_value(&m, &series("sent_total")), Some(0.0));
}

#[tokio::test]
async fn two_nodes_report_occupancy_once_and_a_dead_nodes_leftovers_once() {
    let cluster = Cluster::start(Via::Redis).await;
    let r = Receiver::start(0).await;
    let mut env = webhook_env(&r);
    // A dead node's leftovers are reaped within about this.
    env.push(("WSGATE_PRESENCE_TTL_MS", "1000".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut n1 = cluster.node_env("n1", &[], &env).await;
    let mut n2 = cluster.node_env("n2", &[], &env).await;

    // Both nodes subscribe to "shared": occupied once, vacated once.
    let mut x = Client::subscribed(&n1.ws_url(), "shared").await;
    let mut y = Client::subscribed(&n2.ws_url(), "shared").await;
    r.await_n(1, "presence.joined", "user", &y.user()).await;
    leave(&mut x, "shared").await;
    leave(&mut y, "shared").await;
    r.await_n(1, "channel.vacated", "channel", "shared").await;

    // Again, then n2 dies with y in "shared" (x still there) and alone in "solo".
    x.subscribe("shared").await;
    y.subscribe("shared").await;
    y.subscribe("solo").await;
    r.await_n(1, "channel.occupied", "channel", "solo").await;
    r.await_n(2, "presence.joined", "user", &y.user()).await;
    n2.0.signal(SIGKILL);
    within("n2 to exit", n2.0.child.wait()).await.unwrap();
    let closed = r
        .await_n(1, "connection.closed", "connection_id", &y.id())
        .await;
    assert_eq!(closed[0]["payload"]["reason"], "node_lost");
    assert_eq!(closed[0]["node"], "n1", "reported by the survivor");
    r.await_n(1, "channel.vacated", "channel", "solo").await;
    // Once when y left "shared" itself (from n2), then "shared" and "solo" from n1.
    let y_left = r.await_n(3, "presence.left", "user", &y.user()).await;
    let by_n1 = y_left.iter().filter(|e| e["node"] == "n1").count();
    assert_eq!(by_n1, 2, "{y_left:#?}");

    // x leaves last: "shared" is vacated once more, by n1.
    leave(&mut x, "shared").await;
    r.await_n(2, "channel.vacated", "channel", "shared").await;
    n1.0.signal(SIGTERM);
    within("n1 to exit", n1.0.child.wait()).await.unwrap();

    let events = r.events();
    let n = |kind: &str, channel: &str| of(&events, kind, "channel", channel).len();
    assert_eq!(n("channel.occupied", "shared"), 2, "{events:#?}");
    assert_eq!(n("channel.vacated", "shared"), 2, "{events:#?}");
    assert_eq!(n("channel.occupied", "solo"), 1, "{events:#?}");
    assert_eq!(n("channel.vacated", "solo"), 1, "{events:#?}");
    assert_eq!(
        of(&events, "connection.closed", "connection_id", &y.id()).len(),
        1,
        "{events:#?}"
    );
    assert_eq!(
        of(&events, "presence.left", "user", &y.user()).len(),
        3,
        "{events:#?}"
    );
}

#[tokio::test]
async fn many_joins_and_leaves_at_once_on_two_nodes_give_one_occupied_and_one_vacated() {
    let cluster = Cluster::start(Via::Redis).await;
    let r = Receiver::start(0).await;
    let env = webhook_env(&r);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let n1 = cluster.node_env("n1", &[], &env).await;
    let n2 = cluster.node_env("n2", &[], &env).await;
    let urls: Vec<String> = (0..16)
        .map(|i| if i % 2 == 0 { n1.ws_url() } else { n2.ws_url() })
        .collect();
    let mut clients =
        futures_util::future::join_all(urls.iter().map(|u| Client::subscribed(u, "storm"))).await;
    let users: Vec<String> = clients.iter().map(Client::user).collect();
    for u in &users {
        r.await_n(1, "presence.joined", "user", u).await;
    }
    futures_util::future::join_all(clients.iter_mut().map(|c| leave(c, "storm"))).await;
    for u in &users {
        r.await_n(1, "presence.left", "user", u).await;
    }
    r.await_n(1, "channel.vacated", "channel", "storm").await;
    // Everything either node made is in once both have drained.
    for mut n in [n1, n2] {
        exit(&mut n.0, SIGTERM).await;
    }
    let events = r.events();
    assert_eq!(of(&events, "channel.occupied", "channel", "storm").len(), 1);
    assert_eq!(of(&events, "channel.vacated", "channel", "storm").len(), 1);
    assert_eq!(of(&events, "presence.joined", "channel", "storm").len(), 16);
    assert_eq!(of(&events, "presence.left", "channel", "storm").len(), 16);
}

#[tokio::test]
async fn events_go_to_a_redis_stream() {
    let redis = RedisServer::start().await;
    let n = node(&[
        ("WSGATE_REDIS_URL", redis.url()),
        ("WSGATE_EVENTS__REDIS_STREAM", "app:events".into()),
        ("WSGATE_EVENTS__BATCH_LINGER_MS", "1".into()),
    ])
    .await;
    let mut c = Client::subscribed(&n.ws_url(), "news").await;
    c.ws.close(None).await.unwrap();
    let _ = c.closed().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let kinds = eventually("6 events in the stream", || {
        let mut conn = conn.clone();
        async move {
            let reply: redis::Value = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(100)
                .arg("STREAMS")
                .arg("app:events")
                .arg("0")
                .query_async(&mut conn)
                .await
                .ok()?;
            let events = stream_events(reply);
            (events.len() >= 6).then_some(events)
        }
    })
    .await;
    let types: Vec<&str> = kinds.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "connection.opened",
            "channel.occupied",
            "presence.joined",
            "connection.closed",
            "presence.left",
            "channel.vacated"
        ]
    );
    assert!(kinds.iter().all(
        |e| e["payload"]["connection_id"] == c.id().as_str() || e["type"] == "channel.vacated"
    ));
}

/// The `event` fields of an XREAD reply, parsed.
fn stream_events(reply: redis::Value) -> Vec<Value> {
    let mut out = Vec::new();
    let mut stack = vec![reply];
    // Walk the nested reply: every bulk string that parses as a JSON object is an event.
    while let Some(v) = stack.pop() {
        match v {
            redis::Value::Array(items) => stack.extend(items.into_iter().rev()),
            redis::Value::Map(pairs) => {
                for (k, v) in pairs.into_iter().rev() {
                    stack.push(v);
                    stack.push(k);
                }
            }
            redis::Value::BulkString(b) => {
                if let Ok(e) = serde_json::from_slice::<Value>(&b)
                    && e.is_object()
                {
                    out.push(e);
                }
            }
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn events_go_to_nats_subjects() {
    let nats = NatsServer::start().await;
    let sub_client = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = sub_client.subscribe("app.events.>").await.unwrap();
    sub_client.flush().await.unwrap();
    let n = node(&[
        ("WSGATE_NATS_URL", nats.url()),
        ("WSGATE_EVENTS__NATS_SUBJECT", "app.events".into()),
        ("WSGATE_EVENTS__BATCH_LINGER_MS", "1".into()),
    ])
    .await;
    let c = Client::connect(&n.ws_url()).await;
    let msg = within("an event on NATS", sub.next()).await.unwrap();
    assert_eq!(&*msg.subject, "app.events.connection.opened");
    let e: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(e["type"], "connection.opened");
    assert_eq!(e["payload"]["connection_id"], c.id().as_str());
}

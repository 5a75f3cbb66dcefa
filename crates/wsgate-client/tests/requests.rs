//! Request/response correlation and offline send modes.

mod support;

use std::time::Duration;

use tokio::task::JoinHandle;

use support::*;
use wsgate_client::{Client, Correlation, Error, Event, Events, Message, OfflinePolicy, Snapshot};

const MS: Duration = Duration::from_millis(1);

fn json(m: &Message) -> serde_json::Value {
    serde_json::from_slice(m.as_bytes()).expect("json reply")
}

/// A connected client correlating on the JSON field `id`, and its server.
async fn json_client() -> (TestServer, Client, Events) {
    let server = TestServer::start(TestServerConfig::default()).await;
    let cfg = fast_config(server.url()).correlation(Correlation::JsonField("id".into()));
    let (client, events) = connect(cfg).await;
    (server, client, events)
}

/// Polls the client's snapshot (bounded by [`T`], yielding, no sleeps) until `pred` holds,
/// for driver work that emits no event; fails the test with `what` on timeout.
async fn snapshot_wait(client: &Client, what: &str, pred: impl Fn(&Snapshot) -> bool) -> Snapshot {
    tokio::time::timeout(T, async {
        loop {
            let s = client.snapshot();
            if pred(&s) {
                break s;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect(what)
}

/// Runs `request(msg, T)` in its own task, to be awaited later.
fn spawn_request(client: &Client, msg: &'static str) -> JoinHandle<Result<Message, Error>> {
    let c = client.clone();
    tokio::spawn(async move { c.request(msg, T).await })
}

#[tokio::test]
async fn json_request_gets_its_reply_among_interleaved_traffic() {
    let server = TestServer::start(TestServerConfig::default()).await;
    server.set_noise(3);
    let cfg = fast_config(server.url()).correlation(Correlation::JsonField("id".into()));
    let (client, mut events) = connect(cfg).await;
    assert_eq!(next_event(&mut events).await, Event::Opened);

    let (a, b) = tokio::join!(
        client.request(r#"{"op":"request","id":1,"q":"a"}"#, T),
        client.request(r#"{"op":"request","q":"b"}"#, T), // id added by the client
    );
    let (a, b) = (json(&a.unwrap()), json(&b.unwrap()));
    assert_eq!(
        (a["id"].clone(), a["echo"]["q"].clone()),
        (1.into(), "a".into())
    );
    assert_eq!(b["echo"]["q"], "b");
    assert!(b["id"].is_string(), "generated id: {b}");

    // The noise is delivered as ordinary messages; replies are not.
    for _ in 0..6 {
        let Event::Message(m) = next_event(&mut events).await else {
            panic!("expected message")
        };
        assert_eq!(json(&m)["op"], "noise");
    }
    let extra = tokio::time::timeout(100 * MS, events.recv()).await;
    assert!(extra.is_err(), "a reply leaked into events: {extra:?}");
    assert_eq!(client.snapshot().pending_requests, 0);
    client.close().await.unwrap();
}

#[tokio::test]
async fn uuid_prefix_request_strips_prefix_and_ignores_noise() {
    let server = TestServer::start(TestServerConfig::default().uuid_replies()).await;
    server.set_noise(2);
    let cfg = fast_config(server.url()).correlation(Correlation::UuidPrefix);
    let (client, mut events) = connect(cfg).await;
    let reply = client
        .request(Message::binary(&b"hello"[..]), T)
        .await
        .unwrap();
    assert_eq!(reply, Message::binary(&b"reply:hello"[..]));
    let sent = server.log().received[0].msg.clone();
    assert_eq!(sent.len(), 16 + 5, "16-byte UUID prefix + payload");
    assert_eq!(&sent.as_bytes()[16..], b"hello");
    // Two noise frames, then nothing else.
    let (_, skipped) = wait_event(
        &mut events,
        |e| matches!(e, Event::Message(m) if m.as_bytes() == br#"{"op":"noise","n":1}"#),
    )
    .await;
    assert_eq!(skipped.len(), 2, "Opened + first noise: {skipped:?}");
    client.close().await.unwrap();
}

#[tokio::test]
async fn timeout_says_request_timeout_and_late_reply_does_not_leak() {
    let (_server, client, mut events) = json_client().await;

    // No reply at all (not a request for the server).
    let err = client
        .request(r#"{"op":"ignored","id":"x"}"#, 50 * MS)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Request timeout");

    // Reply 1 arrives (at ~200 ms) after its 50 ms timeout, while request 2 waits.
    let err = client
        .request(r#"{"op":"request","id":1,"delay_ms":200}"#, 50 * MS)
        .await
        .unwrap_err();
    assert_eq!(err, Error::RequestTimeout);
    let r2 = client
        .request(r#"{"op":"request","id":2,"delay_ms":400}"#, T)
        .await
        .unwrap();
    assert_eq!(
        json(&r2)["id"],
        2,
        "request 2 got its own reply, not the late one"
    );
    let snap = client.snapshot();
    assert_eq!(snap.late_replies, 1, "late reply counted");
    assert_eq!(snap.pending_requests, 0);
    let (ev, _) = (next_event(&mut events).await, ());
    assert_eq!(ev, Event::Opened);
    let leaked = tokio::time::timeout(100 * MS, events.recv()).await;
    assert!(
        leaked.is_err(),
        "late reply must not be emitted: {leaked:?}"
    );
    client.close().await.unwrap();
}

#[tokio::test]
async fn request_without_correlation_mode_is_invalid() {
    let server = TestServer::start(TestServerConfig::default()).await;
    let (client, _events) = connect(fast_config(server.url())).await;
    let err = client.request("x", T).await.unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    client.close().await.unwrap();
}

/// A client (JSON correlation) spawned against a server that refuses handshakes, once it
/// has been refused.
async fn refused_client(offline: OfflinePolicy) -> (TestServer, Client, Events) {
    let server = TestServer::start(TestServerConfig::default()).await;
    server.set_refusing(true);
    let cfg = fast_config(server.url())
        .offline(offline)
        .correlation(Correlation::JsonField("id".into()));
    let (client, events) = Client::spawn(cfg);
    server_wait(&server, |l| l.refused >= 1).await;
    (server, client, events)
}

#[tokio::test]
async fn reject_mode_fails_fast_with_exact_text() {
    let (server, client, _events) = refused_client(OfflinePolicy::Reject).await;
    let err = client.send("x").await.unwrap_err();
    assert_eq!(err.to_string(), "WebSocket is not connected");
    let err = client.request(r#"{"op":"request"}"#, T).await.unwrap_err();
    assert_eq!(err, Error::NotConnected);
    server.set_refusing(false);
    tokio::time::timeout(T, client.wait_connected())
        .await
        .unwrap()
        .unwrap();
    assert!(
        server.log().received.is_empty(),
        "rejected messages are never sent later"
    );
    client.close().await.unwrap();
}

/// A JSON-correlated client in outbox mode whose server refuses it (for now).
async fn offline_client(capacity: usize) -> (TestServer, Client, Events) {
    refused_client(OfflinePolicy::Outbox { capacity }).await
}

#[tokio::test]
async fn outbox_mode_queues_in_order_and_overflow_is_an_error() {
    let (server, client, _events) = offline_client(3).await;
    client.send("one").await.unwrap();
    client.send("two").await.unwrap();
    // A request queued offline is answered once connected.
    let req = spawn_request(&client, r#"{"op":"request","id":9}"#);
    // The request is queued by the driver task; there is no event for it.
    let snap = snapshot_wait(&client, "request queued", |s| s.outbox_len == 3).await;
    assert_eq!(snap.pending_requests, 1);
    let err = client.send("overflow").await.unwrap_err();
    assert_eq!(err, Error::OutboxFull { capacity: 3 });

    server.set_refusing(false);
    let reply = tokio::time::timeout(T, req)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(json(&reply)["id"], 9);
    let log = server_wait(&server, |l| l.count_on(1) == 3).await;
    assert_eq!(
        log.texts_on(1),
        vec!["one", "two", r#"{"op":"request","id":9}"#]
    );
    assert_eq!(client.snapshot().outbox_len, 0);
    client.close().await.unwrap();
}

#[tokio::test]
async fn in_flight_request_fails_when_connection_drops() {
    let (server, client, _events) = json_client().await;
    let req = spawn_request(&client, r#"{"op":"request","id":1,"delay_ms":5000}"#);
    server_wait(&server, |l| l.count_on(1) == 1).await;
    server.drop_all();
    let res = tokio::time::timeout(T, req).await.unwrap().unwrap();
    assert_eq!(res, Err(Error::ConnectionLost));
    client.close().await.unwrap();
}

#[tokio::test]
async fn snapshot_counts_messages_and_bytes_each_way() {
    let server = TestServer::start(TestServerConfig::default()).await;
    let cfg = fast_config(server.url()).id("upstream-7");
    let (client, mut events) = connect(cfg).await;
    client.send("hello").await.unwrap();
    client
        .send(Message::binary(vec![1u8, 2, 3, 4]))
        .await
        .unwrap();
    server_wait(&server, |l| l.count_on(1) == 2).await;
    server.broadcast("abc".into());
    let (ev, _) = wait_event(&mut events, |e| matches!(e, Event::Message(_))).await;
    assert_eq!(ev, Event::Message("abc".into()));
    let s = client.snapshot();
    assert_eq!(
        (s.id.as_str(), s.url.as_str()),
        ("upstream-7", server.url().as_str())
    );
    assert_eq!((s.messages_out, s.bytes_out), (2, 9));
    assert_eq!((s.messages_in, s.bytes_in), (1, 3));
    assert_eq!((s.total_attempts, s.reconnects, s.attempts), (1, 0, 0));
    assert!(s.connected_since.is_some());
    assert_eq!(s.last_error, None);
    client.close().await.unwrap();
}

#[tokio::test]
async fn a_request_that_timed_out_while_queued_offline_is_never_sent() {
    let (server, client, _events) = offline_client(10).await;
    let err = client
        .request(r#"{"op":"request","id":"stale"}"#, 30 * MS)
        .await
        .unwrap_err();
    assert_eq!(err, Error::RequestTimeout);
    client.send("after").await.unwrap();
    server.set_refusing(false);
    let log = server_wait(&server, |l| l.count_on(1) >= 1).await;
    assert_eq!(
        log.texts_on(1),
        vec!["after"],
        "the timed-out request was dropped"
    );
    assert_eq!(client.snapshot().pending_requests, 0);
    client.close().await.unwrap();
}

#[tokio::test]
async fn a_caller_id_still_pending_is_refused() {
    let (_server, client, _events) = json_client().await;
    let first = spawn_request(&client, r#"{"op":"request","id":7,"delay_ms":300}"#);
    snapshot_wait(&client, "first request in flight", |s| {
        s.pending_requests == 1
    })
    .await;
    let err = client
        .request(r#"{"op":"request","id":7}"#, T)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Request id already pending");
    let reply = tokio::time::timeout(T, first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        json(&reply)["id"],
        7,
        "the first caller still gets its reply"
    );
    client.close().await.unwrap();
}

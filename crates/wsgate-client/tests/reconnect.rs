//! Reconnect ordering, backoff, give-up, breaker, heartbeat, close.

mod support;

use std::time::Duration;

use support::*;
use wsgate_client::{
    Auth, Backoff, BreakerConfig, BreakerState, Client, CloseReason, ConnectionState, Error, Event,
    Heartbeat, HeartbeatPing, Matcher, OfflinePolicy, Subscription,
};

const MS: Duration = Duration::from_millis(1);

fn auth() -> Auth {
    Auth::new()
        .send(r#"{"op":"auth","token":"secret"}"#)
        .expect(Matcher::json_field("op", "auth_ok"))
}

#[tokio::test]
async fn drop_reconnect_auth_then_subscriptions_then_queued_messages() {
    let server = TestServer::start(TestServerConfig::default().require_auth("secret")).await;
    // A visible backoff window so the test can act while disconnected.
    let cfg = fast_config(server.url())
        .auth(auth())
        .offline(OfflinePolicy::Outbox { capacity: 8 })
        .backoff(
            Backoff::new()
                .initial_delay(300 * MS)
                .jitter(0.0)
                .max_attempts(None),
        );
    let (client, mut events) = connect(cfg).await;
    assert_eq!(next_event(&mut events).await, Event::Opened);
    subscribe_all(&client, &["a", "b"]).await;
    client.send("live").await.unwrap();
    server_wait(&server, |l| l.count_on(1) == 4).await;

    server.drop_all();
    let (attempt, _, _) = reconnecting(&mut events).await;
    assert_eq!(attempt, 1);
    // While disconnected: queue a message, add one subscription, remove another.
    client.send("queued").await.unwrap();
    client
        .subscribe(Subscription::new("c", "sub c"))
        .await
        .unwrap();
    assert!(client.unsubscribe("a").await.unwrap());
    assert_eq!(client.snapshot().outbox_len, 1);

    let (_, skipped) = wait_event(&mut events, |e| *e == Event::Reconnected).await;
    assert!(
        skipped.is_empty(),
        "nothing between Reconnecting and Reconnected: {skipped:?}"
    );
    client.send("after").await.unwrap();
    let log = server_wait(&server, |l| l.count_on(2) == 5).await;
    assert_eq!(
        log.texts_on(1),
        vec![
            r#"{"op":"auth","token":"secret"}"#,
            "sub a",
            "sub b",
            "live"
        ]
    );
    assert_eq!(
        log.texts_on(2),
        vec![
            r#"{"op":"auth","token":"secret"}"#,
            "sub b",
            "sub c",
            "queued",
            "after"
        ],
        "auth, then subscriptions in insertion order, then queued, then live traffic"
    );
    assert_eq!(log.handshakes, 2, "one successful handshake per reconnect");
    assert_eq!(
        log.attempts,
        2 + log.refused,
        "one attempt per backoff step"
    );
    assert_eq!(log.max_active, 1, "never two connections at once");
    let snap = client.snapshot();
    assert_eq!(snap.reconnects, 1);
    assert_eq!(snap.subscriptions, vec!["b", "c"]);
    assert_eq!(snap.state, ConnectionState::Connected);
    client.close().await.unwrap();
}

#[tokio::test]
async fn backoff_grows_caps_and_gives_up_with_failed_state() {
    let server = TestServer::start(TestServerConfig::default()).await;
    server.set_refusing(true);
    let cfg = fast_config(server.url()).backoff(
        Backoff::new()
            .initial_delay(20 * MS)
            .max_delay(80 * MS)
            .jitter(0.0)
            .max_attempts(Some(5)),
    );
    let (client, mut events) = Client::spawn(cfg);
    let mut delays = Vec::new();
    let error = loop {
        match next_event(&mut events).await {
            Event::Reconnecting {
                attempt,
                delay,
                error,
            } => {
                assert_eq!(attempt as usize, delays.len() + 1);
                assert!(matches!(error, Error::Connect(_)), "{error}");
                delays.push(delay);
            }
            Event::GaveUp { error } => break error,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(delays, vec![20 * MS, 40 * MS, 80 * MS, 80 * MS, 80 * MS]);
    assert!(
        matches!(&error, Error::GaveUp { attempts: 5, .. }),
        "{error}"
    );
    assert!(
        tokio::time::timeout(T, events.recv())
            .await
            .unwrap()
            .is_none(),
        "stream ends after GaveUp"
    );
    assert_eq!(client.state(), ConnectionState::Failed);
    assert_eq!(client.snapshot().last_error, Some(error));
    assert_eq!(client.send("x").await, Err(Error::NotConnected));

    let log = server.log();
    assert_eq!(log.attempts, 6, "first attempt + 5 retries, nothing more");
    // The server saw the gaps the policy asked for.
    for (i, want) in delays.iter().enumerate() {
        let gap = log.attempt_times[i + 1] - log.attempt_times[i];
        assert!(
            gap >= *want,
            "gap {i} was {gap:?}, expected at least {want:?}"
        );
    }
}

#[tokio::test]
async fn injected_jitter_source_shapes_the_delays() {
    let server = TestServer::start(TestServerConfig::default()).await;
    server.set_refusing(true);
    let cfg = fast_config(server.url())
        .backoff(
            Backoff::new()
                .initial_delay(40 * MS)
                .jitter(0.5)
                .max_attempts(Some(2)),
        )
        .jitter_source(|| Box::new(wsgate_client::FixedJitter(0.5)));
    let (_client, mut events) = Client::spawn(cfg);
    let mut delays = Vec::new();
    while let Event::Reconnecting { delay, .. } = next_event(&mut events).await {
        delays.push(delay);
    }
    // Half of the 50 % jitter band removed: 75 % of 40 ms and of 80 ms.
    assert_eq!(delays, vec![30 * MS, 60 * MS]);
}

#[tokio::test]
async fn breaker_opens_half_opens_and_failed_probe_reopens() {
    let server = TestServer::start(TestServerConfig::default()).await;
    server.set_refusing(true);
    let cooldown = 200 * MS;
    let cfg = fast_config(server.url())
        .backoff(
            Backoff::new()
                .initial_delay(5 * MS)
                .max_delay(5 * MS)
                .jitter(0.0)
                .max_attempts(None),
        )
        .breaker(BreakerConfig {
            failure_threshold: 3,
            cooldown,
        })
        // The successful probe counts at once (no stability period), so the breaker is
        // closed when `Opened` arrives.
        .min_stable(Duration::ZERO);
    let (client, mut events) = Client::spawn(cfg);
    let mut state = client.watch_state();

    // Failures 1 and 2: plain backoff. Failure 3 opens the breaker.
    let mut delays = Vec::new();
    for _ in 0..3 {
        let (_, delay, _) = reconnecting(&mut events).await;
        delays.push(delay);
    }
    assert_eq!(&delays[..2], &[5 * MS, 5 * MS]);
    assert!(
        delays[2] > 150 * MS && delays[2] <= cooldown,
        "cooldown wait, got {:?}",
        delays[2]
    );
    tokio::time::timeout(T, state.wait_for(|s| *s == ConnectionState::CircuitOpen))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(client.snapshot().breaker, BreakerState::Open);

    // The half-open probe fails (still refusing): open again for a full cooldown.
    let (_, delay, _) = reconnecting(&mut events).await;
    assert!(
        delay > 150 * MS,
        "failed probe re-opens the breaker, got {delay:?}"
    );
    let log = server.log();
    assert_eq!(log.attempts, 4, "exactly one probe after the cooldown");
    let gap = log.attempt_times[3] - log.attempt_times[2];
    assert!(gap >= cooldown, "probe waited the cooldown: {gap:?}");

    // Next probe succeeds: breaker closes.
    server.set_refusing(false);
    assert_eq!(
        wait_event(&mut events, |e| *e == Event::Opened).await.0,
        Event::Opened
    );
    assert_eq!(server.log().attempts, 5);
    assert_eq!(client.snapshot().breaker, BreakerState::Closed);
    client.close().await.unwrap();
}

/// A server and a client connected to it with this heartbeat.
async fn heartbeating(
    interval: Duration,
    timeout: Duration,
    ping: HeartbeatPing,
) -> (TestServer, Client, wsgate_client::Events) {
    let server = TestServer::start(TestServerConfig::default()).await;
    let heartbeat = Heartbeat {
        interval,
        timeout,
        ping,
    };
    let (client, events) = connect(fast_config(server.url()).heartbeat(Some(heartbeat))).await;
    (server, client, events)
}

#[tokio::test]
async fn heartbeat_timeout_triggers_one_reconnect() {
    let (server, client, mut events) =
        heartbeating(30 * MS, 300 * MS, HeartbeatPing::WebSocket).await;
    server.set_stalled(true);
    let (_, _, error) = reconnecting(&mut events).await;
    assert_eq!(error, Error::HeartbeatTimeout(300 * MS));
    server.set_stalled(false);
    wait_event(&mut events, |e| *e == Event::Reconnected).await;
    // Healthy again: pings are answered, so no further reconnect for a few timeouts.
    let quiet = tokio::time::timeout(500 * MS, wait_event_opt(&mut events)).await;
    assert!(quiet.is_err(), "unexpected event after recovery: {quiet:?}");
    assert_eq!(client.snapshot().reconnects, 1);
    assert_eq!(server.log().max_active, 1);
    client.close().await.unwrap();
}

async fn wait_event_opt(events: &mut wsgate_client::Events) -> Option<Event> {
    events.recv().await
}

#[tokio::test]
async fn app_level_ping_message_is_sent() {
    let ping = HeartbeatPing::Message(r#"{"op":"ping"}"#.into());
    let (server, client, _events) = heartbeating(20 * MS, 5_000 * MS, ping).await;
    let log = server_wait(&server, |l| {
        l.texts_on(1).iter().filter(|t| t.contains("ping")).count() >= 2
    })
    .await;
    assert!(log.texts_on(1).iter().all(|t| t == r#"{"op":"ping"}"#));
    client.close().await.unwrap();
}

#[tokio::test]
async fn server_close_and_garbage_each_cause_exactly_one_reconnect() {
    let server = TestServer::start(TestServerConfig::default()).await;
    let (client, mut events) = connect(fast_config(server.url())).await;
    server.close_all(1001);
    let (_, _, error) = reconnecting(&mut events).await;
    assert!(
        matches!(error, Error::ServerClosed { code: 1001, .. }),
        "{error}"
    );
    wait_event(&mut events, |e| *e == Event::Reconnected).await;

    server.send_garbage();
    let (_, _, error) = reconnecting(&mut events).await;
    assert!(matches!(error, Error::Transport(_)), "{error}");
    wait_event(&mut events, |e| *e == Event::Reconnected).await;
    let log = server_wait(&server, |l| l.active == 1).await;
    assert_eq!(log.handshakes, 3);
    assert_eq!(log.max_active, 1);
    assert_eq!(client.snapshot().reconnects, 2);
    client.close().await.unwrap();
}

#[tokio::test]
async fn auth_failure_counts_as_failed_attempt() {
    let server = TestServer::start(TestServerConfig::default().require_auth("secret")).await;
    let cfg = fast_config(server.url())
        .auth(
            Auth::new()
                .send("wrong")
                .expect(Matcher::contains("auth_ok"))
                .timeout(T),
        )
        .backoff(
            Backoff::new()
                .initial_delay(5 * MS)
                .jitter(0.0)
                .max_attempts(Some(2)),
        );
    let err = tokio::time::timeout(T, Client::connect(cfg))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, Error::GaveUp { attempts: 2, last_error } if matches!(**last_error, Error::Auth(_))),
        "{err}"
    );
    assert_eq!(server.log().auth_failures, 3);
    assert_eq!(server.log().authenticated, 0);
}

#[tokio::test]
async fn headers_and_subprotocol_reach_the_server() {
    let server = TestServer::start(TestServerConfig::default()).await;
    let cfg = fast_config(server.url())
        .header("x-api-key", "k-123")
        .subprotocol("wsgate.v1");
    let (client, _events) = connect(cfg).await;
    let log = server.log();
    assert_eq!(log.header("x-api-key"), Some("k-123"));
    assert_eq!(log.header("sec-websocket-protocol"), Some("wsgate.v1"));
    client.close().await.unwrap();
}

#[tokio::test]
async fn close_sends_close_frame_and_ends_events() {
    let server = TestServer::start(TestServerConfig::default()).await;
    let (client, mut events) = connect(fast_config(server.url())).await;
    assert_eq!(next_event(&mut events).await, Event::Opened);
    tokio::time::timeout(T, client.close())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next_event(&mut events).await,
        Event::Closed {
            reason: CloseReason::ClientClosed
        }
    );
    assert!(
        tokio::time::timeout(T, events.recv())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(client.state(), ConnectionState::Closed);
    let log = server_wait(&server, |l| l.active == 0).await;
    assert_eq!(
        log.client_closes, 1,
        "a close frame, not just a dropped socket"
    );
    assert_eq!(
        client.send("x").await.unwrap_err().to_string(),
        "WebSocket is not connected"
    );
    client.close().await.unwrap(); // idempotent
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let server = TestServer::start(TestServerConfig::default()).await;
    let (client, mut events) = connect(fast_config(server.url())).await;
    drop(client);
    let (ev, _) = wait_event(&mut events, |e| matches!(e, Event::Closed { .. })).await;
    assert_eq!(
        ev,
        Event::Closed {
            reason: CloseReason::ClientClosed
        }
    );
    server_wait(&server, |l| l.active == 0 && l.client_closes == 1).await;
}

#[tokio::test]
async fn no_auto_reconnect_ends_with_connection_lost() {
    let server = TestServer::start(TestServerConfig::default()).await;
    let cfg = fast_config(server.url()).auto_reconnect(false);
    let (client, mut events) = connect(cfg).await;
    server.drop_all();
    let (ev, _) = wait_event(&mut events, |e| matches!(e, Event::Closed { .. })).await;
    assert!(
        matches!(
            ev,
            Event::Closed {
                reason: CloseReason::ConnectionLost(_)
            }
        ),
        "{ev:?}"
    );
    assert_eq!(client.state(), ConnectionState::Closed);
    assert_eq!(server.log().attempts, 1);
}

#[tokio::test]
async fn forced_reconnect_replays_subscriptions() {
    let server = TestServer::start(TestServerConfig::default()).await;
    let (client, mut events) = connect(fast_config(server.url())).await;
    client
        .subscribe(Subscription::new("x", "sub x").with_unsubscribe("unsub x"))
        .await
        .unwrap();
    client.reconnect().await.unwrap();
    let (_, _, error) = reconnecting(&mut events).await;
    assert!(matches!(error, Error::ReconnectRequested));
    wait_event(&mut events, |e| *e == Event::Reconnected).await;
    client.unsubscribe("x").await.unwrap();
    let log = server_wait(&server, |l| l.count_on(2) == 2).await;
    assert_eq!(log.texts_on(1), vec!["sub x"]);
    assert_eq!(log.texts_on(2), vec!["sub x", "unsub x"]);
    client.close().await.unwrap();
}

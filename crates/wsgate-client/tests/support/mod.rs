//! Shared helpers for the integration tests. The server itself lives in
//! `wsgate_client::test_support` (feature `test-support`) so other crates can
//! reuse it; this module adds timeouts around everything that could hang.

#![allow(dead_code)]

use std::time::Duration;

pub use wsgate_client::test_support::{ServerLog, TestServer, TestServerConfig};
use wsgate_client::{
    Backoff, BreakerConfig, Client, ClientConfig, Error, Event, Events, Subscription,
};

/// Upper bound for any single wait: a broken test fails in seconds.
pub const T: Duration = Duration::from_secs(5);

/// Millisecond backoff, no jitter, no breaker, no heartbeat: fast and deterministic.
pub fn fast_config(url: String) -> ClientConfig {
    ClientConfig::new(url)
        .backoff(
            Backoff::new()
                .initial_delay(Duration::from_millis(5))
                .max_delay(Duration::from_millis(20))
                .jitter(0.0)
                .max_attempts(None),
        )
        .breaker(BreakerConfig::disabled())
        .heartbeat(None)
}

/// Next event, failing the test on timeout or end of stream.
pub async fn next_event(events: &mut Events) -> Event {
    match tokio::time::timeout(T, events.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("event stream ended"),
        Err(_) => panic!("no event within {T:?}"),
    }
}

/// Skips events until one matches `pred`; returns it and the skipped ones.
pub async fn wait_event(
    events: &mut Events,
    mut pred: impl FnMut(&Event) -> bool,
) -> (Event, Vec<Event>) {
    let mut skipped = Vec::new();
    loop {
        let e = next_event(events).await;
        if pred(&e) {
            return (e, skipped);
        }
        skipped.push(e);
    }
}

/// Skips events until the next `Reconnecting`; its attempt, delay and error.
pub async fn reconnecting(events: &mut Events) -> (u32, Duration, Error) {
    match wait_event(events, |e| matches!(e, Event::Reconnecting { .. })).await {
        (
            Event::Reconnecting {
                attempt,
                delay,
                error,
            },
            _,
        ) => (attempt, delay, error),
        _ => unreachable!(),
    }
}

/// Waits for a server condition, failing the test with the log on timeout.
pub async fn server_wait(server: &TestServer, pred: impl FnMut(&ServerLog) -> bool) -> ServerLog {
    server
        .wait_for(T, pred)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Connects (bounded by [`T`]), failing the test on error.
pub async fn connect(cfg: ClientConfig) -> (Client, Events) {
    tokio::time::timeout(T, Client::connect(cfg))
        .await
        .expect("connect within T")
        .expect("connected")
}

/// Subscribes `key` with the message `sub <key>`, for each key in order.
pub async fn subscribe_all(client: &Client, keys: &[&str]) {
    for key in keys {
        client
            .subscribe(Subscription::new(*key, format!("sub {key}")))
            .await
            .unwrap();
    }
}

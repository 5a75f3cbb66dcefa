//! The one task per upstream connection next to the client's driver: it consumes the
//! client's [`Events`] and state changes and turns them into metrics (the life-cycle ones
//! through [`Lifetimes`]), record updates and channel publications.
//!
//! Publishing is awaited in line, so the upstream's own order is the channel's order, and
//! a slow broker slows reading from the upstream (the client's event channel is bounded)
//! instead of growing memory. Each publish is bounded by [`PUBLISH_TIMEOUT`]: a broker that
//! hangs costs a counted, logged drop, never a stuck pump. The pump never panics on a
//! broker or store error.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};
use wsgate_client::{ConnectionState, Event, Events, Message};

use super::TOPIC_PREFIX;
use super::connection::Shared;
use super::mapping::publication_data;
use super::state::state_name;
use super::telemetry::Lifetimes;

/// Longest wait for the broker to accept one publication.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(
    shared: Arc<Shared>,
    mut events: Events,
    mut state: watch::Receiver<ConnectionState>,
) {
    let metrics = shared.parts.metrics.clone();
    let mut lifetimes = Lifetimes::default();
    let mut last = *state.borrow_and_update();
    lifetimes.on_state(&metrics, last);
    on_state(&shared, None, last).await;
    let mut state_open = true;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                None => break,
                Some(Event::Message(msg)) => {
                    metrics.upstream_messages_received.inc();
                    if let Some(topic) = shared.topic() {
                        publish(&shared, &topic, &msg).await;
                    }
                }
                Some(event) => {
                    lifetimes.on_event(&metrics, &event);
                    match event {
                        Event::Reconnected => {
                            metrics.upstream_reconnections.inc();
                            info!(upstream_id = %shared.id, "upstream reconnected");
                        }
                        Event::GaveUp { error } => {
                            metrics.upstream_give_ups.inc();
                            warn!(upstream_id = %shared.id, %error, "upstream gave up");
                        }
                        _ => {}
                    }
                }
            },
            changed = state.changed(), if state_open => {
                if changed.is_err() {
                    state_open = false;
                    continue;
                }
                let now = *state.borrow_and_update();
                if now != last {
                    lifetimes.on_state(&metrics, now);
                    on_state(&shared, Some(last), now).await;
                    last = now;
                }
            }
        }
    }
    // The driver has stopped: its final state is set before its last event.
    let now = *state.borrow();
    if now != last {
        lifetimes.on_state(&metrics, now);
        on_state(&shared, Some(last), now).await;
    }
}

async fn on_state(shared: &Shared, from: Option<ConnectionState>, to: ConnectionState) {
    let metrics = &shared.parts.metrics;
    shared.gauge.set(metrics, to);
    if let Some(manager) = shared.manager.upgrade()
        && let Some(events) = manager.events.get()
    {
        events.upstream_state(&shared.id, from.map(state_name), state_name(to));
    }
    if to == ConnectionState::CircuitOpen && from != Some(ConnectionState::CircuitOpen) {
        metrics.upstream_breaker_opens.inc();
        warn!(upstream_id = %shared.id, "upstream circuit breaker open");
    }
    // `closed` is not written: a closed connection's record is about to be deleted
    // (Disconnect) or must survive with its last live state for another node to reclaim
    // (shutdown).
    if to != ConnectionState::Closed {
        let _ = shared
            .update_record(|r| r.state = state_name(to).to_string())
            .await;
    }
}

async fn publish(shared: &Shared, topic: &str, msg: &Message) {
    let channel = format!("{TOPIC_PREFIX}{topic}");
    let data = publication_data(msg);
    let parts = &shared.parts;
    match tokio::time::timeout(PUBLISH_TIMEOUT, parts.publisher.publish(&channel, data)).await {
        Ok(Ok(())) => {
            parts.metrics.upstream_published.inc();
            shared.published.fetch_add(1, Relaxed);
        }
        Ok(Err(e)) => {
            // The publisher has counted the broker error.
            shared.publish_errors.fetch_add(1, Relaxed);
            warn!(upstream_id = %shared.id, channel, error = %e, "upstream publish failed");
        }
        Err(_) => {
            parts.metrics.broker_errors.inc();
            shared.publish_errors.fetch_add(1, Relaxed);
            warn!(upstream_id = %shared.id, channel, "upstream publish timed out; message dropped");
        }
    }
}

//! What `/connections` and the upstream API show about one connection.
//!
//! Built from the client's lock-free snapshot plus the manager's own counters. It shows
//! subscription keys, never subscription or auth messages, header values or the URL's
//! query string: those are where upstream secrets live.

use std::sync::atomic::Ordering::Relaxed;
use std::time::UNIX_EPOCH;

use crate::seams::upstream::{CorrelationMode, redact_url};
use serde::{Deserialize, Serialize};
use wsgate_client::BreakerState;

use super::connection::Upstream;
use super::state::state_name;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamView {
    pub id: String,
    #[serde(deserialize_with = "crate::names::interned")]
    pub kind: &'static str,
    /// Without user info, query string or fragment.
    pub url: String,
    #[serde(deserialize_with = "crate::names::interned")]
    pub state: &'static str,
    /// The node that holds the connection.
    pub node: String,
    /// Consecutive failed attempts since the last success.
    pub attempts: u32,
    pub total_attempts: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
    /// Unix milliseconds when the current connection became ready.
    pub connected_since: Option<u64>,
    pub created_at_ms: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub late_replies: u64,
    pub pending_requests: usize,
    pub outbox_len: usize,
    #[serde(deserialize_with = "crate::names::interned")]
    pub breaker: &'static str,
    /// Tracked subscription keys, in replay order.
    pub subscriptions: Vec<String>,
    pub publish_topic: Option<String>,
    pub published: u64,
    pub publish_errors: u64,
    pub auto_reconnect: bool,
    #[serde(deserialize_with = "crate::names::interned")]
    pub correlation: &'static str,
    /// Handshake header names (values are never shown).
    pub headers: Vec<String>,
}

impl Upstream {
    pub fn view(&self) -> UpstreamView {
        let snap = self.client.snapshot();
        let sh = &self.shared;
        UpstreamView {
            id: sh.id.to_string(),
            kind: "upstream",
            url: redact_url(&snap.url),
            state: state_name(snap.state),
            node: sh.fixed.owner.to_string(),
            attempts: snap.attempts,
            total_attempts: snap.total_attempts,
            reconnects: snap.reconnects,
            last_error: snap.last_error.map(|e| e.to_string()),
            connected_since: snap.connected_since.and_then(|t| {
                t.duration_since(UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_millis() as u64)
            }),
            created_at_ms: sh.fixed.created_at_ms,
            messages_sent: snap.messages_out,
            messages_received: snap.messages_in,
            bytes_sent: snap.bytes_out,
            bytes_received: snap.bytes_in,
            late_replies: snap.late_replies,
            pending_requests: snap.pending_requests,
            outbox_len: snap.outbox_len,
            breaker: match snap.breaker {
                BreakerState::Closed => "closed",
                BreakerState::Open => "open",
                BreakerState::HalfOpen => "half_open",
            },
            subscriptions: snap.subscriptions,
            publish_topic: sh.topic().map(|t| t.to_string()),
            published: sh.published.load(Relaxed),
            publish_errors: sh.publish_errors.load(Relaxed),
            auto_reconnect: sh.fixed.auto_reconnect,
            correlation: sh.fixed.correlation,
            headers: sh.fixed.header_names.clone(),
        }
    }
}

pub fn correlation_name(c: &CorrelationMode) -> &'static str {
    match c {
        CorrelationMode::None => "none",
        CorrelationMode::UuidPrefix => "uuid-prefix",
        CorrelationMode::JsonField { .. } => "json-field",
    }
}

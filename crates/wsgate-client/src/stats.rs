//! Operator-facing state and counters.
//!
//! Counters are atomics shared between the driver and every handle, so a
//! snapshot never has to wait for the driver (which may be mid-connect).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use crate::{BreakerState, Error};

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Connecting, authenticating or replaying subscriptions.
    Connecting,
    /// Ready: user traffic flows.
    Connected,
    /// Waiting out a backoff delay before the next attempt.
    Reconnecting,
    /// Waiting out the circuit breaker's cooldown.
    CircuitOpen,
    /// Gave up after the configured attempts. Terminal.
    Failed,
    /// Closed by the owner (or the connection ended with reconnect off). Terminal.
    Closed,
}

impl ConnectionState {
    /// True for `Failed` and `Closed`.
    pub fn is_terminal(self) -> bool {
        matches!(self, ConnectionState::Failed | ConnectionState::Closed)
    }
}

/// A point-in-time view of one client, for `/connections/{id}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The client's id (from the config).
    pub id: String,
    /// The URL it connects to.
    pub url: String,
    /// Current state.
    pub state: ConnectionState,
    /// Consecutive failed attempts since the last success.
    pub attempts: u32,
    /// Connection attempts ever made (including the first).
    pub total_attempts: u64,
    /// Successful reconnections (not counting the first connection).
    pub reconnects: u64,
    /// The most recent error, if any.
    pub last_error: Option<Error>,
    /// When the current connection became ready.
    pub connected_since: Option<SystemTime>,
    /// Data messages received (replies included).
    pub messages_in: u64,
    /// Data messages sent (auth, subscriptions and requests included).
    pub messages_out: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
    /// Replies that arrived after their request timed out, dropped.
    pub late_replies: u64,
    /// Requests in flight.
    pub pending_requests: usize,
    /// Messages queued while disconnected.
    pub outbox_len: usize,
    /// Circuit breaker state.
    pub breaker: BreakerState,
    /// Tracked subscription keys, in replay order.
    pub subscriptions: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct Status {
    pub state: ConnectionState,
    pub attempts: u32,
    pub last_error: Option<Error>,
    pub connected_since: Option<SystemTime>,
    pub pending_requests: usize,
    pub outbox_len: usize,
    pub breaker: BreakerState,
    pub subscriptions: Vec<String>,
}

/// State shared by the driver (writer) and handles (readers).
#[derive(Debug)]
pub(crate) struct Shared {
    pub id: String,
    pub url: String,
    pub total_attempts: AtomicU64,
    pub reconnects: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub late_replies: AtomicU64,
    pub status: Mutex<Status>,
}

impl Shared {
    pub fn new(id: String, url: String) -> Self {
        Self {
            id,
            url,
            total_attempts: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            late_replies: AtomicU64::new(0),
            status: Mutex::new(Status {
                state: ConnectionState::Connecting,
                attempts: 0,
                last_error: None,
                connected_since: None,
                pending_requests: 0,
                outbox_len: 0,
                breaker: BreakerState::Closed,
                subscriptions: Vec::new(),
            }),
        }
    }

    pub fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        // A panic while holding this lock cannot leave it inconsistent
        // (plain field writes), so poisoning is ignored.
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn count_in(&self, bytes: usize) {
        self.messages_in.fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Relaxed);
    }

    pub fn count_out(&self, bytes: usize) {
        self.messages_out.fetch_add(1, Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let st = self.status();
        Snapshot {
            id: self.id.clone(),
            url: self.url.clone(),
            state: st.state,
            attempts: st.attempts,
            total_attempts: self.total_attempts.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            last_error: st.last_error.clone(),
            connected_since: st.connected_since,
            messages_in: self.messages_in.load(Relaxed),
            messages_out: self.messages_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            late_replies: self.late_replies.load(Relaxed),
            pending_requests: st.pending_requests,
            outbox_len: st.outbox_len,
            breaker: st.breaker,
            subscriptions: st.subscriptions.clone(),
        }
    }
}

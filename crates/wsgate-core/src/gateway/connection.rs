//! One client connection as the rest of the node sees it.
//!
//! The server's connection task owns the socket's reading side; everyone else (publishers,
//! the heartbeat sweep, the control API) holds an `Arc<Connection>` and sends through its
//! [`Transport`] or asks for a close. Everything here is sized for 10k+ idle connections per
//! node: counters are atomics, the transport's backlog allocates nothing until it is used, and
//! there is no per-connection timer (the sweep is one task for the whole node).

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::expiry::TokenClock;
use super::transport::Transport;
use crate::auth::Identity;
use crate::seams::ServerSubscription;

/// Server-side subscription changes a connection may have waiting for its task; more are
/// dropped (logged): a backend flooding one user's connections must not grow the node.
pub const MAX_PENDING_SERVER_OPS: usize = 1024;

/// Why and how a connection is being closed. Set once; the first reason wins.
#[derive(Debug, Clone)]
pub struct CloseRequest {
    pub code: u16,
    /// Metric label and log field.
    pub reason: &'static str,
    /// Sent to the client in the close frame.
    pub message: String,
}

/// Counters of one connection, for its debug view.
#[derive(Debug, Default)]
pub struct Stats {
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub errors: AtomicU64,
    /// Node clock (ms) of the last frame or pong from the client.
    pub last_seen_ms: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl Stats {
    pub fn record_error(&self, message: impl Into<String>) {
        self.errors.fetch_add(1, Relaxed);
        *self.last_error.lock() = Some(message.into());
    }
}

#[derive(Debug)]
pub struct Connection {
    pub id: Arc<str>,
    /// `gateway` (a `/ws` client) or `socketio` (a Socket.IO client), as listings show it.
    pub kind: &'static str,
    pub identity: Identity,
    pub remote: Option<SocketAddr>,
    pub connected_at_unix_ms: u64,
    pub connected_at_ms: u64,
    pub stats: Stats,
    pub transport: Arc<dyn Transport>,
    /// Boxed: set at most once, at the end; an open connection keeps one pointer.
    close: OnceLock<Box<CloseRequest>>,
    /// Wakes the connection task (its one waiter) for [`Connection::attention`].
    attention: AtomicWaker,
    channels: Mutex<Vec<Arc<str>>>,
    /// When the token expires and, once it has, when the grace ends (see `expiry.rs`).
    pub(crate) token: Mutex<TokenClock>,
    /// Server-side subscription changes waiting for the connection task, which runs them
    /// between client ops (see `server_subs.rs`).
    server_ops: Mutex<VecDeque<ServerSubscription>>,
    /// `server_ops` is not empty (read without its lock on every wake-up of the task).
    server_ops_waiting: AtomicBool,
}

/// What the connection task must do besides reading and writing its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    /// A close was requested ([`Connection::close_request`]).
    Close,
    /// Server-side subscription changes wait ([`Connection::take_server_ops`]).
    ServerOps,
}

impl Connection {
    pub(crate) fn new(
        id: Arc<str>,
        kind: &'static str,
        identity: Identity,
        remote: Option<SocketAddr>,
        now_ms: u64,
        transport: Arc<dyn Transport>,
    ) -> Self {
        let stats = Stats::default();
        stats.last_seen_ms.store(now_ms, Relaxed);
        Self {
            id,
            kind,
            identity,
            remote,
            connected_at_unix_ms: crate::clock::unix_ms(),
            connected_at_ms: now_ms,
            stats,
            transport,
            close: OnceLock::new(),
            attention: AtomicWaker::new(),
            channels: Mutex::new(Vec::new()),
            token: Mutex::new(TokenClock::default()),
            server_ops: Mutex::new(VecDeque::new()),
            server_ops_waiting: AtomicBool::new(false),
        }
    }

    /// Queues a server-side subscription change for the connection task. False when
    /// [`MAX_PENDING_SERVER_OPS`] are already waiting (the change is dropped).
    pub(crate) fn push_server_op(&self, op: ServerSubscription) -> bool {
        {
            let mut q = self.server_ops.lock();
            if q.len() >= MAX_PENDING_SERVER_OPS {
                tracing::warn!(connection_id = %self.id, channel = %op.channel(), "server-side subscription dropped: too many pending");
                return false;
            }
            q.push_back(op);
            self.server_ops_waiting.store(true, Ordering::Release);
        }
        self.attention.wake();
        true
    }

    /// Resolves once the connection task has something to do besides its socket: a close
    /// was requested (first), or server-side subscription changes wait. One waker for both:
    /// the task polls this on every wake-up (each delivery, when quiet), where a `Notify`
    /// per event registered and unregistered a waiter under a lock each time.
    pub fn attention(&self) -> impl Future<Output = Attention> + '_ {
        std::future::poll_fn(move |cx| {
            if let Some(a) = self.needs() {
                return Poll::Ready(a);
            }
            self.attention.register(cx.waker());
            // Set between the look and the registration: not missed.
            self.needs().map_or(Poll::Pending, Poll::Ready)
        })
    }

    fn needs(&self) -> Option<Attention> {
        if self.close.get().is_some() {
            Some(Attention::Close)
        } else if self.server_ops_waiting.load(Ordering::Acquire) {
            Some(Attention::ServerOps)
        } else {
            None
        }
    }

    /// The waiting server-side subscription changes, oldest first.
    pub fn take_server_ops(&self) -> Vec<ServerSubscription> {
        let mut q = self.server_ops.lock();
        self.server_ops_waiting.store(false, Ordering::Release);
        q.drain(..).collect()
    }

    pub fn user(&self) -> &Arc<str> {
        &self.identity.user
    }

    /// Asks the connection task to close. Returns false if a close was already requested.
    pub fn request_close(
        &self,
        code: u16,
        reason: &'static str,
        message: impl Into<String>,
    ) -> bool {
        let first = self
            .close
            .set(Box::new(CloseRequest {
                code,
                reason,
                message: message.into(),
            }))
            .is_ok();
        if first {
            self.attention.wake();
        }
        first
    }

    pub fn close_request(&self) -> Option<&CloseRequest> {
        self.close.get().map(|c| &**c)
    }

    pub fn touch(&self, now_ms: u64) {
        self.stats.last_seen_ms.store(now_ms, Relaxed);
    }

    pub fn channels(&self) -> Vec<Arc<str>> {
        self.channels.lock().clone()
    }

    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.channels.lock().iter().any(|c| &**c == channel)
    }

    pub(crate) fn add_channel(&self, channel: Arc<str>) -> bool {
        let mut c = self.channels.lock();
        if c.contains(&channel) {
            return false;
        }
        // Exact: most connections subscribe to one or two channels and keep them.
        c.reserve_exact(1);
        c.push(channel);
        true
    }

    pub(crate) fn remove_channel(&self, channel: &str) -> bool {
        let mut c = self.channels.lock();
        let before = c.len();
        c.retain(|x| &**x != channel);
        c.len() != before
    }

    pub(crate) fn take_channels(&self) -> Vec<Arc<str>> {
        std::mem::take(&mut *self.channels.lock())
    }

    pub fn channel_count(&self) -> usize {
        self.channels.lock().len()
    }

    /// Seed 003's per-connection debug view.
    pub fn info(&self, node: &str, now_ms: u64) -> ConnectionInfo {
        let s = &self.stats;
        let last_seen = s.last_seen_ms.load(Relaxed);
        ConnectionInfo {
            id: self.id.to_string(),
            kind: self.kind,
            user: self.identity.user.to_string(),
            channels: self.channels().iter().map(|c| c.to_string()).collect(),
            connected_at_ms: self.connected_at_unix_ms,
            uptime_ms: now_ms.saturating_sub(self.connected_at_ms),
            last_heartbeat_ms_ago: now_ms.saturating_sub(last_seen),
            messages_sent: s.messages_out.load(Relaxed),
            messages_received: s.messages_in.load(Relaxed),
            bytes_sent: s.bytes_out.load(Relaxed),
            bytes_received: s.bytes_in.load(Relaxed),
            errors: s.errors.load(Relaxed),
            last_error: s.last_error.lock().clone(),
            queue_depth: self.transport.backlog(),
            state: if self.close.get().is_some() {
                "closing"
            } else {
                "open"
            },
            node: node.to_string(),
            remote: self.remote.map(|a| a.to_string()),
        }
    }
}

/// A connection as the control API shows it (and as another node's listing brings it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub id: String,
    #[serde(deserialize_with = "crate::names::interned")]
    pub kind: &'static str,
    pub user: String,
    pub channels: Vec<String>,
    pub connected_at_ms: u64,
    pub uptime_ms: u64,
    pub last_heartbeat_ms_ago: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub queue_depth: usize,
    #[serde(deserialize_with = "crate::names::interned")]
    pub state: &'static str,
    pub node: String,
    pub remote: Option<String>,
}

//! Tokens that expire on open connections.
//!
//! A connection opened with a token carrying `exp` is due at that time (converted once to the
//! node's [`Clock`](crate::clock::Clock)). One task per node ([`Gateway::run_expiries`])
//! sleeps until the earliest due time: an expired connection gets
//! `{"op":"error","code":"token_expired"}` and a grace (`token_grace`, default 10 s) to send
//! `{"op":"refresh","token":…}`; when the grace ends without one, it is closed with 4001.
//! A refresh for the same `sub` moves the due time to the new token's `exp`. No timer per
//! connection: one ordered set of `(due_ms, connection id)`, whose stale entries (a refreshed
//! or closed connection) are skipped or removed.

use std::collections::BTreeSet;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::info;

use super::connection::Connection;
use super::{Gateway, Outbound};
use crate::protocol::{self, ProtocolError, close};

/// Where one connection's token stands, in node-clock milliseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TokenClock {
    /// When the token expires (`None`: never).
    pub expires_ms: Option<u64>,
    /// Set once `token_expired` was sent: when the grace ends.
    pub grace_ends_ms: Option<u64>,
}

impl TokenClock {
    /// The next time something happens to this connection.
    fn due(&self) -> Option<u64> {
        self.grace_ends_ms.or(self.expires_ms)
    }
}

/// The node's ordered due times.
#[derive(Debug, Default)]
pub struct Expiries {
    due: Mutex<BTreeSet<(u64, Arc<str>)>>,
    changed: Notify,
}

impl Expiries {
    fn schedule(&self, at_ms: u64, id: &Arc<str>) {
        let mut due = self.due.lock();
        let first = due.first().is_none_or(|(t, _)| at_ms < *t);
        due.insert((at_ms, id.clone()));
        if first {
            self.changed.notify_one();
        }
    }

    fn cancel(&self, at_ms: u64, id: &Arc<str>) {
        self.due.lock().remove(&(at_ms, id.clone()));
    }

    fn next(&self) -> Option<u64> {
        self.due.lock().first().map(|(t, _)| *t)
    }

    fn take_due(&self, now_ms: u64) -> Vec<(u64, Arc<str>)> {
        let mut due = self.due.lock();
        let mut out = Vec::new();
        while let Some(first) = due.first()
            && first.0 <= now_ms
        {
            out.extend(due.pop_first());
        }
        out
    }

    /// Entries waiting (for tests and the debug of leaks).
    pub fn len(&self) -> usize {
        self.due.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Gateway {
    /// Arms the expiry of a new connection's token (its `exp`), once its `hello` was
    /// written: `token_expired` (due at once for a token accepted within the leeway) must not
    /// overtake `hello`.
    pub fn arm_expiry(&self, conn: &Connection) {
        let Some(exp) = conn.identity.expires_at else {
            return;
        };
        let at = self.due_ms(exp);
        *conn.token.lock() = TokenClock {
            expires_ms: Some(at),
            grace_ends_ms: None,
        };
        self.expiries.schedule(at, &conn.id);
    }

    /// The node-clock time of a Unix time in seconds.
    fn due_ms(&self, exp: u64) -> u64 {
        let left = exp
            .saturating_mul(1000)
            .saturating_sub(crate::clock::unix_ms());
        self.clock.now_ms().saturating_add(left)
    }

    /// A connection's token was replaced by one for the same user expiring at `exp`: the
    /// grace (if any) ends, and the new expiry is armed.
    pub fn refresh_token(&self, conn: &Connection, exp: Option<u64>) {
        let mut token = conn.token.lock();
        if let Some(at) = token.due() {
            self.expiries.cancel(at, &conn.id);
        }
        let expires_ms = exp.map(|e| self.due_ms(e));
        *token = TokenClock {
            expires_ms,
            grace_ends_ms: None,
        };
        if let Some(at) = expires_ms {
            self.expiries.schedule(at, &conn.id);
        }
    }

    /// Forgets a closing connection's due time.
    pub(super) fn disarm_expiry(&self, conn: &Connection) {
        if let Some(at) = conn.token.lock().due() {
            self.expiries.cancel(at, &conn.id);
        }
    }

    /// Runs the node's token expiries until the task is dropped.
    pub async fn run_expiries(&self) {
        loop {
            let changed = self.expiries.changed.notified();
            match self.expiries.next() {
                Some(at) => {
                    let when = self.clock.instant_at(at);
                    tokio::select! {
                        () = tokio::time::sleep_until(when) => {}
                        () = changed => {}
                    }
                }
                None => changed.await,
            }
            self.expire(self.clock.now_ms());
        }
    }

    /// Handles every due time up to `now_ms`.
    pub fn expire(&self, now_ms: u64) {
        for (at, id) in self.expiries.take_due(now_ms) {
            let Some(conn) = self.registry.get(&id) else {
                continue;
            };
            let mut token = conn.token.lock();
            if token.due() != Some(at) {
                continue; // refreshed since
            }
            if token.grace_ends_ms.is_some() {
                drop(token);
                if conn.request_close(close::AUTH_FAILED, "token_expired", "token expired") {
                    info!(connection_id = %conn.id, user = %conn.user(), "token expired; closed");
                }
                continue;
            }
            let grace = self.config.token_grace.as_millis() as u64;
            let ends = now_ms.saturating_add(grace);
            token.grace_ends_ms = Some(ends);
            drop(token);
            self.expiries.schedule(ends, &id);
            self.metrics.protocol_error("token_expired");
            let e = ProtocolError::new(
                "token_expired",
                format!("token expired; send a refresh within {grace} ms"),
            );
            let frame = protocol::error_frame(None, &e);
            // A full backlog closes the connection as a slow consumer: the grace is moot.
            if conn
                .transport
                .send(&Outbound::Frame(protocol::wire_text(frame.as_bytes())))
                .is_err()
                && conn.request_close(
                    close::SLOW_CONSUMER,
                    "slow_consumer",
                    "slow consumer: backlog full",
                )
            {
                self.metrics.slow_consumers.inc();
            }
        }
    }
}

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
//!
//! With a refresh hook configured, an expiring connection is first put to the backend
//! (`Gateway::ask_refresh`): it extends the connection or ends it, and only a backend that
//! cannot answer leaves the client its grace.

use std::collections::BTreeSet;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::info;

use super::connection::Connection;
use super::{Gateway, Outbound};
use crate::clock::Clock;
use crate::hooks::{Caller, Hook, HookError, Proxy, RefreshReply, RefreshRequest};
use crate::metrics::Metrics;
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
        self.timer().due_ms(exp)
    }

    /// A connection's token was replaced by one for the same user expiring at `exp`: the
    /// grace (if any) ends, and the new expiry is armed.
    pub fn refresh_token(&self, conn: &Connection, exp: Option<u64>) {
        self.timer().rearm(conn, exp);
    }

    /// What a spawned refresh hook needs to act on its answer.
    fn timer(&self) -> Timer {
        Timer {
            expiries: self.expiries.clone(),
            clock: self.clock,
            grace_ms: self.config.token_grace.as_millis() as u64,
            metrics: self.metrics.clone(),
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
            let token = conn.token.lock();
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
            drop(token);
            match self.proxy().filter(|p| p.has(Hook::Refresh)) {
                Some(proxy) => self.ask_refresh(proxy.clone(), conn),
                None => {
                    let grace = self.config.token_grace.as_millis();
                    let e = ProtocolError::new(
                        "token_expired",
                        format!("token expired; send a refresh within {grace} ms"),
                    );
                    self.timer().start_grace(&conn, now_ms, &e);
                }
            }
        }
    }

    /// Asks the refresh hook whether an expiring connection goes on: a new `expire_at`
    /// re-arms it, `expired` (or a refusal) closes it with 4001, and a backend that cannot
    /// answer starts the grace with `backend_unavailable` (the client may still `refresh`
    /// with a token). The call is bounded by the hook's timeout and retries.
    fn ask_refresh(&self, proxy: Arc<Proxy>, conn: Arc<Connection>) {
        let timer = self.timer();
        let req = RefreshRequest {
            caller: Caller::of(&conn, self.node()),
        };
        tokio::spawn(async move {
            match proxy.refresh(&req).await {
                Ok(RefreshReply {
                    expire_at: Some(exp),
                    ..
                }) => timer.rearm(&conn, Some(exp)),
                Ok(_) | Err(HookError::Rejected(_)) => {
                    if conn.request_close(close::AUTH_FAILED, "token_expired", "token expired") {
                        info!(connection_id = %conn.id, user = %conn.user(), "refresh hook ended the connection");
                    }
                }
                Err(e) => {
                    let now = timer.clock.now_ms();
                    timer.start_grace(&conn, now, &e.to_protocol());
                }
            }
        });
    }
}

/// The parts of the gateway an expiry touches, cloned into a refresh hook's task.
#[derive(Clone)]
struct Timer {
    expiries: Arc<Expiries>,
    clock: Clock,
    grace_ms: u64,
    metrics: Metrics,
}

impl Timer {
    /// The node-clock time of a Unix time in seconds.
    fn due_ms(&self, exp: u64) -> u64 {
        let left = exp
            .saturating_mul(1000)
            .saturating_sub(crate::clock::unix_ms());
        self.clock.now_ms().saturating_add(left)
    }

    /// Moves a connection's expiry to `exp` (`None`: never); a grace, if any, ends.
    fn rearm(&self, conn: &Connection, exp: Option<u64>) {
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

    /// Tells the client `e` and gives it the grace to send `refresh`; when the grace ends
    /// without one, the connection is closed (4001).
    fn start_grace(&self, conn: &Connection, now_ms: u64, e: &ProtocolError) {
        let ends = now_ms.saturating_add(self.grace_ms);
        conn.token.lock().grace_ends_ms = Some(ends);
        self.expiries.schedule(ends, &conn.id);
        self.metrics.protocol_error(e.code);
        let frame = protocol::error_frame(None, e);
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

//! What the client library reports about a connection's life, turned into the metrics
//! seed 002's alerts need: reconnect attempts and failures by reason, reconnect duration
//! (from the drop to ready again), connection duration, login failures, give-ups.
//!
//! The pump feeds every [`Event`] but data messages and every state change through one
//! [`Lifetimes`] per connection. Nothing here runs per message: a data message never
//! reaches it.

use tokio::time::Instant;
use wsgate_client::{ConnectionState, Error, Event};

use crate::metrics::{Metrics, ReasonLabel};

/// The `reason` label of a failed connection or attempt (one of
/// [`UPSTREAM_FAILURE_REASONS`](crate::metrics::UPSTREAM_FAILURE_REASONS)).
pub fn failure_reason(e: &Error) -> &'static str {
    match e {
        Error::GaveUp { last_error, .. } => failure_reason(last_error),
        Error::Connect(m) if is_tls(m) => "tls",
        Error::Connect(_) => "connect",
        Error::Auth(_) => "auth",
        Error::ServerClosed { .. } => "server_closed",
        Error::HeartbeatTimeout(_) => "heartbeat_timeout",
        Error::WriteTimeout(_) => "write_timeout",
        Error::Transport(m) if is_tls(m) => "tls",
        Error::Transport(_) => "transport",
        Error::ConnectionLost => "connection_lost",
        _ => "other",
    }
}

fn is_tls(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("tls") || m.contains("certificate")
}

/// The `reason` label of a failed login: no answer in time, or anything else the server
/// (or the socket) did instead of accepting it.
pub fn auth_reason(message: &str) -> &'static str {
    if message.starts_with("no reply within") {
        "timeout"
    } else {
        "rejected"
    }
}

/// One connection's clocks: since when it is ready, since when it is down.
#[derive(Debug, Default)]
pub struct Lifetimes {
    ready_since: Option<Instant>,
    down_since: Option<Instant>,
}

impl Lifetimes {
    /// A client event other than a data message.
    pub fn on_event(&mut self, m: &Metrics, event: &Event) {
        match event {
            Event::Reconnecting { error, .. } => {
                let reason = failure_reason(error);
                m.upstream_reconnect_attempts
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                // Already down: this attempt follows a failed one.
                if self.down_since.is_some() {
                    m.upstream_reconnect_failures
                        .get_or_create(&ReasonLabel { reason })
                        .inc();
                }
                self.down_since.get_or_insert_with(Instant::now);
                if let Error::Auth(msg) = error {
                    m.upstream_auth_failures
                        .get_or_create(&ReasonLabel {
                            reason: auth_reason(msg),
                        })
                        .inc();
                }
            }
            // The first connection is up: the failed attempts before it were no reconnect.
            Event::Opened => self.down_since = None,
            Event::Reconnected => {
                if let Some(t) = self.down_since.take() {
                    m.upstream_reconnect_duration
                        .observe(t.elapsed().as_secs_f64());
                }
            }
            Event::GaveUp { error } => {
                let reason = failure_reason(error);
                m.upstream_reconnect_failures
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                if let Error::GaveUp { last_error, .. } = error
                    && let Error::Auth(msg) = &**last_error
                {
                    m.upstream_auth_failures
                        .get_or_create(&ReasonLabel {
                            reason: auth_reason(msg),
                        })
                        .inc();
                }
                self.down_since = None;
            }
            _ => {}
        }
    }

    /// A state change of the connection.
    pub fn on_state(&mut self, m: &Metrics, to: ConnectionState) {
        match (to, self.ready_since) {
            (ConnectionState::Connected, None) => self.ready_since = Some(Instant::now()),
            (ConnectionState::Connected, Some(_)) => {}
            (_, Some(t)) => {
                m.upstream_connection_duration
                    .observe(t.elapsed().as_secs_f64());
                self.ready_since = None;
            }
            (_, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn count(
        f: &prometheus_client::metrics::family::Family<
            ReasonLabel,
            prometheus_client::metrics::counter::Counter,
        >,
        reason: &'static str,
    ) -> u64 {
        f.get_or_create(&ReasonLabel { reason }).get()
    }

    #[tokio::test(start_paused = true)]
    async fn a_drop_two_failed_attempts_and_a_recovery() {
        let m = Metrics::default();
        let mut l = Lifetimes::default();
        l.on_state(&m, ConnectionState::Connected);
        tokio::time::advance(Duration::from_secs(100)).await;
        l.on_state(&m, ConnectionState::Reconnecting);
        let reconnecting = |error: Error| Event::Reconnecting {
            attempt: 1,
            delay: Duration::ZERO,
            error,
        };
        l.on_event(&m, &reconnecting(Error::ConnectionLost));
        tokio::time::advance(Duration::from_secs(20)).await;
        l.on_event(&m, &reconnecting(Error::Auth("rejected: {}".into())));
        l.on_event(&m, &reconnecting(Error::Auth("no reply within 5s".into())));
        tokio::time::advance(Duration::from_secs(20)).await;
        l.on_event(&m, &Event::Reconnected);
        l.on_state(&m, ConnectionState::Connected);

        assert_eq!(count(&m.upstream_reconnect_attempts, "connection_lost"), 1);
        assert_eq!(count(&m.upstream_reconnect_attempts, "auth"), 2);
        // The drop itself is no failed attempt; the two attempts after it are.
        assert_eq!(count(&m.upstream_reconnect_failures, "connection_lost"), 0);
        assert_eq!(count(&m.upstream_reconnect_failures, "auth"), 2);
        assert_eq!(count(&m.upstream_auth_failures, "rejected"), 1);
        assert_eq!(count(&m.upstream_auth_failures, "timeout"), 1);
        let text = {
            let mut r = prometheus_client::registry::Registry::default();
            m.register(&mut r);
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
            out
        };
        assert!(
            text.contains("wsgate_upstream_reconnect_duration_seconds_sum 40.0"),
            "{text}"
        );
        assert!(
            text.contains("wsgate_upstream_connection_duration_seconds_sum 100.0"),
            "{text}"
        );
    }

    #[test]
    fn reasons() {
        assert_eq!(
            failure_reason(&Error::Connect("invalid peer certificate: Expired".into())),
            "tls"
        );
        assert_eq!(failure_reason(&Error::Connect("refused".into())), "connect");
        let gave_up = Error::GaveUp {
            attempts: 3,
            last_error: Box::new(Error::HeartbeatTimeout(Duration::from_secs(1))),
        };
        assert_eq!(failure_reason(&gave_up), "heartbeat_timeout");
    }
}

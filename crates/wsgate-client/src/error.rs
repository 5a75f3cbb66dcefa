//! The crate's error type.
//!
//! Every variant is `Clone` (causes are kept as strings) so one error can be
//! stored in the stats snapshot, carried in an [`Event`](crate::Event) and
//! returned to a caller at the same time.
//!
//! Some `Display` strings are part of wsgate's public API (seed 000) and must
//! not change: [`Error::NotConnected`] and [`Error::RequestTimeout`].

/// Everything that can go wrong in `wsgate-client`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A send was attempted while the socket is not connected and the client
    /// is configured with [`OfflinePolicy::Reject`](crate::OfflinePolicy::Reject),
    /// or the client has stopped (closed or gave up). Exact text is API.
    #[error("WebSocket is not connected")]
    NotConnected,

    /// No correlated reply arrived within the request's timeout. Exact text is API.
    #[error("Request timeout")]
    RequestTimeout,

    /// The offline outbox is full; the message was not queued.
    #[error("outbox full ({capacity} messages queued while disconnected)")]
    OutboxFull {
        /// The configured outbox capacity.
        capacity: usize,
    },

    /// The connection was lost after a request was sent and before its reply.
    #[error("connection lost before the reply arrived")]
    ConnectionLost,

    /// `request` was called but no correlation mode is configured, or the
    /// message cannot carry a correlation id in the configured mode.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The URL, a header or the subprotocol could not be turned into a request.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// TCP connect or WebSocket handshake failed (or timed out).
    #[error("connect failed: {0}")]
    Connect(String),

    /// The TLS handshake failed (`certificate has expired`, `unknown issuer`,
    /// `hostname mismatch`, …).
    #[error("TLS handshake failed: {0}")]
    Tls(String),

    /// The server answered the handshake with 429 or 503 and a `Retry-After`.
    #[error("connect failed: HTTP {status}, retry after {retry_after:?}")]
    Throttled {
        /// The HTTP status.
        status: u16,
        /// The server's `Retry-After` (the wait is capped by the backoff's `max_delay`).
        retry_after: std::time::Duration,
    },

    /// A caller-supplied correlation id is still in flight. Exact text is API.
    #[error("Request id already pending")]
    RequestIdPending,

    /// The authentication step failed: rejected, timed out or the socket died.
    #[error("authentication failed: {0}")]
    Auth(String),

    /// Reading or writing the socket failed.
    #[error("transport error: {0}")]
    Transport(String),

    /// The server sent a close frame.
    #[error("server closed the connection (code {code}: {reason})")]
    ServerClosed {
        /// Close code sent by the server (1005 when it sent none).
        code: u16,
        /// Close reason sent by the server.
        reason: String,
    },

    /// Nothing came back within the heartbeat timeout.
    #[error("heartbeat timeout: nothing received for {0:?}")]
    HeartbeatTimeout(std::time::Duration),

    /// A write did not complete within the write timeout.
    #[error("write timeout after {0:?}")]
    WriteTimeout(std::time::Duration),

    /// The reconnect policy ran out of attempts.
    #[error("gave up after {attempts} reconnect attempts; last error: {last_error}")]
    GaveUp {
        /// Retries made.
        attempts: u32,
        /// The error of the last attempt.
        last_error: Box<Error>,
    },

    /// [`Client::reconnect`](crate::Client::reconnect) dropped the connection on purpose.
    #[error("reconnect requested")]
    ReconnectRequested,

    /// The client was closed by its owner.
    #[error("client closed")]
    Closed,
}

impl Error {
    pub(crate) fn transport(e: impl std::fmt::Display) -> Self {
        Error::Transport(e.to_string())
    }
}

/// Shorthand for `Result<T, wsgate_client::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

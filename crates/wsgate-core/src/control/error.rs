//! [`ControlError`]: why a control operation failed, as every transport reports it.
//!
//! The `message` is API: HTTP puts it in `error`, gRPC in the reply's `error`, and clients
//! match on seed 000's strings (`Connection not found`, `Connection owned by different
//! instance: <id>`, `WebSocket is not connected`, `Request timeout`). The `code` is what a
//! transport maps to its status (HTTP 404, 409, …); it never changes the message.

use crate::gateway::GatewayError;
use crate::seams::StoreError;
use crate::upstream::UpstreamError;

/// The kind of failure, for a transport's status mapping (and, between nodes, for a
/// forwarded call's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorCode {
    /// No such connection (HTTP 404).
    NotFound,
    /// The connection is elsewhere or not in a state to do it (HTTP 409).
    Conflict,
    /// The request is wrong (HTTP 400).
    InvalidArgument,
    /// No answer in time (HTTP 504).
    Timeout,
    /// The broker or the store is down, or an outbox is full (HTTP 503).
    Unavailable,
    /// The upstream (or the instance owning it) failed (HTTP 502).
    BadGateway,
    /// Missing or wrong API key (HTTP 401).
    Unauthorized,
    /// Not allowed by the node's policy, whoever asks (HTTP 403): an upstream host outside
    /// `upstream_allowed_hosts`.
    Forbidden,
    /// Over the API rate limit; retry after this many seconds (HTTP 429).
    RateLimited { retry_after_secs: u64 },
}

/// What every operation answers when the store does not (never `Connection not found`).
pub const STORE_UNAVAILABLE: &str = "Store unavailable";

/// A failed control operation: its kind and its exact message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    pub code: ErrorCode,
    pub message: String,
}

impl ControlError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The store (Redis) did not answer: 503 `Store unavailable`, whatever the operation.
    pub fn store_unavailable() -> Self {
        Self::new(ErrorCode::Unavailable, STORE_UNAVAILABLE)
    }

    /// A request the caller must fix.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
}

impl From<GatewayError> for ControlError {
    fn from(e: GatewayError) -> Self {
        let code = match &e {
            GatewayError::ConnectionNotFound => ErrorCode::NotFound,
            GatewayError::InvalidData(_) => ErrorCode::InvalidArgument,
            GatewayError::Broker(crate::seams::BrokerError::IdempotencyConflict) => {
                ErrorCode::Conflict
            }
            GatewayError::Broker(_) => ErrorCode::Unavailable,
        };
        Self::new(code, e.to_string())
    }
}

impl From<UpstreamError> for ControlError {
    fn from(e: UpstreamError) -> Self {
        let code = match &e {
            UpstreamError::NotFound => ErrorCode::NotFound,
            UpstreamError::OwnedByDifferentInstance(_) | UpstreamError::NotConnected => {
                ErrorCode::Conflict
            }
            UpstreamError::RequestTimeout => ErrorCode::Timeout,
            UpstreamError::Invalid(_) => ErrorCode::InvalidArgument,
            UpstreamError::Upstream(wsgate_client::Error::OutboxFull { .. }) => {
                ErrorCode::Unavailable
            }
            UpstreamError::Upstream(_) | UpstreamError::Remote(_) => ErrorCode::BadGateway,
            UpstreamError::Store(StoreError::Revoked(_)) => {
                return Self::new(ErrorCode::NotFound, UpstreamError::NotFound.to_string());
            }
            UpstreamError::Store(StoreError::NoAnswer(_) | StoreError::Other(_)) => {
                ErrorCode::Unavailable
            }
            UpstreamError::Store(StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, "store unavailable");
                return Self::store_unavailable();
            }
        };
        Self::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_000_strings_and_codes() {
        let cases = [
            (
                UpstreamError::NotFound,
                ErrorCode::NotFound,
                "Connection not found",
            ),
            (
                UpstreamError::OwnedByDifferentInstance("pod-1".into()),
                ErrorCode::Conflict,
                "Connection owned by different instance: pod-1",
            ),
            (
                UpstreamError::NotConnected,
                ErrorCode::Conflict,
                "WebSocket is not connected",
            ),
            (
                UpstreamError::RequestTimeout,
                ErrorCode::Timeout,
                "Request timeout",
            ),
            (
                UpstreamError::Remote("boom".into()),
                ErrorCode::BadGateway,
                "boom",
            ),
        ];
        for (e, code, message) in cases {
            assert_eq!(ControlError::from(e), ControlError::new(code, message));
        }
        let e = ControlError::from(GatewayError::ConnectionNotFound);
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::NotFound, "Connection not found")
        );
        let down = UpstreamError::Store(StoreError::Unavailable("x".into()));
        assert_eq!(
            ControlError::from(down),
            ControlError::new(ErrorCode::Unavailable, "Store unavailable")
        );
        // A hung owner is not a store outage: it is named.
        let hung = UpstreamError::Store(StoreError::NoAnswer("n2".into()));
        assert_eq!(
            ControlError::from(hung),
            ControlError::new(
                ErrorCode::Unavailable,
                "instance n2 did not answer a forwarded call in time"
            )
        );
        let full = UpstreamError::from(wsgate_client::Error::OutboxFull { capacity: 1 });
        assert_eq!(ControlError::from(full).code, ErrorCode::Unavailable);
    }
}

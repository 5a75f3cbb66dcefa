//! Why an upstream operation failed.
//!
//! The `Display` strings of the first four variants are API (seed 000): HTTP and gRPC
//! answers carry them verbatim in `error`, and clients match on them.

use crate::seams::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection with that id on this node (and no record of one elsewhere).
    #[error("Connection not found")]
    NotFound,
    /// The record says another node holds the connection (cluster mode).
    #[error("Connection owned by different instance: {0}")]
    OwnedByDifferentInstance(String),
    /// The socket is down and the connection rejects offline sends, or it has stopped.
    #[error("WebSocket is not connected")]
    NotConnected,
    /// No correlated reply arrived within the SendAsync timeout.
    #[error("Request timeout")]
    RequestTimeout,
    /// The request itself is wrong (bad URL, no correlation mode, not JSON, …).
    #[error("{0}")]
    Invalid(String),
    /// Any other failure of the connection (outbox full, connection lost mid-request, …).
    #[error("{0}")]
    Upstream(wsgate_client::Error),
    /// A forwarded call failed on (or on the way to) the owning instance.
    #[error("{0}")]
    Remote(String),
    /// The connection record could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<wsgate_client::Error> for UpstreamError {
    fn from(e: wsgate_client::Error) -> Self {
        use wsgate_client::Error as E;
        match e {
            E::NotConnected | E::Closed => UpstreamError::NotConnected,
            E::RequestTimeout => UpstreamError::RequestTimeout,
            E::InvalidRequest(m) | E::InvalidConfig(m) => UpstreamError::Invalid(m),
            E::RequestIdPending => UpstreamError::Invalid(E::RequestIdPending.to_string()),
            other => UpstreamError::Upstream(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_000_strings() {
        assert_eq!(UpstreamError::NotFound.to_string(), "Connection not found");
        assert_eq!(
            UpstreamError::OwnedByDifferentInstance("pod-1".into()).to_string(),
            "Connection owned by different instance: pod-1"
        );
        assert_eq!(
            UpstreamError::from(wsgate_client::Error::NotConnected).to_string(),
            "WebSocket is not connected"
        );
        assert_eq!(
            UpstreamError::from(wsgate_client::Error::RequestTimeout).to_string(),
            "Request timeout"
        );
    }
}

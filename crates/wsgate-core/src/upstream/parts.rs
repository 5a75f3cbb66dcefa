//! What the upstream manager needs from the rest of the node, named one by one.
//!
//! The manager used to reach everything through the [`Gateway`]; now it is given the
//! parts it uses: the node id (connection ids, record owners), the store that keeps
//! connection records, a [`Publisher`] for `topic:<name>` channels and the metrics. A
//! test can drive it with a memory store and a recording publisher, no gateway needed.

use std::sync::Arc;

use crate::seams::{NodeId, UpstreamRecords};
use bytes::Bytes;

use crate::gateway::{Gateway, GatewayError};
use crate::metrics::Metrics;

/// Where the messages of a publishing connection go.
#[async_trait::async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `data` (one JSON value) to `channel`, like the control API's Publish.
    async fn publish(&self, channel: &str, data: Bytes) -> Result<(), GatewayError>;
}

#[async_trait::async_trait]
impl Publisher for Gateway {
    async fn publish(&self, channel: &str, data: Bytes) -> Result<(), GatewayError> {
        Gateway::publish(self, channel, data, None, None)
            .await
            .map(drop)
    }
}

/// The manager's view of its node.
#[derive(Clone)]
pub struct UpstreamParts {
    /// This node: prefix of new connection ids, owner of new records.
    pub node: NodeId,
    /// Connection records (cluster mode reclaims connections from them).
    pub records: Arc<dyn UpstreamRecords>,
    /// Publications of received messages.
    pub publisher: Arc<dyn Publisher>,
    pub metrics: Metrics,
}

//! The [`Store`] seam: state that must outlive one node.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::upstream::UpstreamRecord;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Other(String),
}

/// One connection present in a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceEntry {
    pub connection_id: Arc<str>,
    pub user: Arc<str>,
    pub node: Arc<str>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn presence_join(&self, channel: &str, entry: PresenceEntry) -> Result<(), StoreError>;
    async fn presence_leave(&self, channel: &str, connection_id: &str) -> Result<(), StoreError>;
    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>, StoreError>;

    /// Creates or replaces the record of an upstream connection (keyed by its id).
    async fn upstream_put(&self, record: UpstreamRecord) -> Result<(), StoreError>;
    async fn upstream_get(&self, id: &str) -> Result<Option<UpstreamRecord>, StoreError>;
    /// Removes a record; removing an unknown id is not an error.
    async fn upstream_delete(&self, id: &str) -> Result<(), StoreError>;
    /// Every record, in no particular order.
    async fn upstream_list(&self) -> Result<Vec<UpstreamRecord>, StoreError>;
    fn is_healthy(&self) -> bool;
}

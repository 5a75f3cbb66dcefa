//! The [`PresenceStore`] seam: who is in which channel, across the cluster; and
//! [`StoreError`], the error of every store-side seam.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Other(String),
    /// A node got a forwarded call (its process listens) but did not answer in time: the
    /// store works, that node does not.
    #[error("instance {0} did not answer a forwarded call in time")]
    NoAnswer(String),
    /// An upstream record that is gone (wiped) or names another owner now: the writer
    /// must stop its connection, not re-create the record.
    #[error("upstream record {0} is gone or owned by another instance")]
    Revoked(String),
}

/// One connection present in a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceEntry {
    pub connection_id: Arc<str>,
    pub user: Arc<str>,
    pub node: Arc<str>,
}

#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    async fn presence_join(&self, channel: &str, entry: PresenceEntry) -> Result<(), StoreError>;
    async fn presence_leave(&self, channel: &str, connection_id: &str) -> Result<(), StoreError>;
    /// A closing connection leaves all its channels at once. A store that fails to remove
    /// them must remember them and retry (no entry may outlive its connection).
    async fn presence_leave_all(
        &self,
        channels: &[Arc<str>],
        connection_id: &str,
    ) -> Result<(), StoreError> {
        for channel in channels {
            self.presence_leave(channel, connection_id).await?;
        }
        Ok(())
    }
    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>, StoreError>;
    /// Whether the store answers now (feeds `/ready`). One backend holds presence and
    /// upstream records, so this stands for both.
    fn is_healthy(&self) -> bool;
}

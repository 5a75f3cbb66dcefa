//! The [`UpstreamRecords`] seam: the durable records of upstream connections, which let a
//! surviving node re-establish the connections of a dead one.

use async_trait::async_trait;

use super::presence::StoreError;
use super::upstream::UpstreamRecord;

#[async_trait]
pub trait UpstreamRecords: Send + Sync + 'static {
    /// Creates or replaces the record of an upstream connection (keyed by its id).
    async fn upstream_put(&self, record: UpstreamRecord) -> Result<(), StoreError>;
    /// Replaces the record only while it exists and names `record.owner`; otherwise
    /// [`StoreError::Revoked`] and nothing is written (a wiped record stays wiped).
    async fn upstream_update(&self, record: UpstreamRecord) -> Result<(), StoreError>;
    async fn upstream_get(&self, id: &str) -> Result<Option<UpstreamRecord>, StoreError>;
    /// Removes a record; removing an unknown id is not an error.
    async fn upstream_delete(&self, id: &str) -> Result<(), StoreError>;
    /// Every record, in no particular order.
    async fn upstream_list(&self) -> Result<Vec<UpstreamRecord>, StoreError>;
}

//! The [`Ownership`] seam: which node holds which upstream connection in a cluster.
//!
//! Single-node stores have none (every record is this node's). Cluster stores (Redis)
//! implement it with leases and an atomic compare-and-set claim of orphaned records. The
//! channel that carries API calls to a connection's owner is a separate seam,
//! [`Forwarding`](super::Forwarding).

use std::time::Duration;

use async_trait::async_trait;

use super::presence::StoreError;
use super::upstream::UpstreamRecord;

/// What one reclaimer sweep found.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Records this node won (they now name this node as owner): start them.
    pub claimed: Vec<UpstreamRecord>,
    /// Ids this node runs locally whose record is gone (wiped: `CLEAR_ALL_ON_START` on
    /// another node, an operator) or now names another owner (it was declared dead while
    /// alive, e.g. cut off from Redis for longer than its lease): close them.
    pub lost: Vec<String>,
}

#[async_trait]
pub trait Ownership: Send + Sync + 'static {
    /// Takes (or renews) this node's lease now and registers the node as an instance.
    async fn acquire_lease(&self) -> Result<(), StoreError>;
    /// Whether `node` holds a lease.
    async fn is_alive(&self, node: &str) -> Result<bool, StoreError>;
    /// Every node that holds a lease now (this one included), for cluster-wide views.
    async fn live_nodes(&self) -> Result<Vec<String>, StoreError>;
    /// One reclaimer pass: claims (compare-and-set, at most this node's fair share) the
    /// records whose owner's lease is gone. `local` are the ids this node runs.
    async fn sweep(&self, local: &[String]) -> Result<Sweep, StoreError>;
    /// Graceful hand-over: stops renewing the lease, marks each of `ids` still owned by
    /// this node as unowned and deletes the lease, so survivors claim them at once.
    async fn release(&self, ids: &[String]) -> Result<usize, StoreError>;
    /// Deletes every upstream record (`CLEAR_ALL_ON_START`). Returns how many.
    async fn clear_all(&self) -> Result<usize, StoreError>;
    /// How often the reclaimer should sweep.
    fn sweep_interval(&self) -> Duration;
}

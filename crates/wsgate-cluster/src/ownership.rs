//! The [`Ownership`] seam: who holds which upstream connection in a cluster.
//!
//! Single-node stores have none (every record is this node's). Cluster stores (Redis)
//! implement it with leases, an atomic compare-and-set claim of orphaned records and a
//! request/reply channel per node used to forward API calls to a connection's owner.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use crate::store::StoreError;
use crate::upstream::UpstreamRecord;

/// Answers one forwarded request (its body) with a reply body.
pub type RequestHandler = Arc<dyn Fn(String) -> BoxFuture<'static, String> + Send + Sync>;

/// What one reclaimer sweep found.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Records this node won (they now name this node as owner): start them.
    pub claimed: Vec<UpstreamRecord>,
    /// Ids this node runs locally whose record now names another owner (it was declared
    /// dead while alive, e.g. cut off from Redis for longer than its lease): close them.
    pub lost: Vec<String>,
}

#[async_trait]
pub trait Ownership: Send + Sync + 'static {
    /// Takes (or renews) this node's lease now and registers the node as an instance.
    async fn acquire_lease(&self) -> Result<(), StoreError>;
    /// Whether `node` holds a lease.
    async fn is_alive(&self, node: &str) -> Result<bool, StoreError>;
    /// One reclaimer pass: claims (compare-and-set, at most this node's fair share) the
    /// records whose owner's lease is gone. `local` are the ids this node runs.
    async fn sweep(&self, local: &[String]) -> Result<Sweep, StoreError>;
    /// Graceful hand-over: stops renewing the lease, marks each of `ids` still owned by
    /// this node as unowned and deletes the lease, so survivors claim them at once.
    async fn release(&self, ids: &[String]) -> Result<usize, StoreError>;
    /// Deletes every upstream record (`CLEAR_ALL_ON_START`). Returns how many.
    async fn clear_all(&self) -> Result<usize, StoreError>;
    /// Sends `body` to `node`'s handler and waits (at most `timeout`) for its reply.
    /// `None`: no process of that node listens (it is dead even if its lease is not).
    async fn request(
        &self,
        node: &str,
        body: String,
        timeout: Duration,
    ) -> Result<Option<String>, StoreError>;
    /// Starts answering requests addressed to this node with `handler`.
    fn serve(&self, handler: RequestHandler);
    /// How often the reclaimer should sweep.
    fn sweep_interval(&self) -> Duration;
}

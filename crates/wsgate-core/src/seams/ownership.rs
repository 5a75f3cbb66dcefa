//! The [`Ownership`] seam: which node holds which upstream connection in a cluster.
//!
//! Single-node stores have none (every record is this node's). Cluster stores (Redis)
//! implement it with leases and an atomic compare-and-set claim of orphaned records. The
//! channel that carries API calls to a connection's owner is a separate seam,
//! [`Forwarding`](super::Forwarding).
//!
//! A lease belongs to one *process*, not only to a node id: two processes started with the
//! same id (two hosts without `HOSTNAME`, a replaced pod whose predecessor still runs) would
//! otherwise share topics and rebuild each other's records. Taking a lease is refused with
//! [`LeaseError::Held`] while another process holds the id's lease, and a renewal that
//! finds another process's lease reports the same.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use super::presence::StoreError;
use super::upstream::UpstreamRecord;

/// Why a lease was not taken (or kept).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another process holds this node id's lease; it lapses `expires_in` from now unless
    /// that process renews it.
    #[error(
        "the node id's lease is held by another process (expires in {expires_in:?} unless renewed)"
    )]
    Held { expires_in: Duration },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where this process's lease stands, as the node running the connections must see it.
///
/// A survivor claims a node's records only after it saw the lease missing twice, more than
/// one TTL apart, with no take in between; the lease lapses at the earliest one TTL after
/// the renewal that kept it was *sent*. So nobody can claim before `sent + 2 × TTL`, and a
/// node that has not renewed by `until` (that bound, less a margin) stops its connections
/// on its own: it can never run a connection that another node runs too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Not taken yet, or handed over: nothing to fence.
    Pending,
    /// Held: the node may run its connections until `until` unless renewed again.
    Held { until: Instant },
    /// Another process holds the node id: stop every connection now.
    Lost,
}

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
    /// Takes (or renews) this process's lease on the node id now and registers the node as
    /// an instance; [`LeaseError::Held`] while another process holds it.
    async fn acquire_lease(&self) -> Result<(), LeaseError>;
    /// Whether `node` holds a lease.
    async fn is_alive(&self, node: &str) -> Result<bool, StoreError>;
    /// Every node that holds a lease now (this one included), for cluster-wide views.
    async fn live_nodes(&self) -> Result<Vec<String>, StoreError>;
    /// One reclaimer pass: claims (compare-and-set, at most this node's fair share) the
    /// records whose owner's lease is gone. `local` are the ids this node runs.
    /// [`LeaseError::Held`]: another process took this node id's lease meanwhile.
    async fn sweep(&self, local: &[String]) -> Result<Sweep, LeaseError>;
    /// Graceful hand-over: stops renewing the lease, marks each of `ids` still owned by
    /// this node as unowned and deletes the lease, so survivors claim them at once.
    async fn release(&self, ids: &[String]) -> Result<usize, StoreError>;
    /// Deletes every upstream record (`CLEAR_ALL_ON_START`). Returns how many.
    async fn clear_all(&self) -> Result<usize, StoreError>;
    /// How often the reclaimer should sweep.
    fn sweep_interval(&self) -> Duration;
    /// How long a lease lives without renewal.
    fn lease_ttl(&self) -> Duration;
    /// Follows this process's lease ([`Standing`]); the default never fences (single-node
    /// stores and test doubles).
    fn standing(&self) -> watch::Receiver<Standing> {
        watch::channel(Standing::Pending).1
    }
}

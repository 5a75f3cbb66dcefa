//! Taking the node id's lease, and telling a restarted node from a duplicate one.
//!
//! A lease held by another process means one of two things, and only time tells them
//! apart: a predecessor under the same id that died without a hand-over (SIGKILL, OOM) has
//! stopped renewing, so its lease lapses within one TTL; a *live* node with the same id
//! keeps renewing it forever. [`take`] therefore waits for a held lease for up to
//! [`PATIENCE`] lease TTLs — a restart after SIGKILL starts as soon as the old lease
//! lapses (at most one TTL, 400 ms by default) — and then gives up with a
//! [`LeaseConflict`] that names the id: the node must not run under it.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::cluster::retry;
use crate::seams::{LeaseError, Ownership};

/// How many lease TTLs a start waits for another process's lease to lapse: one TTL
/// covers a dead predecessor; a lease still held after two is renewed by a live node.
pub const PATIENCE: u32 = 2;

/// Another live process runs under this node id.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "node id {node:?} is in use by another live wsgate node: it holds the id's lease (waited \
     {waited:?} for it to lapse; it expires {expires_in:?} after that node stops renewing it). \
     Give every node its own node_id (WSGATE_NODE_ID or --node-id)"
)]
pub struct LeaseConflict {
    pub node: String,
    /// How long this node waited for the lease to lapse.
    pub waited: Duration,
    /// The holder's lease time left at the last look.
    pub expires_in: Duration,
}

/// What [`take`] does while the store does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Return `Ok(false)` at once (a node starts while Redis is down; the reclaimer
    /// takes the lease when it answers).
    GiveUp,
    /// Retry with capped backoff until it answers.
    Retry,
}

/// Takes `node`'s lease from `own`. `Ok(true)`: taken (or already ours); `Ok(false)`: the
/// store did not answer and `unreachable` is [`Unreachable::GiveUp`]; `Err`: another
/// process keeps the lease alive for [`PATIENCE`] TTLs.
pub async fn take(
    own: &dyn Ownership,
    node: &str,
    unreachable: Unreachable,
) -> Result<bool, LeaseConflict> {
    take_with(|| own.acquire_lease(), own.lease_ttl(), node, unreachable).await
}

/// [`take`] with the lease's `acquire` and `ttl` given directly.
async fn take_with<F, Fut>(
    acquire: F,
    ttl: Duration,
    node: &str,
    unreachable: Unreachable,
) -> Result<bool, LeaseConflict>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), LeaseError>>,
{
    let patience = ttl * PATIENCE;
    let mut first_held: Option<Instant> = None;
    // `None`: taken; `Some(expires_in)`: held by another process.
    let attempt = || async {
        match acquire().await {
            Ok(()) => Ok(None),
            Err(LeaseError::Held { expires_in }) => Ok(Some(expires_in)),
            Err(LeaseError::Store(e)) => Err(e),
        }
    };
    loop {
        let held = match unreachable {
            Unreachable::Retry => retry("lease", attempt).await,
            Unreachable::GiveUp => match attempt().await {
                Ok(held) => held,
                Err(e) => {
                    warn!(error = %e, "the store failed: the node id's lease is taken (with the same check) once it answers");
                    return Ok(false);
                }
            },
        };
        let Some(expires_in) = held else {
            return Ok(true);
        };
        let since = *first_held.get_or_insert_with(|| {
            info!(node, ?expires_in, "node id still leased by another process (a predecessor that died?); waiting for its lease to lapse");
            Instant::now()
        });
        let waited = since.elapsed();
        if waited >= patience {
            return Err(LeaseConflict {
                node: node.to_string(),
                waited,
                expires_in,
            });
        }
        // Just past the lapse, never past the patience.
        let nap = (expires_in + Duration::from_millis(5)).min(patience - waited);
        tokio::time::sleep(nap.max(Duration::from_millis(5))).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::seams::StoreError;

    const TTL: Duration = Duration::from_millis(750);

    /// A lease held by another process until `lapses_at` (forever: `None`), behind a store
    /// that fails the first `down` tries.
    struct Held {
        lapses_at: Option<Instant>,
        down: AtomicU32,
    }

    impl Held {
        fn new(lapses_in: Option<Duration>, down: u32) -> Self {
            Self {
                lapses_at: lapses_in.map(|d| Instant::now() + d),
                down: AtomicU32::new(down),
            }
        }

        async fn acquire(&self) -> Result<(), LeaseError> {
            if self.down.load(Ordering::Relaxed) > 0 {
                self.down.fetch_sub(1, Ordering::Relaxed);
                return Err(StoreError::Unavailable("down".into()).into());
            }
            let now = Instant::now();
            match self.lapses_at {
                Some(t) if now >= t => Ok(()),
                Some(t) => Err(LeaseError::Held {
                    expires_in: t - now,
                }),
                None => Err(LeaseError::Held {
                    expires_in: Duration::from_millis(700),
                }),
            }
        }

        async fn take(&self, unreachable: Unreachable) -> Result<bool, LeaseConflict> {
            take_with(|| self.acquire(), TTL, "n1", unreachable).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_predecessors_lease_is_waited_out() {
        let t0 = Instant::now();
        let held = Held::new(Some(Duration::from_millis(600)), 0);
        assert!(held.take(Unreachable::GiveUp).await.unwrap());
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(600) && took < Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_holder_is_a_conflict_after_two_ttls() {
        let t0 = Instant::now();
        let e = Held::new(None, 0)
            .take(Unreachable::Retry)
            .await
            .unwrap_err();
        assert_eq!(t0.elapsed(), TTL * PATIENCE);
        assert_eq!(e.node, "n1");
        let text = e.to_string();
        assert!(text.contains("\"n1\"") && text.contains("700ms"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_store_gives_up_or_retries_as_asked() {
        let free_after_one_failure = Held::new(Some(Duration::ZERO), 1);
        assert!(
            !free_after_one_failure
                .take(Unreachable::GiveUp)
                .await
                .unwrap()
        );
        let free_after_three = Held::new(Some(Duration::ZERO), 3);
        assert!(free_after_three.take(Unreachable::Retry).await.unwrap());
    }
}

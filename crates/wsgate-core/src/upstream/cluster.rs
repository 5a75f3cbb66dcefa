//! Cluster mode of the upstream manager: rebuild on start, the reclaimer, hand-over.
//!
//! One task per node ([`UpstreamManager::spawn_reclaimer`]): takes the lease (see
//! [`super::lease`]: never while another live process holds this node id), wipes every
//! record when `CLEAR_ALL_ON_START` asks for it (or else restarts the records this
//! instance id still owns), then sweeps every [`Ownership::sweep_interval`]. Every record a
//! sweep wins is started with [`UpstreamManager::start`], so the client library replays
//! auth and subscriptions and the pump resumes the publish topic. Records the sweep says
//! another node now owns are closed here (this node was presumed dead). The task ends only
//! when another process holds this node id's lease, with the [`LeaseConflict`]: the node
//! must then stop.
//!
//! **Fencing.** The task follows the lease's [`Standing`]: when its `until` passes without a
//! renewal (Redis stalled or out of reach for nearly two TTLs: a survivor may claim the
//! records from then on) every local connection is closed at once and the node sweeps no
//! more; when the lease is renewed again, the records that still name this node are
//! started again (the others were claimed). When another process holds the lease, every
//! local connection is closed before the task ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::seams::{Forwarding, LeaseError, Ownership, RequestHandler, Standing};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use wsgate_backoff::Backoff;

use super::forward::Reply;
use super::lease::{self, LeaseConflict, Unreachable};
use super::{CLOSE_WAIT, UpstreamError, UpstreamManager};

/// The cluster side of the manager: who owns which connection, and the channel that
/// carries calls to the owner.
pub(super) struct ClusterSeams {
    pub ownership: Arc<dyn Ownership>,
    pub forwarding: Arc<dyn Forwarding>,
    /// Answers the calls forwarded to this node (given by the control façade).
    handler: RequestHandler,
    /// Set once this process holds the node id's lease and answers forwarded calls.
    serving: AtomicBool,
}

impl UpstreamManager {
    /// Cluster mode: use `ownership` for routing and `forwarding` to reach owners. Calls
    /// forwarded *to* this node are answered by `handler` (the node's control façade, which
    /// hands upstream operations to [`Self::handle_forwarded`]) once the lease is taken
    /// ([`Self::take_lease`] or the reclaimer), so a process refused as a duplicate never
    /// answers for the live node under the same id.
    pub fn attach_cluster(
        self: &Arc<Self>,
        ownership: Arc<dyn Ownership>,
        forwarding: Arc<dyn Forwarding>,
        handler: RequestHandler,
    ) {
        let _ = self.cluster.set(ClusterSeams {
            ownership,
            forwarding,
            handler,
            serving: AtomicBool::new(false),
        });
    }

    /// Answers calls forwarded to this node id from now on (once).
    fn serve_forwarded(self: &Arc<Self>) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        if cluster.serving.swap(true, Ordering::AcqRel) {
            return;
        }
        cluster.forwarding.serve(cluster.handler.clone());
    }

    /// Cluster mode: takes this node id's lease before the node serves, waiting (bounded)
    /// for a dead predecessor's to lapse. `Err`: another live node runs under this id.
    /// Returns at once when the store does not answer (the reclaimer takes the lease
    /// later, with the same check) or outside cluster mode.
    pub async fn take_lease(self: &Arc<Self>) -> Result<(), LeaseConflict> {
        let Some(c) = self.cluster.get() else {
            return Ok(());
        };
        if lease::take(&*c.ownership, self.node(), Unreachable::GiveUp).await? {
            self.serve_forwarded();
        }
        Ok(())
    }

    /// What a node answers to a forwarded upstream call once its manager is gone.
    pub fn gone_reply() -> String {
        serde_json::to_string(&Reply::error(&UpstreamError::NotFound)).unwrap_or_default()
    }

    /// Starts the reclaimer (cluster mode only). Abort the handle before [`Self::hand_over`].
    /// The task ends only on a [`LeaseConflict`] (at start or later): stop the node then,
    /// without a hand-over (the records are the other process's).
    pub fn spawn_reclaimer(self: &Arc<Self>, clear_all: bool) -> Option<JoinHandle<LeaseConflict>> {
        let own = self.cluster.get()?.ownership.clone();
        let me = self.clone();
        Some(tokio::spawn(
            async move { me.reclaimer(own, clear_all).await },
        ))
    }

    async fn reclaimer(self: Arc<Self>, own: Arc<dyn Ownership>, clear_all: bool) -> LeaseConflict {
        if let Err(conflict) = lease::take(&*own, self.node(), Unreachable::Retry).await {
            return conflict;
        }
        self.serve_forwarded();
        if clear_all {
            warn!(
                "CLEAR_ALL_ON_START=TRUE: deleting ALL upstream connection records of the \
                 cluster; their connections will not be re-established"
            );
            let n = retry("clear all records", || own.clear_all()).await;
            warn!(
                deleted = n,
                "CLEAR_ALL_ON_START: upstream connection records wiped"
            );
        } else {
            let n = self.rebuild().await;
            if n > 0 {
                info!(
                    connections = n,
                    "upstream connections rebuilt from the store"
                );
            }
        }
        let mut standing = own.standing();
        // Whether the lease can still change (a store without fencing drops its end).
        let mut follow = true;
        let mut fenced = false;
        let mut tick = tokio::time::interval(own.sweep_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = *standing.borrow_and_update();
            let until = match now {
                Standing::Lost => {
                    self.fence("another process holds this node id's lease")
                        .await;
                    return LeaseConflict {
                        node: self.node().to_string(),
                        waited: Duration::ZERO,
                        expires_in: Duration::ZERO,
                    };
                }
                Standing::Held { until } => Some(Instant::from_std(until)),
                Standing::Pending => None,
            };
            if fenced && until.is_some_and(|u| u > Instant::now()) {
                fenced = false;
                let n = self.rebuild().await;
                info!(
                    connections = n,
                    "lease renewed again: upstream connections still owned here restarted"
                );
            }
            let fence_at = until.filter(|_| !fenced);
            tokio::select! {
                r = standing.changed(), if follow => {
                    follow = r.is_ok();
                    continue;
                }
                () = sleep_until(fence_at) => {
                    fenced = true;
                    self.fence(NOT_RENEWED).await;
                    continue;
                }
                _ = tick.tick(), if !fenced => {}
            }
            let local: Vec<String> = self.conns.iter().map(|e| e.key().to_string()).collect();
            // A sweep waits for Redis: the fence must not (a stalled Redis is its very case).
            let swept = tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(5), own.sweep(&local)) => r,
                () = sleep_until(fence_at) => {
                    fenced = true;
                    self.fence(NOT_RENEWED).await;
                    continue;
                }
            };
            let sweep = match swept {
                Ok(Ok(s)) => s,
                Ok(Err(LeaseError::Held { expires_in })) => {
                    self.fence("another process holds this node id's lease")
                        .await;
                    return LeaseConflict {
                        node: self.node().to_string(),
                        waited: Duration::ZERO,
                        expires_in,
                    };
                }
                Ok(Err(e)) => {
                    debug!(error = %e, "reclaim sweep failed");
                    continue;
                }
                Err(_) => continue,
            };
            for id in sweep.lost {
                if let Some((_, up)) = self.conns.remove(id.as_str()) {
                    warn!(upstream_id = %id, "upstream record wiped or taken over by another instance; closing the local connection");
                    up.close(CLOSE_WAIT).await;
                    up.shared.gauge.clear(&self.parts.metrics);
                }
            }
            for rec in sweep.claimed {
                if !self.conns.contains_key(rec.id.as_str()) {
                    self.parts.metrics.upstream_reclaimed.inc();
                    self.start(rec).await;
                }
            }
        }
    }

    /// Starts the records that name this node and do not run here; returns how many.
    async fn rebuild(&self) -> usize {
        let records = retry("list records", || self.parts.records.upstream_list()).await;
        let mut n = 0;
        for rec in records {
            if rec.owner == self.node() && !self.conns.contains_key(rec.id.as_str()) {
                self.start(rec).await;
                n += 1;
            }
        }
        n
    }

    /// Closes every local connection at once (their records stay): this node may no
    /// longer be their only owner.
    async fn fence(&self, why: &str) {
        if self.conns.is_empty() {
            return;
        }
        warn!(
            connections = self.conns.len(),
            "{why}: closing every local upstream connection"
        );
        self.shutdown().await;
    }

    /// Graceful hand-over (SIGTERM in cluster mode): closes every local connection, marks
    /// their records unowned and drops the lease, so survivors take them on their next
    /// sweep instead of waiting for the lease to expire. Returns how many were released.
    pub async fn hand_over(&self) -> usize {
        let Some(own) = self.cluster.get().map(|c| &c.ownership) else {
            return 0;
        };
        let ids: Vec<String> = self.conns.iter().map(|e| e.key().to_string()).collect();
        self.shutdown().await;
        match tokio::time::timeout(Duration::from_secs(3), own.release(&ids)).await {
            Ok(Ok(n)) => {
                info!(connections = n, "upstream connections handed over");
                n
            }
            Ok(Err(e)) => {
                warn!(error = %e, "hand-over failed; survivors take over at lease expiry");
                0
            }
            Err(_) => {
                warn!("hand-over timed out; survivors take over at lease expiry");
                0
            }
        }
    }
}

const NOT_RENEWED: &str = "the lease was not renewed in time (Redis stalled or out of reach); a survivor may claim its records";

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The longest wait between two tries of [`retry`].
const RETRY_MAX_DELAY: Duration = Duration::from_secs(2);

/// Retries `f` with capped backoff until it succeeds (Redis may come up after us).
pub(super) async fn retry<T, E: std::fmt::Display, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new()
        .initial_delay(Duration::from_millis(100))
        .max_delay(RETRY_MAX_DELAY)
        .jitter(0.0)
        .max_attempts(None)
        .start();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                if backoff.retries() == 0 {
                    warn!(error = %e, "{what} failed; retrying");
                }
                let delay = backoff.next_delay().unwrap_or(RETRY_MAX_DELAY);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

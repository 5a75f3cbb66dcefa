//! [`RedisOwnership`]: leases, the reclaimer's atomic claims and hand-over.
//!
//! - **Lease** = the node's `P:alive:<node>` key (the same key presence uses: one liveness
//!   mechanism) holding this process's token ([`super::lease`]), TTL `lease_ttl`, renewed
//!   every TTL/3 by the store's liveness task, plus membership in the set `P:instances`.
//!   Refused while another process holds it.
//! - **Sweep** (every `lease_ttl / 12`, clamped to 100–500 ms): reads the instance set and
//!   their leases (two commands). Only when an instance has lost its lease (or every ~5 s,
//!   to catch anything else) does it read every record, and then it claims at most
//!   `ceil(orphans / live instances)` of them, in random order, each with `claim.lua`
//!   (compare-and-set on the owner, only while the old owner has no lease). Every sweep
//!   also asks `held.lua` which of the node's running connections' records are gone
//!   (wiped) or name another owner, so the node stops those at once.
//! - **Hand-over**: the liveness task stops, records go to owner `""` (nobody has a lease
//!   under the empty id, so they are orphans), the lease is deleted (if still ours);
//!   survivors see it on their next sweep.
//!
//! Forwarding API calls to a connection's owner is [`super::RedisForwarding`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rand::seq::SliceRandom;
use redis::Script;
use redis::aio::ConnectionManager;
use serde::Deserialize;
use tracing::{debug, info, warn};
use wsgate_core::seams::{LeaseError, NodeId, Ownership, StoreError, Sweep};

use super::lease::{Lease, Renewal};
use super::sealed::{self, ClusterKey};
use super::{Keys, store_error};

/// A full record scan at least every this many sweeps, even when no lease vanished.
const FULL_SCAN_EVERY: u64 = 20;

pub struct RedisOwnership {
    pub(crate) node: NodeId,
    pub(crate) conn: ConnectionManager,
    pub(crate) keys: Keys,
    pub(crate) key: Option<ClusterKey>,
    /// This process's lease, shared with the store's liveness task that renews it.
    pub(crate) lease: Arc<Lease>,
    pub(crate) sweeps: AtomicU64,
    pub(crate) claim: Script,
    /// `held.lua`: which running connections' records are gone or taken.
    pub(crate) held: Script,
}

#[derive(Deserialize)]
struct Head {
    owner: String,
}

impl RedisOwnership {
    fn json(s: &str) -> String {
        serde_json::to_string(s).unwrap_or_default()
    }

    async fn claim_one(
        &self,
        id: &str,
        from: &str,
        to: &str,
        only_if_dead: bool,
    ) -> Result<Option<String>, StoreError> {
        let r: Option<String> = self
            .claim
            .key(self.keys.record(id))
            .key(self.keys.alive(from))
            .arg(from)
            .arg(to)
            .arg(if only_if_dead { "1" } else { "0" })
            .arg(Self::json(from))
            .arg(Self::json(to))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(r)
    }

    /// The ids of `local` (connections this node runs) whose record is gone or names
    /// another owner: checked on every sweep, so a wipe stops them at once.
    async fn not_held(&self, local: &[String]) -> Result<Vec<String>, StoreError> {
        let mut lost = Vec::new();
        for chunk in local.chunks(500) {
            let mut call = self.held.prepare_invoke();
            for id in chunk {
                call.key(self.keys.record(id));
            }
            let at: Vec<usize> = call
                .arg(&*self.node)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(store_error)?;
            lost.extend(
                at.into_iter()
                    .filter_map(|i| chunk.get(i.checked_sub(1)?).cloned()),
            );
        }
        Ok(lost)
    }

    /// The values of `keys` in order (`None` for a missing key).
    async fn mget(
        &self,
        keys: impl Iterator<Item = String>,
    ) -> Result<Vec<Option<String>>, StoreError> {
        redis::cmd("MGET")
            .arg(keys.collect::<Vec<_>>())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)
    }

    async fn alive_map(&self, nodes: &[String]) -> Result<HashMap<String, bool>, StoreError> {
        if nodes.is_empty() {
            return Ok(HashMap::new());
        }
        let vals = self.mget(nodes.iter().map(|n| self.keys.alive(n))).await?;
        Ok(nodes
            .iter()
            .cloned()
            .zip(vals.into_iter().map(|v| v.is_some()))
            .collect())
    }
}

#[async_trait]
impl Ownership for RedisOwnership {
    async fn acquire_lease(&self) -> Result<(), LeaseError> {
        match self.lease.take_or_renew(&self.conn).await {
            Ok(Renewal::Renewed | Renewal::Taken) => Ok(()),
            Ok(Renewal::Held(expires_in)) => Err(LeaseError::Held { expires_in }),
            Err(e) => Err(store_error(e).into()),
        }
    }

    async fn is_alive(&self, node: &str) -> Result<bool, StoreError> {
        if node.is_empty() {
            return Ok(false);
        }
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.keys.alive(node))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(n == 1)
    }

    async fn live_nodes(&self) -> Result<Vec<String>, StoreError> {
        let instances: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.instances())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        let alive = self.alive_map(&instances).await?;
        let mut live: Vec<String> = instances.into_iter().filter(|n| alive[n]).collect();
        live.sort();
        Ok(live)
    }

    async fn sweep(&self, local: &[String]) -> Result<Sweep, LeaseError> {
        if let Some(expires_in) = self.lease.lost() {
            return Err(LeaseError::Held { expires_in });
        }
        let n = self.sweeps.fetch_add(1, Ordering::Relaxed);
        let instances: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.instances())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        let mut alive = self.alive_map(&instances).await?;
        let dead: Vec<String> = instances
            .iter()
            .filter(|i| **i != *self.node && !alive[*i])
            .cloned()
            .collect();
        let not_held = self.not_held(local).await?;
        if dead.is_empty() && !n.is_multiple_of(FULL_SCAN_EVERY) {
            return Ok(Sweep {
                lost: not_held,
                ..Sweep::default()
            });
        }
        // Full scan.
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.record_index())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        let mut records: Vec<(String, String)> = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let vals = self
                .mget(chunk.iter().map(|id| self.keys.record(id)))
                .await?;
            for (id, v) in chunk.iter().zip(vals) {
                if let Some(json) = v
                    && let Ok(head) = serde_json::from_str::<Head>(&json)
                {
                    records.push((id.clone(), head.owner));
                }
            }
        }
        let unknown: Vec<String> = records
            .iter()
            .map(|(_, o)| o.clone())
            .filter(|o| !o.is_empty() && !alive.contains_key(o))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        alive.extend(self.alive_map(&unknown).await?);
        alive.insert(self.node.to_string(), true);
        let local: HashSet<&str> = local.iter().map(String::as_str).collect();
        let mut out = Sweep {
            lost: not_held,
            ..Sweep::default()
        };
        let mut orphans: Vec<(String, String)> = Vec::new();
        let mut owners_left: HashSet<&str> = HashSet::new();
        for (id, owner) in &records {
            owners_left.insert(owner);
            if local.contains(id.as_str()) && *owner != *self.node && !out.lost.contains(id) {
                out.lost.push(id.clone());
            }
            if *owner != *self.node && !alive.get(owner).copied().unwrap_or(false) {
                orphans.push((id.clone(), owner.clone()));
            }
        }
        for d in &dead {
            if !owners_left.contains(d.as_str()) {
                let _: Result<(), _> = redis::cmd("SREM")
                    .arg(self.keys.instances())
                    .arg(d)
                    .query_async(&mut self.conn.clone())
                    .await;
                debug!(node = %d, "dead instance has no records left; deregistered");
            }
        }
        if orphans.is_empty() {
            return Ok(out);
        }
        let live = instances
            .iter()
            .filter(|i| alive.get(*i).copied().unwrap_or(false))
            .count()
            .max(1);
        let share = orphans.len().div_ceil(live);
        orphans.shuffle(&mut rand::rng());
        for (id, owner) in orphans {
            if out.claimed.len() >= share {
                break;
            }
            if let Some(json) = self.claim_one(&id, &owner, &self.node, true).await? {
                match sealed::decode(self.key.as_ref(), &json) {
                    Ok(rec) => {
                        info!(upstream_id = %id, from = %owner, "reclaimed upstream connection");
                        out.claimed.push(rec);
                    }
                    Err(e) => warn!(upstream_id = %id, error = %e, "claimed record unreadable"),
                }
            }
        }
        Ok(out)
    }

    async fn release(&self, ids: &[String]) -> Result<usize, StoreError> {
        // Another process runs under this id now: its records and lease are not ours.
        if self.lease.lost().is_some() {
            return Ok(0);
        }
        let mut n = 0;
        for id in ids {
            if self.claim_one(id, &self.node, "", false).await?.is_some() {
                n += 1;
            }
        }
        self.lease.release(&self.conn).await.map_err(store_error)?;
        Ok(n)
    }

    async fn clear_all(&self) -> Result<usize, StoreError> {
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.record_index())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.del(self.keys.record(id)).ignore();
        }
        pipe.del(self.keys.record_index()).ignore();
        let _: () = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(ids.len())
    }

    fn sweep_interval(&self) -> Duration {
        (self.lease.ttl() / 12).clamp(Duration::from_millis(100), Duration::from_millis(500))
    }

    fn lease_ttl(&self) -> Duration {
        self.lease.ttl()
    }
}

//! [`RedisOwnership`]: leases, the reclaimer's atomic claims and hand-over.
//!
//! - **Lease** = the node's `P:alive:<node>` key (the same key presence uses: one liveness
//!   mechanism) holding this process's token ([`super::lease`]), TTL `lease_ttl`, renewed
//!   every TTL/3 by the store's liveness task, plus membership in the set `P:instances`.
//!   Refused while another process holds it.
//! - **Sweep** (every `lease_ttl / 8`, clamped to 25–500 ms): reads the instance set and
//!   their leases and take counts (two commands). A node counts as dead only once its lease
//!   was seen missing twice, more than one TTL apart (first answer received → second
//!   request sent), with the same take count (it did not take the lease again in
//!   between): a Redis stall or restart makes every lease vanish at once, and the live
//!   nodes take theirs again within a renewal, long before that. Only when an instance is
//!   dead (or every 20th sweep, to catch anything else) does a sweep read every record,
//!   and then it claims at most `ceil(orphans / live instances)` of them, in random order,
//!   each with `claim.lua` (compare-and-set on the owner, only while the old owner still
//!   has no lease and the same take count). Every sweep also asks `held.lua` which of the
//!   node's running connections' records are gone (wiped) or name another owner, so the
//!   node stops those at once.
//! - **Hand-over**: the liveness task stops, records go to owner `""` (nobody has a lease
//!   under the empty id, so they are orphans), the lease is deleted (if still ours);
//!   survivors see it on their next sweep.
//!
//! Forwarding API calls to a connection's owner is [`super::RedisForwarding`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Conn;
use async_trait::async_trait;
use rand::seq::SliceRandom;
use redis::Script;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use wsgate_core::seams::{LeaseError, NodeId, Ownership, Standing, StoreError, Sweep};

use super::lease::{Lease, Renewal};
use super::sealed::{self, ClusterKey};
use super::{Keys, store_error};

/// A full record scan at least every this many sweeps, even when no lease vanished.
const FULL_SCAN_EVERY: u64 = 20;

pub struct RedisOwnership {
    pub(crate) node: NodeId,
    pub(crate) conn: Conn,
    pub(crate) keys: Keys,
    pub(crate) key: Option<ClusterKey>,
    /// This process's lease, shared with the store's liveness task that renews it.
    pub(crate) lease: Arc<Lease>,
    pub(crate) sweeps: AtomicU64,
    pub(crate) claim: Script,
    /// `held.lua`: which running connections' records are gone or taken.
    pub(crate) held: Script,
    /// Nodes whose lease this process saw missing: their take count then and when the
    /// answer arrived. Forgotten as soon as the lease is seen again or the count moves.
    pub(crate) missing: Mutex<HashMap<String, Missing>>,
}

/// The first look at a missing lease.
pub(crate) struct Missing {
    takes: Option<String>,
    seen: Instant,
}

/// One node's lease as a sweep saw it.
#[derive(Debug, Clone)]
struct Look {
    alive: bool,
    /// Its take count (`None`: never taken, or the count expired).
    takes: Option<String>,
    /// Missing twice, more than one TTL apart, with the same take count: its records may
    /// be claimed.
    dead: bool,
}

#[derive(Deserialize)]
struct Head {
    owner: String,
}

impl RedisOwnership {
    fn json(s: &str) -> String {
        serde_json::to_string(s).unwrap_or_default()
    }

    /// `only_if_dead`: the take count `from` had when it was found dead (`""`: none).
    async fn claim_one(
        &self,
        id: &str,
        from: &str,
        to: &str,
        only_if_dead: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let r: Option<String> = self
            .claim
            .key(self.keys.record(id))
            .key(self.keys.alive(from))
            .key(self.keys.lease_takes(from))
            .arg(from)
            .arg(to)
            .arg(if only_if_dead.is_some() { "1" } else { "0" })
            .arg(Self::json(from))
            .arg(Self::json(to))
            .arg(only_if_dead.unwrap_or(""))
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
        Ok(self
            .look(nodes)
            .await?
            .into_iter()
            .map(|(n, l)| (n, l.alive))
            .collect())
    }

    /// Every node's lease and take count (one `MGET`), and whether it counts as dead: seen
    /// missing twice, more than one TTL apart, with the same take count.
    async fn look(&self, nodes: &[String]) -> Result<HashMap<String, Look>, StoreError> {
        if nodes.is_empty() {
            return Ok(HashMap::new());
        }
        let mut keys: Vec<String> = nodes.iter().map(|n| self.keys.alive(n)).collect();
        keys.extend(nodes.iter().map(|n| self.keys.lease_takes(n)));
        let sent = Instant::now();
        let vals = self.mget(keys.into_iter()).await?;
        let received = Instant::now();
        let (alive, takes) = vals.split_at(nodes.len().min(vals.len()));
        let ttl = self.lease.ttl();
        let mut missing = self.missing.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = HashMap::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            let alive = alive.get(i).is_some_and(Option::is_some);
            let takes = takes.get(i).cloned().flatten();
            let mut dead = false;
            if alive {
                missing.remove(node);
            } else {
                match missing.get(node) {
                    // The first look's answer came before this look was asked, by more
                    // than a TTL: Redis ran the two more than a TTL apart.
                    Some(m) if m.takes == takes => dead = sent.duration_since(m.seen) > ttl,
                    _ => {
                        missing.insert(
                            node.clone(),
                            Missing {
                                takes: takes.clone(),
                                seen: received,
                            },
                        );
                    }
                }
            }
            out.insert(node.clone(), Look { alive, takes, dead });
        }
        Ok(out)
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
        let mut looks = self.look(&instances).await?;
        let dead: Vec<String> = instances
            .iter()
            .filter(|i| **i != *self.node && looks[*i].dead)
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
                let Some(json) = v else { continue };
                if !sealed::is_current(self.key.is_some(), &json) {
                    // Never claimed: its spec is not authenticated.
                    sealed::warn_unusable(id, &sealed::old_format(id));
                    continue;
                }
                if let Ok(head) = serde_json::from_str::<Head>(&json) {
                    records.push((id.clone(), head.owner));
                }
            }
        }
        let unknown: Vec<String> = records
            .iter()
            .map(|(_, o)| o.clone())
            .filter(|o| !o.is_empty() && !looks.contains_key(o))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        looks.extend(self.look(&unknown).await?);
        looks.insert(
            self.node.to_string(),
            Look {
                alive: true,
                takes: None,
                dead: false,
            },
        );
        let local: HashSet<&str> = local.iter().map(String::as_str).collect();
        let mut out = Sweep {
            lost: not_held,
            ..Sweep::default()
        };
        // (id, owner, the owner's take count when found dead; `None`: handed over).
        let mut orphans: Vec<(String, String, Option<String>)> = Vec::new();
        let mut owners_left: HashSet<&str> = HashSet::new();
        for (id, owner) in &records {
            owners_left.insert(owner);
            if local.contains(id.as_str()) && *owner != *self.node && !out.lost.contains(id) {
                out.lost.push(id.clone());
            }
            if owner.is_empty() {
                orphans.push((id.clone(), owner.clone(), None));
            } else if let Some(look) = looks.get(owner).filter(|l| l.dead) {
                let takes = look.takes.clone().unwrap_or_default();
                orphans.push((id.clone(), owner.clone(), Some(takes)));
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
            .filter(|i| looks.get(*i).is_some_and(|l| l.alive))
            .count()
            .max(1);
        let share = orphans.len().div_ceil(live);
        orphans.shuffle(&mut rand::rng());
        for (id, owner, takes) in orphans {
            if out.claimed.len() >= share {
                break;
            }
            let only_if_dead = if owner.is_empty() {
                None
            } else {
                Some(takes.as_deref().unwrap_or(""))
            };
            if let Some(json) = self
                .claim_one(&id, &owner, &self.node, only_if_dead)
                .await?
            {
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
            if self.claim_one(id, &self.node, "", None).await?.is_some() {
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
        (self.lease.ttl() / 8).clamp(Duration::from_millis(25), Duration::from_millis(500))
    }

    fn standing(&self) -> watch::Receiver<Standing> {
        self.lease.standing()
    }

    fn lease_ttl(&self) -> Duration {
        self.lease.ttl()
    }
}

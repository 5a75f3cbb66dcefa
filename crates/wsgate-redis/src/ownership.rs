//! [`RedisOwnership`]: leases, the reclaimer's atomic claims, hand-over and forwarding.
//!
//! - **Lease** = the node's `P:alive:<node>` key (the same key presence uses: one liveness
//!   mechanism), TTL `lease_ttl`, renewed every TTL/3 by the store's liveness task, plus
//!   membership in the set `P:instances`.
//! - **Sweep** (every `lease_ttl / 12`, clamped to 100–500 ms): reads the instance set and
//!   their leases (two commands). Only when an instance has lost its lease (or every ~5 s,
//!   to catch anything else) does it read every record, and then it claims at most
//!   `ceil(orphans / live instances)` of them, in random order, each with `claim.lua`
//!   (compare-and-set on the owner, only while the old owner has no lease).
//! - **Hand-over**: the liveness task stops, records go to owner `""` (nobody has a lease
//!   under the empty id, so they are orphans), the lease is deleted; survivors see it on
//!   their next sweep.
//! - **Forwarding**: request/reply over pub/sub channel `P:rpc:<node>`; one subscription
//!   per node carries both the requests addressed to it and the replies to its own requests.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use futures_util::StreamExt;
use rand::seq::SliceRandom;
use redis::Script;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::sealed::{self, ClusterKey};
use super::{Keys, backoff};
use crate::model::NodeId;
use crate::ownership::{Ownership, RequestHandler, Sweep};
use crate::store::StoreError;

/// A full record scan at least every this many sweeps, even when no lease vanished.
const FULL_SCAN_EVERY: u64 = 20;

pub struct RedisOwnership {
    pub(crate) node: NodeId,
    pub(crate) conn: ConnectionManager,
    pub(crate) client: redis::Client,
    pub(crate) keys: Keys,
    pub(crate) lease_ttl: Duration,
    pub(crate) key: Option<ClusterKey>,
    /// Set by `release`: the liveness task stops renewing the lease.
    pub(crate) lease_stopped: Arc<AtomicBool>,
    pub(crate) inner: Arc<Rpc>,
    pub(crate) sweeps: AtomicU64,
    pub(crate) claim: Script,
}

/// Request/reply state shared with the subscription task.
#[derive(Default)]
pub(crate) struct Rpc {
    pending: DashMap<u64, oneshot::Sender<String>>,
    next: AtomicU64,
    handler: OnceLock<RequestHandler>,
    started: AtomicBool,
}

#[derive(Serialize, Deserialize)]
struct Frame {
    /// `q` request, `r` reply.
    k: char,
    id: u64,
    /// The requester (where the reply goes).
    from: String,
    b: String,
}

#[derive(Deserialize)]
struct Head {
    owner: String,
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError::from(e)
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
            .map_err(err)?;
        Ok(r)
    }

    async fn alive_map(&self, nodes: &[String]) -> Result<HashMap<String, bool>, StoreError> {
        if nodes.is_empty() {
            return Ok(HashMap::new());
        }
        let keys: Vec<String> = nodes.iter().map(|n| self.keys.alive(n)).collect();
        let vals: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err)?;
        Ok(nodes
            .iter()
            .cloned()
            .zip(vals.into_iter().map(|v| v.is_some()))
            .collect())
    }

    fn start_subscription(&self) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let task = RpcTask {
            client: self.client.clone(),
            conn: self.conn.clone(),
            channel: self.keys.rpc(&self.node),
            keys: self.keys.clone(),
            rpc: self.inner.clone(),
        };
        tokio::spawn(task.run());
    }
}

#[async_trait]
impl Ownership for RedisOwnership {
    async fn acquire_lease(&self) -> Result<(), StoreError> {
        let _: () = redis::pipe()
            .cmd("SET")
            .arg(self.keys.alive(&self.node))
            .arg("1")
            .arg("PX")
            .arg(self.lease_ttl.as_millis() as u64)
            .ignore()
            .sadd(self.keys.instances(), &*self.node)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn is_alive(&self, node: &str) -> Result<bool, StoreError> {
        if node.is_empty() {
            return Ok(false);
        }
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.keys.alive(node))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err)?;
        Ok(n == 1)
    }

    async fn sweep(&self, local: &[String]) -> Result<Sweep, StoreError> {
        let n = self.sweeps.fetch_add(1, Ordering::Relaxed);
        let instances: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.instances())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err)?;
        let mut alive = self.alive_map(&instances).await?;
        let dead: Vec<String> = instances
            .iter()
            .filter(|i| **i != *self.node && !alive[*i])
            .cloned()
            .collect();
        if dead.is_empty() && !n.is_multiple_of(FULL_SCAN_EVERY) {
            return Ok(Sweep::default());
        }
        // Full scan.
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.record_index())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err)?;
        let mut records: Vec<(String, String)> = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|id| self.keys.record(id)).collect();
            let vals: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(err)?;
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
        let mut out = Sweep::default();
        let mut orphans: Vec<(String, String)> = Vec::new();
        let mut owners_left: HashSet<&str> = HashSet::new();
        for (id, owner) in &records {
            owners_left.insert(owner);
            if local.contains(id.as_str()) && *owner != *self.node {
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
        self.lease_stopped.store(true, Ordering::Release);
        let mut n = 0;
        for id in ids {
            if self.claim_one(id, &self.node, "", false).await?.is_some() {
                n += 1;
            }
        }
        let _: () = redis::cmd("DEL")
            .arg(self.keys.alive(&self.node))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err)?;
        Ok(n)
    }

    async fn clear_all(&self) -> Result<usize, StoreError> {
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.record_index())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err)?;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.del(self.keys.record(id)).ignore();
        }
        pipe.del(self.keys.record_index()).ignore();
        let _: () = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err)?;
        Ok(ids.len())
    }

    async fn request(
        &self,
        node: &str,
        body: String,
        timeout: Duration,
    ) -> Result<Option<String>, StoreError> {
        self.start_subscription();
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner.pending.insert(id, tx);
        let frame = Frame {
            k: 'q',
            id,
            from: self.node.to_string(),
            b: body,
        };
        let payload =
            serde_json::to_string(&frame).map_err(|e| StoreError::Other(e.to_string()))?;
        let sent: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(self.keys.rpc(node))
            .arg(payload)
            .query_async(&mut self.conn.clone())
            .await;
        let res = match sent {
            Err(e) => Err(err(e)),
            Ok(0) => Ok(None),
            Ok(_) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => Ok(Some(reply)),
                Ok(Err(_)) => Err(StoreError::Other("forwarded call dropped".into())),
                Err(_) => Err(StoreError::Unavailable(format!(
                    "instance {node} did not answer a forwarded call in time"
                ))),
            },
        };
        self.inner.pending.remove(&id);
        res
    }

    fn serve(&self, handler: RequestHandler) {
        let _ = self.inner.handler.set(handler);
        self.start_subscription();
    }

    fn sweep_interval(&self) -> Duration {
        (self.lease_ttl / 12).clamp(Duration::from_millis(100), Duration::from_millis(500))
    }
}

/// The node's `P:rpc:<node>` subscription: requests in, replies to its own requests in.
struct RpcTask {
    client: redis::Client,
    conn: ConnectionManager,
    channel: String,
    keys: Keys,
    rpc: Arc<Rpc>,
}

impl RpcTask {
    async fn run(self) {
        let mut attempt = 0u32;
        loop {
            let connect = async {
                let mut ps = self.client.get_async_pubsub().await?;
                ps.subscribe(&self.channel).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            match tokio::time::timeout(Duration::from_secs(2), connect).await {
                Ok(Ok(ps)) => {
                    attempt = 0;
                    debug!(channel = %self.channel, "forwarding channel subscribed");
                    let mut stream = ps.into_on_message();
                    while let Some(msg) = stream.next().await {
                        let Ok(frame) = serde_json::from_slice::<Frame>(msg.get_payload_bytes())
                        else {
                            continue;
                        };
                        self.on_frame(frame);
                    }
                    warn!("forwarding subscription lost; reconnecting");
                }
                _ => {
                    if attempt == 0 {
                        warn!("forwarding subscription failed; retrying");
                    }
                }
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt = attempt.saturating_add(1);
        }
    }

    fn on_frame(&self, frame: Frame) {
        match frame.k {
            'r' => {
                if let Some((_, tx)) = self.rpc.pending.remove(&frame.id) {
                    let _ = tx.send(frame.b);
                }
            }
            'q' => {
                let Some(handler) = self.rpc.handler.get().cloned() else {
                    return;
                };
                let mut conn = self.conn.clone();
                let reply_to = self.keys.rpc(&frame.from);
                tokio::spawn(async move {
                    let body = handler(frame.b).await;
                    let reply = Frame {
                        k: 'r',
                        id: frame.id,
                        from: String::new(),
                        b: body,
                    };
                    if let Ok(payload) = serde_json::to_string(&reply) {
                        let r: Result<i64, _> = redis::cmd("PUBLISH")
                            .arg(reply_to)
                            .arg(payload)
                            .query_async(&mut conn)
                            .await;
                        if let Err(e) = r {
                            warn!(error = %e, "forwarded call reply not sent");
                        }
                    }
                });
            }
            _ => {}
        }
    }
}

//! [`RedisStore`]: cluster-wide presence whose dead entries expire on their own.
//!
//! Entries live in one hash per channel and name their node; a node is alive while its
//! `P:alive:<node>` key (its [`Lease`]) exists. Once the lease is taken, the node renews
//! it every `min(ttl / 3, 1 s)` (which also tells `/ready` whether Redis answers). A read takes
//! the hash (`HGETALL`), looks up the leases of the nodes it names (one `MGET`: leases are
//! shared keys, one slot), and drops and deletes the entries of nodes whose lease has
//! expired: a SIGKILLed node disappears from presence at most `presence_ttl` after its last
//! refresh. Two round trips, not one script, because in a Redis Cluster the channel's hash
//! and the leases live in different slots. The price: a node whose lease lapsed and was
//! taken back between a reader's `MGET` and its `HDEL` (a few milliseconds) loses those
//! entries until its next re-registration, which happens on every lease take; they are not
//! shown in the meantime, never shown twice.
//!
//! The node also keeps its own entries in memory. When a refresh finds its alive key
//! missing (Redis restarted empty, or the node was cut off longer than the TTL) it writes
//! them all back, so presence heals without the gateway doing anything. Removals that fail
//! (Redis away while a connection leaves) are kept too and retried by every refresh until
//! Redis takes them: no entry outlives its connection for longer than the outage.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::Conn;
use async_trait::async_trait;
use dashmap::DashMap;
use redis::Script;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use wsgate_core::seams::{
    ClusterMetrics, NodeId, PresenceEntry, PresenceStore, StoreError, UpstreamRecord,
    UpstreamRecords,
};

use super::forwarding::RedisForwarding;
use super::lease::{Lease, Renewal};
use super::ownership::RedisOwnership;
use super::sealed::{self, ClusterKey};
use super::{Health, Keys, RedisConfig, store_error};

/// This node's entries: channel → connection → user.
type Local = DashMap<Arc<str>, HashMap<Arc<str>, Arc<str>>>;

/// Entries whose removal failed: (channel, connection id), retried by the liveness loop.
type Departed = dashmap::DashSet<(Arc<str>, Arc<str>)>;

pub struct RedisStore {
    node: NodeId,
    conn: Conn,
    keys: Keys,
    put: Script,
    key: Option<ClusterKey>,
    lease: Arc<Lease>,
    config: RedisConfig,
    local: Arc<Local>,
    departed: Arc<Departed>,
    health: Arc<Health>,
    metrics: ClusterMetrics,
    task: JoinHandle<()>,
}

impl RedisStore {
    /// Starts the liveness task; returns at once. Needs a Tokio runtime.
    pub fn start(
        node: NodeId,
        config: &RedisConfig,
        metrics: ClusterMetrics,
    ) -> Result<Self, StoreError> {
        let conn = config.conn().map_err(store_error)?;
        let keys = Keys::new(&config.key_prefix, config.cluster);
        let local = Arc::new(Local::new());
        let departed = Arc::new(Departed::default());
        let health = Arc::new(Health::default());
        let lease = Arc::new(Lease::new(&keys, &node, config.alive_ttl()));
        let liveness = Liveness {
            lease: lease.clone(),
            node: node.clone(),
            keys: keys.clone(),
            conn: conn.clone(),
            local: local.clone(),
            departed: departed.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
        };
        let task = wsgate_core::tasks::supervised("lease renewal", liveness.run());
        Ok(Self {
            node,
            conn,
            keys,
            put: Script::new(include_str!("lua/put.lua")),
            key: config.cluster_key.clone(),
            lease,
            config: config.clone(),
            local,
            departed,
            health,
            metrics,
            task,
        })
    }

    /// The ownership side (leases, claims, hand-over) over the same connection.
    pub fn ownership(&self) -> RedisOwnership {
        RedisOwnership {
            node: self.node.clone(),
            conn: self.conn.clone(),
            keys: self.keys.clone(),
            key: self.key.clone(),
            lease: self.lease.clone(),
            sweeps: AtomicU64::new(0),
            claim: Script::new(include_str!("lua/claim.lua")),
            held: Script::new(include_str!("lua/held.lua")),
            missing: Default::default(),
        }
    }

    /// The forwarding channel to other nodes, over the same connection.
    pub fn forwarding(&self) -> RedisForwarding {
        RedisForwarding {
            node: self.node.clone(),
            conn: self.conn.clone(),
            config: self.config.clone(),
            keys: self.keys.clone(),
            inner: Arc::new(super::forwarding::Rpc::new(
                self.node.clone(),
                self.key.clone(),
                self.metrics.clone(),
            )),
        }
    }

    fn observe<T>(&self, r: &Result<T, redis::RedisError>) {
        self.health.observe(r);
        if r.is_err() {
            self.metrics.errors.inc();
        }
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hdel(key: &str, field: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("HDEL");
    cmd.arg(key).arg(field);
    cmd
}

fn entry_value(node: &str, user: &str) -> String {
    let mut v = String::with_capacity(node.len() + 1 + user.len());
    v.push_str(node);
    v.push('\n');
    v.push_str(user);
    v
}

#[async_trait]
impl PresenceStore for RedisStore {
    async fn presence_join(&self, channel: &str, entry: PresenceEntry) -> Result<(), StoreError> {
        // Remembered first: if Redis is away now, the next successful refresh writes it.
        self.local
            .entry(channel.into())
            .or_default()
            .insert(entry.connection_id.clone(), entry.user.clone());
        // A pending removal of the same entry (left, then joined again) must not undo this.
        self.departed
            .remove(&(Arc::from(channel), entry.connection_id.clone()));
        let r: Result<i64, _> = redis::cmd("HSET")
            .arg(self.keys.presence(channel))
            .arg(&*entry.connection_id)
            .arg(entry_value(&self.node, &entry.user))
            .query_async(&mut self.conn.clone())
            .await;
        self.observe(&r);
        r.map(drop).map_err(store_error)
    }

    async fn presence_leave(&self, channel: &str, connection_id: &str) -> Result<(), StoreError> {
        self.presence_leave_all(&[channel.into()], connection_id)
            .await
    }

    async fn presence_leave_all(
        &self,
        channels: &[Arc<str>],
        connection_id: &str,
    ) -> Result<(), StoreError> {
        let id: Arc<str> = connection_id.into();
        let mut cmds = Vec::with_capacity(channels.len());
        for channel in channels {
            self.local.remove_if_mut(channel, |_, members| {
                members.remove(connection_id);
                members.is_empty()
            });
            cmds.push(hdel(&self.keys.presence(channel), connection_id));
        }
        let r = self.conn.run_each(cmds).await;
        self.observe(&r);
        if r.is_err() {
            for channel in channels {
                self.departed.insert((channel.clone(), id.clone()));
            }
        }
        r.map_err(store_error)
    }

    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>, StoreError> {
        let key = self.keys.presence(channel);
        let r: Result<Vec<(String, String)>, _> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut self.conn.clone())
            .await;
        self.observe(&r);
        let entries = r.map_err(store_error)?;
        let mut nodes: Vec<&str> = entries
            .iter()
            .map(|(_, v)| v.split_once('\n').map_or(v.as_str(), |(node, _)| node))
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        let live = self.live_among(&nodes).await?;
        let mut out = Vec::with_capacity(entries.len());
        let mut dead = Vec::new();
        for (id, value) in &entries {
            let (node, user) = value.split_once('\n').unwrap_or((value, ""));
            if live.contains(node) {
                out.push(PresenceEntry {
                    connection_id: id.as_str().into(),
                    user: user.into(),
                    node: node.into(),
                });
            } else {
                dead.push(id.as_str());
            }
        }
        if !dead.is_empty() {
            // Best effort: the next read retries what this one could not delete.
            let r: Result<i64, _> = redis::cmd("HDEL")
                .arg(&key)
                .arg(&dead)
                .query_async(&mut self.conn.clone())
                .await;
            self.observe(&r);
        }
        Ok(out)
    }

    fn is_healthy(&self) -> bool {
        self.health.get()
    }
}

impl RedisStore {
    /// Which of `nodes` hold a lease now (one `MGET` of shared keys: one slot).
    async fn live_among<'a>(&self, nodes: &[&'a str]) -> Result<HashSet<&'a str>, StoreError> {
        if nodes.is_empty() {
            return Ok(HashSet::new());
        }
        let keys: Vec<String> = nodes.iter().map(|n| self.keys.alive(n)).collect();
        let r: Result<Vec<Option<String>>, _> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn.clone())
            .await;
        self.observe(&r);
        Ok(nodes
            .iter()
            .zip(r.map_err(store_error)?)
            .filter_map(|(node, lease)| lease.map(|_| *node))
            .collect())
    }

    /// `put.lua`: 1 written, 0 the record names another owner, -1 (`update` only) the
    /// record is gone. Record and index change together, so the index never names a
    /// missing record (`wsgate doctor --redis` checks exactly that).
    async fn write_record(&self, record: &UpstreamRecord, update: bool) -> Result<i64, StoreError> {
        let json = sealed::encode(self.key.as_ref(), record)?;
        let r: Result<i64, _> = self
            .put
            .key(self.keys.record(&record.id))
            .key(self.keys.record_index())
            .arg(json)
            .arg(&record.owner)
            .arg(&record.id)
            .arg(if update { "1" } else { "0" })
            .invoke_async(&mut self.conn.clone())
            .await;
        self.observe(&r);
        r.map_err(unavailable)
    }
}

#[async_trait]
impl UpstreamRecords for RedisStore {
    async fn upstream_put(&self, record: UpstreamRecord) -> Result<(), StoreError> {
        match self.write_record(&record, false).await? {
            1 => Ok(()),
            _ => Err(StoreError::Other(format!(
                "upstream record {} is now owned by another instance",
                record.id
            ))),
        }
    }

    async fn upstream_update(&self, record: UpstreamRecord) -> Result<(), StoreError> {
        match self.write_record(&record, true).await? {
            1 => Ok(()),
            _ => Err(StoreError::Revoked(record.id)),
        }
    }

    async fn upstream_get(&self, id: &str) -> Result<Option<UpstreamRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let r: Result<Option<String>, _> = redis::cmd("GET")
            .arg(self.keys.record(id))
            .query_async(&mut conn)
            .await;
        self.observe(&r);
        r.map_err(unavailable)?
            .map(|json| sealed::decode(self.key.as_ref(), &json))
            .transpose()
    }

    async fn upstream_delete(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let r: Result<(), _> = redis::pipe()
            .atomic()
            .del(self.keys.record(id))
            .ignore()
            .srem(self.keys.record_index(), id)
            .ignore()
            .query_async(&mut conn)
            .await;
        self.observe(&r);
        r.map_err(unavailable)
    }

    async fn upstream_list(&self) -> Result<Vec<UpstreamRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Result<Vec<String>, _> = redis::cmd("SMEMBERS")
            .arg(self.keys.record_index())
            .query_async(&mut conn)
            .await;
        self.observe(&ids);
        let ids = ids.map_err(unavailable)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.keys.record(id)).collect();
        let r: Result<Vec<Option<String>>, _> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await;
        self.observe(&r);
        // A record that cannot be used (format 1 under a key, another key, corrupt) is
        // logged and left out: the others still start.
        Ok(r.map_err(unavailable)?
            .into_iter()
            .zip(&ids)
            .filter_map(|(json, id)| {
                sealed::decode(self.key.as_ref(), &json?)
                    .inspect_err(|e| sealed::warn_unusable(id, e))
                    .ok()
            })
            .collect())
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Renews this process's lease (`P:alive:<node>`) once it is taken, and re-registers this
/// node's entries when the key had been lost.
struct Liveness {
    lease: Arc<Lease>,
    node: NodeId,
    keys: Keys,
    conn: Conn,
    local: Arc<Local>,
    departed: Arc<Departed>,
    health: Arc<Health>,
    metrics: ClusterMetrics,
}

impl Liveness {
    async fn run(self) {
        let every = (self.lease.ttl() / 3).min(Duration::from_secs(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_healthy = true;
        loop {
            tick.tick().await;
            if let Some(left) = self.lease.lost() {
                error!(node = %self.node, held_for = ?left, "another process took this node id's lease: no longer renewed");
                self.health.set(false);
                return;
            }
            // Not taken yet (the reclaimer takes it), or handed over.
            if !self.lease.is_held() {
                continue;
            }
            let ok = self.refresh().await;
            if ok != was_healthy {
                if ok {
                    info!("redis store reachable again");
                } else {
                    warn!("redis store unreachable");
                }
                was_healthy = ok;
            }
        }
    }

    /// One renewal. Returns whether Redis answered.
    async fn refresh(&self) -> bool {
        let r = self.lease.take_or_renew(&self.conn).await;
        self.health.observe(&r);
        match r {
            // Taken when the key had vanished (expired, or Redis lost it): this node's
            // entries must be written again.
            Ok(Renewal::Renewed | Renewal::Taken) if self.lease.take_fresh() => {
                let ok = self.rewrite().await && self.remove_departed().await;
                self.health.set(ok);
                ok
            }
            Ok(Renewal::Renewed | Renewal::Taken) => self.remove_departed().await,
            // Reported by the next tick (and by the reclaimer's next sweep).
            Ok(Renewal::Held(_)) => false,
            Err(e) => {
                self.metrics.errors.inc();
                tracing::debug!(error = %e, "presence refresh failed");
                false
            }
        }
    }

    /// Retries the removals that failed, in one pipeline (one by one on a cluster). Returns whether Redis took them.
    async fn remove_departed(&self) -> bool {
        let batch: Vec<(Arc<str>, Arc<str>)> = self
            .departed
            .iter()
            .take(1024)
            .map(|e| e.key().clone())
            .collect();
        if batch.is_empty() {
            return true;
        }
        let cmds = batch
            .iter()
            .map(|(channel, id)| hdel(&self.keys.presence(channel), id))
            .collect();
        let r = self.conn.run_each(cmds).await;
        match r {
            Ok(()) => {
                for entry in &batch {
                    self.departed.remove(entry);
                }
                info!(entries = batch.len(), "failed presence removals retried");
                true
            }
            Err(e) => {
                self.metrics.errors.inc();
                warn!(error = %e, pending = batch.len(), "presence removal retry failed");
                false
            }
        }
    }

    async fn rewrite(&self) -> bool {
        let mut cmds = Vec::new();
        for channel in self.local.iter() {
            let key = self.keys.presence(channel.key());
            for (id, user) in channel.value() {
                let mut cmd = redis::cmd("HSET");
                cmd.arg(&key).arg(&**id).arg(entry_value(&self.node, user));
                cmds.push(cmd);
            }
        }
        let n = cmds.len();
        if n == 0 {
            return true;
        }
        let r = self.conn.run_each(cmds).await;
        match r {
            Ok(()) => {
                info!(entries = n, "presence re-registered in redis");
                true
            }
            Err(e) => {
                self.metrics.errors.inc();
                warn!(error = %e, "presence re-registration failed");
                false
            }
        }
    }
}

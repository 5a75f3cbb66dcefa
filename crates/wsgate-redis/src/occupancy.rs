//! [`RedisOccupancy`]: the cluster-wide counts behind `channel.occupied` / `vacated` and
//! `presence.joined` / `left`, and the reaping of dead processes' leftovers.
//!
//! Per channel (the channel's slot, `{channel}`): `occ:members` (connection →
//! `"<process>\n<user>"`) and `occ:users` (user → connections). `occ_join.lua` and
//! `occ_leave.lua` change both atomically and return the transitions, so of all the nodes
//! joining and leaving a channel at once exactly one sees it become occupied (or vacated).
//!
//! Per process (`<node>.<random>`, its own slot): `alive` (renewed every third of its TTL,
//! `presence_ttl`), `conns` (its open connections → user) and `chans` (the channels its
//! connections are in), and the set `events:processes` of every registered process. A
//! survivor's [`Occupancy::tick`] finds processes whose `alive` key expired;
//! `occ_claim.lua` gives their leftovers to one survivor (a lock in the dead process's
//! slot), which runs `occ_purge.lua` on each of its channels (idempotent) and reports the
//! connections and the transitions, then deletes the process's keys. Each script touches
//! the keys of one slot only (Redis Cluster).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use crate::Conn;
use async_trait::async_trait;
use dashmap::DashMap;
use redis::Script;
use tracing::{info, warn};

use wsgate_core::events::{Ledger, Occupancy, Reaped, Transition};
use wsgate_core::seams::{NodeId, StoreError};

use super::keys::ProcessKey;
use super::{Keys, RedisConfig, store_error};

/// How long a survivor holds a dead process's leftovers before another may take them (it
/// crashed while reaping): longer than any reaping takes.
const REAP_LOCK_MS: u64 = 30_000;

pub struct RedisOccupancy {
    /// `<node>.<random>`: this process, distinct from a restarted one with the same node id.
    process: String,
    conn: Conn,
    keys: Keys,
    ttl: Duration,
    join: Script,
    leave: Script,
    purge: Script,
    claim: Script,
    /// Subscriptions of this process per channel: `chans` lists the channel while any.
    local: DashMap<Arc<str>, usize>,
    /// The liveness key was written once: from then on, finding it gone means it expired.
    registered: AtomicBool,
    /// [`Occupancy::retire`] ran: no more renewals (the node is going).
    retired: AtomicBool,
}

impl RedisOccupancy {
    /// Connects lazily; returns at once. The liveness key is written by the first
    /// [`Occupancy::tick`]. `ttl` is how long after its last renewal a dead process's
    /// leftovers are reaped (the node's `presence_ttl`).
    pub fn new(node: &NodeId, config: &RedisConfig) -> Result<Self, StoreError> {
        Ok(Self {
            process: format!("{node}.{:08x}", rand::random::<u32>()),
            conn: config.conn().map_err(store_error)?,
            keys: Keys::new(&config.key_prefix, config.cluster),
            ttl: config.presence_ttl.max(Duration::from_millis(100)),
            join: Script::new(include_str!("lua/occ_join.lua")),
            leave: Script::new(include_str!("lua/occ_leave.lua")),
            purge: Script::new(include_str!("lua/occ_purge.lua")),
            claim: Script::new(include_str!("lua/occ_claim.lua")),
            local: DashMap::new(),
            registered: AtomicBool::new(false),
            retired: AtomicBool::new(false),
        })
    }

    /// `script` on `channel`'s two occupancy keys (every channel script takes them).
    fn on_channel<'a>(&self, script: &'a Script, channel: &str) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.key(self.keys.occupancy_members(channel));
        invocation.key(self.keys.occupancy_users(channel));
        invocation
    }

    fn key(&self, what: ProcessKey) -> String {
        self.keys.event_process(&self.process, what)
    }

    /// Takes `process`'s leftovers if it is dead and no other survivor has them.
    async fn reap(&self, process: &str) -> Result<Vec<Reaped>, StoreError> {
        let key = |what| self.keys.event_process(process, what);
        let mut conn = self.conn.clone();
        let claimed: Option<(Vec<String>, Vec<String>)> = self
            .claim
            .key(key(ProcessKey::Alive))
            .key(key(ProcessKey::Connections))
            .key(key(ProcessKey::Channels))
            .key(key(ProcessKey::Reaping))
            .arg(&self.process)
            .arg(REAP_LOCK_MS)
            .invoke_async(&mut conn)
            .await
            .map_err(store_error)?;
        let Some((conns, chans)) = claimed else {
            return Ok(Vec::new());
        };
        let mut out: Vec<Reaped> = conns
            .chunks_exact(2)
            .map(|p| Reaped::Connection {
                id: p[0].as_str().into(),
                user: p[1].as_str().into(),
            })
            .collect();
        for channel in &chans {
            let (vacated, left): (i64, Vec<String>) = self
                .on_channel(&self.purge, channel)
                .arg(process)
                .invoke_async(&mut conn)
                .await
                .map_err(store_error)?;
            if vacated == 1 || !left.is_empty() {
                out.push(Reaped::Channel {
                    channel: channel.as_str().into(),
                    left: left
                        .chunks_exact(2)
                        .map(|p| (p[0].as_str().into(), p[1].as_str().into()))
                        .collect(),
                    vacated: vacated == 1,
                });
            }
        }
        redis::pipe()
            .del(&[
                key(ProcessKey::Connections),
                key(ProcessKey::Channels),
                key(ProcessKey::Reaping),
            ])
            .ignore()
            .srem(self.keys.event_processes(), process)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(store_error)?;
        info!(
            process,
            connections = conns.len(),
            channels = chans.len(),
            "reaped a dead node's connections and subscriptions"
        );
        Ok(out)
    }
}

#[async_trait]
impl Occupancy for RedisOccupancy {
    async fn connections(&self, changes: &[Ledger]) -> Result<(), StoreError> {
        let key = self.key(ProcessKey::Connections);
        let mut pipe = redis::pipe();
        for c in changes {
            match c {
                Ledger::Opened { id, user } => pipe.hset(&key, &**id, &**user).ignore(),
                Ledger::Closed { id } => pipe.hdel(&key, &**id).ignore(),
            };
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(store_error)
    }

    async fn join(
        &self,
        channel: &str,
        connection_id: &str,
        user: &str,
    ) -> Result<Transition, StoreError> {
        let mut conn = self.conn.clone();
        let first_here = {
            let mut n = self.local.entry(channel.into()).or_default();
            *n += 1;
            *n == 1
        };
        // Listed before the join: the process's `chans` is a superset of where its members
        // are, so a crash right after the join still gets the member purged.
        if first_here {
            redis::cmd("SADD")
                .arg(self.key(ProcessKey::Channels))
                .arg(channel)
                .query_async::<()>(&mut conn)
                .await
                .map_err(store_error)?;
        }
        let (channel_first, user_first): (i64, i64) = self
            .on_channel(&self.join, channel)
            .arg(connection_id)
            .arg(&self.process)
            .arg(user)
            .invoke_async(&mut conn)
            .await
            .map_err(store_error)?;
        Ok(Transition {
            channel: channel_first == 1,
            user: user_first == 1,
        })
    }

    async fn leave(
        &self,
        channel: &str,
        connection_id: &str,
    ) -> Result<Option<(Arc<str>, Transition)>, StoreError> {
        let mut conn = self.conn.clone();
        let left: Option<(String, i64, i64)> = self
            .on_channel(&self.leave, channel)
            .arg(connection_id)
            .invoke_async(&mut conn)
            .await
            .map_err(store_error)?;
        let mut last_here = false;
        self.local.remove_if_mut(channel, |_, n| {
            *n = n.saturating_sub(1);
            last_here = *n == 0;
            last_here
        });
        // A join racing this on the same node may re-add the channel just before this
        // removal: the only cost is a member a crash would leave behind, never a wrong event.
        if last_here {
            redis::cmd("SREM")
                .arg(self.key(ProcessKey::Channels))
                .arg(channel)
                .query_async::<()>(&mut conn)
                .await
                .map_err(store_error)?;
        }
        Ok(left.map(|(user, user_left, vacated)| {
            (
                user.into(),
                Transition {
                    channel: vacated == 1,
                    user: user_left == 1,
                },
            )
        }))
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some((self.ttl / 3).min(Duration::from_secs(1)))
    }

    async fn tick(&self) -> Result<Vec<Reaped>, StoreError> {
        if self.retired.load(Relaxed) {
            return Ok(Vec::new());
        }
        let (was, processes): (Option<String>, Vec<String>) = redis::pipe()
            .cmd("SET")
            .arg(self.key(ProcessKey::Alive))
            .arg(1)
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .arg("GET")
            .sadd(self.keys.event_processes(), &self.process)
            .ignore()
            .smembers(self.keys.event_processes())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        if was.is_none() && self.registered.swap(true, Relaxed) {
            // Survivors may have reported this node's connections closed (`node_lost`) and
            // its channels vacated meanwhile: docs/events.md, Guarantees.
            warn!(
                process = %self.process,
                "this node's events liveness key had expired (cut off from Redis for longer \
                 than presence_ttl): other nodes may have reported its connections closed"
            );
        }
        let mut out = Vec::new();
        for p in processes.iter().filter(|p| **p != self.process) {
            out.extend(self.reap(p).await?);
        }
        Ok(out)
    }

    async fn retire(&self) -> Vec<Reaped> {
        self.retired.store(true, Relaxed);
        let _ = redis::cmd("DEL")
            .arg(self.key(ProcessKey::Alive))
            .query_async::<()>(&mut self.conn.clone())
            .await;
        // What the drain did not close is this process's to report, while its sinks still
        // run (a survivor would otherwise, a tick later; the claim lets only one of us).
        self.reap(&self.process).await.unwrap_or_default()
    }
}

//! [`UpstreamManager`]: seed 000's operations over the connections this node holds.
//!
//! Connections live in a `DashMap` keyed by id (sharded locks, held only to clone an
//! `Arc`); every operation then talks to that one connection's client over its channel.
//! There is no manager-wide lock on any path.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;
use tracing::{info, warn};
use wsgate_client::{Client, ConnectionState, Message};

use super::cluster::ClusterSeams;
use super::config::{client_config, subscription, validate};
use super::connection::{Fixed, Shared, Upstream};
use super::forward::Reply;
use super::op::{Outcome, UpstreamOp};
use super::parts::UpstreamParts;
use super::state::{GaugeSlot, state_name};
use super::view::{UpstreamView, correlation_name};
use super::{CLOSE_WAIT, UpstreamError, pump};
use crate::clock::unix_ms as now_ms;
use crate::seams::upstream::{UpstreamSpec, UpstreamSubscription};
use crate::seams::{UpstreamRecord, UpstreamRecords};

pub struct UpstreamManager {
    pub(super) parts: Arc<UpstreamParts>,
    pub(super) conns: DashMap<Arc<str>, Arc<Upstream>>,
    /// Cluster mode: leases, reclaiming and forwarding (see [`super::cluster`]).
    pub(super) cluster: std::sync::OnceLock<ClusterSeams>,
    /// Itself, for connections whose record write is refused (see [`Self::revoked`]).
    me: std::sync::Weak<UpstreamManager>,
    /// `upstream.state_changed` goes here, when events are configured.
    pub(super) events: std::sync::OnceLock<Arc<crate::events::Events>>,
}

/// What Connect reports.
#[derive(Debug, Clone)]
pub struct Connected {
    pub id: Arc<str>,
    /// The state when Connect returned (`connected` unless the wait ran out or it failed).
    pub state: ConnectionState,
}

impl UpstreamManager {
    /// A manager of connections on `parts.node`, publishing through `parts.publisher` and
    /// keeping records in `parts.records`.
    pub fn new(parts: UpstreamParts) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            parts: Arc::new(parts),
            conns: DashMap::new(),
            cluster: std::sync::OnceLock::new(),
            me: me.clone(),
            events: std::sync::OnceLock::new(),
        })
    }

    /// Reports every connection's state changes to `events` (`upstream.state_changed`).
    pub fn attach_events(&self, events: Arc<crate::events::Events>) {
        let _ = self.events.set(events);
    }

    /// The store refused a write of `shared`'s record (it is gone or names another owner):
    /// another node may run this connection now, so the local one stops at once: out of
    /// the map now, closed in the background (the pump may be the caller).
    pub(super) fn revoked(&self, shared: &Shared) {
        let Some((_, up)) = self
            .conns
            .remove_if(&shared.id, |_, up| std::ptr::eq(&*up.shared, shared))
        else {
            return;
        };
        warn!(upstream_id = %shared.id, "upstream record write refused (record gone or taken over): closing the local connection");
        let metrics = self.parts.metrics.clone();
        tokio::spawn(async move {
            up.close(CLOSE_WAIT).await;
            up.shared.gauge.clear(&metrics);
        });
    }

    /// The store of upstream records.
    pub fn records(&self) -> &Arc<dyn UpstreamRecords> {
        &self.parts.records
    }

    pub(super) fn node(&self) -> &str {
        &self.parts.node
    }

    /// Connect: registers the connection, writes its record, starts it and waits up to
    /// `wait` for it to be ready (authenticated, subscriptions sent). The connection is
    /// kept (and keeps reconnecting by its policy) even when the wait runs out.
    pub async fn connect(
        &self,
        spec: UpstreamSpec,
        wait: Duration,
    ) -> Result<Connected, UpstreamError> {
        validate(&spec)?;
        let id = crate::ids::new_connection_id(self.node());
        let record = UpstreamRecord {
            id: id.to_string(),
            owner: self.node().to_string(),
            state: state_name(ConnectionState::Connecting).to_string(),
            created_at_ms: now_ms(),
            spec,
        };
        self.parts
            .records
            .upstream_put(record.clone())
            .await
            .inspect_err(|_| {
                self.parts.metrics.store_errors.inc();
            })?;
        let up = self.start(record).await;
        info!(upstream_id = %id, url = %crate::seams::upstream::redact_url(&up.client.snapshot().url), "upstream connecting");
        let mut state = up.client.watch_state();
        let _ = tokio::time::timeout(
            wait,
            state.wait_for(|s| *s == ConnectionState::Connected || s.is_terminal()),
        )
        .await;
        let now = up.client.state();
        Ok(Connected { id, state: now })
    }

    /// Starts the client and the pump for `record` and registers them. Also the entry
    /// point for re-establishing a connection from a stored record.
    pub async fn start(&self, record: UpstreamRecord) -> Arc<Upstream> {
        let id: Arc<str> = record.id.as_str().into();
        let spec = &record.spec;
        let (client, events) = Client::spawn(client_config(&id, spec));
        let shared = Arc::new(Shared {
            id: id.clone(),
            fixed: Fixed {
                owner: record.owner.as_str().into(),
                created_at_ms: record.created_at_ms,
                auto_reconnect: spec.auto_reconnect,
                correlation: correlation_name(&spec.correlation),
                header_names: spec.headers.iter().map(|(k, _)| k.clone()).collect(),
            },
            parts: self.parts.clone(),
            topic: watch::channel(spec.publish_topic.as_deref().map(Arc::from)).0,
            gauge: GaugeSlot::default(),
            published: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            record: tokio::sync::Mutex::new(record.clone()),
            manager: self.me.clone(),
        });
        let pump = tokio::spawn(pump::run(shared.clone(), events, client.watch_state()));
        let up = Arc::new(Upstream {
            shared,
            client,
            pump: parking_lot::Mutex::new(Some(pump)),
        });
        self.conns.insert(id, up.clone());
        // Initial subscriptions become tracked subscriptions. The client takes commands
        // during the handshake and backoff waits, so these are usually in its list before
        // the first attempt is ready: sent right after auth, replayed after every reconnect.
        for sub in record.spec.subscriptions.iter().map(subscription) {
            if let Err(e) = up.client.subscribe(sub).await {
                warn!(upstream_id = %up.shared.id, error = %e, "initial subscription not tracked");
            }
        }
        up
    }

    /// The local connection `id`, or why there is none (never forwards).
    async fn lookup(&self, id: &str) -> Result<Arc<Upstream>, UpstreamError> {
        if let Some(up) = self.conns.get(id) {
            return Ok(up.clone());
        }
        // Cluster mode: a record held by another node gets the more useful error. A store
        // that does not answer is said so (503), never `Connection not found`.
        match self.parts.records.upstream_get(id).await {
            Ok(Some(rec)) if rec.owner != self.node() => {
                Err(UpstreamError::OwnedByDifferentInstance(rec.owner))
            }
            Ok(_) => Err(UpstreamError::NotFound),
            Err(e) => {
                self.parts.metrics.store_errors.inc();
                Err(UpstreamError::Store(e))
            }
        }
    }

    /// Where an operation on `id` runs: here, or on the live owner named by its record.
    /// A record whose owner has no lease (dead, not yet reclaimed) is seed 000's
    /// `Connection owned by different instance`.
    pub(crate) async fn route(&self, id: &str) -> Result<Route, UpstreamError> {
        match self.lookup(id).await {
            Ok(up) => Ok(Route::Local(up)),
            Err(UpstreamError::OwnedByDifferentInstance(owner)) => {
                if let Some(cluster) = self.cluster.get()
                    && !owner.is_empty()
                    && cluster.ownership.is_alive(&owner).await?
                {
                    return Ok(Route::Remote(owner));
                }
                Err(UpstreamError::OwnedByDifferentInstance(owner))
            }
            Err(e) => Err(e),
        }
    }

    /// The view of connection `id` if this node holds it (never asks the store).
    pub(crate) fn local_view(&self, id: &str) -> Option<UpstreamView> {
        self.conns.get(id).map(|up| up.view())
    }

    /// Runs `op` where connection `op.id()` is held: here, or forwarded to its live owner.
    /// This is the one routing decision every operation on an existing connection takes.
    pub async fn execute(&self, op: UpstreamOp) -> Result<Outcome, UpstreamError> {
        op.check()?;
        match self.route(op.id()).await? {
            Route::Local(up) => self.run(&up, op).await,
            Route::Remote(owner) => self.forward(&owner, op).await,
        }
    }

    /// Runs `op` on `owner` and returns its answer (errors included).
    async fn forward(&self, owner: &str, op: UpstreamOp) -> Result<Outcome, UpstreamError> {
        let Some(cluster) = self.cluster.get() else {
            return Err(UpstreamError::OwnedByDifferentInstance(owner.into()));
        };
        self.parts.metrics.upstream_forwarded.inc();
        let timeout = op.forward_timeout();
        let body = serde_json::to_string(&op).map_err(|e| UpstreamError::Remote(e.to_string()))?;
        let Some(reply) = cluster.forwarding.request(owner, body, timeout).await? else {
            // Its lease has not run out yet, but no process of it listens: dead, and not
            // reclaimed yet.
            return Err(UpstreamError::OwnedByDifferentInstance(owner.into()));
        };
        serde_json::from_str::<Reply>(&reply)
            .map_err(|e| UpstreamError::Remote(format!("bad forwarded reply: {e}")))?
            .into_outcome()
    }

    /// Answers a call forwarded by another node: runs it here, never forwards again.
    pub async fn handle_forwarded(&self, body: String) -> String {
        let result = match serde_json::from_str::<UpstreamOp>(&body) {
            Ok(op) => match self.lookup(op.id()).await {
                Ok(up) => self.run(&up, op).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(UpstreamError::Invalid(format!("bad forwarded call: {e}"))),
        };
        serde_json::to_string(&Reply::of(result)).unwrap_or_default()
    }

    /// Runs `op` on `up`, a connection held here.
    async fn run(&self, up: &Upstream, op: UpstreamOp) -> Result<Outcome, UpstreamError> {
        match op {
            UpstreamOp::Send { text, .. } => up.client.send(Message::from(text)).await?,
            UpstreamOp::SendRaw { data, .. } => up.client.send(Message::Binary(data)).await?,
            UpstreamOp::SendAsync { msg, timeout, .. } => {
                return up
                    .client
                    .request(msg, timeout)
                    .await
                    .map(Outcome::Reply)
                    .map_err(|e| {
                        if e == wsgate_client::Error::RequestTimeout {
                            self.parts.metrics.upstream_request_timeouts.inc();
                        }
                        UpstreamError::from(e)
                    });
            }
            UpstreamOp::Subscriptions { add, remove, .. } => {
                return subscriptions_on(up, add, remove).await.map(Outcome::Keys);
            }
            UpstreamOp::StartPublish { topic, .. } => {
                up.shared.topic.send_replace(Some(topic.as_str().into()));
                up.shared
                    .update_record(|r| r.spec.publish_topic = Some(topic))
                    .await?
            }
            UpstreamOp::StopPublish { .. } => {
                up.shared.topic.send_replace(None);
                up.shared
                    .update_record(|r| r.spec.publish_topic = None)
                    .await?
            }
            UpstreamOp::Disconnect { id } => self.disconnect_local(&id).await?,
            UpstreamOp::Reconnect { id } => self.restart_local(&id).await?,
        }
        Ok(Outcome::Done)
    }

    /// Takes connection `id` out of this node and closes it (its pump finished, its gauge
    /// cleared); the record is left alone.
    async fn close_local(&self, id: &str) -> Result<Arc<Upstream>, UpstreamError> {
        let Some((_, up)) = self.conns.remove(id) else {
            return Err(self
                .lookup(id)
                .await
                .err()
                .unwrap_or(UpstreamError::NotFound));
        };
        up.close(CLOSE_WAIT).await;
        up.shared.gauge.clear(&self.parts.metrics);
        Ok(up)
    }

    async fn disconnect_local(&self, id: &str) -> Result<(), UpstreamError> {
        self.close_local(id).await?;
        if let Err(e) = self.parts.records.upstream_delete(id).await {
            self.parts.metrics.store_errors.inc();
            warn!(upstream_id = %id, error = %e, "upstream record delete failed");
        }
        info!(upstream_id = %id, "upstream disconnected");
        Ok(())
    }

    /// Closes connection `id` and starts it again from its record: same id, tracked
    /// subscriptions, auth and publish topic; a new client, so a fresh backoff and breaker
    /// (the way out of `failed`).
    async fn restart_local(&self, id: &str) -> Result<(), UpstreamError> {
        let old = self.close_local(id).await?;
        let mut record = old.shared.record.lock().await.clone();
        record.state = state_name(ConnectionState::Connecting).to_string();
        self.start(record).await;
        info!(upstream_id = %id, "upstream restarted on request");
        Ok(())
    }

    /// Get: one connection's view.
    pub async fn get(&self, id: &str) -> Result<UpstreamView, UpstreamError> {
        Ok(self.lookup(id).await?.view())
    }

    /// List: every connection this node holds, sorted by id.
    pub fn list(&self) -> Vec<UpstreamView> {
        let ups: Vec<Arc<Upstream>> = self.conns.iter().map(|e| e.value().clone()).collect();
        let mut views: Vec<UpstreamView> = ups.iter().map(|u| u.view()).collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        views
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Graceful shutdown: closes every connection (in parallel, bounded) and waits for the
    /// pumps. Records stay in the store, so another node can re-establish the connections.
    pub async fn shutdown(&self) {
        let ids: Vec<Arc<str>> = self.conns.iter().map(|e| e.key().clone()).collect();
        let mut closing = tokio::task::JoinSet::new();
        for id in ids {
            if let Some((_, up)) = self.conns.remove(&id) {
                let metrics = self.parts.metrics.clone();
                closing.spawn(async move {
                    up.close(CLOSE_WAIT).await;
                    up.shared.gauge.clear(&metrics);
                });
            }
        }
        let n = closing.len();
        while closing.join_next().await.is_some() {}
        if n > 0 {
            info!(connections = n, "upstream connections closed");
        }
    }
}

/// Where an operation runs.
pub(crate) enum Route {
    Local(Arc<Upstream>),
    /// On this live instance.
    Remote(String),
}

async fn subscriptions_on(
    up: &Upstream,
    add: Vec<UpstreamSubscription>,
    remove: Vec<String>,
) -> Result<Vec<String>, UpstreamError> {
    for key in &remove {
        up.client.unsubscribe(key.clone()).await?;
    }
    for sub in &add {
        up.client.subscribe(subscription(sub)).await?;
    }
    up.shared
        .update_record(|r| {
            let subs = &mut r.spec.subscriptions;
            subs.retain(|s| !remove.contains(&s.key));
            for sub in add {
                match subs.iter_mut().find(|s| s.key == sub.key) {
                    Some(existing) => *existing = sub,
                    None => subs.push(sub),
                }
            }
        })
        .await?;
    Ok(up.client.snapshot().subscriptions)
}

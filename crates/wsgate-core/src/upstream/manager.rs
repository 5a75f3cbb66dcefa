//! [`UpstreamManager`]: seed 000's operations over the connections this node holds.
//!
//! Connections live in a `DashMap` keyed by id (sharded locks, held only to clone an
//! `Arc`); every operation then talks to that one connection's client over its channel.
//! There is no manager-wide lock on any path.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::seams::upstream::{UpstreamSpec, UpstreamSubscription};
use crate::seams::{UpstreamRecord, UpstreamRecords};
use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::watch;
use tracing::{info, warn};
use wsgate_client::{Client, ConnectionState, Message};

use base64::Engine;

use super::cluster::ClusterSeams;
use super::config::{client_config, subscription, validate, validate_topic};
use super::connection::{Fixed, Shared, Upstream};
use super::forward::{Op, Reply, WireMessage};
use super::state::{GaugeSlot, state_name};
use super::view::{UpstreamView, correlation_name};
use super::{CLOSE_WAIT, UpstreamError, pump};
use crate::clock::unix_ms as now_ms;
use crate::gateway::Gateway;

pub struct UpstreamManager {
    pub(super) gateway: Arc<Gateway>,
    /// Where every connection's durable record is kept.
    pub(super) records: Arc<dyn UpstreamRecords>,
    pub(super) conns: DashMap<Arc<str>, Arc<Upstream>>,
    /// Cluster mode: leases, reclaiming and forwarding (see [`super::cluster`]).
    pub(super) cluster: std::sync::OnceLock<ClusterSeams>,
}

/// What Connect reports.
#[derive(Debug, Clone)]
pub struct Connected {
    pub id: Arc<str>,
    /// The state when Connect returned (`connected` unless the wait ran out or it failed).
    pub state: ConnectionState,
}

impl UpstreamManager {
    /// A manager publishing through `gateway` and keeping records in `records`.
    pub fn new(gateway: Arc<Gateway>, records: Arc<dyn UpstreamRecords>) -> Arc<Self> {
        Arc::new(Self {
            gateway,
            records,
            conns: DashMap::new(),
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// The store of upstream records.
    pub fn records(&self) -> &Arc<dyn UpstreamRecords> {
        &self.records
    }

    pub(super) fn node(&self) -> &str {
        self.gateway.node()
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
        self.records
            .upstream_put(record.clone())
            .await
            .inspect_err(|_| {
                self.gateway.metrics.store_errors.inc();
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
            gateway: self.gateway.clone(),
            records: self.records.clone(),
            topic: watch::channel(spec.publish_topic.as_deref().map(Arc::from)).0,
            gauge: GaugeSlot::default(),
            published: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            record: tokio::sync::Mutex::new(record.clone()),
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
        // Cluster mode: a record held by another node gets the more useful error.
        match self.records.upstream_get(id).await {
            Ok(Some(rec)) if rec.owner != self.node() => {
                Err(UpstreamError::OwnedByDifferentInstance(rec.owner))
            }
            _ => Err(UpstreamError::NotFound),
        }
    }

    /// Where an operation on `id` runs: here, or on the live owner named by its record.
    /// A record whose owner has no lease (dead, not yet reclaimed) is seed 000's
    /// `Connection owned by different instance`.
    async fn route(&self, id: &str) -> Result<Route, UpstreamError> {
        match self.lookup(id).await {
            Ok(up) => Ok(Route::Local(up)),
            Err(UpstreamError::OwnedByDifferentInstance(owner)) => {
                if let Some(cluster) = self.cluster.get()
                    && !owner.is_empty()
                    && cluster.ownership.is_alive(&owner).await.unwrap_or(false)
                {
                    return Ok(Route::Remote(owner));
                }
                Err(UpstreamError::OwnedByDifferentInstance(owner))
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `op` on `owner` and returns its answer (errors included).
    async fn forward(
        &self,
        owner: &str,
        op: Op,
        timeout: Duration,
    ) -> Result<Reply, UpstreamError> {
        let Some(cluster) = self.cluster.get() else {
            return Err(UpstreamError::OwnedByDifferentInstance(owner.into()));
        };
        self.gateway.metrics.upstream_forwarded.inc();
        let body = serde_json::to_string(&op).map_err(|e| UpstreamError::Remote(e.to_string()))?;
        let Some(reply) = cluster.forwarding.request(owner, body, timeout).await? else {
            // Its lease has not run out yet, but no process of it listens: dead, and not
            // reclaimed yet.
            return Err(UpstreamError::OwnedByDifferentInstance(owner.into()));
        };
        serde_json::from_str::<Reply>(&reply)
            .map_err(|e| UpstreamError::Remote(format!("bad forwarded reply: {e}")))?
            .into_result()
    }

    /// Answers a call forwarded by another node: runs it here, never forwards again.
    pub async fn handle_forwarded(&self, body: String) -> String {
        let reply = match serde_json::from_str::<Op>(&body) {
            Ok(op) => self
                .run_local(op)
                .await
                .unwrap_or_else(|e| Reply::error(&e)),
            Err(e) => Reply::error(&UpstreamError::Invalid(format!("bad forwarded call: {e}"))),
        };
        serde_json::to_string(&reply).unwrap_or_default()
    }

    async fn run_local(&self, op: Op) -> Result<Reply, UpstreamError> {
        let mut reply = Reply::default();
        match op {
            Op::Send { id, text } => send_on(&*self.lookup(&id).await?, text).await?,
            Op::SendRaw { id, b64 } => {
                let msg = WireMessage::Binary(b64).into_message()?;
                let up = self.lookup(&id).await?;
                up.client.send(msg).await?;
            }
            Op::SendAsync {
                id,
                msg,
                timeout_ms,
            } => {
                let up = self.lookup(&id).await?;
                let r = self
                    .request_on(&up, msg.into_message()?, Duration::from_millis(timeout_ms))
                    .await?;
                reply.frame = Some(WireMessage::from(&r));
            }
            Op::Subscriptions { id, add, remove } => {
                let up = self.lookup(&id).await?;
                reply.keys = Some(subscriptions_on(&up, add, remove).await?);
            }
            Op::StartPublish { id, topic } => {
                start_publish_on(&*self.lookup(&id).await?, topic).await?
            }
            Op::StopPublish { id } => stop_publish_on(&*self.lookup(&id).await?).await?,
            Op::Disconnect { id } => self.disconnect_local(&id).await?,
        }
        Ok(reply)
    }

    /// Send: one text frame.
    pub async fn send(&self, id: &str, text: String) -> Result<(), UpstreamError> {
        match self.route(id).await? {
            Route::Local(up) => send_on(&up, text).await,
            Route::Remote(owner) => {
                let op = Op::Send {
                    id: id.into(),
                    text,
                };
                self.forward(&owner, op, FORWARD_TIMEOUT).await.map(drop)
            }
        }
    }

    /// SendRaw: one binary frame.
    pub async fn send_raw(&self, id: &str, data: Bytes) -> Result<(), UpstreamError> {
        match self.route(id).await? {
            Route::Local(up) => Ok(up.client.send(Message::Binary(data)).await?),
            Route::Remote(owner) => {
                let op = Op::SendRaw {
                    id: id.into(),
                    b64: base64::engine::general_purpose::STANDARD.encode(&data),
                };
                self.forward(&owner, op, FORWARD_TIMEOUT).await.map(drop)
            }
        }
    }

    /// SendAsync: a request and its correlated reply (see the connection's correlation mode).
    pub async fn send_async(
        &self,
        id: &str,
        msg: Message,
        timeout: Duration,
    ) -> Result<Message, UpstreamError> {
        match self.route(id).await? {
            Route::Local(up) => self.request_on(&up, msg, timeout).await,
            Route::Remote(owner) => {
                let op = Op::SendAsync {
                    id: id.into(),
                    msg: WireMessage::from(&msg),
                    timeout_ms: timeout.as_millis() as u64,
                };
                let reply = self.forward(&owner, op, timeout + FORWARD_TIMEOUT).await?;
                reply
                    .frame
                    .ok_or_else(|| UpstreamError::Remote("forwarded reply without frame".into()))?
                    .into_message()
            }
        }
    }

    async fn request_on(
        &self,
        up: &Upstream,
        msg: Message,
        timeout: Duration,
    ) -> Result<Message, UpstreamError> {
        up.client.request(msg, timeout).await.map_err(|e| {
            if e == wsgate_client::Error::RequestTimeout {
                self.gateway.metrics.upstream_request_timeouts.inc();
            }
            UpstreamError::from(e)
        })
    }

    /// Adds (or replaces, by key) tracked subscriptions and removes others by key. Each is
    /// sent now when connected and replayed after every reconnect; the record follows.
    /// Returns the tracked keys afterwards.
    pub async fn update_subscriptions(
        &self,
        id: &str,
        add: Vec<UpstreamSubscription>,
        remove: Vec<String>,
    ) -> Result<Vec<String>, UpstreamError> {
        if add.iter().any(|s| s.key.is_empty()) {
            return Err(UpstreamError::Invalid(
                "subscription keys must not be empty".into(),
            ));
        }
        match self.route(id).await? {
            Route::Local(up) => subscriptions_on(&up, add, remove).await,
            Route::Remote(owner) => {
                let op = Op::Subscriptions {
                    id: id.into(),
                    add,
                    remove,
                };
                let reply = self.forward(&owner, op, FORWARD_TIMEOUT).await?;
                Ok(reply.keys.unwrap_or_default())
            }
        }
    }

    /// StartPublish: from now on every received message is published to `topic:<topic>`.
    pub async fn start_publish(&self, id: &str, topic: String) -> Result<(), UpstreamError> {
        validate_topic(&topic)?;
        match self.route(id).await? {
            Route::Local(up) => start_publish_on(&up, topic).await,
            Route::Remote(owner) => {
                let op = Op::StartPublish {
                    id: id.into(),
                    topic,
                };
                self.forward(&owner, op, FORWARD_TIMEOUT).await.map(drop)
            }
        }
    }

    /// StopPublish. Messages the pump already holds may still be published; none received
    /// after the pump sees the change are.
    pub async fn stop_publish(&self, id: &str) -> Result<(), UpstreamError> {
        match self.route(id).await? {
            Route::Local(up) => stop_publish_on(&up).await,
            Route::Remote(owner) => {
                let op = Op::StopPublish { id: id.into() };
                self.forward(&owner, op, FORWARD_TIMEOUT).await.map(drop)
            }
        }
    }

    /// Disconnect: closes the connection, waits for its pump, forgets it and its record.
    pub async fn disconnect(&self, id: &str) -> Result<(), UpstreamError> {
        if self.conns.contains_key(id) {
            return self.disconnect_local(id).await;
        }
        match self.route(id).await? {
            Route::Local(_) => self.disconnect_local(id).await,
            Route::Remote(owner) => {
                let op = Op::Disconnect { id: id.into() };
                self.forward(&owner, op, FORWARD_TIMEOUT + CLOSE_WAIT)
                    .await
                    .map(drop)
            }
        }
    }

    async fn disconnect_local(&self, id: &str) -> Result<(), UpstreamError> {
        let Some((_, up)) = self.conns.remove(id) else {
            return Err(self
                .lookup(id)
                .await
                .err()
                .unwrap_or(UpstreamError::NotFound));
        };
        up.close(CLOSE_WAIT).await;
        up.shared.gauge.clear(&self.gateway.metrics);
        if let Err(e) = self.records.upstream_delete(id).await {
            self.gateway.metrics.store_errors.inc();
            warn!(upstream_id = %id, error = %e, "upstream record delete failed");
        }
        info!(upstream_id = %id, "upstream disconnected");
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
                let metrics = self.gateway.metrics.clone();
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
enum Route {
    Local(Arc<Upstream>),
    /// On this live instance.
    Remote(String),
}

/// Bound on a forwarded call (plus the SendAsync timeout for SendAsync).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

async fn send_on(up: &Upstream, text: String) -> Result<(), UpstreamError> {
    Ok(up.client.send(Message::from(text)).await?)
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

async fn start_publish_on(up: &Upstream, topic: String) -> Result<(), UpstreamError> {
    up.shared.topic.send_replace(Some(topic.as_str().into()));
    up.shared
        .update_record(|r| r.spec.publish_topic = Some(topic))
        .await
}

async fn stop_publish_on(up: &Upstream) -> Result<(), UpstreamError> {
    up.shared.topic.send_replace(None);
    up.shared
        .update_record(|r| r.spec.publish_topic = None)
        .await
}

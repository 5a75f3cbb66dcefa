//! The inbound face of a node: client connections, channels, users, presence, heartbeats.

mod connection;
mod expiry;
mod flush;
mod heartbeat;
mod membership;
mod proxy;
mod registry;
mod server_subs;
mod session;
mod transport;

#[cfg(test)]
mod namespace_tests;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::seams::{
    Broker, BrokerError, Deliver, Envelope, Idempotency, NodeId, Once, PresenceEntry,
    PresenceStore, PublishRequest, Recipient,
};
use bytes::Bytes;
use serde::Serialize;
use tracing::{info, warn};

pub use connection::{Attention, CloseRequest, Connection, ConnectionInfo, Stats};
pub use expiry::{Expiries, TokenClock};
pub use flush::Flushers;
pub use heartbeat::Heartbeat;
pub use membership::{Membership, membership_frame};
pub use proxy::{NO_PUBLISH_HOOK, NO_SUBSCRIBE_HOOK};
pub use registry::Registry;
pub use server_subs::{ServerAnswer, ServerOp};
pub use session::Session;
pub use transport::{Delivery, Outbound, Overflow, Queued, Skips, Transport, drop_held};

use crate::auth::Identity;
use crate::clock::Clock;
use crate::hooks::Proxy;
use crate::metrics::Metrics;
use crate::namespace::{NamespaceOptions, Namespaces, UnknownNamespace};
use crate::protocol::{self, close};

/// Who may publish from a client connection (backends always may, through the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientPublish {
    /// Clients never publish.
    Deny,
    /// Clients publish to channels they are subscribed to.
    #[default]
    Subscribed,
    /// Clients publish to any channel their token allows.
    Any,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub node: NodeId,
    /// WebSocket ping interval. Default [`DEFAULT_HEARTBEAT_INTERVAL`].
    pub heartbeat_interval: Duration,
    /// Close (4008) a connection silent for this long. Default [`DEFAULT_HEARTBEAT_TIMEOUT`].
    pub heartbeat_timeout: Duration,
    /// Protocol errors in a row before the connection is closed (1008).
    /// Default [`DEFAULT_MAX_PROTOCOL_ERRORS`].
    pub max_protocol_errors: u32,
    /// Default [`DEFAULT_MAX_CHANNELS_PER_CONNECTION`].
    pub max_channels_per_connection: usize,
    /// How long a connection whose token expired may take to send `refresh` before it is
    /// closed (4001). Default [`DEFAULT_TOKEN_GRACE`].
    pub token_grace: Duration,
    /// Users a client's `presence` answer lists at most (`truncated: true` beyond).
    /// Default [`DEFAULT_PRESENCE_MAX_USERS`].
    pub presence_max_users: usize,
    /// A client's `presence` answer is reused for this long (per channel, per node).
    /// Default [`DEFAULT_PRESENCE_CACHE`].
    pub presence_cache: Duration,
    /// Tasks that write a channel fan-out's sockets ([`Flushers`]). Default
    /// [`DEFAULT_FLUSH_LANES`].
    pub flush_lanes: usize,
    /// How long a flush lane rests after a long pass, as a multiple of the pass (0: never).
    /// Default [`DEFAULT_FLUSH_REST`].
    pub flush_rest: f64,
}

/// Seed 003's ping interval: 30 s keeps NAT and balancer idle timers (usually 60 s) open.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// Seed 003's silence bound: two missed pings plus slack.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(65);
/// A client that errs 10 times in a row is broken, not unlucky.
pub const DEFAULT_MAX_PROTOCOL_ERRORS: u32 = 10;
/// Enough for any UI; bounds the memory and fan-out work one connection can cause.
pub const DEFAULT_MAX_CHANNELS_PER_CONNECTION: usize = 256;
/// Enough for a client to fetch a new token once told its own expired.
pub const DEFAULT_TOKEN_GRACE: Duration = Duration::from_secs(10);
/// A roster a UI can show; bounds the answer (and the work) one `presence` request costs.
pub const DEFAULT_PRESENCE_MAX_USERS: usize = 100;
/// A presence read costs a Lua scan in Redis: one per channel per second per node at most,
/// however many clients ask.
pub const DEFAULT_PRESENCE_CACHE: Duration = Duration::from_secs(1);
/// One flush lane: a busy fan-out's writes then coalesce (20 frames per write on the 10k ×
/// 100/s bench, against 7 with a wake-up per connection task and 1 with a lane per core:
/// docs/benchmarks.md, "Flush lanes").
pub const DEFAULT_FLUSH_LANES: usize = 1;
/// A lane rests as long as its last long pass took: under a sustained large fan-out it writes
/// half the time, and each write carries twice the frames (docs/benchmarks.md, "Flush lanes").
pub const DEFAULT_FLUSH_REST: f64 = 1.0;
/// Cached presence answers kept before stale ones are dropped.
const PRESENCE_CACHE_ENTRIES: usize = 4096;

impl GatewayConfig {
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            max_protocol_errors: DEFAULT_MAX_PROTOCOL_ERRORS,
            max_channels_per_connection: DEFAULT_MAX_CHANNELS_PER_CONNECTION,
            token_grace: DEFAULT_TOKEN_GRACE,
            presence_max_users: DEFAULT_PRESENCE_MAX_USERS,
            presence_cache: DEFAULT_PRESENCE_CACHE,
            flush_lanes: DEFAULT_FLUSH_LANES,
            flush_rest: DEFAULT_FLUSH_REST,
        }
    }
}

/// Why a gateway operation failed, as the control API reports it.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Seed 000's exact string.
    #[error("Connection not found")]
    ConnectionNotFound,
    #[error("{0}")]
    InvalidData(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Presence of a channel across the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct Presence {
    pub channel: String,
    pub users: Vec<String>,
    pub connections: usize,
}

/// A client's `presence` answer: capped, encoded once, shared while it is fresh.
#[derive(Debug)]
pub struct ClientPresence {
    /// JSON array of at most `presence_max_users` user ids.
    pub users_json: String,
    pub connections: usize,
    /// More users than the array lists.
    pub truncated: bool,
    at_ms: u64,
}

pub struct Gateway {
    pub config: GatewayConfig,
    pub registry: Arc<Registry>,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn PresenceStore>,
    pub metrics: Metrics,
    pub clock: Clock,
    /// Due times of expiring tokens ([`Gateway::run_expiries`]).
    pub expiries: Arc<Expiries>,
    presence_cache: dashmap::DashMap<Arc<str>, Arc<ClientPresence>>,
    /// The channel namespaces, swapped whole on reload ([`Gateway::set_namespaces`]).
    namespaces: arc_swap::ArcSwap<Namespaces>,
    /// The backend's proxy hooks, when configured ([`Gateway::attach_proxy`]).
    proxy: OnceLock<Arc<Proxy>>,
    /// Events out to the backend, when configured ([`Gateway::attach_events`]).
    events: OnceLock<Arc<crate::events::Events>>,
}

impl Gateway {
    /// Builds the gateway and attaches its local delivery to the broker.
    pub fn new(
        config: GatewayConfig,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceStore>,
        metrics: Metrics,
    ) -> Arc<Self> {
        let registry = Arc::new(Registry::default());
        broker.attach(Arc::new(LocalDelivery {
            registry: registry.clone(),
            metrics: metrics.clone(),
            flushers: Flushers::new(
                config.flush_lanes,
                config.flush_rest,
                Some(metrics.delivery_latency.clone()),
            ),
        }));
        Arc::new(Self {
            config,
            registry,
            broker,
            presence,
            metrics,
            clock: Clock::new(),
            expiries: Arc::default(),
            presence_cache: dashmap::DashMap::new(),
            namespaces: arc_swap::ArcSwap::from_pointee(Namespaces::default()),
            proxy: OnceLock::new(),
            events: OnceLock::new(),
        })
    }

    /// The namespaces as configured now.
    pub fn namespaces(&self) -> Arc<Namespaces> {
        self.namespaces.load_full()
    }

    /// Replaces the namespaces at once (start, SIGHUP): subscriptions already held stay;
    /// every operation from now on follows the new rules.
    pub fn set_namespaces(&self, namespaces: Namespaces) {
        self.namespaces.store(Arc::new(namespaces));
    }

    /// The options of `channel`'s namespace, as configured now.
    pub fn namespace_of(&self, channel: &str) -> Result<Arc<NamespaceOptions>, UnknownNamespace> {
        self.namespaces.load().resolve(channel).cloned()
    }

    /// Makes the gateway ask the backend through `proxy` (once, at build). Returns false
    /// when a proxy was attached already.
    pub fn attach_proxy(&self, proxy: Arc<Proxy>) -> bool {
        self.proxy.set(proxy).is_ok()
    }

    /// The backend's proxy hooks, when configured.
    pub fn proxy(&self) -> Option<&Arc<Proxy>> {
        self.proxy.get()
    }

    /// Sends this gateway's events (connections, occupancy, presence) to `events`. Once.
    pub fn attach_events(&self, events: Arc<crate::events::Events>) {
        let _ = self.events.set(events);
    }

    /// The node's event emitter, when events are configured.
    pub fn events(&self) -> Option<&Arc<crate::events::Events>> {
        self.events.get()
    }

    pub fn node(&self) -> &NodeId {
        &self.config.node
    }

    /// Now on the gateway's clock, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Client connections open on this node.
    pub fn connection_count(&self) -> usize {
        self.registry.len()
    }

    /// Whether the broker answers (`/ready`, gRPC health).
    pub fn broker_healthy(&self) -> bool {
        self.broker.is_healthy()
    }

    /// Whether the presence store answers (`/ready`, gRPC health).
    pub fn presence_healthy(&self) -> bool {
        self.presence.is_healthy()
    }

    /// Registers a new `/ws` client connection; the caller sends `hello`, arms the token's expiry
    /// ([`Gateway::arm_expiry`]) and runs its task.
    pub fn open(
        &self,
        identity: Identity,
        remote: Option<SocketAddr>,
        transport: Arc<dyn Transport>,
    ) -> Arc<Connection> {
        self.open_kind("gateway", identity, remote, transport)
    }

    /// Registers a new client connection of `kind` (`gateway`: `/ws`; `socketio`).
    pub fn open_kind(
        &self,
        kind: &'static str,
        identity: Identity,
        remote: Option<SocketAddr>,
        transport: Arc<dyn Transport>,
    ) -> Arc<Connection> {
        let id = self.new_connection_id();
        self.open_as(kind, id, identity, remote, transport)
    }

    /// A connection id of this node, for a connection about to open (the connect hook tells
    /// the backend the id before the connection exists).
    pub fn new_connection_id(&self) -> Arc<str> {
        crate::ids::new_connection_id(&self.config.node)
    }

    /// [`Gateway::open_kind`] under an id from [`Gateway::new_connection_id`].
    pub fn open_as(
        &self,
        kind: &'static str,
        id: Arc<str>,
        identity: Identity,
        remote: Option<SocketAddr>,
        transport: Arc<dyn Transport>,
    ) -> Arc<Connection> {
        let conn = Arc::new(Connection::new(
            id,
            kind,
            identity,
            remote,
            self.clock.now_ms(),
            transport,
        ));
        self.registry.insert(conn.clone());
        self.subscribe_from_token(&conn);
        self.metrics.connections.inc();
        self.metrics.active_connections.inc();
        info!(connection_id = %conn.id, kind, user = %conn.user(), remote = ?remote, "connected");
        if let Some(events) = self.events() {
            events.opened(&conn.id, conn.user(), kind, remote.map(|r| r.to_string()));
        }
        conn
    }

    /// Makes sends to `user` reach this node before a connection of the user opens here
    /// (see [`Broker::watch_user`]). A broker that cannot answer now is counted and logged:
    /// the connection still opens (its channels answer for themselves), and the broker
    /// keeps trying in the background.
    pub async fn watch_user(&self, user: &str) {
        if let Err(e) = self.broker.watch_user(user).await {
            self.metrics.broker_errors.inc();
            warn!(user, error = %e, "sends to this user may miss this node until the broker is back");
        }
    }

    /// The `hello` frame for a new connection.
    pub fn hello(&self, conn: &Connection) -> tungstenite::Utf8Bytes {
        self.hello_with(conn, None)
    }

    /// The `hello` frame with the connect hook's `data` (valid JSON), if it gave any.
    pub fn hello_with(&self, conn: &Connection, data: Option<&str>) -> tungstenite::Utf8Bytes {
        let f = protocol::Frame::op("hello")
            .str("connection_id", &conn.id)
            .str("node", &self.config.node)
            .str("user", conn.user())
            .num(
                "heartbeat_ms",
                self.config.heartbeat_interval.as_millis() as u64,
            );
        match data {
            Some(data) => f.raw("data", data).finish(),
            None => f.finish(),
        }
    }

    /// Forgets a connection whose task has ended. `reason` labels the metric and the log.
    /// Returns the channels whose presence entries remain to be removed: the caller releases
    /// the socket and the connection's admission slot first, then calls
    /// [`Gateway::leave_channels`] (a store outage must not hold either).
    pub fn close(
        &self,
        conn: &Connection,
        reason: &'static str,
        code: Option<u16>,
    ) -> Vec<Arc<str>> {
        let channels = self.registry.remove(conn);
        self.disarm_expiry(conn);
        self.metrics.subscriptions.dec_by(channels.len() as i64);
        self.metrics.active_connections.dec();
        self.metrics.disconnected(reason);
        info!(
            connection_id = %conn.id,
            user = %conn.user(),
            reason,
            code,
            uptime_ms = self.clock.now_ms().saturating_sub(conn.connected_at_ms),
            "disconnected"
        );
        if let Some(events) = self.events() {
            events.closed(&conn.id, conn.user(), reason, code);
        }
        channels
    }

    /// Removes a closed connection's presence entries, in one call to the store (a store
    /// that fails keeps them and retries on its own: the Redis store's liveness loop), and
    /// announces its `leave` where the namespace has `join_leave`.
    pub async fn leave_channels(&self, connection_id: &str, user: &str, channels: &[Arc<str>]) {
        if let Some(events) = self.events() {
            let id: Arc<str> = connection_id.into();
            futures_util::future::join_all(channels.iter().map(|c| events.left(c, &id))).await;
            events.forget(&id);
        }
        if channels.is_empty() {
            return;
        }
        for channel in channels {
            self.announce_for(Membership::Leave, channel, user, connection_id)
                .await;
        }
        if let Err(e) = self
            .presence
            .presence_leave_all(channels, connection_id)
            .await
        {
            self.metrics.store_errors.inc();
            warn!(connection_id, channels = channels.len(), error = %e, "presence leave failed; retried later");
        }
    }

    /// Publishes to a channel through the broker (every node, in offset order). `event` names
    /// the Socket.IO event it is emitted as (`message` when `None`).
    /// A channel whose namespace is not configured is refused ([`UnknownNamespace`]); its
    /// namespace's history bounds go with the publication.
    pub async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        exclude_user: Option<&str>,
        event: Option<&str>,
    ) -> Result<(u64, Arc<str>, usize), GatewayError> {
        let req = PublishRequest {
            history: Default::default(),
            channel: channel.into(),
            data,
            exclude_user: exclude_user.map(Into::into),
            exclude_connection: None,
            event: event.map(Into::into),
        };
        match self.publish_request(req, None).await? {
            Once::Published {
                position,
                delivered,
            } => Ok((position.offset, position.epoch, delivered)),
            Once::Repeat(position) => Ok((position.offset, position.epoch, 0)),
        }
    }

    /// Publishes `req`, at most once per key and channel within its window when `once` is
    /// given ([`Broker::publish_once`]). A repeat is not counted as a publication.
    /// The channel's namespace decides the history bounds (an unknown one is refused).
    pub async fn publish_request(
        &self,
        mut req: PublishRequest,
        once: Option<&Idempotency>,
    ) -> Result<Once, GatewayError> {
        let ns = self
            .namespace_of(&req.channel)
            .map_err(|e| GatewayError::InvalidData(e.to_string()))?;
        req.history = crate::seams::HistoryPolicy {
            size: ns.history_size,
            ttl_ms: ns.history_ttl_ms,
        };
        let outcome = match once {
            None => self
                .broker
                .publish(req)
                .await
                .map(|(position, delivered)| Once::Published {
                    position,
                    delivered,
                }),
            Some(once) => self.broker.publish_once(req, once).await,
        };
        let outcome = outcome.inspect_err(|e| {
            if !matches!(e, BrokerError::IdempotencyConflict) {
                self.metrics.broker_errors.inc();
            }
        })?;
        if matches!(outcome, Once::Published { .. }) {
            self.count_publication("channel");
        }
        Ok(outcome)
    }

    pub async fn send_to_user(&self, user: &str, data: Bytes) -> Result<usize, GatewayError> {
        let n = self
            .broker
            .send(Recipient::User(user), data)
            .await
            .inspect_err(|_| {
                self.metrics.broker_errors.inc();
            })?;
        self.count_publication("user");
        Ok(n)
    }

    pub async fn send_to_connection(&self, id: &str, data: Bytes) -> Result<(), GatewayError> {
        let node = crate::ids::node_of(id).ok_or(GatewayError::ConnectionNotFound)?;
        let n = self
            .broker
            .send(
                Recipient::Connection {
                    node: &NodeId::from(node),
                    id,
                },
                data,
            )
            .await
            .inspect_err(|_| {
                self.metrics.broker_errors.inc();
            })?;
        self.count_publication("connection");
        if n == 0 {
            return Err(GatewayError::ConnectionNotFound);
        }
        Ok(())
    }

    fn count_publication(&self, kind: &'static str) {
        self.metrics
            .publications
            .get_or_create(&crate::metrics::KindLabel { kind })
            .inc();
    }

    /// Closes one connection on request of the control API.
    pub fn kick(&self, id: &str, message: &str) -> Result<(), GatewayError> {
        let conn = self
            .registry
            .get(id)
            .ok_or(GatewayError::ConnectionNotFound)?;
        conn.request_close(close::KICKED, "kicked", message);
        Ok(())
    }

    /// Asks every connection to close with 1001 (shutdown).
    pub fn close_all(&self, message: &str) {
        for conn in self.registry.all() {
            conn.request_close(close::GOING_AWAY, "shutdown", message);
        }
    }

    pub async fn presence(&self, channel: &str) -> Result<Presence, GatewayError> {
        let entries = self.presence.presence(channel).await.map_err(|e| {
            self.metrics.store_errors.inc();
            GatewayError::Broker(BrokerError::Unavailable(e.to_string()))
        })?;
        Ok(presence_of(channel, entries))
    }

    /// Presence as a client sees it: at most `presence_max_users` users, the same answer
    /// for every asker of a channel for `presence_cache`.
    pub async fn client_presence(
        &self,
        channel: &str,
    ) -> Result<Arc<ClientPresence>, GatewayError> {
        let now = self.clock.now_ms();
        let fresh_for = self.config.presence_cache.as_millis() as u64;
        let fresh = |p: &ClientPresence| now.saturating_sub(p.at_ms) < fresh_for;
        if let Some(p) = self.presence_cache.get(channel)
            && fresh(&p)
        {
            return Ok(p.clone());
        }
        let mut p = self.presence(channel).await?;
        let truncated = p.users.len() > self.config.presence_max_users;
        p.users.truncate(self.config.presence_max_users);
        let answer = Arc::new(ClientPresence {
            users_json: serde_json::to_string(&p.users).unwrap_or_else(|_| "[]".into()),
            connections: p.connections,
            truncated,
            at_ms: now,
        });
        if fresh_for > 0 {
            if self.presence_cache.len() >= PRESENCE_CACHE_ENTRIES {
                self.presence_cache.retain(|_, p| fresh(p));
            }
            self.presence_cache.insert(channel.into(), answer.clone());
        }
        Ok(answer)
    }

    pub(crate) async fn presence_join(&self, channel: &str, conn: &Connection) {
        let entry = PresenceEntry {
            connection_id: conn.id.clone(),
            user: conn.user().clone(),
            node: self.config.node.clone(),
        };
        if let Err(e) = self.presence.presence_join(channel, entry).await {
            self.metrics.store_errors.inc();
            warn!(connection_id = %conn.id, channel, error = %e, "presence join failed");
        }
    }

    /// One heartbeat sweep: closes connections silent for longer than the timeout (4008)
    /// and, when `ping` is set, queues a WebSocket ping to every other one.
    pub fn sweep(&self, ping: bool) -> SweepReport {
        let now = self.clock.now_ms();
        let timeout = self.config.heartbeat_timeout.as_millis() as u64;
        let mut report = SweepReport::default();
        for conn in self.registry.all() {
            let silent = now.saturating_sub(conn.stats.last_seen_ms.load(Relaxed));
            if silent > timeout {
                if conn.request_close(
                    close::HEARTBEAT_TIMEOUT,
                    "heartbeat_timeout",
                    "heartbeat timeout",
                ) {
                    self.metrics.heartbeat_failures.inc();
                    warn!(connection_id = %conn.id, user = %conn.user(), silent_ms = silent, "heartbeat timeout");
                    report.closed += 1;
                }
            } else if ping {
                conn.transport.send_control(protocol::wire_ping());
                report.pinged += 1;
            }
        }
        report
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub pinged: usize,
    pub closed: usize,
}

fn presence_of(channel: &str, entries: Vec<PresenceEntry>) -> Presence {
    let mut users: Vec<String> = entries.iter().map(|e| e.user.to_string()).collect();
    users.sort();
    users.dedup();
    Presence {
        channel: channel.to_string(),
        users,
        connections: entries.len(),
    }
}

/// The broker's way into this node: fans envelopes out to local sockets.
struct LocalDelivery {
    registry: Arc<Registry>,
    metrics: Metrics,
    flushers: Flushers,
}

impl LocalDelivery {
    fn push(&self, conn: &Connection, item: &Outbound, frame_len: usize) -> bool {
        let sent = conn.transport.send(item);
        self.counted(conn, sent, frame_len)
    }

    /// [`Self::push`] for a channel fan-out: a socket whose backlog the frame started is
    /// added to `flush`, written once the whole fan-out is queued.
    fn queue(
        &self,
        conn: &Arc<Connection>,
        item: &Outbound,
        frame_len: usize,
        flush: &mut Vec<Arc<Connection>>,
    ) -> bool {
        let queued = conn.transport.queue(item).map(|q| {
            if q == Queued::Flush {
                flush.push(conn.clone());
            }
        });
        self.counted(conn, queued, frame_len)
    }

    fn counted(&self, conn: &Connection, sent: Result<(), Overflow>, frame_len: usize) -> bool {
        match sent {
            Ok(()) => {
                conn.stats.messages_out.fetch_add(1, Relaxed);
                conn.stats.bytes_out.fetch_add(frame_len as u64, Relaxed);
                true
            }
            Err(Overflow) => {
                if conn.request_close(
                    close::SLOW_CONSUMER,
                    "slow_consumer",
                    "slow consumer: backlog full",
                ) {
                    self.metrics.slow_consumers.inc();
                    warn!(connection_id = %conn.id, user = %conn.user(), "slow consumer closed");
                }
                false
            }
        }
    }
}

impl LocalDelivery {
    fn sent(&self, messages: usize, frame_len: usize) {
        self.metrics.messages_sent.inc_by(messages as u64);
        self.metrics
            .bytes_sent
            .inc_by((messages * frame_len) as u64);
    }
}

impl Deliver for LocalDelivery {
    fn has_subscribers(&self, channel: &str) -> bool {
        self.registry.has_subscribers(channel)
    }

    fn has_user(&self, user: &str) -> bool {
        self.registry.has_user(user)
    }

    fn gap(&self, channel: &Arc<str>, epoch: &Arc<str>, offset: u64) {
        let Some(subs) = self.registry.subscribers(channel) else {
            return;
        };
        self.metrics.gap_notices.inc();
        warn!(%channel, %epoch, offset, subscribers = subs.len(), "publications lost on their way to this node: subscribers notified");
        let frame = protocol::gap(channel, epoch, offset);
        // Through the subscribers' skips: one whose subscription answer is past `offset`
        // needs no notice.
        let item = Outbound::Publication(Arc::new(Delivery {
            channel: channel.clone(),
            epoch: epoch.clone(),
            offset,
            wire: protocol::wire_text(frame.as_bytes()),
            noticed: None,
            published_at_us: 0,
            publication: None,
            framed: OnceLock::new(),
        }));
        let n = subs
            .iter()
            .filter(|c| self.push(c, &item, frame.len()))
            .count();
        self.sent(n, frame.len());
    }

    fn deliver(&self, envelope: &Envelope) -> usize {
        match envelope {
            Envelope::Channel(p) => {
                let Some((subs, changed)) = self.registry.subscribers_at(&p.channel, &p.epoch)
                else {
                    return 0;
                };
                let frame = protocol::channel_message(&p.channel, p.offset, &p.data);
                let mut delivery = Delivery {
                    channel: p.channel.clone(),
                    epoch: p.epoch.clone(),
                    offset: p.offset,
                    wire: protocol::wire_text(frame.as_bytes()),
                    noticed: None,
                    published_at_us: p.published_at_us,
                    publication: Some(p.clone()),
                    framed: OnceLock::new(),
                };
                if changed {
                    // The stream the subscribers knew is gone: each gets `epoch_changed`
                    // right before this first publication of the new epoch.
                    self.metrics.epoch_notices.inc();
                    warn!(channel = %p.channel, epoch = %p.epoch, offset = p.offset, "channel epoch changed: subscribers notified");
                    delivery.noticed = Some(delivery.with_notice());
                }
                let item = Outbound::Publication(Arc::new(delivery));
                let exclude = p.exclude_user.as_deref();
                let exclude_connection = p.exclude_connection.as_deref();
                // The exclusions are looked at only when given: comparing against `None`
                // would still read every subscriber's user and id (two cold heap strings
                // per delivery on a 10k fan-out).
                let mut flush = Vec::new();
                let delivered = subs
                    .iter()
                    .filter(|c| exclude.is_none_or(|u| u != &**c.user()))
                    .filter(|c| exclude_connection.is_none_or(|id| id != &*c.id))
                    .filter(|c| self.queue(c, &item, frame.len(), &mut flush))
                    .count();
                self.sent(delivered, frame.len());
                // One observation per publication and node: the time until the last local
                // subscriber's socket took the frame (the flush lane observes it when it has
                // sockets to write; else it is now: the backlogs took the frame).
                if flush.is_empty() {
                    let us = crate::clock::unix_us().saturating_sub(p.published_at_us);
                    self.metrics.delivery_latency.observe(us as f64 / 1e6);
                }
                self.flushers.flush(flush, p.published_at_us);
                delivered
            }
            Envelope::User { user, data } => {
                let frame = protocol::direct_message(data);
                let item = Outbound::Frame(protocol::wire_text(frame.as_bytes()));
                let delivered = self
                    .registry
                    .of_user(user)
                    .iter()
                    .filter(|c| self.push(c, &item, frame.len()))
                    .count();
                self.sent(delivered, frame.len());
                delivered
            }
            Envelope::Subscribers { channel, data } => {
                let Some(subs) = self.registry.subscribers(channel) else {
                    return 0;
                };
                let item = Outbound::Frame(protocol::wire_text(data));
                let delivered = subs
                    .iter()
                    .filter(|c| self.push(c, &item, data.len()))
                    .count();
                self.sent(delivered, data.len());
                delivered
            }
            Envelope::Connection { id, data } => match self.registry.get(id) {
                Some(c) => {
                    let frame = protocol::direct_message(data);
                    let item = Outbound::Frame(protocol::wire_text(frame.as_bytes()));
                    let delivered = usize::from(self.push(&c, &item, frame.len()));
                    self.sent(delivered, frame.len());
                    delivered
                }
                None => 0,
            },
            Envelope::Subscriptions { user, change } => {
                let conns = self.registry.of_user(user);
                for c in &conns {
                    c.push_server_op(change.clone());
                }
                conns.len()
            }
        }
    }
}

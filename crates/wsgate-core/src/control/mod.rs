//! The control façade: every operation of the control API, once, for every transport.
//!
//! HTTP/JSON (`wsgate-server`) and gRPC (`wsgate-grpc`) are codecs over [`Control`]: they
//! decode a request into a typed command, call the method of the same name, and encode the
//! typed result or map [`ControlError::code`] to their status. Everything a transport used
//! to repeat lives here:
//!
//! - **authorization**: [`Control::authorize`] checks the API key and the limits by client
//!   address (`access.rs`);
//! - **policy**: Connect only to `upstream_allowed_hosts` ([`UpstreamHosts`]), and no new
//!   upstream connection once the node is stopping ([`Control::drain`]);
//! - **validation and defaults**: one channel-name rule, one payload rule, the Connect,
//!   SendAsync and paging defaults as named constants (`rules.rs`, [`Connect`]);
//! - **listing and paging** of gateway and upstream connections together ([`Page`]);
//! - **routing**: operations on an upstream connection become one
//!   [`UpstreamOp`], which [`UpstreamManager::execute`] runs here or on the owning instance;
//! - **errors**: one [`ControlError`] whose message is seed 000's string to the letter.
//!
//! A future transport (an admin console, a CLI over the API) gets the same behaviour by
//! calling the same methods.

/// The names of an option a request picks by name (`kind`, `scope`): `FromStr`, where any
/// other name is refused with `error`, and `name()` back.
macro_rules! named_options {
    ($t:ty, $error:literal, $($name:literal => $variant:ident),+) => {
        impl std::str::FromStr for $t {
            type Err = ControlError;

            fn from_str(s: &str) -> Result<Self, ControlError> {
                match s {
                    $($name => Ok(Self::$variant),)+
                    _ => Err(ControlError::invalid($error)),
                }
            }
        }

        impl $t {
            /// The name a request gives.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }
        }
    };
}

mod access;
mod channels;
mod cluster;
mod connect;
mod error;
mod listing;
mod publishing;
mod rules;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use wsgate_client::Message;

pub use access::{Access, ApiLimits, Caller, RATE_LIMITED, UNAUTHORIZED};
pub use channels::{ChannelCount, ChannelInfo, ChannelList, MAX_CHANNELS_LISTED};
pub use cluster::{Listing, NODE_QUERY_TIMEOUT, Scope};
pub use connect::{Connect, ConnectAuth, HOST_NOT_ALLOWED, Subscribe, UpstreamHosts};
pub use error::{ControlError, ErrorCode, STORE_UNAVAILABLE};
pub use listing::{ConnectionKind, ConnectionView, ListConnections, Page};
pub use publishing::{
    Broadcast, Command, CommandResult, DEFAULT_IDEMPOTENCY_WINDOW, MAX_BATCH_COMMANDS,
    MAX_BROADCAST_CHANNELS, MAX_IDEMPOTENCY_KEY_LEN,
};
pub use rules::{
    DEFAULT_AUTH_TIMEOUT_MS, DEFAULT_CONNECT_WAIT, DEFAULT_DISCONNECT_REASON, DEFAULT_PAGE_SIZE,
    DEFAULT_REQUEST_TIMEOUT_MS, MAX_PAGE_SIZE, MAX_REQUEST_TIMEOUT_MS, Payload,
};

use crate::gateway::{Gateway, Presence};
use crate::upstream::{
    Outcome, Route, TOPIC_PREFIX, UpstreamError, UpstreamManager, UpstreamOp, UpstreamView,
    state_name,
};

/// Publish: `data` to every subscriber of `channel` (but `exclude_user`'s connections and
/// `exclude_connection`).
#[derive(Debug, Clone)]
pub struct Publish {
    pub channel: String,
    pub data: Payload,
    pub exclude_user: Option<String>,
    pub exclude_connection: Option<String>,
    /// Socket.IO clients get it as this event instead of `message` (docs/socketio.md).
    pub event: Option<String>,
    /// At most once per key and channel within `idempotency_window_ms` (`publishing.rs`).
    pub idempotency_key: Option<String>,
}

/// What Publish reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub channel: String,
    /// The publication's position in the channel's history.
    pub offset: u64,
    pub epoch: Arc<str>,
    /// Local connections it was delivered to.
    pub delivered: usize,
    /// A repeat of an idempotency key: nothing was published, this is the first answer's
    /// position (and `delivered` is 0).
    pub replayed: bool,
}

/// What Connect reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    pub connection_id: Arc<str>,
    /// The state when Connect returned (`connected` unless the wait ran out or it failed).
    pub state: &'static str,
}

/// What StartPublish reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishStarted {
    pub topic: String,
    /// `topic:<topic>`: the gateway channel the messages go to.
    pub channel: String,
}

/// Message of a Connect refused because the node is stopping (HTTP 503), the same words
/// as a refused WebSocket upgrade.
pub const SHUTTING_DOWN: &str = "server is shutting down";

/// The control API of one node.
pub struct Control {
    gateway: Arc<Gateway>,
    upstreams: Arc<UpstreamManager>,
    access: Access,
    /// Cluster mode ([`Control::attach_cluster`]): how to reach the other nodes.
    cluster: std::sync::OnceLock<cluster::ClusterLink>,
    upstream_hosts: UpstreamHosts,
    /// Set when the node starts to stop: new upstream connections are refused.
    draining: AtomicBool,
    /// `idempotency_window_ms`.
    idempotency_window: std::time::Duration,
}

impl Control {
    pub fn new(gateway: Arc<Gateway>, upstreams: Arc<UpstreamManager>, access: Access) -> Self {
        Self {
            gateway,
            upstreams,
            access,
            cluster: std::sync::OnceLock::new(),
            upstream_hosts: UpstreamHosts::default(),
            draining: AtomicBool::new(false),
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
        }
    }

    /// Connect only to these hosts (`upstream_allowed_hosts`).
    pub fn with_upstream_hosts(mut self, hosts: UpstreamHosts) -> Self {
        self.upstream_hosts = hosts;
        self
    }

    /// The node is stopping (its connections are being handed over or drained): from now on
    /// Connect answers 503, as new WebSocket upgrades do. Other operations keep working
    /// until the node is gone.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether `caller` may call: API rate limit first, then the API key. Refusals are
    /// counted in `wsgate_api_rejections_total{reason}`.
    pub fn authorize(&self, caller: Caller<'_>) -> Result<(), ControlError> {
        self.access.authorize(caller, &self.gateway.metrics)
    }

    // Client connections (the gateway side).

    /// Sends `data` to every connection of `user`; returns how many took it.
    pub async fn send_to_user(&self, user: &str, data: Payload) -> Result<usize, ControlError> {
        Ok(self.gateway.send_to_user(user, data.into_bytes()).await?)
    }

    pub async fn send_to_connection(&self, id: &str, data: Payload) -> Result<(), ControlError> {
        Ok(self
            .gateway
            .send_to_connection(id, data.into_bytes())
            .await?)
    }

    /// Closes client connection `id` (4003) with `reason`, or [`DEFAULT_DISCONNECT_REASON`],
    /// on whichever node holds it (the id names the node).
    pub async fn disconnect_client(
        &self,
        id: &str,
        reason: Option<&str>,
    ) -> Result<(), ControlError> {
        match crate::ids::node_of(id) {
            Some(node)
                if node != &**self.gateway.node() && self.gateway.registry.get(id).is_none() =>
            {
                self.kick_elsewhere(node, id, reason).await
            }
            _ => self.kick_local(id, reason),
        }
    }

    fn kick_local(&self, id: &str, reason: Option<&str>) -> Result<(), ControlError> {
        let reason = reason.unwrap_or(DEFAULT_DISCONNECT_REASON);
        Ok(self.gateway.kick(id, reason)?)
    }

    /// Presence of a channel whose namespace keeps it (`presence = false`: 400).
    pub async fn presence(&self, channel: &str) -> Result<Presence, ControlError> {
        rules::check_channel(channel)?;
        let ns = self
            .gateway
            .namespace_of(channel)
            .map_err(|e| ControlError::invalid(e.to_string()))?;
        if !ns.presence {
            return Err(ControlError::invalid(format!(
                "presence is off in the namespace of `{channel}`"
            )));
        }
        Ok(self.gateway.presence(channel).await?)
    }

    // Both kinds of connection.

    /// ListConnections: the client and upstream connections of every live node (or of this
    /// node, [`Scope::Node`]), filtered, sorted by id, one page.
    pub async fn list_connections(&self, q: &ListConnections) -> Result<Listing, ControlError> {
        match (q.scope, self.cluster.get()) {
            (Scope::Cluster, Some(link)) => self.list_cluster(link, q).await,
            _ => Ok(Listing {
                page: Page::of(self.local_matches(q), q.offset, q.limit),
                missing_nodes: Vec::new(),
            }),
        }
    }

    /// This node's connections that `q` selects, sorted by id.
    fn local_matches(&self, q: &ListConnections) -> Vec<ConnectionView> {
        let gw = &self.gateway;
        let mut all: Vec<ConnectionView> = Vec::new();
        if q.wants_gateway() {
            let now = gw.clock.now_ms();
            let conns = match &q.user {
                Some(user) => gw.registry.of_user(user),
                None => gw.registry.all(),
            };
            all.extend(
                conns
                    .iter()
                    .filter(|c| q.wants_clients(c.kind))
                    .filter(|c| q.channel.as_deref().is_none_or(|ch| c.is_subscribed(ch)))
                    .map(|c| ConnectionView::Gateway(c.info(gw.node(), now))),
            );
        }
        if q.wants_upstreams() {
            all.extend(
                self.upstreams
                    .list()
                    .into_iter()
                    .map(ConnectionView::Upstream),
            );
        }
        all.sort_by(|a, b| a.id().cmp(b.id()));
        all
    }

    /// GetConnection: a connection of either kind, from any node (asked of the node that
    /// holds it).
    pub async fn get_connection(&self, id: &str) -> Result<ConnectionView, ControlError> {
        if let Some(view) = self.local_view(id) {
            return Ok(view);
        }
        match self.get_upstream(id).await {
            Err(e) if e.code == ErrorCode::NotFound => match crate::ids::node_of(id) {
                Some(node) if node != &**self.gateway.node() => self.view_elsewhere(node, id).await,
                _ => Err(e),
            },
            other => other.map(ConnectionView::Upstream),
        }
    }

    // Upstream connections.

    /// Connect: starts the connection and waits (see [`Connect::wait_ms`]) for it to be
    /// ready. The connection is kept, following its reconnect policy, either way.
    pub async fn connect(&self, cmd: Connect) -> Result<Connected, ControlError> {
        if self.draining.load(Ordering::Acquire) {
            return Err(ControlError::new(ErrorCode::Unavailable, SHUTTING_DOWN));
        }
        self.upstream_hosts.check(&cmd.url)?;
        let (spec, wait) = cmd.into_spec();
        let c = self.upstreams.connect(spec, wait).await?;
        Ok(Connected {
            connection_id: c.id,
            state: state_name(c.state),
        })
    }

    /// Send: one text frame.
    pub async fn send(&self, id: &str, text: String) -> Result<(), ControlError> {
        self.acknowledged(UpstreamOp::Send {
            id: id.into(),
            text,
        })
        .await
    }

    /// SendRaw: one binary frame.
    pub async fn send_raw(&self, id: &str, data: Bytes) -> Result<(), ControlError> {
        self.acknowledged(UpstreamOp::SendRaw {
            id: id.into(),
            data,
        })
        .await
    }

    /// SendAsync: `msg` and its correlated reply, waiting `timeout_ms` (default
    /// [`DEFAULT_REQUEST_TIMEOUT_MS`], at most [`MAX_REQUEST_TIMEOUT_MS`]).
    pub async fn send_async(
        &self,
        id: &str,
        msg: Message,
        timeout_ms: Option<u64>,
    ) -> Result<Message, ControlError> {
        let timeout = rules::request_timeout(timeout_ms)?;
        let op = UpstreamOp::SendAsync {
            id: id.into(),
            msg,
            timeout,
        };
        match self.run(op).await? {
            Outcome::Reply(m) => Ok(m),
            _ => Err(UpstreamError::Remote("forwarded reply without frame".into()).into()),
        }
    }

    /// Tracks `add` (replacing by key), untracks `remove`; returns the tracked keys.
    pub async fn update_subscriptions(
        &self,
        id: &str,
        add: Vec<Subscribe>,
        remove: Vec<String>,
    ) -> Result<Vec<String>, ControlError> {
        let op = UpstreamOp::Subscriptions {
            id: id.into(),
            add: add.into_iter().map(Into::into).collect(),
            remove,
        };
        match self.run(op).await? {
            Outcome::Keys(keys) => Ok(keys),
            _ => Ok(Vec::new()),
        }
    }

    /// StartPublish: from now on received messages go to channel `topic:<topic>`.
    pub async fn start_publish(
        &self,
        id: &str,
        topic: String,
    ) -> Result<PublishStarted, ControlError> {
        let channel = format!("{TOPIC_PREFIX}{topic}");
        self.run(UpstreamOp::StartPublish {
            id: id.into(),
            topic: topic.clone(),
        })
        .await?;
        Ok(PublishStarted { topic, channel })
    }

    pub async fn stop_publish(&self, id: &str) -> Result<(), ControlError> {
        self.acknowledged(UpstreamOp::StopPublish { id: id.into() })
            .await
    }

    /// Disconnect: closes upstream connection `id` and forgets its record.
    pub async fn disconnect_upstream(&self, id: &str) -> Result<(), ControlError> {
        self.acknowledged(UpstreamOp::Disconnect { id: id.into() })
            .await
    }

    /// Reconnect: restarts upstream connection `id` (open or `failed`) with the same id,
    /// subscriptions and auth.
    pub async fn reconnect_upstream(&self, id: &str) -> Result<(), ControlError> {
        self.run(UpstreamOp::Reconnect { id: id.into() })
            .await
            .map(drop)
    }

    /// List: the upstream connections this node holds, sorted by id.
    pub fn list_upstreams(&self) -> Vec<UpstreamView> {
        self.upstreams.list()
    }

    /// Get: one upstream connection, from its owner when another live node holds it
    /// (`Connection owned by different instance` when that owner is dead).
    pub async fn get_upstream(&self, id: &str) -> Result<UpstreamView, ControlError> {
        match self.upstreams.route(id).await? {
            Route::Local(up) => Ok(up.view()),
            Route::Remote(owner) => match self.view_elsewhere(&owner, id).await? {
                ConnectionView::Upstream(u) => Ok(u),
                ConnectionView::Gateway(_) => Err(UpstreamError::NotFound.into()),
            },
        }
    }

    async fn run(&self, op: UpstreamOp) -> Result<Outcome, ControlError> {
        Ok(self.upstreams.execute(op).await?)
    }

    /// Runs an op whose outcome tells the caller nothing beyond success.
    async fn acknowledged(&self, op: UpstreamOp) -> Result<(), ControlError> {
        self.run(op).await.map(drop)
    }
}

#[cfg(test)]
mod tests;

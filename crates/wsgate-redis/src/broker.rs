//! [`RedisBroker`]: publications through the publish script, delivery through one
//! subscription per node.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::Conn;
use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashSet;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use wsgate_core::relay::{Dispatcher, Relay, wire};
use wsgate_core::seams::{
    Broker, BrokerError, ClusterMetrics, Deliver, Idempotency, NodeId, Once, PublishRequest,
    Recipient, ServerSubscription, StreamPosition, StreamReads,
};

use super::feed::{Event, Feed};
use super::streams::Appended;
use super::{
    ChannelStreams, Health, Keys, RedisConfig, broker_error, next_delay, reconnect_backoff,
};

pub struct RedisBroker {
    streams: Arc<ChannelStreams>,
    relay: Arc<Relay>,
    conn: Conn,
    keys: Keys,
    sink: Arc<OnceLock<Arc<dyn Deliver>>>,
    subscribed: Arc<Health>,
    /// Per-channel pub/sub only: asks the subscription task to receive a channel or a user.
    watch: Option<WatchRequests>,
    /// `SPUBLISH` (a Redis Cluster's shard channels) rather than `PUBLISH`.
    sharded: bool,
    task: JoinHandle<()>,
}

/// How long a subscriber waits for its node to receive the channel (its `subscribe` is
/// answered `unavailable` after that).
const WATCH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a connection's `hello` waits for its node to receive the user's sends. A
/// Redis that answers does so in a millisecond; a stalled one must not keep clients out
/// (their address's slot, their channels): after this the connection opens, and the
/// request stays queued until Redis answers it.
const USER_WATCH_TIMEOUT: Duration = Duration::from_millis(250);

/// What a node receives only while it has local interest in it (per-channel pub/sub).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interest {
    /// A channel's publications (and join/leave), while it has local subscribers.
    Channel,
    /// Sends to a user (and its server-side subscription changes), while it has local
    /// connections.
    User,
}

/// A channel or user to receive, and where to say once it is (or why not).
type WatchRequest = (Interest, Arc<str>, oneshot::Sender<Result<(), String>>);

/// The names received now, per interest (read without asking the task: the common case).
#[derive(Clone, Default)]
struct Received {
    channels: Arc<DashSet<Arc<str>>>,
    users: Arc<DashSet<Arc<str>>>,
}

impl Received {
    fn of(&self, interest: Interest) -> &DashSet<Arc<str>> {
        match interest {
            Interest::Channel => &self.channels,
            Interest::User => &self.users,
        }
    }
}

struct WatchRequests {
    received: Received,
    requests: mpsc::UnboundedSender<WatchRequest>,
}

/// The subscription task's side of per-channel pub/sub.
struct PerChannel {
    received: Received,
    /// Names whose subscription failed (the feed broke meanwhile): subscribed with the
    /// rest when the feed is open again. A user's connection opened anyway; a send to it
    /// must find this node once Redis is back.
    owed: Vec<(Interest, Arc<str>)>,
    requests: mpsc::UnboundedReceiver<WatchRequest>,
    keys: Keys,
    sink: Arc<OnceLock<Arc<dyn Deliver>>>,
}

impl PerChannel {
    fn wanted(&self, interest: Interest, name: &str) -> bool {
        self.sink.get().is_some_and(|s| match interest {
            Interest::Channel => s.has_subscribers(name),
            Interest::User => s.has_user(name),
        })
    }

    fn pubsub(&self, interest: Interest, name: &str) -> String {
        match interest {
            Interest::Channel => self.keys.channel_pubsub(name),
            Interest::User => self.keys.user_pubsub(name),
        }
    }

    /// Every pub/sub channel to subscribe to when the feed opens; what was owed joins the
    /// received names.
    fn all(&mut self) -> Vec<String> {
        for (interest, name) in self.owed.drain(..) {
            self.received.of(interest).insert(name);
        }
        [Interest::Channel, Interest::User]
            .into_iter()
            .flat_map(|i| {
                let names: Vec<Arc<str>> = self
                    .received
                    .of(i)
                    .iter()
                    .map(|n| n.key().clone())
                    .collect();
                names.into_iter().map(move |n| (i, n))
            })
            .map(|(i, n)| self.pubsub(i, &n))
            .collect()
    }

    /// Receives `name` (its own pub/sub channel), unless already. An error means the feed
    /// is broken; the name is owed to the next one.
    async fn add(
        &mut self,
        feed: &mut Feed,
        interest: Interest,
        name: Arc<str>,
    ) -> Result<(), redis::RedisError> {
        if self.received.of(interest).contains(&name) {
            return Ok(());
        }
        match feed.add(&self.pubsub(interest, &name)).await {
            Ok(()) => {
                self.received.of(interest).insert(name);
                Ok(())
            }
            Err(e) => {
                self.owed.push((interest, name));
                Err(e)
            }
        }
    }

    /// Stops receiving the channels without a local subscriber left, and the users without
    /// a local connection. Taken out of the set first and looked at again: a subscriber
    /// arriving meanwhile either sees the name missing and asks for it (queued behind
    /// this), or is seen here and keeps it.
    async fn prune(
        &self,
        feed: &mut Feed,
        dispatcher: &mut Dispatcher,
    ) -> Result<(), redis::RedisError> {
        for interest in [Interest::Channel, Interest::User] {
            let set = self.received.of(interest);
            let idle: Vec<Arc<str>> = set
                .iter()
                .filter(|n| !self.wanted(interest, n.key()))
                .map(|n| n.key().clone())
                .collect();
            for name in idle {
                set.remove(&name);
                if self.wanted(interest, &name) {
                    set.insert(name);
                    continue;
                }
                feed.remove(&self.pubsub(interest, &name)).await?;
                if interest == Interest::Channel {
                    dispatcher.forget(&name);
                }
            }
        }
        Ok(())
    }
}

impl RedisBroker {
    /// Starts the node's subscription task; returns at once (Redis may still be down: the
    /// broker reports itself unhealthy until it is reached). Needs a Tokio runtime.
    pub fn start(
        node: NodeId,
        config: &RedisConfig,
        metrics: ClusterMetrics,
    ) -> Result<Self, BrokerError> {
        let conn = config.conn().map_err(broker_error)?;
        let keys = Keys::new(&config.key_prefix, config.cluster);
        let streams = Arc::new(ChannelStreams::new(
            conn.clone(),
            keys.clone(),
            config,
            metrics.clone(),
        ));
        let relay = Arc::new(Relay::new(streams.clone(), metrics));
        let sink = Arc::new(OnceLock::new());
        let subscribed = Arc::new(Health::default());
        let (watch, per_channel) = if config.per_channel_pubsub {
            let received = Received::default();
            let (tx, rx) = mpsc::unbounded_channel();
            (
                Some(WatchRequests {
                    received: received.clone(),
                    requests: tx,
                }),
                Some(PerChannel {
                    received,
                    owed: Vec::new(),
                    requests: rx,
                    keys: keys.clone(),
                    sink: sink.clone(),
                }),
            )
        } else {
            (None, None)
        };
        let subscription = Subscription {
            per_channel,
            config: config.clone(),
            channels: [
                keys.publications.clone(),
                keys.users.clone(),
                keys.node(&node),
            ],
            conn: conn.clone(),
            dispatcher: Dispatcher::new(relay.clone(), sink.clone()),
            health: streams.health.clone(),
            subscribed: subscribed.clone(),
        };
        let task = wsgate_core::tasks::supervised("broker subscription", subscription.run());
        Ok(Self {
            streams,
            relay,
            conn,
            keys,
            sink,
            subscribed,
            watch,
            sharded: config.cluster,
            task,
        })
    }

    /// Where a send to `user` goes: the user's own pub/sub channel in per-channel mode
    /// (only the nodes holding the user hear it), `P:user` for every node otherwise.
    fn user_route(&self, user: &str) -> (String, bool) {
        match self.watch {
            Some(_) => (self.keys.user_pubsub(user), self.sharded),
            None => (self.keys.users.clone(), false),
        }
    }

    /// Where a channel's join/leave goes: beside its publications in per-channel mode.
    fn subscribers_route(&self, channel: &str) -> (String, bool) {
        match self.watch {
            Some(_) => (self.keys.channel_pubsub(channel), self.sharded),
            None => (self.keys.users.clone(), false),
        }
    }

    /// Asks the subscription task to receive `name`, unless it does already.
    async fn watch_name(&self, interest: Interest, name: &str) -> Result<(), BrokerError> {
        let Some(w) = &self.watch else {
            return Ok(());
        };
        if w.received.of(interest).contains(name) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let gone = || BrokerError::Unavailable("the broker subscription is not running".into());
        w.requests
            .send((interest, name.into(), tx))
            .map_err(|_| gone())?;
        if interest == Interest::User && !self.subscribed.get() {
            // Redis is away: the request waits in the queue for the feed to open again, and
            // the user's connection need not wait for that.
            return Err(BrokerError::Unavailable(
                "the broker subscription is down; the user is received once it is back".into(),
            ));
        }
        let limit = match interest {
            Interest::Channel => WATCH_TIMEOUT,
            Interest::User => USER_WATCH_TIMEOUT,
        };
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(BrokerError::Unavailable(e)),
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(BrokerError::Unavailable(
                "Redis did not confirm the subscription in time".into(),
            )),
        }
    }

    /// `PUBLISH` (or `SPUBLISH` on a shard channel, `sharded`); returns how many nodes
    /// received it.
    async fn announce(
        &self,
        (channel, sharded): (String, bool),
        payload: Bytes,
    ) -> Result<usize, BrokerError> {
        let command = if sharded { "SPUBLISH" } else { "PUBLISH" };
        let r: Result<i64, _> = redis::cmd(command)
            .arg(channel)
            .arg(&payload[..])
            .query_async(&mut self.conn.clone())
            .await;
        self.streams.health.observe(&r);
        if r.is_err() {
            self.streams.metrics.errors.inc();
        }
        Ok(r.map_err(broker_error)? as usize)
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn attach(&self, sink: Arc<dyn Deliver>) {
        let _ = self.sink.set(sink);
    }

    /// Delivery is asynchronous here (through the node's own subscription, so that local and
    /// remote subscribers see one order): the count returned is the number of nodes that
    /// received the publication.
    async fn publish(&self, req: PublishRequest) -> Result<(StreamPosition, usize), BrokerError> {
        match self.streams.append_announced(req, None).await? {
            Appended::New {
                publication: p,
                receivers,
            } => Ok((
                StreamPosition {
                    offset: p.offset,
                    epoch: p.epoch,
                },
                receivers,
            )),
            Appended::Repeat(_) => Err(BrokerError::Other(
                "publish script answered a repeat without an idempotency key".into(),
            )),
        }
    }

    /// One script checks the key, publishes and records the key (all in the channel's
    /// slot): concurrent repeats on any node publish once.
    async fn publish_once(
        &self,
        req: PublishRequest,
        once: &Idempotency,
    ) -> Result<Once, BrokerError> {
        Ok(
            match self.streams.append_announced(req, Some(once)).await? {
                Appended::New {
                    publication: p,
                    receivers,
                } => Once::Published {
                    position: StreamPosition {
                        offset: p.offset,
                        epoch: p.epoch,
                    },
                    delivered: receivers,
                },
                Appended::Repeat(position) => Once::Repeat(position),
            },
        )
    }

    /// The way a send to the user goes: every node holding the user changes its connections
    /// of `user`. Returns the number of nodes reached.
    async fn change_subscriptions(
        &self,
        user: &str,
        change: &ServerSubscription,
    ) -> Result<usize, BrokerError> {
        let payload = wire::encode_subscriptions(user, change);
        self.announce(self.user_route(user), payload).await
    }

    fn reads(&self) -> &dyn StreamReads {
        &*self.relay
    }

    async fn watch(&self, channel: &str) -> Result<(), BrokerError> {
        self.watch_name(Interest::Channel, channel).await
    }

    async fn watch_user(&self, user: &str) -> Result<(), BrokerError> {
        self.watch_name(Interest::User, user).await
    }

    /// Returns the number of nodes the send reached: to a connection, 1 when the node that
    /// holds it is subscribed, 0 when no such node.
    async fn send(&self, to: Recipient<'_>, data: Bytes) -> Result<usize, BrokerError> {
        let payload = wire::encode_direct(to, &data);
        let route = match to {
            Recipient::User(user) => self.user_route(user),
            Recipient::Subscribers(channel) => self.subscribers_route(channel),
            // Still through Redis when the node is this one, so a send and a later channel
            // message keep their order.
            Recipient::Connection { node, .. } => (self.keys.node(node), false),
        };
        self.announce(route, payload).await
    }

    fn is_healthy(&self) -> bool {
        self.subscribed.get() && self.streams.health.get()
    }
}

/// How often channels without local subscribers stop being received (per-channel pub/sub):
/// a channel is received at most this long after its last local subscriber left.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// What the subscription task does next.
enum Step {
    Event(Option<Event>),
    CatchUp,
    Watch(Option<WatchRequest>),
    Prune,
}

async fn recv_request(per_channel: &mut Option<PerChannel>) -> Option<WatchRequest> {
    match per_channel {
        Some(pc) => pc.requests.recv().await,
        None => std::future::pending().await,
    }
}

/// How often an owed catch-up from history is tried again.
const CATCH_UP_RETRY: Duration = Duration::from_millis(500);

/// The node's one subscription: reconnects with backoff, resubscribes, catches up.
struct Subscription {
    per_channel: Option<PerChannel>,
    config: RedisConfig,
    channels: [String; 3],
    conn: Conn,
    dispatcher: Dispatcher,
    /// The command connection's health (shared with the streams).
    health: Arc<Health>,
    subscribed: Arc<Health>,
}

impl Subscription {
    async fn run(mut self) {
        let mut backoff = reconnect_backoff();
        let mut connected_before = false;
        loop {
            match self.open().await {
                Ok(feed) => {
                    backoff.reset();
                    self.check_commands().await;
                    self.subscribed.set(true);
                    let caught_up = if connected_before {
                        self.catch_up().await
                    } else {
                        info!(channels = ?self.channels, "redis subscription established");
                        true
                    };
                    connected_before = true;
                    self.pump(feed, caught_up).await;
                    self.subscribed.set(false);
                    warn!("redis subscription lost; reconnecting");
                }
                Err(e) => {
                    self.subscribed.set(false);
                    if backoff.retries() == 0 {
                        warn!(error = %e, "redis subscription failed; retrying with backoff");
                    }
                }
            }
            tokio::time::sleep(next_delay(&mut backoff)).await;
        }
    }

    /// Subscribes to the node's channels and to every channel it received before.
    async fn open(&mut self) -> Result<Feed, redis::RedisError> {
        let mut feed = Feed::open(&self.config, &self.channels).await?;
        if let Some(pc) = &mut self.per_channel {
            for pubsub in pc.all() {
                feed.add(&pubsub).await?;
            }
        }
        Ok(feed)
    }

    /// Returns whether every channel is caught up.
    async fn catch_up(&mut self) -> bool {
        self.dispatcher.metrics().resubscriptions.inc();
        info!("redis subscription restored; catching up from history");
        self.dispatcher.resync().await
    }

    /// The command connection reconnects on its own; this makes its health known again.
    async fn check_commands(&self) {
        let r: Result<String, _> = redis::cmd("PING").query_async(&mut self.conn.clone()).await;
        self.health.observe(&r);
    }

    /// Reads the subscription until it is gone. `caught_up` false: a catch-up is owed (the
    /// history of some channel could not be read, e.g. its shard is still down) and is
    /// retried every [`CATCH_UP_RETRY`] until it succeeds.
    async fn pump(&mut self, mut feed: Feed, mut caught_up: bool) {
        let mut retry = tokio::time::interval(CATCH_UP_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let per_channel = self.per_channel.is_some();
        loop {
            let step = tokio::select! {
                event = feed.next() => Step::Event(event),
                _ = retry.tick(), if !caught_up => Step::CatchUp,
                request = recv_request(&mut self.per_channel), if per_channel => Step::Watch(request),
                _ = prune.tick(), if per_channel => Step::Prune,
            };
            let event = match step {
                Step::Event(event) => event,
                Step::CatchUp => {
                    caught_up = self.dispatcher.resync().await;
                    continue;
                }
                Step::Watch(None) => return,
                Step::Watch(Some((interest, name, ack))) => {
                    let Some(pc) = &mut self.per_channel else {
                        return;
                    };
                    let r = pc.add(&mut feed, interest, name).await;
                    let failed = r.is_err();
                    let _ = ack.send(r.map_err(|e| e.to_string()));
                    if failed {
                        return;
                    }
                    continue;
                }
                Step::Prune => {
                    let Some(pc) = &self.per_channel else { return };
                    if pc.prune(&mut feed, &mut self.dispatcher).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let Some(event) = event else { return };
            match event {
                Event::Message { channel, payload } => match wire::decode(payload) {
                    Ok(envelope) => {
                        self.dispatcher.on_envelope(envelope).await;
                    }
                    Err(e) => {
                        self.dispatcher.metrics().malformed.inc();
                        warn!(error = %e, %channel, "dropping message");
                    }
                },
                Event::Lost => self.subscribed.set(false),
                // The cluster client re-subscribed by itself after losing a node.
                Event::Resubscribed => {
                    self.subscribed.set(true);
                    self.check_commands().await;
                    caught_up = self.catch_up().await;
                }
            }
        }
    }
}

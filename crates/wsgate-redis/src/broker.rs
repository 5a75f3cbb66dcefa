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
    /// Per-channel pub/sub only: asks the subscription task to receive a channel.
    watch: Option<WatchRequests>,
    task: JoinHandle<()>,
}

/// How long a subscriber waits for its node to receive the channel.
const WATCH_TIMEOUT: Duration = Duration::from_secs(2);

/// A channel to receive, and where to say once it is (or why not).
type WatchRequest = (Arc<str>, oneshot::Sender<Result<(), String>>);

struct WatchRequests {
    /// The channels received now (read without asking the task: the common case).
    set: Arc<DashSet<Arc<str>>>,
    requests: mpsc::UnboundedSender<WatchRequest>,
}

/// The subscription task's side of per-channel pub/sub.
struct PerChannel {
    set: Arc<DashSet<Arc<str>>>,
    requests: mpsc::UnboundedReceiver<WatchRequest>,
    keys: Keys,
    sink: Arc<OnceLock<Arc<dyn Deliver>>>,
}

impl PerChannel {
    fn has_subscribers(&self, channel: &str) -> bool {
        self.sink.get().is_some_and(|s| s.has_subscribers(channel))
    }

    /// Receives `channel` (its own pub/sub channel), unless already. An error means the
    /// feed is broken.
    async fn add(&self, feed: &mut Feed, channel: Arc<str>) -> Result<(), redis::RedisError> {
        if !self.set.contains(&channel) {
            feed.add(&self.keys.channel_pubsub(&channel)).await?;
            self.set.insert(channel);
        }
        Ok(())
    }

    /// Stops receiving the channels without a local subscriber left. Taken out of the set
    /// first and looked at again: a subscriber arriving meanwhile either sees the channel
    /// missing and asks for it (queued behind this), or is seen here and keeps it.
    async fn prune(
        &self,
        feed: &mut Feed,
        dispatcher: &mut Dispatcher,
    ) -> Result<(), redis::RedisError> {
        let idle: Vec<Arc<str>> = self
            .set
            .iter()
            .filter(|c| !self.has_subscribers(c.key()))
            .map(|c| c.key().clone())
            .collect();
        for channel in idle {
            self.set.remove(&channel);
            if self.has_subscribers(&channel) {
                self.set.insert(channel);
                continue;
            }
            feed.remove(&self.keys.channel_pubsub(&channel)).await?;
            dispatcher.forget(&channel);
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
            let set = Arc::new(DashSet::new());
            let (tx, rx) = mpsc::unbounded_channel();
            (
                Some(WatchRequests {
                    set: set.clone(),
                    requests: tx,
                }),
                Some(PerChannel {
                    set,
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
            task,
        })
    }

    async fn announce(&self, channel: &str, payload: Bytes) -> Result<usize, BrokerError> {
        let r: Result<i64, _> = redis::cmd("PUBLISH")
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

    /// Through `P:user`, like a send to a user: every node changes its connections of
    /// `user`. Returns the number of nodes reached.
    async fn change_subscriptions(
        &self,
        user: &str,
        change: &ServerSubscription,
    ) -> Result<usize, BrokerError> {
        let payload = wire::encode_subscriptions(user, change);
        self.announce(&self.keys.users, payload).await
    }

    fn reads(&self) -> &dyn StreamReads {
        &*self.relay
    }

    async fn watch(&self, channel: &str) -> Result<(), BrokerError> {
        let Some(w) = &self.watch else {
            return Ok(());
        };
        if w.set.contains(channel) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let gone = || BrokerError::Unavailable("the broker subscription is not running".into());
        w.requests.send((channel.into(), tx)).map_err(|_| gone())?;
        match tokio::time::timeout(WATCH_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(BrokerError::Unavailable(e)),
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(BrokerError::Unavailable(
                "subscribing to the channel timed out".into(),
            )),
        }
    }

    /// Returns the number of nodes the send reached: to a connection, 1 when the node that
    /// holds it is subscribed, 0 when no such node.
    async fn send(&self, to: Recipient<'_>, data: Bytes) -> Result<usize, BrokerError> {
        let payload = wire::encode_direct(to, &data);
        match to {
            // Every node reads the users' channel: a subscriber event reaches them all.
            Recipient::User(_) | Recipient::Subscribers(_) => {
                self.announce(&self.keys.users, payload).await
            }
            // Still through Redis when the node is this one, so a send and a later channel
            // message keep their order.
            Recipient::Connection { node, .. } => {
                self.announce(&self.keys.node(node), payload).await
            }
        }
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
    async fn open(&self) -> Result<Feed, redis::RedisError> {
        let mut feed = Feed::open(&self.config, &self.channels).await?;
        if let Some(pc) = &self.per_channel {
            let again: Vec<Arc<str>> = pc.set.iter().map(|c| c.key().clone()).collect();
            for channel in again {
                feed.add(&pc.keys.channel_pubsub(&channel)).await?;
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
                Step::Watch(Some((channel, ack))) => {
                    let Some(pc) = &self.per_channel else { return };
                    let r = pc.add(&mut feed, channel).await;
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

//! [`RedisBroker`]: publications through the publish script, delivery through one
//! subscription per node.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use wsgate_core::relay::{Dispatcher, Relay, wire};
use wsgate_core::seams::{
    Broker, BrokerError, ClusterMetrics, Deliver, Idempotency, NodeId, Once, PublishRequest,
    Recipient, ServerSubscription, StreamPosition, StreamReads,
};

use super::streams::Appended;
use super::{
    ChannelStreams, Health, Keys, RedisConfig, broker_error, next_delay, reconnect_backoff,
};

/// How often the subscription connection is pinged, and how long an answer may take: a
/// half-open connection is noticed within about three seconds.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub struct RedisBroker {
    streams: Arc<ChannelStreams>,
    relay: Arc<Relay>,
    conn: ConnectionManager,
    keys: Keys,
    sink: Arc<OnceLock<Arc<dyn Deliver>>>,
    subscribed: Arc<Health>,
    task: JoinHandle<()>,
}

impl RedisBroker {
    /// Starts the node's subscription task; returns at once (Redis may still be down: the
    /// broker reports itself unhealthy until it is reached). Needs a Tokio runtime.
    pub fn start(
        node: NodeId,
        config: &RedisConfig,
        metrics: ClusterMetrics,
    ) -> Result<Self, BrokerError> {
        let conn = config.manager().map_err(broker_error)?;
        let keys = Keys::new(&config.key_prefix);
        let streams = Arc::new(ChannelStreams::new(
            conn.clone(),
            keys.clone(),
            config,
            metrics.clone(),
        ));
        let relay = Arc::new(Relay::new(streams.clone(), metrics));
        let sink = Arc::new(OnceLock::new());
        let subscribed = Arc::new(Health::default());
        let subscription = Subscription {
            client: config.client().map_err(broker_error)?,
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

/// The node's one subscription: reconnects with backoff, resubscribes, catches up.
struct Subscription {
    client: redis::Client,
    channels: [String; 3],
    conn: ConnectionManager,
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
            match self.connect().await {
                Ok(pubsub) => {
                    backoff.reset();
                    self.check_commands().await;
                    self.subscribed.set(true);
                    if connected_before {
                        self.dispatcher.metrics().resubscriptions.inc();
                        info!("redis subscription restored; catching up from history");
                        self.dispatcher.resync().await;
                    } else {
                        info!(channels = ?self.channels, "redis subscription established");
                    }
                    connected_before = true;
                    let why = self.pump(pubsub).await;
                    self.subscribed.set(false);
                    warn!(reason = why, "redis subscription lost; reconnecting");
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

    async fn connect(&self) -> Result<redis::aio::PubSub, redis::RedisError> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            for channel in &self.channels {
                pubsub.subscribe(channel).await?;
            }
            Ok(pubsub)
        };
        tokio::time::timeout(PING_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "subscribe timed out",
                )))
            })
    }

    /// The command connection reconnects on its own; this makes its health known again.
    async fn check_commands(&self) {
        let r: Result<String, _> = redis::cmd("PING").query_async(&mut self.conn.clone()).await;
        self.health.observe(&r);
    }

    /// Reads the subscription until it fails. Returns why.
    async fn pump(&mut self, pubsub: redis::aio::PubSub) -> &'static str {
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { return "connection closed" };
                    match wire::decode(Bytes::copy_from_slice(msg.get_payload_bytes())) {
                        Ok(envelope) => {
                            self.dispatcher.on_envelope(envelope).await;
                        }
                        Err(e) => {
                            self.dispatcher.metrics().malformed.inc();
                            warn!(error = %e, channel = msg.get_channel_name(), "dropping message");
                        }
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return "ping failed";
                    }
                }
            }
        }
    }
}

//! [`RedisBroker`]: publications through the publish script, delivery through one
//! subscription per node.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::Conn;
use async_trait::async_trait;
use bytes::Bytes;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use wsgate_core::relay::{Dispatcher, Relay, wire};
use wsgate_core::seams::{
    Broker, BrokerError, ClusterMetrics, Deliver, NodeId, PublishRequest, Recipient,
    StreamPosition, StreamReads,
};

use super::feed::{Event, Feed};
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
        let subscription = Subscription {
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
        let appended = self.streams.append_announced(req).await?;
        let p = appended.publication;
        Ok((
            StreamPosition {
                offset: p.offset,
                epoch: p.epoch,
            },
            appended.receivers,
        ))
    }

    fn reads(&self) -> &dyn StreamReads {
        &*self.relay
    }

    /// Returns the number of nodes the send reached: to a connection, 1 when the node that
    /// holds it is subscribed, 0 when no such node.
    async fn send(&self, to: Recipient<'_>, data: Bytes) -> Result<usize, BrokerError> {
        let payload = wire::encode_direct(to, &data);
        match to {
            Recipient::User(_) => self.announce(&self.keys.users, payload).await,
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

/// How often an owed catch-up from history is tried again.
const CATCH_UP_RETRY: Duration = Duration::from_millis(500);

/// The node's one subscription: reconnects with backoff, resubscribes, catches up.
struct Subscription {
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
            match Feed::open(&self.config, &self.channels).await {
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
        loop {
            let event = tokio::select! {
                event = feed.next() => event,
                _ = retry.tick(), if !caught_up => {
                    caught_up = self.dispatcher.resync().await;
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

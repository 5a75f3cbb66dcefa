//! [`Feed`]: one pub/sub subscription, on a single Redis or on a Redis Cluster.
//!
//! The two behave differently when a connection breaks, and the readers must know which
//! happened: on a single Redis the feed ends ([`Feed::next`] gives `None`) and the reader
//! reconnects with its own backoff; the cluster client re-subscribes by itself (on another
//! node if need be), so its feed goes on and reports [`Event::Resubscribed`] once the
//! subscriptions are back. Either way whatever was published in between was not received:
//! a reader that keeps state (the broker's dispatcher) catches up from history then.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{Msg, PushInfo, PushKind};
use tokio::sync::mpsc;

use super::RedisConfig;

/// How often a single Redis subscription is pinged, and how long an answer may take: a
/// half-open connection is noticed within about three seconds. (A cluster connection is
/// watched by the client library, which reconnects on its own.)
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// After a cluster disconnection, how long to wait for the re-subscription's confirmation.
/// The push does not say which node went away, so a lost node that held none of our
/// subscriptions sends none.
const RESUBSCRIBE_WAIT: Duration = Duration::from_secs(1);

pub(crate) enum Event {
    Message {
        channel: String,
        payload: Bytes,
    },
    /// The cluster client lost a connection to a node; it reconnects by itself.
    Lost,
    /// ...and re-subscribed: messages in between may have been missed.
    Resubscribed,
}

pub(crate) struct Feed {
    inner: Inner,
}

enum Inner {
    Single {
        sink: PubSubSink,
        stream: PubSubStream,
        ping: tokio::time::Interval,
    },
    Cluster {
        // Kept for the subscriptions' lifetime: dropping it ends them.
        conn: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
        /// A disconnection was seen and no subscription confirmed since.
        lost: bool,
    },
}

impl Feed {
    /// Subscribes to `channels` (bounded by a timeout: a missing Redis is an error, not a
    /// hang).
    pub async fn open(
        config: &RedisConfig,
        channels: &[String],
    ) -> Result<Self, redis::RedisError> {
        let open = async {
            if config.cluster {
                Self::open_cluster(config, channels).await
            } else {
                Self::open_single(config, channels).await
            }
        };
        tokio::time::timeout(PING_TIMEOUT, open)
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "subscribe timed out",
                )))
            })
    }

    async fn open_single(
        config: &RedisConfig,
        channels: &[String],
    ) -> Result<Self, redis::RedisError> {
        let mut pubsub = config.client()?.get_async_pubsub().await?;
        for channel in channels {
            pubsub.subscribe(channel).await?;
        }
        let (sink, stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            inner: Inner::Single { sink, stream, ping },
        })
    }

    async fn open_cluster(
        config: &RedisConfig,
        channels: &[String],
    ) -> Result<Self, redis::RedisError> {
        let (tx, pushes) = mpsc::unbounded_channel();
        let client = config.cluster_client(true)?;
        let mut conn = client
            .get_async_connection_with_config(
                redis::cluster::ClusterConfig::new().set_push_sender(tx),
            )
            .await?;
        for channel in channels {
            conn.subscribe(channel).await?;
        }
        Ok(Self {
            inner: Inner::Cluster {
                conn,
                pushes,
                lost: false,
            },
        })
    }

    /// Starts receiving one channel's own pub/sub channel (`P:{<channel>}:pub`): a shard
    /// channel (`SSUBSCRIBE`, served by the channel's own shard) on a cluster, a classic one
    /// on a single Redis (where both cost the same, and redis-rs's single-server `PubSub`
    /// has no `SSUBSCRIBE`). Returns once the server confirmed it.
    pub async fn add(&mut self, channel: &str) -> Result<(), redis::RedisError> {
        match &mut self.inner {
            Inner::Single { sink, .. } => sink.subscribe(channel).await,
            Inner::Cluster { conn, .. } => conn.ssubscribe(channel).await,
        }
    }

    /// Stops receiving what [`Feed::add`] started.
    pub async fn remove(&mut self, channel: &str) -> Result<(), redis::RedisError> {
        match &mut self.inner {
            Inner::Single { sink, .. } => sink.unsubscribe(channel).await,
            Inner::Cluster { conn, .. } => conn.sunsubscribe(channel).await,
        }
    }

    /// The next event; `None` once the subscription is gone for good (reconnect then).
    pub async fn next(&mut self) -> Option<Event> {
        match &mut self.inner {
            Inner::Single { sink, stream, ping } => loop {
                tokio::select! {
                    msg = stream.next() => return message(msg?),
                    _ = ping.tick() => {
                        let pong = tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await;
                        if !matches!(pong, Ok(Ok(_))) {
                            return None;
                        }
                    }
                }
            },
            Inner::Cluster { pushes, lost, .. } => loop {
                let push = if *lost {
                    match tokio::time::timeout(RESUBSCRIBE_WAIT, pushes.recv()).await {
                        Ok(push) => push?,
                        Err(_) => {
                            // The lost node held none of our subscriptions (or it is taking
                            // long): catch up now; a publication that slips in later shows as
                            // a gap at the channel's next one and is filled from history then.
                            *lost = false;
                            return Some(Event::Resubscribed);
                        }
                    }
                } else {
                    pushes.recv().await?
                };
                match push.kind {
                    PushKind::Disconnection if !*lost => {
                        *lost = true;
                        return Some(Event::Lost);
                    }
                    PushKind::Subscribe | PushKind::SSubscribe if *lost => {
                        *lost = false;
                        return Some(Event::Resubscribed);
                    }
                    PushKind::Message | PushKind::SMessage => {
                        if let Some(event) = Msg::from_push_info(push).and_then(message) {
                            return Some(event);
                        }
                    }
                    _ => {}
                }
            },
        }
    }
}

fn message(msg: Msg) -> Option<Event> {
    Some(Event::Message {
        channel: msg.get_channel_name().to_string(),
        payload: Bytes::copy_from_slice(msg.get_payload_bytes()),
    })
}

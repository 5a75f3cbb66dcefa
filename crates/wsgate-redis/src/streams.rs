//! Channel streams in Redis: the publish script (offset + history + announce in one round
//! trip) and the recover script (position and history after an offset).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::Conn;
use async_trait::async_trait;
use bytes::Bytes;
use redis::{Script, Value};
use tokio::task::JoinHandle;
use wsgate_core::memory::recover_from;
use wsgate_core::seams::{
    BrokerError, ChannelLog, ClusterMetrics, Idempotency, Logged, Publication, PublishRequest,
    Recovery, StreamPosition,
};

use super::{Health, Keys, RedisConfig, broker_error};

/// Where the publish script announces a publication.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Announce {
    /// On `P:pub`, which every node subscribes to.
    AllNodes,
    /// On the channel's own `P:{<channel>}:pub`, which only nodes with local subscribers
    /// subscribe to: `SPUBLISH` (served by the channel's shard alone) on a cluster.
    PerChannel { sharded: bool },
}

impl Announce {
    pub fn of(config: &RedisConfig) -> Self {
        if config.per_channel_pubsub {
            Announce::PerChannel {
                sharded: config.cluster,
            }
        } else {
            Announce::AllNodes
        }
    }
}

/// What the publish script answers.
pub(crate) enum Appended {
    New {
        publication: Publication,
        /// Nodes that received the announcement (0 when the caller announces it itself).
        receivers: usize,
    },
    /// An idempotency key seen within its window: the first publication's position.
    Repeat(StreamPosition),
}

/// The channel log in Redis: the [`ChannelLog`] the Redis broker publishes through, and the
/// one the NATS broker sequences with.
pub struct ChannelStreams {
    conn: Conn,
    keys: Keys,
    history_size: usize,
    announce: Announce,
    /// Milliseconds the channel's keys live after its last publication (0: forever).
    ttl_ms: u64,
    publish: Script,
    recover: Script,
    pub(crate) health: Arc<Health>,
    pub(crate) metrics: ClusterMetrics,
    /// Keeps `health` current without traffic (only when no subscription task does).
    watch: Option<JoinHandle<()>>,
}

impl ChannelStreams {
    pub(crate) fn new(
        conn: Conn,
        keys: Keys,
        config: &RedisConfig,
        metrics: ClusterMetrics,
    ) -> Self {
        Self {
            conn,
            keys,
            history_size: config.history_size,
            announce: Announce::of(config),
            ttl_ms: config.channel_ttl.as_millis() as u64,
            publish: Script::new(concat!(
                include_str!("lua/timeline.lua"),
                include_str!("lua/publish.lua")
            )),
            recover: Script::new(concat!(
                include_str!("lua/timeline.lua"),
                include_str!("lua/recover.lua")
            )),
            health: Arc::new(Health::default()),
            metrics,
            watch: None,
        }
    }

    /// A channel log for a broker that moves messages elsewhere (NATS): connects in the
    /// background and keeps its own health current. Needs a Tokio runtime.
    pub fn start(config: &RedisConfig, metrics: ClusterMetrics) -> Result<Self, BrokerError> {
        let conn = config.conn().map_err(broker_error)?;
        let mut streams = Self::new(
            conn.clone(),
            Keys::new(&config.key_prefix, config.cluster),
            config,
            metrics,
        );
        streams.watch = Some(wsgate_core::tasks::supervised(
            "history watch",
            watch(conn, streams.health.clone()),
        ));
        Ok(streams)
    }

    fn observe<T>(&self, r: &Result<T, redis::RedisError>) {
        self.health.observe(r);
        if r.is_err() {
            self.metrics.errors.inc();
        }
    }

    /// Appends `req` to its channel's stream and `PUBLISH`es it to `P:pub` in the same
    /// script (the Redis broker's publish).
    pub(crate) async fn append_announced(
        &self,
        req: PublishRequest,
        once: Option<&Idempotency>,
    ) -> Result<Appended, BrokerError> {
        self.append_with(req, true, once).await
    }

    async fn append_with(
        &self,
        req: PublishRequest,
        announce: bool,
        once: Option<&Idempotency>,
    ) -> Result<Appended, BrokerError> {
        let mut call = self.publish.prepare_invoke();
        call.key(self.keys.meta(&req.channel))
            .key(self.keys.stream(&req.channel))
            .arg(&*req.channel)
            .arg(&req.data[..])
            .arg(req.exclude_user.as_deref().unwrap_or(""))
            .arg(req.history.size.unwrap_or(self.history_size))
            .arg(req.event.as_deref().unwrap_or(""))
            .arg(req.history.ttl_ms.unwrap_or(self.ttl_ms))
            .arg(req.exclude_connection.as_deref().unwrap_or(""));
        match (announce, self.announce) {
            (false, _) => call.arg("").arg(""),
            (true, Announce::AllNodes) => call.arg("ALL").arg(self.keys.publications.as_str()),
            // The channel's own pub/sub channel is in the channel's slot: a key of the script.
            (true, Announce::PerChannel { sharded }) => call
                .key(self.keys.channel_pubsub(&req.channel))
                .arg(if sharded { "SPUBLISH" } else { "PUBLISH" })
                .arg(""),
        };
        match once {
            Some(once) => call
                .key(self.keys.once(&req.channel, &once.key))
                .arg(&*once.fingerprint)
                .arg(once.window_ms),
            None => call.arg("").arg(0),
        };
        let r: Result<Value, _> = call.invoke_async(&mut self.conn.clone()).await;
        self.observe(&r);
        let items = array(r.map_err(broker_error)?)?;
        let [offset, epoch, at, receivers, repeat] = items.as_slice() else {
            return Err(bad("publish answer"));
        };
        let offset = int(offset)?;
        let epoch: Arc<str> = text(epoch)?.into();
        match int(repeat)? {
            0 => {}
            1 => return Ok(Appended::Repeat(StreamPosition { offset, epoch })),
            _ => return Err(BrokerError::IdempotencyConflict),
        }
        Ok(Appended::New {
            publication: Publication {
                channel: req.channel,
                offset,
                epoch,
                data: req.data,
                exclude_user: req.exclude_user,
                exclude_connection: req.exclude_connection,
                event: req.event,
                published_at_us: int(at)?,
            },
            receivers: int(receivers)? as usize,
        })
    }

    async fn read(
        &self,
        channel: &str,
        since: Option<&StreamPosition>,
    ) -> Result<(StreamPosition, VecDeque<Publication>), BrokerError> {
        let (offset, epoch) = match since {
            Some(s) => (s.offset as i64, &*s.epoch),
            None => (-1, ""),
        };
        let r: Result<Value, _> = self
            .recover
            .key(self.keys.meta(channel))
            .key(self.keys.stream(channel))
            .arg(offset)
            .arg(epoch)
            .arg(self.ttl_ms)
            .invoke_async(&mut self.conn.clone())
            .await;
        self.observe(&r);
        let mut items = array(r.map_err(broker_error)?)?.into_iter();
        let (Some(epoch), Some(offset)) = (items.next(), items.next()) else {
            return Err(bad("recover answer"));
        };
        let position = StreamPosition {
            offset: int(&offset)?,
            epoch: text(&epoch)?.into(),
        };
        let channel: Arc<str> = channel.into();
        let mut history = VecDeque::with_capacity(items.len() / 5);
        while let (Some(o), Some(d), Some(t), Some(x), Some(e)) = (
            items.next(),
            items.next(),
            items.next(),
            items.next(),
            items.next(),
        ) {
            let exclude = text(&x)?;
            let event = text(&e)?;
            history.push_back(Publication {
                channel: channel.clone(),
                offset: int(&o)?,
                epoch: position.epoch.clone(),
                data: Bytes::from(bytes(d)?),
                exclude_user: (!exclude.is_empty()).then(|| exclude.into()),
                exclude_connection: None,
                event: (!event.is_empty()).then(|| event.into()),
                published_at_us: int(&t)?,
            });
        }
        Ok((position, history))
    }
}

fn bad(what: &str) -> BrokerError {
    BrokerError::Other(format!("unexpected {what} from Redis"))
}

fn array(v: Value) -> Result<Vec<Value>, BrokerError> {
    match v {
        Value::Array(items) => Ok(items),
        _ => Err(bad("reply shape")),
    }
}

fn bytes(v: Value) -> Result<Vec<u8>, BrokerError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        _ => Err(bad("string")),
    }
}

fn text(v: &Value) -> Result<&str, BrokerError> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).map_err(|_| bad("utf-8")),
        Value::SimpleString(s) => Ok(s),
        _ => Err(bad("string")),
    }
}

fn int(v: &Value) -> Result<u64, BrokerError> {
    match v {
        Value::Int(i) => u64::try_from(*i).map_err(|_| bad("integer")),
        other => text(other)?.parse().map_err(|_| bad("integer")),
    }
}

impl Drop for ChannelStreams {
    fn drop(&mut self) {
        if let Some(task) = &self.watch {
            task.abort();
        }
    }
}

#[async_trait]
impl ChannelLog for ChannelStreams {
    async fn append(&self, req: PublishRequest) -> Result<Publication, BrokerError> {
        match self.append_with(req, false, None).await? {
            Appended::New { publication, .. } => Ok(publication),
            Appended::Repeat(_) => Err(bad("repeat without an idempotency key")),
        }
    }

    async fn append_once(
        &self,
        req: PublishRequest,
        once: &Idempotency,
    ) -> Result<Logged, BrokerError> {
        Ok(match self.append_with(req, false, Some(once)).await? {
            Appended::New { publication, .. } => Logged::New(publication),
            Appended::Repeat(position) => Logged::Repeat(position),
        })
    }

    async fn position(&self, channel: &str) -> Result<StreamPosition, BrokerError> {
        Ok(self.read(channel, None).await?.0)
    }

    async fn recover(
        &self,
        channel: &str,
        since: &StreamPosition,
    ) -> Result<Recovery, BrokerError> {
        let (position, history) = self.read(channel, Some(since)).await?;
        Ok(recover_from(&history, position, since))
    }

    fn is_healthy(&self) -> bool {
        self.health.get()
    }
}

/// Keeps the log's health current even without traffic, in its own task so that a slow
/// Redis never holds up deliveries.
async fn watch(conn: Conn, health: Arc<Health>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let r: Result<String, _> = redis::cmd("PING").query_async(&mut conn.clone()).await;
        health.observe(&r);
    }
}

//! Channel streams in Redis: the publish script (offset + history + announce in one round
//! trip) and the recover script (position and history after an offset).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::{Script, Value};

use super::{Health, Keys};
use crate::broker::BrokerError;
use crate::metrics::ClusterMetrics;
use crate::model::{Publication, PublishRequest, Recovery, StreamPosition};

/// What the publish script answers.
pub(crate) struct Appended {
    pub publication: Publication,
    /// Nodes that received the announcement (0 when the caller announces it itself).
    pub receivers: usize,
}

pub(crate) struct ChannelStreams {
    conn: ConnectionManager,
    keys: Keys,
    history_size: usize,
    publish: Script,
    recover: Script,
    pub health: Arc<Health>,
    pub metrics: ClusterMetrics,
    /// Positions answered to local subscribers, per channel: where this node's delivery of
    /// a channel it has not seen yet must start. Without it, a node whose first live
    /// message of a channel is offset 2 (offset 1 still in flight, from another publisher)
    /// could not tell that 1 is missing. Taken by the dispatcher.
    pub joins: DashMap<Arc<str>, (StreamPosition, Instant)>,
}

impl ChannelStreams {
    pub fn new(
        conn: ConnectionManager,
        keys: Keys,
        history_size: usize,
        metrics: ClusterMetrics,
    ) -> Self {
        Self {
            conn,
            keys,
            history_size,
            publish: Script::new(include_str!("lua/publish.lua")),
            recover: Script::new(include_str!("lua/recover.lua")),
            health: Arc::new(Health::default()),
            metrics,
            joins: DashMap::new(),
        }
    }

    fn observe<T>(&self, r: &Result<T, redis::RedisError>) {
        self.health.observe(r);
        if r.is_err() {
            self.metrics.errors.inc();
        }
    }

    /// Appends `req` to its channel's stream; with `announce`, also `PUBLISH`es it to
    /// `P:pub` in the same script.
    pub async fn append(
        &self,
        req: PublishRequest,
        announce: bool,
    ) -> Result<Appended, BrokerError> {
        let r: Result<Value, _> = self
            .publish
            .key(self.keys.meta(&req.channel))
            .key(self.keys.stream(&req.channel))
            .key(if announce {
                self.keys.publications.as_str()
            } else {
                ""
            })
            .arg(&*req.channel)
            .arg(&req.data[..])
            .arg(req.exclude_user.as_deref().unwrap_or(""))
            .arg(self.history_size)
            .invoke_async(&mut self.conn.clone())
            .await;
        self.observe(&r);
        let items = array(r?)?;
        let [offset, epoch, at, receivers] = items.as_slice() else {
            return Err(bad("publish answer"));
        };
        Ok(Appended {
            publication: Publication {
                channel: req.channel,
                offset: int(offset)?,
                epoch: text(epoch)?.into(),
                data: req.data,
                exclude_user: req.exclude_user,
                published_at_us: int(at)?,
            },
            receivers: int(receivers)? as usize,
        })
    }

    /// Where a channel stands, for a subscriber of this node (remembered as its join).
    pub async fn position(&self, channel: &str) -> Result<StreamPosition, BrokerError> {
        let (position, _) = self.read(channel, None).await?;
        self.joined(channel, &position);
        Ok(position)
    }

    /// Position and history after `since`, with the rules of [`crate::memory::recover_from`],
    /// for a subscriber of this node (remembered as its join).
    pub async fn recover(
        &self,
        channel: &str,
        since: &StreamPosition,
    ) -> Result<Recovery, BrokerError> {
        let recovery = self.recover_quietly(channel, since).await?;
        self.joined(channel, &recovery.position);
        Ok(recovery)
    }

    /// The same read, for the dispatcher's own fills.
    pub async fn recover_quietly(
        &self,
        channel: &str,
        since: &StreamPosition,
    ) -> Result<Recovery, BrokerError> {
        let (position, history) = self.read(channel, Some(since)).await?;
        Ok(crate::memory::recover_from(&history, position, since))
    }

    fn joined(&self, channel: &str, position: &StreamPosition) {
        // The lowest answered position wins: delivering from there covers every subscriber.
        let now = Instant::now();
        self.joins
            .entry(channel.into())
            .and_modify(|(p, at)| {
                if p.epoch != position.epoch || position.offset < p.offset {
                    *p = position.clone();
                }
                *at = now;
            })
            .or_insert_with(|| (position.clone(), now));
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
            .invoke_async(&mut self.conn.clone())
            .await;
        self.observe(&r);
        let mut items = array(r?)?.into_iter();
        let (Some(epoch), Some(offset)) = (items.next(), items.next()) else {
            return Err(bad("recover answer"));
        };
        let position = StreamPosition {
            offset: int(&offset)?,
            epoch: text(&epoch)?.into(),
        };
        let channel: Arc<str> = channel.into();
        let mut history = VecDeque::with_capacity(items.len() / 4);
        while let (Some(o), Some(d), Some(t), Some(x)) =
            (items.next(), items.next(), items.next(), items.next())
        {
            let exclude = text(&x)?;
            history.push_back(Publication {
                channel: channel.clone(),
                offset: int(&o)?,
                epoch: position.epoch.clone(),
                data: Bytes::from(bytes(d)?),
                exclude_user: (!exclude.is_empty()).then(|| exclude.into()),
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

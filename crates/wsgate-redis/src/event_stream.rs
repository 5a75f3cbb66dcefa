//! [`StreamSink`]: events `XADD`ed to a Redis Stream, for backends that prefer to consume
//! (`XREAD`, or consumer groups with `XREADGROUP`). Each entry has two fields: `type` and
//! `event` (the event's JSON). The stream is capped with `MAXLEN ~` so an absent consumer
//! costs bounded memory; a consumer that falls further behind than the cap loses the oldest.

use std::sync::Arc;

use crate::Conn;
use async_trait::async_trait;

use wsgate_core::events::{Event, Sink, SinkError};

use super::{Keys, RedisConfig};

pub struct StreamSink {
    conn: Conn,
    stream: String,
    max_len: usize,
}

impl StreamSink {
    /// `stream`: the key (default `<prefix>:events`); `max_len`: entries kept, about.
    pub fn new(
        config: &RedisConfig,
        stream: Option<String>,
        max_len: usize,
    ) -> Result<Self, redis::RedisError> {
        Ok(Self {
            conn: config.conn()?,
            stream: stream
                .unwrap_or_else(|| Keys::new(&config.key_prefix, config.cluster).events_stream()),
            max_len,
        })
    }
}

#[async_trait]
impl Sink for StreamSink {
    fn name(&self) -> &'static str {
        "redis_stream"
    }

    /// One pipeline per batch, `MULTI`/`EXEC` so a batch is appended whole or not at all
    /// (a retry then cannot duplicate half of it).
    async fn send(&self, batch: &[Arc<Event>]) -> Result<(), SinkError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for e in batch {
            pipe.cmd("XADD")
                .arg(&self.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.max_len)
                .arg("*")
                .arg("type")
                .arg(e.kind())
                .arg("event")
                .arg(e.to_json())
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|e| SinkError::Retry(e.to_string()))
    }
}

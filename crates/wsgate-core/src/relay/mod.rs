//! What brokers that relay publications over a pub/sub transport share (the Redis broker
//! over Redis pub/sub, the NATS broker over NATS): the [`wire`] format between nodes, the
//! [`Relay`] in front of a [`ChannelLog`], and the [`Dispatcher`] that delivers what a
//! node's subscription receives, each channel in offset order.
//!
//! It lives in the core, beside the seams, so that neither engine crate depends on the
//! other: both speak the same bytes and follow the same ordering rules.

mod dispatch;
pub mod wire;

use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;

pub use dispatch::Dispatcher;

use crate::seams::{BrokerError, ChannelLog, ClusterMetrics, Recovery, StreamPosition};

/// A [`ChannelLog`] as a relaying broker uses it: reads made for local subscribers are
/// remembered as their joins, so the [`Dispatcher`] knows where this node's delivery of a
/// channel must start.
pub struct Relay {
    log: Arc<dyn ChannelLog>,
    metrics: ClusterMetrics,
    /// Positions answered to local subscribers, per channel: where this node's delivery of
    /// a channel it has not seen yet must start. Without it, a node whose first live
    /// message of a channel is offset 2 (offset 1 still in flight, from another publisher)
    /// could not tell that 1 is missing. Taken by the dispatcher.
    joins: DashMap<Arc<str>, (StreamPosition, Instant)>,
}

impl Relay {
    pub fn new(log: Arc<dyn ChannelLog>, metrics: ClusterMetrics) -> Self {
        Self {
            log,
            metrics,
            joins: DashMap::new(),
        }
    }

    pub fn log(&self) -> &dyn ChannelLog {
        &*self.log
    }

    pub fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }

    /// Where a channel stands, for a subscriber of this node (remembered as its join).
    pub async fn position(&self, channel: &str) -> Result<StreamPosition, BrokerError> {
        let position = self.log.position(channel).await?;
        self.joined(channel, &position);
        Ok(position)
    }

    /// Position and history after `since`, for a subscriber of this node (remembered as
    /// its join).
    pub async fn recover(
        &self,
        channel: &str,
        since: &StreamPosition,
    ) -> Result<Recovery, BrokerError> {
        let mut recovery = self.log.recover(channel, since).await?;
        self.joined(channel, &recovery.position);
        recovery
            .publications
            .retain(|p| self.valid(&p.channel, &p.data));
        Ok(recovery)
    }

    /// Whether a payload from the broker is one JSON value (UTF-8), as every client frame
    /// requires; counts and logs it when not. Checked on receipt: what the store or another
    /// writer put there is never trusted to be what a node published.
    pub fn valid(&self, whom: &str, data: &[u8]) -> bool {
        let ok = std::str::from_utf8(data)
            .is_ok_and(|s| serde_json::from_str::<&serde_json::value::RawValue>(s).is_ok());
        if !ok {
            self.metrics.invalid_payloads.inc();
            tracing::warn!(
                to = whom,
                len = data.len(),
                "dropping a broker payload that is not one JSON value"
            );
        }
        ok
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
}

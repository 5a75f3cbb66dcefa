//! The [`Broker`] seam: how messages reach every node that should deliver them.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::history::StreamReads;
use super::model::{
    Envelope, Idempotency, NodeId, Once, PublishRequest, Recovery, ServerSubscription,
    StreamPosition,
};

/// A node's local delivery: the gateway implements it, the broker calls it.
///
/// `deliver` must not block or await: it hands the envelope to per-connection queues and
/// returns how many connections accepted it. Brokers call it for one channel at a time in
/// offset order.
pub trait Deliver: Send + Sync + 'static {
    fn deliver(&self, envelope: &Envelope) -> usize;

    /// Whether a channel has subscribers here: a relaying broker keeps its ordering state
    /// for such channels however long they stay quiet.
    fn has_subscribers(&self, _channel: &str) -> bool {
        true
    }

    /// Whether `user` has connections here: a broker that routes user sends to the nodes
    /// holding the user keeps receiving them while this is true.
    fn has_user(&self, _user: &str) -> bool {
        true
    }

    /// Publications of `channel` in `epoch` up to `offset` that this node could not deliver
    /// (neither live traffic nor history had them): subscribers are told before anything
    /// after `offset` reaches them.
    fn gap(&self, _channel: &Arc<str>, _epoch: &Arc<str>, _offset: u64) {}
}

/// Who a direct send (not a channel publication) is for.
#[derive(Debug, Clone, Copy)]
pub enum Recipient<'a> {
    /// Every connection of a user, on every node.
    User(&'a str),
    /// One connection, held by `node`.
    Connection { node: &'a NodeId, id: &'a str },
    /// Every subscriber of a channel, on every node, outside the channel's stream (no
    /// offset, no history): `join`/`leave` frames.
    Subscribers(&'a str),
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker error: {0}")]
    Other(String),
    /// An idempotent publish whose key was used, within the window, for a different request
    /// on the same channel.
    #[error("idempotency_key already used for a different publication on this channel")]
    IdempotencyConflict,
}

/// Moves messages between the nodes of a cluster (or within the one node of the embedded
/// default).
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Gives the local node's sink to the broker. Called once, before any traffic.
    fn attach(&self, sink: Arc<dyn Deliver>);

    /// Assigns the channel's next offset, appends the message to the channel's bounded
    /// history and delivers it to every node, in offset order per channel. Returns the
    /// publication's position and how many local connections took it.
    async fn publish(&self, req: PublishRequest) -> Result<(StreamPosition, usize), BrokerError>;

    /// [`Broker::publish`] at most once per `once.key` and channel within `once.window_ms`,
    /// cluster-wide: the check, the publication and the record of the key are one atomic
    /// step, so concurrent repeats publish once.
    async fn publish_once(
        &self,
        req: PublishRequest,
        once: &Idempotency,
    ) -> Result<Once, BrokerError>;

    /// Where the channels' positions and histories are read.
    fn reads(&self) -> &dyn StreamReads;

    /// A local subscriber of `channel` is about to read its position. A broker that
    /// receives channels only while this node has subscribers to them (Redis per-channel
    /// pub/sub) starts receiving it before returning, so that nothing published after that
    /// read can be missed; it stops on its own once the channel has no local subscriber
    /// (`Deliver::has_subscribers`). Default: nothing to do, every node receives every
    /// channel.
    async fn watch(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    /// A connection of `user` is about to open here. A broker that routes sends to a user
    /// only to the nodes holding that user (Redis per-channel pub/sub) starts receiving
    /// them before returning, so that a send made after the connection opened reaches it;
    /// it stops on its own once no local connection of the user is left
    /// (`Deliver::has_user`). Default: nothing to do, every node receives every user send.
    async fn watch_user(&self, _user: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Where the channel stands now.
    async fn position(&self, channel: &str) -> Result<StreamPosition, BrokerError> {
        self.reads().position(channel).await
    }

    /// Everything after `since` that history still holds, or the reason it cannot.
    async fn recover(
        &self,
        channel: &str,
        since: &StreamPosition,
    ) -> Result<Recovery, BrokerError> {
        self.reads().recover(channel, since).await
    }

    /// To every connection of a user, on every node (returns local deliveries), or to one
    /// connection (returns whether it was delivered locally).
    async fn send(&self, to: Recipient<'_>, data: Bytes) -> Result<usize, BrokerError>;

    /// Changes the subscriptions of every connection of `user`, on every node (returns
    /// what [`Broker::send`] to a user returns).
    async fn change_subscriptions(
        &self,
        user: &str,
        change: &ServerSubscription,
    ) -> Result<usize, BrokerError>;

    /// Whether the broker can take traffic now (feeds `/ready`).
    fn is_healthy(&self) -> bool;
}

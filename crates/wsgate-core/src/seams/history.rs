//! The [`ChannelLog`] seam: offsets and history, apart from moving messages.
//!
//! A broker does two jobs: it *sequences* (gives each publication its channel's next offset,
//! keeps a bounded history, answers recoveries) and it *moves* messages to every node. The
//! Redis broker does both in one script. NATS only moves messages, so the NATS broker takes
//! a `ChannelLog` for the first job (the Redis engine provides one) and the server composes
//! the two: the NATS engine needs no Redis code to compile.

use async_trait::async_trait;

use super::broker::BrokerError;
use super::model::{Idempotency, Logged, Publication, PublishRequest, Recovery, StreamPosition};

/// The read side of the channels' streams, as a node's subscribers ask it: what
/// [`Broker::position`](super::Broker::position) and [`Broker::recover`](super::Broker::recover)
/// answer.
#[async_trait]
pub trait StreamReads: Send + Sync {
    /// Where the channel stands now.
    async fn position(&self, channel: &str) -> Result<StreamPosition, BrokerError>;

    /// Everything after `since` that history still holds, or the reason it cannot.
    async fn recover(&self, channel: &str, since: &StreamPosition)
    -> Result<Recovery, BrokerError>;
}

#[async_trait]
pub trait ChannelLog: Send + Sync + 'static {
    /// Assigns the channel's next offset and appends the publication to its bounded
    /// history. Announcing it to other nodes is the caller's job.
    async fn append(&self, req: PublishRequest) -> Result<Publication, BrokerError>;

    /// [`ChannelLog::append`] at most once per key and channel within the window (see
    /// [`Broker::publish_once`](super::Broker::publish_once)), atomically.
    async fn append_once(
        &self,
        req: PublishRequest,
        once: &Idempotency,
    ) -> Result<Logged, BrokerError>;

    /// Where the channel stands now.
    async fn position(&self, channel: &str) -> Result<StreamPosition, BrokerError>;

    /// Everything after `since` that history still holds, or the reason it cannot, with
    /// the rules of [`crate::memory::recover_from`].
    async fn recover(&self, channel: &str, since: &StreamPosition)
    -> Result<Recovery, BrokerError>;

    /// Whether the log answers now.
    fn is_healthy(&self) -> bool;
}

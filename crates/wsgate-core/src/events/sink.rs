//! The [`Sink`] seam: where batches of events go (an HTTP webhook, a Redis Stream, a NATS
//! subject). A sink only delivers; batching, retrying and counting are the queue's
//! ([`super::queue`]), once for every sink.

use std::sync::Arc;

use async_trait::async_trait;

use super::event::Event;

/// Why a batch did not go out.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth trying again (transport error, timeout, 5xx, 408, 429, store unavailable): the
    /// queue retries the same batch with backoff, and nothing behind it overtakes it.
    #[error("{0}")]
    Retry(String),
    /// The receiver refused this batch for good (a 4xx): retrying would only repeat it and
    /// hold up every later event. The batch is dropped and counted.
    #[error("{0}")]
    Rejected(String),
}

#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// The `sink` label (one of [`super::metrics::SINKS`]).
    fn name(&self) -> &'static str;
    /// Delivers `batch` (in order) or says why not. Must be bounded in time.
    async fn send(&self, batch: &[Arc<Event>]) -> Result<(), SinkError>;
}

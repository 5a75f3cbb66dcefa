//! Events out (docs/events.md): the `[events]` settings, and the node's emitter built from
//! them with the sinks they choose (webhook here, Redis Stream in `wsgate-redis`, NATS
//! subjects in `wsgate-nats`) over the occupancy store of the configured engine.

mod webhook;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::info;
use wsgate_core::events::{Events, MemoryOccupancy, Occupancy, QueueConfig, Sink};
use wsgate_core::metrics::Metrics;
use wsgate_core::seams::NodeId;

use crate::seams::{ClusterConfig, StoreKind};
use crate::secret::Secret;

pub use webhook::{SIGNATURE_HEADER, signature};

/// Default of `queue_capacity`: a burst of ten thousand connects and joins is held while the
/// receiver catches up (a few MB); beyond it events are dropped and counted.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;
/// Default of `batch_max`: one request of a few tens of KB.
pub const DEFAULT_BATCH_MAX: usize = 100;
/// Default of `batch_linger_ms`: an event waits at most this long for company.
pub const DEFAULT_BATCH_LINGER_MS: u64 = 100;
/// Default of `webhook_timeout_ms`: a receiver slower than this is retried.
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 5_000;
/// Default of `retry_max_ms`: the longest pause between retries of a failed batch.
pub const DEFAULT_RETRY_MAX_MS: u64 = 30_000;
/// First pause after a failed batch (doubling up to `retry_max_ms`).
const RETRY_INITIAL: Duration = Duration::from_millis(100);
/// Default of `redis_stream_max_len`: entries kept in the stream, about (`MAXLEN ~`).
pub const DEFAULT_REDIS_STREAM_MAX_LEN: usize = 100_000;

/// The `[events]` table. No sink configured: no events, no cost.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// `http(s)://` URL that receives batches by `POST`. Needs `webhook_secret`.
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key of the signature header; env `WSGATE_EVENTS__WEBHOOK_SECRET`.
    pub webhook_secret: Option<Secret>,
    /// Default [`DEFAULT_WEBHOOK_TIMEOUT_MS`].
    pub webhook_timeout_ms: u64,
    /// Redis Stream key to `XADD` events to (on `redis_url`), e.g. `wsgate:events`.
    pub redis_stream: Option<String>,
    /// Default [`DEFAULT_REDIS_STREAM_MAX_LEN`].
    pub redis_stream_max_len: usize,
    /// NATS subject prefix (on `nats_url`): each event goes to `<subject>.<type>`.
    pub nats_subject: Option<String>,
    /// Events held per sink. Default [`DEFAULT_QUEUE_CAPACITY`].
    pub queue_capacity: usize,
    /// Default [`DEFAULT_BATCH_MAX`].
    pub batch_max: usize,
    /// Default [`DEFAULT_BATCH_LINGER_MS`].
    pub batch_linger_ms: u64,
    /// Default [`DEFAULT_RETRY_MAX_MS`].
    pub retry_max_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_secret: None,
            webhook_timeout_ms: DEFAULT_WEBHOOK_TIMEOUT_MS,
            redis_stream: None,
            redis_stream_max_len: DEFAULT_REDIS_STREAM_MAX_LEN,
            nats_subject: None,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            batch_max: DEFAULT_BATCH_MAX,
            batch_linger_ms: DEFAULT_BATCH_LINGER_MS,
            retry_max_ms: DEFAULT_RETRY_MAX_MS,
        }
    }
}

impl EventsConfig {
    pub fn is_enabled(&self) -> bool {
        self.webhook_url.is_some() || self.redis_stream.is_some() || self.nats_subject.is_some()
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.webhook_url {
            crate::outbound::check_url(url, "events.webhook_url")?;
            if self
                .webhook_secret
                .as_ref()
                .is_none_or(|s| s.expose().is_empty())
            {
                anyhow::bail!(
                    "events.webhook_url needs events.webhook_secret (WSGATE_EVENTS__WEBHOOK_SECRET): \
                     receivers must be able to tell wsgate's requests from anyone's"
                );
            }
        }
        if self.queue_capacity == 0 || self.batch_max == 0 {
            anyhow::bail!("events.queue_capacity and events.batch_max must be at least 1");
        }
        if self.redis_stream.as_deref() == Some("") || self.nats_subject.as_deref() == Some("") {
            anyhow::bail!("events.redis_stream and events.nats_subject must not be empty");
        }
        Ok(())
    }

    fn queue(&self) -> QueueConfig {
        QueueConfig {
            capacity: self.queue_capacity,
            batch_max: self.batch_max,
            linger: Duration::from_millis(self.batch_linger_ms),
            backoff: wsgate_backoff::Backoff::new()
                .initial_delay(RETRY_INITIAL)
                .max_delay(Duration::from_millis(self.retry_max_ms).max(RETRY_INITIAL))
                .max_attempts(None),
        }
    }
}

/// The node's emitter, or `None` when no sink is configured.
pub fn build(
    config: &EventsConfig,
    cluster: &ClusterConfig,
    node: &NodeId,
    metrics: &Metrics,
) -> anyhow::Result<Option<Arc<Events>>> {
    if !config.is_enabled() {
        return Ok(None);
    }
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if let (Some(url), Some(secret)) = (&config.webhook_url, &config.webhook_secret) {
        let timeout = Duration::from_millis(config.webhook_timeout_ms);
        sinks.push(Arc::new(webhook::Webhook::new(
            url,
            secret.clone(),
            timeout,
        )?));
    }
    if let Some(stream) = &config.redis_stream {
        sinks.push(redis_stream(cluster, stream, config.redis_stream_max_len)?);
    }
    if let Some(subject) = &config.nats_subject {
        sinks.push(nats_subject(cluster, subject)?);
    }
    let occupancy = occupancy(cluster, node)?;
    info!(
        sinks = ?sinks.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "events out"
    );
    Ok(Some(Events::start(
        node.clone(),
        sinks,
        &config.queue(),
        occupancy,
        &metrics.events,
        metrics.store_errors.clone(),
    )))
}

/// Cluster-wide counts on a Redis store; this node's own otherwise.
fn occupancy(cluster: &ClusterConfig, node: &NodeId) -> anyhow::Result<Arc<dyn Occupancy>> {
    match cluster.store {
        StoreKind::Memory => Ok(Arc::new(MemoryOccupancy::default())),
        #[cfg(feature = "redis")]
        StoreKind::Redis => Ok(Arc::new(
            wsgate_redis::RedisOccupancy::new(node, &cluster.redis()?)
                .map_err(|e| anyhow::anyhow!(e))?,
        )),
        #[cfg(not(feature = "redis"))]
        StoreKind::Redis => {
            let _ = node;
            anyhow::bail!("store = redis: this wsgate was built without the `redis` feature")
        }
    }
}

#[cfg(feature = "redis")]
fn redis_stream(
    cluster: &ClusterConfig,
    stream: &str,
    max_len: usize,
) -> anyhow::Result<Arc<dyn Sink>> {
    let sink = wsgate_redis::StreamSink::new(&cluster.redis()?, Some(stream.into()), max_len)?;
    Ok(Arc::new(sink))
}

#[cfg(not(feature = "redis"))]
fn redis_stream(_: &ClusterConfig, _: &str, _: usize) -> anyhow::Result<Arc<dyn Sink>> {
    anyhow::bail!("events.redis_stream: this wsgate was built without the `redis` feature")
}

#[cfg(feature = "nats")]
fn nats_subject(cluster: &ClusterConfig, subject: &str) -> anyhow::Result<Arc<dyn Sink>> {
    Ok(Arc::new(wsgate_nats::SubjectSink::start(
        &cluster.nats()?,
        subject.to_string(),
    )?))
}

#[cfg(not(feature = "nats"))]
fn nats_subject(_: &ClusterConfig, _: &str) -> anyhow::Result<Arc<dyn Sink>> {
    anyhow::bail!("events.nats_subject: this wsgate was built without the `nats` feature")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_needs_a_secret_and_a_real_url() {
        let hook = |url: &str, secret: Option<&str>| EventsConfig {
            webhook_url: Some(url.into()),
            webhook_secret: secret.map(Secret::new),
            ..EventsConfig::default()
        };
        assert!(!EventsConfig::default().is_enabled());
        assert!(EventsConfig::default().validate().is_ok());
        let e = hook("http://h/e", None).validate().unwrap_err().to_string();
        assert!(e.contains("webhook_secret"), "{e}");
        assert!(hook("ftp://h/e", Some("k")).validate().is_err());
        assert!(hook("https://h/e", Some("k")).validate().is_ok());
    }
}

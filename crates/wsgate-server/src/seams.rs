//! Builds the configured engines: embedded, Redis or NATS.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tracing::{info, warn};
use wsgate_core::memory::{MemoryBroker, MemoryStore};
use wsgate_core::seams::{
    Broker, ClusterMetrics, Forwarding, NodeId, Ownership, PresenceStore, UpstreamRecords,
};

use crate::config::{BrokerKind, Config, StoreKind};

/// The node's seams, as the configured engines implement them.
pub struct Seams {
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn PresenceStore>,
    pub records: Arc<dyn UpstreamRecords>,
    /// The cluster side of a shared store (`None` in memory: every record is this node's).
    pub cluster: Option<(Arc<dyn Ownership>, Arc<dyn Forwarding>)>,
}

/// The node's seams. Redis and NATS clients connect in the background: a node starts
/// even when they are down, and `/ready` says so until they answer.
pub fn build(config: &Config, node: &NodeId, registry: &mut Registry) -> anyhow::Result<Seams> {
    let metrics = ClusterMetrics::default();
    if config.store != StoreKind::Memory || config.broker != BrokerKind::Memory {
        metrics.register(registry);
        info!(store = ?config.store, broker = ?config.broker, prefix = %config.key_prefix, "cluster mode");
        if config.store == StoreKind::Memory {
            warn!("broker is shared but store is memory: presence is per node");
        }
    }
    let broker: Arc<dyn Broker> = match config.broker {
        BrokerKind::Memory => Arc::new(MemoryBroker::new(node.clone(), config.history_size)),
        BrokerKind::Redis => redis_broker(config, node, &metrics)?,
        BrokerKind::Nats => nats_broker(config, node, &metrics)?,
    };
    Ok(match config.store {
        StoreKind::Memory => {
            let store = Arc::new(MemoryStore::new());
            Seams {
                broker,
                presence: store.clone(),
                records: store,
                cluster: None,
            }
        }
        StoreKind::Redis => redis_store(config, node, &metrics, broker)?,
    })
}

#[cfg(feature = "redis")]
fn redis_config(config: &Config) -> anyhow::Result<wsgate_redis::RedisConfig> {
    use std::time::Duration;
    let mut r = wsgate_redis::RedisConfig::new(config.redis_url.clone());
    r.lease_ttl = Duration::from_millis(config.lease_ttl_ms);
    if let Some(key) = config.cluster_key_text()? {
        r.cluster_key = Some(
            wsgate_redis::ClusterKey::from_base64(key.expose()).map_err(|e| anyhow::anyhow!(e))?,
        );
    } else if config.store == StoreKind::Redis {
        warn!(
            "no cluster key: upstream secrets are stored in clear text (allow_insecure_dev_store)"
        );
    }
    r.key_prefix = config.key_prefix.clone();
    r.history_size = config.history_size;
    r.presence_ttl = Duration::from_millis(config.presence_ttl_ms);
    Ok(r)
}

#[cfg(feature = "redis")]
fn redis_broker(
    config: &Config,
    node: &NodeId,
    metrics: &ClusterMetrics,
) -> anyhow::Result<Arc<dyn Broker>> {
    let b =
        wsgate_redis::RedisBroker::start(node.clone(), &redis_config(config)?, metrics.clone())?;
    Ok(Arc::new(b))
}

#[cfg(feature = "redis")]
fn redis_store(
    config: &Config,
    node: &NodeId,
    metrics: &ClusterMetrics,
    broker: Arc<dyn Broker>,
) -> anyhow::Result<Seams> {
    let s = wsgate_redis::RedisStore::start(node.clone(), &redis_config(config)?, metrics.clone())?;
    let cluster: (Arc<dyn Ownership>, Arc<dyn Forwarding>) =
        (Arc::new(s.ownership()), Arc::new(s.forwarding()));
    let store = Arc::new(s);
    Ok(Seams {
        broker,
        presence: store.clone(),
        records: store,
        cluster: Some(cluster),
    })
}

/// NATS moves the messages; the channel offsets and history stay in Redis (`redis_url`).
#[cfg(feature = "nats")]
fn nats_broker(
    config: &Config,
    node: &NodeId,
    metrics: &ClusterMetrics,
) -> anyhow::Result<Arc<dyn Broker>> {
    if config.redis_url.trim().is_empty() {
        anyhow::bail!("broker = nats keeps channel offsets and history in Redis: set redis_url");
    }
    let log = wsgate_redis::ChannelStreams::start(&redis_config(config)?, metrics.clone())?;
    let b = wsgate_nats::NatsBroker::start(
        node.clone(),
        &config.nats_url,
        &config.key_prefix,
        Arc::new(log),
        metrics.clone(),
    );
    Ok(Arc::new(b))
}

#[cfg(not(feature = "redis"))]
fn redis_broker(_: &Config, _: &NodeId, _: &ClusterMetrics) -> anyhow::Result<Arc<dyn Broker>> {
    anyhow::bail!("broker = redis: this wsgate was built without the `redis` feature")
}

#[cfg(not(feature = "redis"))]
fn redis_store(
    _: &Config,
    _: &NodeId,
    _: &ClusterMetrics,
    _: Arc<dyn Broker>,
) -> anyhow::Result<Seams> {
    anyhow::bail!("store = redis: this wsgate was built without the `redis` feature")
}

#[cfg(not(feature = "nats"))]
fn nats_broker(_: &Config, _: &NodeId, _: &ClusterMetrics) -> anyhow::Result<Arc<dyn Broker>> {
    anyhow::bail!("broker = nats: this wsgate was built without the `nats` feature")
}

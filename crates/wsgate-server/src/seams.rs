//! Builds the configured [`Broker`] and [`Store`]: embedded, Redis or NATS.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tracing::{info, warn};
use wsgate_cluster::memory::{MemoryBroker, MemoryStore};
use wsgate_cluster::{Broker, ClusterMetrics, NodeId, Ownership, Store};

use crate::config::{BrokerKind, Config, StoreKind};

/// The node's seams, plus the ownership side of a cluster store (`None` in memory).
pub type Seams = (Arc<dyn Broker>, Arc<dyn Store>, Option<Arc<dyn Ownership>>);

/// The node's two seams. Redis and NATS clients connect in the background: a node starts
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
    let (store, ownership): (Arc<dyn Store>, Option<Arc<dyn Ownership>>) = match config.store {
        StoreKind::Memory => (Arc::new(MemoryStore::new()), None),
        StoreKind::Redis => {
            let (s, o) = redis_store(config, node, &metrics)?;
            (s, Some(o))
        }
    };
    Ok((broker, store, ownership))
}

#[cfg(feature = "redis")]
fn redis_config(config: &Config) -> anyhow::Result<wsgate_cluster::redis::RedisConfig> {
    let mut r = wsgate_cluster::redis::RedisConfig::new(config.redis_url.clone());
    r.lease_ttl = Duration::from_millis(config.lease_ttl_ms);
    if let Some(key) = config.cluster_key_text()? {
        r.cluster_key = Some(
            wsgate_cluster::redis::ClusterKey::from_base64(key.expose())
                .map_err(|e| anyhow::anyhow!(e))?,
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
    let b = wsgate_cluster::redis::RedisBroker::start(
        node.clone(),
        &redis_config(config)?,
        metrics.clone(),
    )?;
    Ok(Arc::new(b))
}

#[cfg(feature = "redis")]
fn redis_store(
    config: &Config,
    node: &NodeId,
    metrics: &ClusterMetrics,
) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn Ownership>)> {
    let s = wsgate_cluster::redis::RedisStore::start(
        node.clone(),
        &redis_config(config)?,
        metrics.clone(),
    )?;
    let ownership = Arc::new(s.ownership());
    Ok((Arc::new(s), ownership))
}

#[cfg(feature = "nats")]
fn nats_broker(
    config: &Config,
    node: &NodeId,
    metrics: &ClusterMetrics,
) -> anyhow::Result<Arc<dyn Broker>> {
    let b = wsgate_cluster::nats::NatsBroker::start(
        node.clone(),
        &config.nats_url,
        &redis_config(config)?,
        metrics.clone(),
    )?;
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
) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn Ownership>)> {
    anyhow::bail!("store = redis: this wsgate was built without the `redis` feature")
}

#[cfg(not(feature = "nats"))]
fn nats_broker(_: &Config, _: &NodeId, _: &ClusterMetrics) -> anyhow::Result<Arc<dyn Broker>> {
    anyhow::bail!("broker = nats: this wsgate was built without the `nats` feature")
}

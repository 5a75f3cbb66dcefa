//! Builds the configured [`Broker`] and [`Store`]: embedded, Redis or NATS.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tracing::{info, warn};
use wsgate_cluster::memory::{MemoryBroker, MemoryStore};
use wsgate_cluster::{Broker, ClusterMetrics, NodeId, Store};

use crate::config::{BrokerKind, Config, StoreKind};

/// The node's two seams. Redis and NATS clients connect in the background: a node starts
/// even when they are down, and `/ready` says so until they answer.
pub fn build(
    config: &Config,
    node: &NodeId,
    registry: &mut Registry,
) -> anyhow::Result<(Arc<dyn Broker>, Arc<dyn Store>)> {
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
    let store: Arc<dyn Store> = match config.store {
        StoreKind::Memory => Arc::new(MemoryStore::new()),
        StoreKind::Redis => redis_store(config, node, &metrics)?,
    };
    Ok((broker, store))
}

#[cfg(feature = "redis")]
fn redis_config(config: &Config) -> wsgate_cluster::redis::RedisConfig {
    let mut r = wsgate_cluster::redis::RedisConfig::new(config.redis_url.clone());
    r.key_prefix = config.key_prefix.clone();
    r.history_size = config.history_size;
    r.presence_ttl = Duration::from_millis(config.presence_ttl_ms);
    r
}

#[cfg(feature = "redis")]
fn redis_broker(
    config: &Config,
    node: &NodeId,
    metrics: &ClusterMetrics,
) -> anyhow::Result<Arc<dyn Broker>> {
    let b = wsgate_cluster::redis::RedisBroker::start(
        node.clone(),
        &redis_config(config),
        metrics.clone(),
    )?;
    Ok(Arc::new(b))
}

#[cfg(feature = "redis")]
fn redis_store(
    config: &Config,
    node: &NodeId,
    metrics: &ClusterMetrics,
) -> anyhow::Result<Arc<dyn Store>> {
    let s = wsgate_cluster::redis::RedisStore::start(
        node.clone(),
        &redis_config(config),
        metrics.clone(),
    )?;
    Ok(Arc::new(s))
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
        &redis_config(config),
        metrics.clone(),
    )?;
    Ok(Arc::new(b))
}

#[cfg(not(feature = "redis"))]
fn redis_broker(_: &Config, _: &NodeId, _: &ClusterMetrics) -> anyhow::Result<Arc<dyn Broker>> {
    anyhow::bail!("broker = redis: this wsgate was built without the `redis` feature")
}

#[cfg(not(feature = "redis"))]
fn redis_store(_: &Config, _: &NodeId, _: &ClusterMetrics) -> anyhow::Result<Arc<dyn Store>> {
    anyhow::bail!("store = redis: this wsgate was built without the `redis` feature")
}

#[cfg(not(feature = "nats"))]
fn nats_broker(_: &Config, _: &NodeId, _: &ClusterMetrics) -> anyhow::Result<Arc<dyn Broker>> {
    anyhow::bail!("broker = nats: this wsgate was built without the `nats` feature")
}

//! Builds the configured engines (embedded, Redis or NATS) from the cluster settings
//! ([`ClusterConfig`]) that live here with their defaults.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use wsgate_core::memory::{MemoryBroker, MemoryStore};
use wsgate_core::seams::{
    Broker, ClusterMetrics, Forwarding, NodeId, Ownership, PresenceStore, UpstreamRecords,
};

use crate::secret::Secret;

/// Where shared state lives (presence today).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In this process: one node.
    #[default]
    Memory,
    /// Redis at `redis_url`: presence is cluster-wide.
    Redis,
}

/// How publications reach the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerKind {
    /// In this process: one node.
    #[default]
    Memory,
    /// Redis pub/sub, offsets and history in Redis Streams.
    Redis,
    /// NATS core pub/sub at `nats_url`; offsets and history still in Redis (`redis_url`).
    Nats,
}

/// Default of `redis_url`: a Redis on this machine, the usual development setup.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default of `nats_url`: a NATS server on this machine.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Default of `key_prefix`, so deployments sharing a Redis or NATS can pick their own.
/// An empty prefix is allowed: seed 000's bare layout (`websocket-<id>`, `websocket-index`).
pub const DEFAULT_KEY_PREFIX: &str = "wsgate";
/// Default of `history_size` (messages per channel): a few seconds of a busy channel, enough
/// for a reconnect to recover without a gap.
pub const DEFAULT_HISTORY_SIZE: usize = 256;
/// Default of `channel_idle_ttl_ms`: a channel nobody subscribes to and nobody published to
/// for 5 minutes is forgotten (memory engine: evicted; Redis: its keys expire).
pub const DEFAULT_CHANNEL_IDLE_TTL_MS: u64 = 300_000;
/// Default of `history_ttl_ms`: a channel's history stays recoverable at least 10 minutes
/// after its last publication, long enough for a laptop to wake up and resume with `since`.
pub const DEFAULT_HISTORY_TTL_MS: u64 = 600_000;
/// Default of `presence_ttl_ms`: a dead node's presence entries disappear within 15 s.
pub const DEFAULT_PRESENCE_TTL_MS: u64 = 15_000;
/// Shortest `presence_ttl_ms` accepted: presence is refreshed on a fraction of it.
pub const MIN_PRESENCE_TTL_MS: u64 = 100;
/// Default of `lease_ttl_ms`: 400, for the team's < 1 s fail-over target. A survivor claims
/// a node's connections only after seeing its lease missing twice, more than one TTL
/// apart (SIGKILL fail-over: about two TTLs); a Redis stall shorter than that claims
/// nothing, and an owner that could not renew for `1.75 × TTL` closes its connections
/// itself (restarting them once it renews), so raise it where Redis is far or slow.
pub const DEFAULT_LEASE_TTL_MS: u64 = 400;
/// Shortest `lease_ttl_ms` accepted: leases are renewed every third of it.
pub const MIN_LEASE_TTL_MS: u64 = 300;

/// The cluster settings: which engines, where they are, and the timings of shared state.
/// Top-level keys of the node's config (`store`, `redis_url`, `lease_ttl_ms`, ...).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// `memory` (default, one node) or `redis`.
    pub store: StoreKind,
    /// `memory` (default, one node), `redis` or `nats`.
    pub broker: BrokerKind,
    /// Default [`DEFAULT_REDIS_URL`]. `rediss://` for TLS; `redis://user:password@host`
    /// (or `redis://:password@host`) for credentials. Never logged.
    pub redis_url: String,
    /// `redis_url` names a Redis Cluster: one or more of its nodes, comma-separated (any
    /// one reachable is enough to find the rest). Default false. See docs/cluster.md.
    pub redis_cluster: bool,
    /// Redis broker: announce each publication on its channel's own pub/sub channel, which
    /// a node receives only while it has local subscribers (`SSUBSCRIBE` on a cluster),
    /// instead of on one channel every node receives. Default true. See docs/cluster.md.
    pub redis_per_channel_pubsub: bool,
    /// `rediss://` only: PEM file of CA certificates trusted in addition to the platform's
    /// roots (a deployment's own CA). Default none.
    pub redis_ca_file: Option<PathBuf>,
    /// Default [`DEFAULT_NATS_URL`]. `tls://host:4222` requires TLS; may carry
    /// `user:password@`. Logged without its user info.
    pub nats_url: String,
    /// NATS user (with `nats_password`). Default none.
    pub nats_user: Option<String>,
    /// NATS password (with `nats_user`); env `WSGATE_NATS_PASSWORD`.
    pub nats_password: Option<Secret>,
    /// NATS authentication token; env `WSGATE_NATS_TOKEN`.
    pub nats_token: Option<Secret>,
    /// NATS `.creds` file (user JWT and NKey seed), e.g. from `nsc`.
    pub nats_credentials_file: Option<PathBuf>,
    /// Refuse a NATS server that does not offer TLS (implied by a `tls://` URL).
    /// Default false.
    pub nats_require_tls: bool,
    /// PEM file of CA certificates trusted for NATS TLS in addition to the platform's roots.
    pub nats_ca_file: Option<PathBuf>,
    /// Prefix of every Redis key and NATS subject, so deployments can share them.
    /// Default [`DEFAULT_KEY_PREFIX`]; empty: seed 000's bare key names.
    pub key_prefix: String,
    /// Messages kept per channel for `since` recovery. Default [`DEFAULT_HISTORY_SIZE`].
    pub history_size: usize,
    /// A channel with no subscriber on this node and no publication for this long is
    /// forgotten (not before `history_ttl_ms` either). Default [`DEFAULT_CHANNEL_IDLE_TTL_MS`].
    pub channel_idle_ttl_ms: u64,
    /// History outlives a channel's last publication by at least this long.
    /// Default [`DEFAULT_HISTORY_TTL_MS`].
    pub history_ttl_ms: u64,
    /// A dead node's presence entries disappear within this bound.
    /// Default [`DEFAULT_PRESENCE_TTL_MS`].
    pub presence_ttl_ms: u64,
    /// Cluster mode: an instance's lease lives this long without renewal (renewed every
    /// third of it); a SIGKILLed instance's upstream connections are reclaimed after it.
    /// Default [`DEFAULT_LEASE_TTL_MS`].
    pub lease_ttl_ms: u64,
    /// Wipe every upstream connection record at start (also env `CLEAR_ALL_ON_START=TRUE`,
    /// seed 000). Destructive; logged loudly. Default false.
    pub clear_all_on_start: bool,
    /// Base64 of 32 bytes: seals upstream secrets (header values, auth messages) in the
    /// Redis store with AES-256-GCM. Env `WSGATE_CLUSTER_KEY`.
    pub cluster_key: Option<Secret>,
    /// File holding the cluster key (base64), instead of `cluster_key`.
    pub cluster_key_file: Option<PathBuf>,
    /// Allow a Redis store without a cluster key (secrets in clear text). Dev only.
    pub allow_insecure_dev_store: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::default(),
            broker: BrokerKind::default(),
            redis_url: DEFAULT_REDIS_URL.into(),
            redis_cluster: false,
            redis_per_channel_pubsub: true,
            redis_ca_file: None,
            nats_url: DEFAULT_NATS_URL.into(),
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_credentials_file: None,
            nats_require_tls: false,
            nats_ca_file: None,
            key_prefix: DEFAULT_KEY_PREFIX.into(),
            history_size: DEFAULT_HISTORY_SIZE,
            channel_idle_ttl_ms: DEFAULT_CHANNEL_IDLE_TTL_MS,
            history_ttl_ms: DEFAULT_HISTORY_TTL_MS,
            presence_ttl_ms: DEFAULT_PRESENCE_TTL_MS,
            lease_ttl_ms: DEFAULT_LEASE_TTL_MS,
            clear_all_on_start: false,
            cluster_key: None,
            cluster_key_file: None,
            allow_insecure_dev_store: false,
        }
    }
}

impl ClusterConfig {
    /// How long an idle channel's state lives: the longer of `channel_idle_ttl_ms` and
    /// `history_ttl_ms` (the memory engine's eviction bound, the TTL of Redis channel keys).
    pub fn channel_ttl(&self) -> Duration {
        Duration::from_millis(self.channel_idle_ttl_ms.max(self.history_ttl_ms))
    }

    /// Whether nodes share state through Redis or NATS (not only this process's memory).
    pub fn is_shared(&self) -> bool {
        self.store != StoreKind::Memory || self.broker != BrokerKind::Memory
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let redis_urls: Vec<&str> = self.redis_url.split(',').map(str::trim).collect();
        if redis_urls.len() > 1 && !self.redis_cluster {
            anyhow::bail!(
                "redis_url lists several servers: set redis_cluster = true for a Redis Cluster"
            );
        }
        if redis_urls.iter().any(|u| u.is_empty()) && self.redis_cluster {
            anyhow::bail!("redis_url has an empty entry in its comma-separated list");
        }
        if self.redis_ca_file.is_some() && !redis_urls.iter().all(|u| u.starts_with("rediss://")) {
            anyhow::bail!("redis_ca_file is for TLS: redis_url must start with rediss://");
        }
        match (&self.nats_user, &self.nats_password) {
            (Some(_), None) => anyhow::bail!("nats_user needs nats_password"),
            (None, Some(_)) => anyhow::bail!("nats_password needs nats_user"),
            _ => {}
        }
        let logins = [
            self.nats_user.is_some(),
            self.nats_token.is_some(),
            self.nats_credentials_file.is_some(),
        ];
        if logins.iter().filter(|set| **set).count() > 1 {
            anyhow::bail!(
                "NATS: set one of nats_user/nats_password, nats_token or nats_credentials_file"
            );
        }
        if self.lease_ttl_ms < MIN_LEASE_TTL_MS {
            anyhow::bail!("lease_ttl_ms must be at least {MIN_LEASE_TTL_MS}");
        }
        if self.store == StoreKind::Redis
            && self.cluster_key.is_none()
            && self.cluster_key_file.is_none()
            && !self.allow_insecure_dev_store
        {
            anyhow::bail!(
                "store = redis needs a cluster key to encrypt upstream secrets: set \
                 WSGATE_CLUSTER_KEY (base64 of 32 random bytes, e.g. `openssl rand -base64 32`) \
                 or cluster_key_file, or allow_insecure_dev_store = true for development"
            );
        }
        if self.presence_ttl_ms < MIN_PRESENCE_TTL_MS {
            anyhow::bail!("presence_ttl_ms must be at least {MIN_PRESENCE_TTL_MS}");
        }
        Ok(())
    }

    /// `clear_all_on_start`, or seed 000's `CLEAR_ALL_ON_START=TRUE` in the environment.
    pub fn clear_all_on_start(&self) -> bool {
        self.clear_all_on_start
            || std::env::var("CLEAR_ALL_ON_START")
                .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
                .unwrap_or(false)
    }

    /// The cluster key's base64 text, from `cluster_key` or `cluster_key_file`.
    pub fn cluster_key_text(&self) -> anyhow::Result<Option<Secret>> {
        if let Some(k) = &self.cluster_key {
            return Ok(Some(k.clone()));
        }
        match &self.cluster_key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading cluster key {}: {e}", path.display()))?;
                Ok(Some(Secret::new(text.trim().to_string())))
            }
            None => Ok(None),
        }
    }

    /// The Redis engine's settings: the one place the node's config is translated for it.
    #[cfg(feature = "redis")]
    pub fn redis(&self) -> anyhow::Result<wsgate_redis::RedisConfig> {
        let mut r = wsgate_redis::RedisConfig::new(self.redis_url.clone());
        r.cluster = self.redis_cluster;
        r.per_channel_pubsub = self.redis_per_channel_pubsub;
        r.lease_ttl = Duration::from_millis(self.lease_ttl_ms);
        if let Some(key) = self.cluster_key_text()? {
            r.cluster_key = Some(
                wsgate_redis::ClusterKey::from_base64(key.expose())
                    .map_err(|e| anyhow::anyhow!(e))?,
            );
        } else if self.store == StoreKind::Redis {
            warn!(
                "no cluster key: upstream secrets are stored in clear text (allow_insecure_dev_store)"
            );
        }
        r.key_prefix = self.key_prefix.clone();
        r.history_size = self.history_size;
        r.channel_ttl = self.channel_ttl();
        r.presence_ttl = Duration::from_millis(self.presence_ttl_ms);
        if let Some(ca) = &self.redis_ca_file {
            r.ca_bundle = Some(crate::trust::TrustBundle::with_ca_file(ca)?.pem());
        }
        Ok(r)
    }

    /// The NATS connection settings: the one place the node's config is translated for them.
    #[cfg(feature = "nats")]
    pub fn nats(&self) -> anyhow::Result<wsgate_nats::NatsConnect> {
        use wsgate_nats::NatsAuth;
        let mut c = wsgate_nats::NatsConnect::new(self.nats_url.clone());
        c.auth = if let (Some(user), Some(password)) = (&self.nats_user, &self.nats_password) {
            NatsAuth::UserPassword {
                user: user.clone(),
                password: password.expose().to_string(),
            }
        } else if let Some(token) = &self.nats_token {
            NatsAuth::Token(token.expose().to_string())
        } else if let Some(path) = &self.nats_credentials_file {
            NatsAuth::CredentialsFile(path.clone())
        } else {
            NatsAuth::None
        };
        c.require_tls = self.nats_require_tls;
        if let Some(ca) = &self.nats_ca_file {
            c.tls = Some(crate::trust::TrustBundle::with_ca_file(ca)?.client_config()?);
        }
        Ok(c)
    }
}

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
pub fn build(
    config: &ClusterConfig,
    node: &NodeId,
    registry: &mut Registry,
) -> anyhow::Result<Seams> {
    let metrics = ClusterMetrics::default();
    if config.is_shared() {
        metrics.register(registry);
        info!(store = ?config.store, broker = ?config.broker, prefix = %config.key_prefix, "cluster mode");
        if config.store == StoreKind::Memory {
            warn!("broker is shared but store is memory: presence is per node");
        }
    }
    let broker: Arc<dyn Broker> = match config.broker {
        BrokerKind::Memory => Arc::new(
            MemoryBroker::new(node.clone(), config.history_size)
                .with_idle_ttl(config.channel_ttl()),
        ),
        #[cfg(feature = "redis")]
        BrokerKind::Redis => redis_broker(config, node, &metrics)?,
        #[cfg(feature = "nats")]
        BrokerKind::Nats => nats_broker(config, node, &metrics)?,
        #[cfg(not(feature = "redis"))]
        BrokerKind::Redis => return Err(not_built("broker = redis", "redis")),
        #[cfg(not(feature = "nats"))]
        BrokerKind::Nats => return Err(not_built("broker = nats", "nats")),
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
        #[cfg(feature = "redis")]
        StoreKind::Redis => redis_store(config, node, &metrics, broker)?,
        #[cfg(not(feature = "redis"))]
        StoreKind::Redis => return Err(not_built("store = redis", "redis")),
    })
}

#[cfg(feature = "redis")]
fn redis_broker(
    config: &ClusterConfig,
    node: &NodeId,
    metrics: &ClusterMetrics,
) -> anyhow::Result<Arc<dyn Broker>> {
    let b = wsgate_redis::RedisBroker::start(node.clone(), &config.redis()?, metrics.clone())?;
    Ok(Arc::new(b))
}

#[cfg(feature = "redis")]
fn redis_store(
    config: &ClusterConfig,
    node: &NodeId,
    metrics: &ClusterMetrics,
    broker: Arc<dyn Broker>,
) -> anyhow::Result<Seams> {
    let s = wsgate_redis::RedisStore::start(node.clone(), &config.redis()?, metrics.clone())?;
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
    config: &ClusterConfig,
    node: &NodeId,
    metrics: &ClusterMetrics,
) -> anyhow::Result<Arc<dyn Broker>> {
    if config.redis_url.trim().is_empty() {
        anyhow::bail!("broker = nats keeps channel offsets and history in Redis: set redis_url");
    }
    let connect = config.nats()?;
    info!(url = %connect.redacted_url(), "NATS broker");
    let log = wsgate_redis::ChannelStreams::start(&config.redis()?, metrics.clone())?;
    let b = wsgate_nats::NatsBroker::start(
        node.clone(),
        &connect,
        &config.key_prefix,
        Arc::new(log),
        metrics.clone(),
    )?;
    Ok(Arc::new(b))
}

/// The error for an engine this binary was built without.
#[cfg(not(all(feature = "redis", feature = "nats")))]
fn not_built(setting: &str, feature: &str) -> anyhow::Error {
    anyhow::anyhow!("{setting}: this wsgate was built without the `{feature}` feature")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared-cluster config edited by `edit`, validated.
    fn validated(edit: impl FnOnce(&mut ClusterConfig)) -> anyhow::Result<()> {
        let mut config = ClusterConfig {
            store: StoreKind::Redis,
            broker: BrokerKind::Redis,
            allow_insecure_dev_store: true,
            ..ClusterConfig::default()
        };
        edit(&mut config);
        config.validate()
    }

    #[test]
    fn tls_and_credentials_settings_are_checked_at_start() {
        assert!(validated(|c| c.key_prefix = String::new()).is_ok());
        let ca = || Some("/ca.pem".into());
        assert!(validated(|c| c.redis_ca_file = ca()).is_err());
        let ca_with_tls = |c: &mut ClusterConfig| {
            c.redis_ca_file = ca();
            c.redis_url = "rediss://r:6380".into();
        };
        assert!(validated(ca_with_tls).is_ok());
        let seeds = |c: &mut ClusterConfig| c.redis_url = "redis://a:1,redis://b:2".into();
        assert!(
            validated(seeds).is_err(),
            "several URLs without redis_cluster"
        );
        assert!(
            validated(|c| {
                seeds(c);
                c.redis_cluster = true;
            })
            .is_ok()
        );
        let user_only = |c: &mut ClusterConfig| c.nats_user = Some("u".into());
        assert!(validated(user_only).is_err());
        let e = validated(|c| {
            user_only(c);
            c.nats_password = Some(Secret::new("p"));
            c.nats_token = Some(Secret::new("t"));
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("set one of"), "{e}");
    }
}

//! The gateway's settings as the node's config spells them (milliseconds, top-level keys),
//! and their translation into `wsgate-core`'s [`GatewayConfig`], whose defaults they share.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wsgate_core::control::DEFAULT_IDEMPOTENCY_WINDOW;
use wsgate_core::gateway::{
    ClientPublish, DEFAULT_FLUSH_LANES, DEFAULT_FLUSH_REST, DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_MAX_CHANNELS_PER_CONNECTION, DEFAULT_MAX_PROTOCOL_ERRORS,
    DEFAULT_PRESENCE_CACHE, DEFAULT_PRESENCE_MAX_USERS, GatewayConfig,
};
use wsgate_core::seams::NodeId;

/// Default of `heartbeat_interval_ms` (seed 003): core's [`DEFAULT_HEARTBEAT_INTERVAL`].
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = DEFAULT_HEARTBEAT_INTERVAL.as_millis() as u64;
/// Default of `heartbeat_timeout_ms` (seed 003): core's [`DEFAULT_HEARTBEAT_TIMEOUT`].
pub const DEFAULT_HEARTBEAT_TIMEOUT_MS: u64 = DEFAULT_HEARTBEAT_TIMEOUT.as_millis() as u64;
/// Default of `presence_cache_ms`: core's [`DEFAULT_PRESENCE_CACHE`].
pub const DEFAULT_PRESENCE_CACHE_MS: u64 = DEFAULT_PRESENCE_CACHE.as_millis() as u64;
/// Default of `idempotency_window_ms`: core's [`DEFAULT_IDEMPOTENCY_WINDOW`] (5 minutes).
pub const DEFAULT_IDEMPOTENCY_WINDOW_MS: u64 = DEFAULT_IDEMPOTENCY_WINDOW.as_millis() as u64;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct GatewaySettings {
    /// WebSocket ping interval. Default [`DEFAULT_HEARTBEAT_INTERVAL_MS`].
    pub heartbeat_interval_ms: u64,
    /// Close (4008) a connection silent this long. Default [`DEFAULT_HEARTBEAT_TIMEOUT_MS`].
    pub heartbeat_timeout_ms: u64,
    /// Who may publish from a client connection, in the default namespace (`[channels]`
    /// may say it too; docs/operations.md, "Channel namespaces").
    pub client_publish: ClientPublish,
    /// Protocol errors in a row before a connection is closed with 1008.
    /// Default [`DEFAULT_MAX_PROTOCOL_ERRORS`].
    pub max_protocol_errors: u32,
    /// Default [`DEFAULT_MAX_CHANNELS_PER_CONNECTION`].
    pub max_channels_per_connection: usize,
    /// Users a client's `presence` answer lists at most. Default [`DEFAULT_PRESENCE_MAX_USERS`].
    pub presence_max_users: usize,
    /// A client's `presence` answer is reused this long. Default [`DEFAULT_PRESENCE_CACHE_MS`].
    pub presence_cache_ms: u64,
    /// A publish repeating an `idempotency_key` this soon answers the first result and
    /// publishes nothing (cluster-wide). Default [`DEFAULT_IDEMPOTENCY_WINDOW_MS`].
    pub idempotency_window_ms: u64,
    /// Tasks that write a channel fan-out's sockets (docs/scaling.md, "Flush lanes"): one
    /// keeps a busy fan-out's writes coalesced; more write a huge fan-out sooner on a node
    /// with many cores. Default [`DEFAULT_FLUSH_LANES`].
    pub flush_lanes: usize,
    /// After a pass of 5 ms or more (a large fan-out), a flush lane rests this many times as
    /// long as the pass took (at most 100 ms), so that the next pass writes more per socket:
    /// less CPU per delivery under a sustained large fan-out, for up to that much latency.
    /// 0: never rests. Default [`DEFAULT_FLUSH_REST`].
    pub flush_rest: f64,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            heartbeat_timeout_ms: DEFAULT_HEARTBEAT_TIMEOUT_MS,
            client_publish: ClientPublish::default(),
            max_protocol_errors: DEFAULT_MAX_PROTOCOL_ERRORS,
            max_channels_per_connection: DEFAULT_MAX_CHANNELS_PER_CONNECTION,
            presence_max_users: DEFAULT_PRESENCE_MAX_USERS,
            presence_cache_ms: DEFAULT_PRESENCE_CACHE_MS,
            idempotency_window_ms: DEFAULT_IDEMPOTENCY_WINDOW_MS,
            flush_lanes: DEFAULT_FLUSH_LANES,
            flush_rest: DEFAULT_FLUSH_REST,
        }
    }
}

impl GatewaySettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms {
            anyhow::bail!(
                "heartbeat_timeout_ms ({}) must be longer than heartbeat_interval_ms ({})",
                self.heartbeat_timeout_ms,
                self.heartbeat_interval_ms
            );
        }
        if self.flush_lanes == 0 {
            anyhow::bail!("flush_lanes must be at least 1");
        }
        if !(0.0..=10.0).contains(&self.flush_rest) {
            anyhow::bail!("flush_rest must be between 0 and 10");
        }
        if self.idempotency_window_ms == 0 {
            anyhow::bail!("idempotency_window_ms must be at least 1");
        }
        Ok(())
    }

    pub fn idempotency_window(&self) -> Duration {
        Duration::from_millis(self.idempotency_window_ms)
    }

    pub fn gateway_config(&self, node: NodeId) -> GatewayConfig {
        let mut g = GatewayConfig::new(node);
        g.heartbeat_interval = Duration::from_millis(self.heartbeat_interval_ms.max(1));
        g.heartbeat_timeout = Duration::from_millis(self.heartbeat_timeout_ms.max(1));
        g.max_protocol_errors = self.max_protocol_errors.max(1);
        g.max_channels_per_connection = self.max_channels_per_connection;
        g.presence_max_users = self.presence_max_users;
        g.presence_cache = Duration::from_millis(self.presence_cache_ms);
        g.flush_lanes = self.flush_lanes;
        g.flush_rest = self.flush_rest;
        g
    }
}

//! The control API's settings: the API key (and when a node may go without one), the body
//! limit, and the hosts upstream connections may go to.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Default of `api_body_limit`: 1 MiB, room for any publication a client could receive
/// (`max_message_size` is far smaller) without buffering arbitrary uploads.
pub const DEFAULT_API_BODY_LIMIT: usize = 1024 * 1024;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ApiConfig {
    /// When set, `/api/*` and `/connections*` (and the gRPC API) require
    /// `Authorization: Bearer <api_key>`. Default none, for a laptop run: a node listening
    /// beyond loopback refuses to start without one unless `allow_unauthenticated_api`.
    pub api_key: Option<Secret>,
    /// Serve the control API without a key on a non-loopback listener. Default false: an
    /// open API lets anyone publish, kick users, list client IPs and open upstream
    /// connections to internal addresses. Only for a network where nothing but the
    /// backends can reach the node.
    pub allow_unauthenticated_api: bool,
    /// Largest HTTP API request body. Default [`DEFAULT_API_BODY_LIMIT`].
    pub api_body_limit: usize,
    /// Hosts upstream connections may go to: names or addresses, `*.example.com` for
    /// subdomains; Connect to any other answers 403. Default empty: any host.
    pub upstream_allowed_hosts: Vec<String>,
}

impl ApiConfig {
    /// Refuses an API without a key on an address beyond loopback, unless allowed.
    /// `listeners`: the addresses the control API is served on (HTTP, and gRPC when on).
    pub fn validate(&self, listeners: &[SocketAddr]) -> anyhow::Result<()> {
        if self.api_key.is_some() || self.allow_unauthenticated_api {
            return Ok(());
        }
        if let Some(open) = listeners.iter().find(|a| !a.ip().is_loopback()) {
            anyhow::bail!(
                "the control API would be open to the network on {open} without an api_key: \
                 set api_key (WSGATE_API_KEY), listen on loopback, or set \
                 allow_unauthenticated_api = true (WSGATE_ALLOW_UNAUTHENTICATED_API=true) \
                 if only your backends can reach this address"
            );
        }
        Ok(())
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            allow_unauthenticated_api: false,
            api_body_limit: DEFAULT_API_BODY_LIMIT,
            upstream_allowed_hosts: Vec::new(),
        }
    }
}

//! The proxy hooks at the node's edge: their configuration (`[hooks.<event>]`), the HTTP
//! client ([`HttpHooks`]), and the connect hook's part of a handshake ([`Entry`]).
//!
//! The hooks themselves (which channels are proxied, metrics, what the backend may answer)
//! are `wsgate_core::hooks`; subscribe, publish, rpc and refresh run inside the core
//! session and expiry, so every edge (`/ws`, Socket.IO) gets them alike.

mod config;
mod http;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::HeaderMap;
use wsgate_core::auth::{AuthError, Authenticator, ChannelGrant, Identity};
use wsgate_core::gateway::Gateway;
use wsgate_core::hooks::{
    CLOSE_BACKEND_UNAVAILABLE, Caller, ConnectRequest, Data, Hook, HookError, Proxy,
};
use wsgate_core::metrics::Metrics;

pub use config::{
    DEFAULT_HOOK_RETRIES, DEFAULT_HOOK_TIMEOUT_MS, HookEndpoint, HooksConfig, MAX_HOOK_RETRIES,
};
pub use http::HttpHooks;

/// The node's proxy, when any hook is configured.
pub fn build(hooks: &HooksConfig, metrics: &Metrics) -> anyhow::Result<Option<Arc<Proxy>>> {
    if hooks.is_empty() {
        return Ok(None);
    }
    let backend = Arc::new(HttpHooks::new(hooks)?);
    Ok(Some(Arc::new(Proxy::new(backend, metrics.clone()))))
}

/// What the connect hook adds to a new connection's `hello`: its `data`. (Its `channels`
/// join the identity's server-side subscriptions, `gateway/server_subs.rs`.)
#[derive(Debug, Default)]
pub struct Greeting {
    pub data: Option<Data>,
}

/// How a handshake that passed its token check goes on.
pub enum Entry {
    /// No connect hook: the token decided.
    Token(Identity),
    /// The connect hook decides; `verified` is the token's identity when a token was sent.
    Hooked {
        proxy: Arc<Proxy>,
        verified: Option<Identity>,
        token: Option<String>,
        headers: BTreeMap<String, String>,
    },
}

/// A connect the backend refused, or could not answer: the close code and message.
#[derive(Debug)]
pub struct Refusal {
    pub code: u16,
    /// `hook_denied` or `hook_unavailable` (metric label).
    pub reason: &'static str,
    pub message: String,
}

impl Entry {
    /// With a connect hook and no token, the backend alone decides who connects; with a
    /// token and `auth.mode = "jwt"`, the token must be valid first, then the backend
    /// decides (with `auth.mode = "none"` the token goes to the backend unverified).
    pub async fn start(
        gw: &Gateway,
        auth: &Authenticator,
        token: Option<String>,
        request_headers: &HeaderMap,
        forward_headers: &[String],
    ) -> Result<Self, AuthError> {
        let Some(proxy) = gw.proxy().filter(|p| p.has(Hook::Connect)).cloned() else {
            return auth.authenticate(token.as_deref()).await.map(Entry::Token);
        };
        let verified = match (&token, auth) {
            (Some(token), Authenticator::Jwt(_)) => Some(auth.authenticate(Some(token)).await?),
            _ => None,
        };
        Ok(Entry::Hooked {
            headers: forwarded(request_headers, forward_headers),
            proxy,
            verified,
            token,
        })
    }

    /// The connection's identity and greeting, asking the backend when hooked.
    pub async fn admit(
        self,
        gw: &Gateway,
        id: &Arc<str>,
        kind: &'static str,
        remote: SocketAddr,
    ) -> Result<(Identity, Greeting), Refusal> {
        let (proxy, verified, token, headers) = match self {
            Entry::Token(identity) => return Ok((identity, Greeting::default())),
            Entry::Hooked {
                proxy,
                verified,
                token,
                headers,
            } => (proxy, verified, token, headers),
        };
        let req = ConnectRequest {
            caller: Caller {
                connection_id: id.clone(),
                user: verified.as_ref().map(|i| i.user.clone()),
                transport: wsgate_core::hooks::transport_of(kind),
                client: Some(remote.to_string()),
                node: gw.node().as_ref().into(),
            },
            token,
            headers,
        };
        let reply = proxy.connect(&req).await.map_err(|e| match e {
            HookError::Rejected(r) => Refusal {
                code: r.code,
                reason: "hook_denied",
                message: r.message,
            },
            HookError::Unavailable(f) => Refusal {
                code: CLOSE_BACKEND_UNAVAILABLE,
                reason: "hook_unavailable",
                message: format!("backend_unavailable: {f}"),
            },
        })?;
        let user: Arc<str> = match (reply.user, &verified) {
            (Some(user), _) => user.into(),
            (None, Some(v)) => v.user.clone(),
            (None, None) => anonymous(),
        };
        let identity = Identity {
            user,
            channels: verified
                .as_ref()
                .map_or(ChannelGrant::All, |v| v.channels.clone()),
            // The token's `subs` and the hook's channels: one mechanism subscribes both.
            subscribe: verified
                .iter()
                .flat_map(|v| v.subscribe.iter().cloned())
                .chain(reply.channels.iter().map(|c| Arc::from(c.as_str())))
                .collect(),
            expires_at: reply
                .expire_at
                .or(verified.as_ref().and_then(|v| v.expires_at)),
        };
        Ok((identity, Greeting { data: reply.data }))
    }
}

/// An anonymous user's id (`anon-` and 12 hex digits), as `auth.mode = none` names them.
fn anonymous() -> Arc<str> {
    // A connection id's randomness: 16 hex digits, then `-` and the node given.
    let id = wsgate_core::ids::new_connection_id("anon");
    format!("anon-{}", &id[..12]).into()
}

/// The client's headers named in `names`, lowercase, each once (the first value).
fn forwarded(headers: &HeaderMap, names: &[String]) -> BTreeMap<String, String> {
    names
        .iter()
        .filter_map(|name| {
            let value = headers.get(name.as_str())?.to_str().ok()?;
            Some((name.to_ascii_lowercase(), value.to_string()))
        })
        .collect()
}

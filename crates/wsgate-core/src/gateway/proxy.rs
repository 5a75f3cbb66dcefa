//! The backend's say on a client's operation, for namespaces that ask it (`subscribe =
//! "proxy"`, `publish_proxy = true`), through the node's proxy hooks ([`crate::hooks`]).
//! Without the hook such an operation is refused with a clear error, never allowed by
//! default: a moderated namespace is never published to unmoderated.

use serde_json::value::RawValue;

use super::{Connection, Gateway};
use crate::hooks::{Caller, Data, Hook, Proxy, PublishRequest, SubscribeRequest};
use crate::protocol::ProtocolError;

/// What [`subscribe_proxy`] answers when no subscribe hook is configured.
pub const NO_SUBSCRIBE_HOOK: &str =
    "this channel's namespace has subscribe = \"proxy\" but no subscribe hook is configured";

/// What [`publish_proxy`] answers when no publish hook is configured.
pub const NO_PUBLISH_HOOK: &str =
    "this channel's namespace has publish_proxy = true but no publish hook is configured";

fn hook<'g>(gw: &'g Gateway, hook: Hook, missing: &str) -> Result<&'g Proxy, ProtocolError> {
    gw.proxy()
        .filter(|p| p.has(hook))
        .map(|p| &**p)
        .ok_or_else(|| ProtocolError::new("unsupported", missing))
}

/// Whether the backend lets `conn` subscribe to `channel` (a channel of a namespace with
/// `subscribe = "proxy"`); `Some`: the channel-specific data for `subscribed`.
pub(crate) async fn subscribe_proxy(
    gw: &Gateway,
    conn: &Connection,
    channel: &str,
) -> Result<Option<Data>, ProtocolError> {
    let proxy = hook(gw, Hook::Subscribe, NO_SUBSCRIBE_HOOK)?;
    let req = SubscribeRequest {
        caller: Caller::of(conn, gw.node()),
        channel: channel.to_string(),
    };
    let reply = proxy.subscribe(&req).await.map_err(|e| e.to_protocol())?;
    Ok(reply.data)
}

/// Whether the backend lets `conn` publish `data` to `channel` (a channel of a namespace
/// with `publish_proxy = true`); `Some`: the data to publish instead.
pub(crate) async fn publish_proxy(
    gw: &Gateway,
    conn: &Connection,
    channel: &str,
    data: &str,
) -> Result<Option<String>, ProtocolError> {
    let proxy = hook(gw, Hook::Publish, NO_PUBLISH_HOOK)?;
    let req = PublishRequest {
        caller: Caller::of(conn, gw.node()),
        channel: channel.to_string(),
        data: super::session::raw(data)?,
    };
    let reply = proxy.publish(&req).await.map_err(|e| e.to_protocol())?;
    Ok(reply
        .data
        .as_deref()
        .map(|d: &RawValue| d.get().to_string()))
}

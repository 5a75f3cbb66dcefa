//! The backend's say on a client's operation, for namespaces that ask it (`subscribe =
//! "proxy"`, `publish_proxy = true`). The proxy hooks fill this in; until one is configured the operation is
//! refused with a clear error rather than allowed by default.

use super::{Connection, Gateway};
use crate::protocol::ProtocolError;

/// What [`subscribe_proxy`] answers when no subscribe hook is configured.
pub const NO_SUBSCRIBE_HOOK: &str =
    "this channel's namespace has subscribe = \"proxy\" but no subscribe hook is configured";

/// What [`publish_proxy`] answers when no publish hook is configured.
pub const NO_PUBLISH_HOOK: &str =
    "this channel's namespace has publish_proxy = true but no publish hook is configured";

/// Whether the backend lets `conn` subscribe to `channel` (a channel of a namespace with
/// `subscribe = "proxy"`).
pub(crate) async fn subscribe_proxy(
    _gw: &Gateway,
    _conn: &Connection,
    _channel: &str,
) -> Result<(), ProtocolError> {
    Err(ProtocolError::new("unsupported", NO_SUBSCRIBE_HOOK))
}

/// Whether the backend lets `conn` publish `data` to `channel` (a channel of a namespace
/// with `publish_proxy = true`); `Some`: the data to publish instead.
pub(crate) async fn publish_proxy(
    _gw: &Gateway,
    _conn: &Connection,
    _channel: &str,
    _data: &str,
) -> Result<Option<String>, ProtocolError> {
    Err(ProtocolError::new("unsupported", NO_PUBLISH_HOOK))
}

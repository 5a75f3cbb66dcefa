//! The backend's say on a client's operation, for namespaces that ask it (`subscribe =
//! "proxy"`). The proxy hooks fill this in; until one is configured the operation is
//! refused with a clear error rather than allowed by default.

use super::{Connection, Gateway};
use crate::protocol::ProtocolError;

/// What [`subscribe_proxy`] answers when no subscribe hook is configured.
pub const NO_SUBSCRIBE_HOOK: &str =
    "this channel's namespace has subscribe = \"proxy\" but no subscribe hook is configured";

/// Whether the backend lets `conn` subscribe to `channel` (a channel of a namespace with
/// `subscribe = "proxy"`).
pub(crate) async fn subscribe_proxy(
    _gw: &Gateway,
    _conn: &Connection,
    _channel: &str,
) -> Result<(), ProtocolError> {
    Err(ProtocolError::new("unsupported", NO_SUBSCRIBE_HOOK))
}

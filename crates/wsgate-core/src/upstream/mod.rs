//! The upstream manager: outbound WebSocket connections that wsgate holds for backends
//! (seed 000's Connect, Send, SendRaw, SendAsync, subscriptions, StartPublish /
//! StopPublish, Disconnect, List, Get).
//!
//! ## Why it looks like this
//!
//! - **The client library owns the connection.** Each connection is a
//!   [`wsgate_client::Client`]: its driver task is the only code that reconnects, runs the
//!   auth step and replays subscriptions (seed 002). The manager never re-implements any of
//!   that; it translates API requests into client calls.
//! - **One pump per connection, nothing else.** Besides the client's driver, a connection
//!   has exactly one task, the [`pump`], which consumes the client's events and state
//!   changes: metrics, the record's state, and publishing. Closing a connection closes the
//!   client and then joins the pump, so no task outlives it.
//! - **One entry per operation kind, routed once.** Every operation on an existing
//!   connection is an [`UpstreamOp`] given to [`UpstreamManager::execute`], which decides
//!   once whether it runs here or on the owning instance (cluster mode; the same value is
//!   what travels there).
//! - **Given its parts, not the gateway.** The manager gets the node id, the records store,
//!   a [`Publisher`] and the metrics ([`UpstreamParts`]), nothing else.
//! - **Publishing goes through the gateway.** With a publish topic set, every received
//!   data message is published through the [`Publisher`] (the node's
//!   [`Gateway`](crate::gateway::Gateway))
//!   to channel `topic:<name>` ([`TOPIC_PREFIX`]): through the broker seam, with offsets
//!   and history, to browsers subscribed to that channel on any node. Correlated replies
//!   to SendAsync are not published (the client hands them to their caller only).
//! - **Data mapping** (see [`mapping`]): a text frame that is valid JSON is published as
//!   that value; other text as a JSON string; binary as `{"binary_base64":"…"}`.
//! - **Records in the store.** Every connection has an
//!   [`UpstreamRecord`](crate::seams::UpstreamRecord) in the [`UpstreamRecords`](crate::seams::UpstreamRecords) store,
//!   rewritten when subscriptions, the publish topic or the state change, so cluster mode
//!   can re-establish it elsewhere with [`UpstreamManager::start`].
//! - **Errors** are [`UpstreamError`], whose seed 000 strings are API.
//! - **Secrets** (header values, auth messages, URL query strings) are never logged and
//!   never shown in a [`UpstreamView`].

mod cluster;
pub mod config;
mod connection;
mod error;
mod forward;
mod lease;
mod manager;
pub mod mapping;
mod op;
mod parts;
mod pump;
mod state;
pub mod telemetry;
mod view;

use std::time::Duration;

pub use connection::Upstream;
pub use error::UpstreamError;
pub use lease::LeaseConflict;
pub(crate) use manager::Route;
pub use manager::{Connected, UpstreamManager};
pub use op::{Outcome, UpstreamOp};
pub use parts::{Publisher, UpstreamParts};
pub use pump::PUBLISH_TIMEOUT;
pub use state::state_name;
pub use view::UpstreamView;

/// Channel prefix of upstream publications: topic `btc` is channel `topic:btc`.
pub const TOPIC_PREFIX: &str = "topic:";

/// Bound on one record write to the store.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on closing one connection (close handshake, then the pump's end).
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(5);

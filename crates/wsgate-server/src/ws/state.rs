//! The WebSocket edge's view of the node: what the upgrade and the connection tasks use.

use std::sync::Arc;

use tokio_util::task::TaskTracker;
use wsgate_core::auth::Authenticator;
use wsgate_core::gateway::Gateway;

use super::WsConfig;
use crate::lifecycle::Lifecycle;
use crate::limits::Limits;
use crate::view::View;

/// What the WebSocket edge uses: the upgrade checks, the connection tasks and their settings.
pub struct WsView {
    pub gateway: Arc<Gateway>,
    pub limits: Arc<Limits>,
    pub auth: Authenticator,
    pub lifecycle: Arc<Lifecycle>,
    /// Every connection task, so the drain can wait for them.
    pub tasks: TaskTracker,
    pub config: WsConfig,
}

/// The WebSocket edge's view of the node (axum state of `/ws`).
pub type WsState = View<WsView>;

//! The WebSocket edge's view of the node: what the upgrade and the connection tasks use.

use std::ops::Deref;
use std::sync::Arc;

use tokio_util::task::TaskTracker;
use wsgate_core::auth::Authenticator;
use wsgate_core::gateway::Gateway;

use super::WsConfig;
use crate::lifecycle::Lifecycle;
use crate::limits::Limits;

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
#[derive(Clone)]
pub struct WsState(Arc<WsView>);

impl WsState {
    pub fn new(view: WsView) -> Self {
        Self(Arc::new(view))
    }
}

impl Deref for WsState {
    type Target = WsView;
    fn deref(&self) -> &WsView {
        &self.0
    }
}

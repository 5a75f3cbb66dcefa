//! The control APIs' view of the node: what the HTTP handlers, the API-key middleware, the
//! operations endpoints and the gRPC server use.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use serde::Serialize;
use wsgate_core::control::Control;
use wsgate_core::gateway::Gateway;
use wsgate_core::metrics::Metrics;
use wsgate_core::upstream::UpstreamManager;

use super::ApiConfig;
use crate::lifecycle::Lifecycle;
use crate::limits::Limits;
use crate::view::View;

/// What `/version` reports.
#[derive(Debug, Clone, Serialize)]
pub struct BuildInfo {
    pub name: &'static str,
    pub version: &'static str,
    pub git_commit: &'static str,
    pub build_time: &'static str,
    pub node: String,
    /// The node id again, under seed 000's name.
    pub instance_id: String,
    /// The version of `wsgate-client`, the library that holds the upstream connections.
    pub library_version: &'static str,
}

/// What the control APIs (HTTP and gRPC) and the operations endpoints use.
pub struct ApiView {
    pub gateway: Arc<Gateway>,
    /// Outbound connections held for backends (the upstream API).
    pub upstreams: Arc<UpstreamManager>,
    /// The control façade: every API operation goes through it (HTTP and gRPC alike).
    pub control: Arc<Control>,
    pub limits: Arc<Limits>,
    pub lifecycle: Arc<Lifecycle>,
    pub config: ApiConfig,
    pub build: BuildInfo,
    pub metrics_registry: Registry,
}

impl ApiView {
    /// Whether this node should receive new traffic (`/ready`, gRPC health).
    pub fn is_ready(&self) -> bool {
        self.lifecycle.is_started()
            && !self.lifecycle.is_draining()
            && self.gateway.broker_healthy()
            && self.gateway.presence_healthy()
            && !self.limits.near_full()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.gateway.metrics
    }
}

/// The control APIs' view of the node (axum state of `/api/*`, `/connections*`, ops).
pub type ApiState = View<ApiView>;

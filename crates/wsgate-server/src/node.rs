//! One node: its settings and the parts built once at start (gateway, upstream manager,
//! limits, authenticator, TLS, build info).
//!
//! A handler never sees all of it: the WebSocket edge gets a [`WsState`], the HTTP API and
//! the gRPC server an [`ApiState`], each with only what that edge uses and each one `Arc` to
//! clone per request. The [`crate::supervisor`] starts and stops the node's tasks.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio_util::task::TaskTracker;
use wsgate_core::control::{Access, Control, UpstreamHosts};
use wsgate_core::gateway::Gateway;
use wsgate_core::metrics::Metrics;
use wsgate_core::upstream::{UpstreamManager, UpstreamParts};

use crate::config::Config;
use crate::http::{ApiState, ApiView, BuildInfo};
use crate::lifecycle::Lifecycle;
use crate::limits::Limits;
use crate::tls::TlsReloader;
use crate::ws::{WsState, WsView};

/// One node: its settings and the parts built once, shared by the views and the supervisor.
pub struct Node {
    config: Config,
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) upstreams: Arc<UpstreamManager>,
    pub(crate) limits: Arc<Limits>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) tasks: TaskTracker,
    /// TLS on the listener (`tls_cert_file`), when configured; [`Node::reload_tls`] swaps
    /// the certificate for new handshakes.
    pub(crate) tls: Option<Arc<TlsReloader>>,
    ws: WsState,
    api: ApiState,
}

impl Node {
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        config.validate()?;
        let auth = config.auth.build()?;
        let limits = Arc::new(Limits::new(&config.limits)?);
        let tls = config.listener.tls()?;
        let node_id = config.node_id();
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        registry.register_collector(Box::new(crate::process::ProcessCollector));
        let node: wsgate_core::seams::NodeId = node_id.clone().into();
        let seams = crate::seams::build(&config.cluster, &node, &mut registry)?;
        let mut gateway_config = config.gateway.gateway_config(node.clone());
        gateway_config.token_grace = config.auth.token_grace();
        let gateway = Gateway::new(
            gateway_config,
            seams.broker,
            seams.presence,
            metrics.clone(),
        );
        let upstreams = UpstreamManager::new(UpstreamParts {
            node,
            records: seams.records,
            publisher: gateway.clone(),
            metrics,
        });
        let access = Access::new(
            config.api.api_key.as_ref().map(|k| k.expose().to_string()),
            limits.api_rate(),
        );
        let control = Arc::new(
            Control::new(gateway.clone(), upstreams.clone(), access).with_upstream_hosts(
                UpstreamHosts::new(config.api.upstream_allowed_hosts.iter().cloned()),
            ),
        );
        if let Some((ownership, forwarding)) = seams.cluster {
            control.attach_cluster(ownership, forwarding);
        }
        let lifecycle = Arc::new(Lifecycle::default());
        let tasks = TaskTracker::new();
        let ws = WsState::new(WsView {
            gateway: gateway.clone(),
            limits: limits.clone(),
            auth,
            lifecycle: lifecycle.clone(),
            tasks: tasks.clone(),
            config: config.ws.clone(),
        });
        let api = ApiState::new(ApiView {
            gateway: gateway.clone(),
            upstreams: upstreams.clone(),
            control,
            limits: limits.clone(),
            lifecycle: lifecycle.clone(),
            config: config.api.clone(),
            build: BuildInfo {
                name: "wsgate",
                version: env!("CARGO_PKG_VERSION"),
                git_commit: env!("WSGATE_GIT_COMMIT"),
                build_time: env!("WSGATE_BUILD_TIME"),
                instance_id: node_id.clone(),
                node: node_id,
                library_version: wsgate_client::VERSION,
            },
            metrics_registry: registry,
        });
        Ok(Arc::new(Self {
            config,
            gateway,
            upstreams,
            limits,
            lifecycle,
            tasks,
            tls,
            ws,
            api,
        }))
    }

    /// The settings the node was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The gateway, for callers outside the edges (tests, embedders).
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// The upstream manager (tests read its records).
    pub fn upstreams(&self) -> &Arc<UpstreamManager> {
        &self.upstreams
    }

    /// Whether the listener speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Re-reads the TLS certificate and key (SIGHUP). Established connections keep theirs;
    /// on error the previous certificate stays in use. `Ok(false)`: TLS is not configured.
    pub fn reload_tls(&self) -> anyhow::Result<bool> {
        match &self.tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Cluster mode: takes this node id's lease before the node serves, waiting up to two
    /// lease TTLs for a dead predecessor's to lapse. `Err`: another live node runs under
    /// this id. Returns at once when the store does not answer (the reclaimer then takes
    /// the lease with the same check) or outside cluster mode.
    pub async fn take_lease(&self) -> anyhow::Result<()> {
        Ok(self.upstreams.take_lease().await?)
    }

    /// Whether this node should receive new traffic.
    pub fn is_ready(&self) -> bool {
        self.api.is_ready()
    }

    pub fn ws(&self) -> &WsState {
        &self.ws
    }

    pub fn api(&self) -> &ApiState {
        &self.api
    }
}

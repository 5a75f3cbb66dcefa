//! One running node: its parts, its lifecycle and its main loop.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use wsgate_core::auth::Authenticator;
use wsgate_core::control::{Access, Control};
use wsgate_core::gateway::{Gateway, Heartbeat};
use wsgate_core::metrics::Metrics;
use wsgate_core::upstream::{UpstreamManager, UpstreamParts};

use crate::config::{AuthMode, Config};

/// Whether the node takes traffic. `/ready` reads it; shutdown flips it first.
#[derive(Debug, Default)]
pub struct Lifecycle {
    started: AtomicBool,
    draining: AtomicBool,
}

impl Lifecycle {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

/// What `/version` reports.
#[derive(Debug, Clone, Serialize)]
pub struct BuildInfo {
    pub name: &'static str,
    pub version: &'static str,
    pub git_commit: &'static str,
    pub build_time: &'static str,
    pub node: String,
}

/// Everything a request handler or connection task needs, shared.
pub struct Node {
    pub config: Config,
    pub gateway: Arc<Gateway>,
    /// Outbound connections held for backends (the upstream API).
    pub upstreams: Arc<UpstreamManager>,
    /// The control API (HTTP and gRPC handlers call it).
    pub control: Arc<Control>,
    pub auth: Authenticator,
    pub lifecycle: Lifecycle,
    pub build: BuildInfo,
    pub metrics_registry: prometheus_client::registry::Registry,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Connection caps, rate limits, trusted proxies, the Origin allow-list.
    pub limits: crate::limits::Limits,
    /// TLS on the listener (`tls_cert_file`), when configured; [`Node::reload_tls`] swaps
    /// the certificate for new handshakes.
    pub tls: Option<Arc<crate::tls::TlsReloader>>,
}

impl Node {
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        config.validate()?;
        let auth = match config.auth.mode {
            AuthMode::None => Authenticator::None,
            AuthMode::Jwt => match (&config.auth.jwt_secret, &config.auth.jwt_public_key_file) {
                (_, Some(path)) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        anyhow::anyhow!("reading JWT public key {}: {e}", path.display())
                    })?;
                    Authenticator::rs256_pem(&pem)?
                }
                (Some(secret), None) => Authenticator::hs256(secret.expose().as_bytes()),
                (None, None) => unreachable!("validated"),
            },
        };
        let limits = crate::limits::Limits::new(&config)?;
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(Arc::new(crate::tls::TlsReloader::load(cert, key)?)),
            _ => None,
        };
        let gw_config = config.gateway();
        let node_id = gw_config.node.clone();
        let metrics = Metrics::default();
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let seams = crate::seams::build(&config, &node_id, &mut registry)?;
        let gateway = Gateway::new(gw_config, seams.broker, seams.presence, metrics.clone());
        let upstreams = UpstreamManager::new(UpstreamParts {
            node: node_id.clone(),
            records: seams.records,
            publisher: gateway.clone(),
            metrics,
        });
        if let Some((ownership, forwarding)) = seams.cluster {
            upstreams.attach_cluster(ownership, forwarding);
        }
        let access = Access::new(
            config.api_key.as_ref().map(|k| k.expose().to_string()),
            limits.api_rate(),
        );
        let control = Arc::new(Control::new(gateway.clone(), upstreams.clone(), access));
        Ok(Arc::new(Self {
            build: BuildInfo {
                name: "wsgate",
                version: env!("CARGO_PKG_VERSION"),
                git_commit: env!("WSGATE_GIT_COMMIT"),
                build_time: env!("WSGATE_BUILD_TIME"),
                node: node_id.to_string(),
            },
            config,
            gateway,
            upstreams,
            control,
            auth,
            lifecycle: Lifecycle::default(),
            metrics_registry: registry,
            tasks: TaskTracker::new(),
            limits,
            tls,
        }))
    }

    /// Re-reads the TLS certificate and key (SIGHUP). Established connections keep theirs;
    /// on error the previous certificate stays in use. `Ok(false)`: TLS is not configured.
    pub fn reload_tls(&self) -> anyhow::Result<bool> {
        match &self.tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Whether this node should receive new traffic.
    pub fn is_ready(&self) -> bool {
        self.lifecycle.is_started()
            && !self.lifecycle.is_draining()
            && self.gateway.broker.is_healthy()
            && self.gateway.presence.is_healthy()
            && !self.limits.near_full()
    }
}

/// Binds the gRPC listener the config asks for (`grpc_listen`), or none when
/// `grpc_enabled` is false.
pub async fn bind_grpc(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    if !config.grpc_enabled {
        return Ok(None);
    }
    let l = TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding gRPC {}: {e}", config.grpc_listen))?;
    Ok(Some(l))
}

/// Serves `listener` (and the gRPC API on `grpc_listen`, unless disabled) until `shutdown`
/// resolves, then drains and returns.
pub async fn run(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grpc = bind_grpc(&node.config).await?;
    run_with(node, listener, grpc, shutdown).await
}

/// [`run`] with the gRPC listener bound by the caller (`None`: no gRPC API). The gRPC
/// server stops with the HTTP side: health turns NOT_SERVING when draining begins (it
/// follows [`Node::is_ready`]); calls are taken until the drain is over, as HTTP ones are.
pub async fn run_with(
    node: Arc<Node>,
    listener: TcpListener,
    grpc: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let heartbeat = tokio::spawn(heartbeat_loop(node.clone()));
    let reclaimer = node
        .upstreams
        .spawn_reclaimer(node.config.clear_all_on_start());
    let (grpc_stop, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let grpc = grpc.map(|l| {
        let api = wsgate_grpc::GrpcApi::new(node.control.clone());
        let ready_node = node.clone();
        let options = wsgate_grpc::ServeOptions {
            ready: Arc::new(move || ready_node.is_ready()),
        };
        if let Ok(a) = l.local_addr() {
            info!(addr = %a, "wsgate gRPC API listening");
        }
        tokio::spawn(wsgate_grpc::serve(api, l, options, async move {
            let _ = grpc_stopped.await;
        }))
    });
    let stop_grpc = move || async move {
        let _ = grpc_stop.send(());
        if let Some(task) = grpc {
            match tokio::time::timeout(Duration::from_secs(5), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => warn!(error = %e, "gRPC server failed"),
                Ok(Err(e)) => warn!(error = %e, "gRPC server task failed"),
                Err(_) => warn!("gRPC calls still open after drain; exiting anyway"),
            }
        }
    };
    let app = crate::http::router(node.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut serving = tokio::spawn(crate::listener::serve(
        listener,
        app,
        crate::listener::Options {
            handshake_timeout: Duration::from_millis(node.config.handshake_timeout_ms),
            max_header_size: node.config.max_header_size,
            tls: node.tls.clone(),
            timeouts: node
                .gateway
                .metrics
                .connection_rejections
                .get_or_create(&wsgate_core::metrics::ReasonLabel {
                    reason: "handshake_timeout",
                })
                .clone(),
        },
        stop_rx,
    ));
    node.lifecycle.started.store(true, Ordering::Release);
    info!(%addr, node = %node.build.node, version = node.build.version, tls = node.tls.is_some(), "wsgate listening");

    tokio::select! {
        () = shutdown => {}
        _ = &mut serving => {
            heartbeat.abort();
            if let Some(r) = &reclaimer {
                r.abort();
            }
            stop_grpc().await;
            node.upstreams.shutdown().await;
            anyhow::bail!("the accept loop ended unexpectedly");
        }
    }
    // Stop advertising readiness and refuse upgrades before anything else, so a balancer
    // steers new clients away while the old ones are told to go. The listener stays up during
    // the drain so that new clients get a clear 503 instead of a refused connection.
    node.lifecycle.draining.store(true, Ordering::Release);
    // Cluster mode: hand upstream connections over first, so survivors re-establish them
    // within a sweep instead of after the drain (a rolling restart stays non-disruptive).
    if let Some(r) = reclaimer {
        r.abort();
        let _ = r.await;
        node.upstreams.hand_over().await;
    }
    info!("shutdown: draining connections");
    node.gateway.close_all("server shutting down");
    node.tasks.close();
    let drain = Duration::from_millis(node.config.drain_timeout_ms);
    if tokio::time::timeout(drain, node.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = node.gateway.registry.len(),
            "drain timeout: dropping remaining connections"
        );
    }
    // Upstream connections go after the gateway drain: clients still connected until then
    // keep receiving what upstreams publish. Their records stay in the store.
    node.upstreams.shutdown().await;
    let _ = stop_tx.send(true);
    stop_grpc().await;
    heartbeat.abort();
    let _ = serving.await;
    info!("wsgate stopped");
    Ok(())
}

/// One task for the whole node: the gateway's heartbeat, and the limits' housekeeping once a
/// minute.
async fn heartbeat_loop(node: Arc<Node>) {
    let gw = &node.gateway;
    let mut heartbeat = Heartbeat::new(gw);
    let mut last_housekeeping = gw.clock.now_ms();
    loop {
        heartbeat.tick(gw).await;
        if gw.clock.now_ms().saturating_sub(last_housekeeping) >= 60_000 {
            last_housekeeping = gw.clock.now_ms();
            node.limits.housekeeping();
        }
    }
}

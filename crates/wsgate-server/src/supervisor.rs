//! The node's lifecycle: what starts, in which order, and how it stops.
//!
//! Start: the heartbeat sweep, the upstream reclaimer (cluster mode), the gRPC server, the
//! accept loop; then the node reports itself started. The reclaimer first takes the node
//! id's lease ([`Node::take_lease`] may have done so before the listener was bound); if
//! another live process holds the id, at start or later, the node stops at once with that
//! error and without a hand-over (the records under the id are the other process's).
//! Stop, once `shutdown` resolves:
//!
//! 1. draining: `/ready` turns false, upgrades and upstream Connects get 503, so a balancer
//!    steers new clients away while the listener stays up to say so;
//! 2. cluster mode: the reclaimer stops and upstream connections are handed over, so that
//!    survivors re-establish them within a sweep instead of after the drain;
//! 3. every client is sent 1001 and the connection tasks are awaited (`drain_timeout_ms`);
//! 4. upstream connections close (their records stay in the store): clients still connected
//!    until then kept receiving what upstreams publish; then the event queues are sent
//!    (docs/events.md) within what is left of `drain_timeout_ms`;
//! 5. the accept loop, then the gRPC server, then the heartbeat stop.
//!
//! Supervision: the heartbeat, the reclaimer and the engines' background tasks
//! ([`wsgate_core::tasks::supervised`]: the broker's subscription, the lease renewal, the
//! forwarding channel, ...) run as long as the node. When one of them ends anyway (returns
//! or panics), `/ready` turns 503 at once and the node stops with an error (exit status 1):
//! it is never "ready" while it no longer receives, renews or sweeps; the orchestrator
//! restarts it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use wsgate_core::gateway::{Gateway, Heartbeat};
use wsgate_core::upstream::LeaseConflict;

use crate::grpc::GrpcServer;
use crate::limits::Limits;
use crate::node::Node;

/// Keyed rate limiters forget idle keys this often.
const HOUSEKEEPING_MS: u64 = 60_000;

/// Binds the gRPC listener the config asks for (`grpc_listen`), or none when
/// `grpc_enabled` is false.
pub async fn bind_grpc(config: &crate::Config) -> anyhow::Result<Option<TcpListener>> {
    config.grpc.bind().await
}

/// Serves `listener` (and the gRPC API on `grpc_listen`, unless disabled) until `shutdown`
/// resolves, then drains and returns.
pub async fn run(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grpc = bind_grpc(node.config()).await?;
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
    let mut running = Running::start(node, listener, grpc)?;
    tokio::select! {
        () = shutdown => {}
        _ = &mut running.http => {
            running.abort().await;
            anyhow::bail!("the accept loop ended unexpectedly");
        }
        conflict = lease_conflict(&mut running.reclaimer) => {
            running.abort().await;
            return Err(conflict.into());
        }
        _ = &mut running.heartbeat => {
            running.abort().await;
            anyhow::bail!("background task \"heartbeat\" ended: stopping the node");
        }
        name = wsgate_core::tasks::failed() => {
            running.abort().await;
            anyhow::bail!("background task {name:?} ended: stopping the node");
        }
    }
    running.stop().await;
    info!("wsgate stopped");
    Ok(())
}

/// The node's tasks while it serves.
struct Running {
    node: Arc<Node>,
    heartbeat: JoinHandle<()>,
    /// Cluster mode: takes over upstream connections of dead instances; ends only when
    /// another process holds this node id.
    reclaimer: Option<JoinHandle<LeaseConflict>>,
    grpc: GrpcServer,
    http: JoinHandle<()>,
    stop_http: watch::Sender<bool>,
}

impl Running {
    fn start(
        node: Arc<Node>,
        listener: TcpListener,
        grpc: Option<TcpListener>,
    ) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let config = node.config();
        let heartbeat = tokio::spawn(heartbeat_loop(node.gateway.clone(), node.limits.clone()));
        let reclaimer = node
            .upstreams
            .spawn_reclaimer(config.cluster.clear_all_on_start());
        let grpc = GrpcServer::start(node.api(), grpc);
        let options = config.listener.options(
            node.tls.clone(),
            node.gateway.metrics.rejections("handshake_timeout"),
        );
        let (stop_http, stop_rx) = watch::channel(false);
        let http = tokio::spawn(crate::listener::serve(
            listener,
            crate::http::router(node.api().clone(), node.ws().clone()),
            options,
            stop_rx,
        ));
        node.lifecycle.start();
        info!(%addr, node = %node.api().build.node, version = node.api().build.version, tls = node.is_tls(), "wsgate listening");
        Ok(Self {
            node,
            heartbeat,
            reclaimer,
            grpc,
            http,
            stop_http,
        })
    }

    /// The accept loop or a background task died: not ready from now on; stop the rest
    /// without a drain.
    async fn abort(self) {
        self.node.lifecycle.drain();
        self.heartbeat.abort();
        if let Some(r) = &self.reclaimer {
            r.abort();
        }
        self.grpc.stop().await;
        self.node.upstreams.shutdown().await;
    }

    /// The graceful stop, in the order the module documentation gives.
    async fn stop(self) {
        let node = &self.node;
        // Connect first: once `/ready` says draining, no new upstream is accepted.
        node.api().control.drain();
        node.lifecycle.drain();
        if let Some(r) = self.reclaimer {
            r.abort();
            let _ = r.await;
            node.upstreams.hand_over().await;
        }
        info!("shutdown: draining connections");
        node.gateway.close_all("server shutting down");
        node.tasks.close();
        let drain = Duration::from_millis(node.config().drain_timeout_ms);
        let drained_by = tokio::time::Instant::now() + drain;
        if tokio::time::timeout(drain, node.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = node.gateway.connection_count(),
                "drain timeout: dropping remaining connections"
            );
        }
        node.upstreams.shutdown().await;
        // The closes and state changes above are events too: sent within what is left of
        // the drain timeout.
        if let Some(events) = node.gateway.events() {
            events.drain(drained_by).await;
        }
        let _ = self.stop_http.send(true);
        self.grpc.stop().await;
        self.heartbeat.abort();
        let _ = self.http.await;
    }
}

/// Resolves when the reclaimer ends: another live process holds this node id.
async fn lease_conflict(reclaimer: &mut Option<JoinHandle<LeaseConflict>>) -> LeaseConflict {
    match reclaimer {
        Some(r) => match r.await {
            Ok(conflict) => conflict,
            // Aborted only by `stop`, which does not run while this is polled; a panic is
            // a bug.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        },
        None => std::future::pending().await,
    }
}

/// One task for the whole node: the gateway's [`Heartbeat`] (pings and stale-connection
/// sweeps), the limiters' housekeeping once a minute, and the tokens that expire on open
/// connections ([`Gateway::run_expiries`]).
async fn heartbeat_loop(gw: Arc<Gateway>, limits: Arc<Limits>) {
    let sweeps = async {
        let mut heartbeat = Heartbeat::new(&gw);
        let mut last_housekeeping = gw.now_ms();
        loop {
            heartbeat.tick(&gw).await;
            if gw.now_ms().saturating_sub(last_housekeeping) >= HOUSEKEEPING_MS {
                last_housekeeping = gw.now_ms();
                limits.housekeeping();
            }
        }
    };
    tokio::join!(sweeps, gw.run_expiries());
}

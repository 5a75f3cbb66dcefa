//! The gRPC control API as a part of the node: its settings, its listener, and a handle the
//! supervisor starts and stops it with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::http::ApiState;

/// Default of `grpc_listen`: loopback, beside the HTTP listener's default. Used only when
/// `grpc_enabled` is set.
pub const DEFAULT_GRPC_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50051);
/// How long a stopping node waits for gRPC calls still open after the drain.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct GrpcConfig {
    /// gRPC control API listener (`wsgate.v1.WsGate`, health, reflection).
    /// Default [`DEFAULT_GRPC_LISTEN`].
    pub grpc_listen: SocketAddr,
    /// Serve the gRPC control API. Default false (opt-in, `WSGATE_GRPC_ENABLED=true`): a
    /// fixed default port would keep a second node on the same host from starting, and
    /// the HTTP API does everything gRPC does.
    pub grpc_enabled: bool,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            grpc_listen: DEFAULT_GRPC_LISTEN,
            grpc_enabled: false,
        }
    }
}

impl GrpcConfig {
    /// The address gRPC serves on, when it is enabled.
    pub fn listen(&self) -> Option<SocketAddr> {
        self.grpc_enabled.then_some(self.grpc_listen)
    }

    /// Binds the listener the config asks for, or none when `grpc_enabled` is false.
    pub async fn bind(&self) -> anyhow::Result<Option<TcpListener>> {
        if !self.grpc_enabled {
            return Ok(None);
        }
        let l = TcpListener::bind(self.grpc_listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding gRPC {}: {e}", self.grpc_listen))?;
        Ok(Some(l))
    }
}

/// A running gRPC server (or none), stopped with [`GrpcServer::stop`].
pub(crate) struct GrpcServer {
    stop: oneshot::Sender<()>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl GrpcServer {
    /// Serves on `listener` (`None`: nothing to serve). Health follows the API's readiness.
    pub(crate) fn start(api: &ApiState, listener: Option<TcpListener>) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = listener.map(|l| {
            let service = wsgate_grpc::GrpcApi::new(api.control.clone());
            let ready = api.clone();
            let options = wsgate_grpc::ServeOptions {
                ready: Arc::new(move || ready.is_ready()),
            };
            if let Ok(a) = l.local_addr() {
                info!(addr = %a, "wsgate gRPC API listening");
            }
            let serving = wsgate_grpc::serve(service, l, options, async move {
                let _ = stopped.await;
            });
            tokio::spawn(async move { serving.await.map_err(anyhow::Error::from) })
        });
        Self { stop, task }
    }

    /// Stops taking calls and waits (bounded) for open ones.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        if let Some(task) = self.task {
            match tokio::time::timeout(STOP_TIMEOUT, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => warn!(error = %e, "gRPC server failed"),
                Ok(Err(e)) => warn!(error = %e, "gRPC server task failed"),
                Err(_) => warn!("gRPC calls still open after drain; exiting anyway"),
            }
        }
    }
}

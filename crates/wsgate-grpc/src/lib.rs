//! The wsgate control API over gRPC (`wsgate.v1.WsGate`, `proto/wsgate/v1/wsgate.proto`).
//!
//! The same operations and answers as the HTTP/JSON API, over the same
//! [`Gateway`](wsgate_core::gateway::Gateway) and
//! [`UpstreamManager`](wsgate_core::upstream::UpstreamManager): every reply carries
//! `success` and `error`, and `error` is the HTTP API's string to the letter (seed 000's
//! `Connection not found`, `Connection owned by different instance: <id>`, `WebSocket is
//! not connected`, `Request timeout`). Application errors and malformed requests are
//! `success = false` replies with gRPC status OK, as seed 000 does; a non-OK status means the
//! call never reached the API (UNAUTHENTICATED without the node's API key, or transport).
//!
//! [`serve`] runs the service with `grpc.health.v1` (its status follows a readiness
//! function, i.e. `/ready`) and server reflection (v1 and v1alpha) on one listener.
//! The code is generated at build time with protox: no system `protoc`.
//!
//! This crate knows nothing of the HTTP server: `wsgate-server` depends on it and starts it.

mod service;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tracing::info;

pub use service::GrpcApi;

/// The generated `wsgate.v1` messages, server and client.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("wsgate.v1");

    /// The encoded file descriptor set of `wsgate.v1` (what reflection serves).
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("wsgate_descriptor");
}

/// What a Rust caller needs: the generated client and the messages.
pub mod client {
    pub use crate::pb::ws_gate_client::WsGateClient;
    pub use crate::pb::*;
}

/// The full name of the service, as health checks and reflection list it.
pub const SERVICE_NAME: &str = "wsgate.v1.WsGate";

/// How often the health status is brought in line with the readiness function.
const HEALTH_POLL: Duration = Duration::from_millis(100);

/// Readiness, as `/ready` reports it.
pub type Ready = Arc<dyn Fn() -> bool + Send + Sync>;

/// Options of [`serve`].
#[derive(Clone)]
pub struct ServeOptions {
    /// When set, every `WsGate` call needs `authorization: Bearer <api_key>` metadata
    /// (health and reflection do not).
    pub api_key: Option<String>,
    /// Health reports SERVING for `""` and [`SERVICE_NAME`] while this returns true.
    pub ready: Ready,
}

/// Serves the API, health and reflection on `listener` until `shutdown` resolves, then
/// reports NOT_SERVING and stops gracefully (in-flight calls finish).
pub async fn serve(
    api: GrpcApi,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let addr = listener.local_addr().ok();
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("valid descriptors");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("valid descriptors");

    let set = |reporter: tonic_health::server::HealthReporter, status: ServingStatus| async move {
        reporter.set_service_status("", status).await;
        reporter.set_service_status(SERVICE_NAME, status).await;
    };
    let ready = options.ready.clone();
    let status_of = move || {
        if ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    let mut current = status_of();
    set(reporter.clone(), current).await;
    let watcher = {
        let reporter = reporter.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEALTH_POLL);
            loop {
                tick.tick().await;
                let now = status_of();
                if now != current {
                    current = now;
                    set(reporter.clone(), now).await;
                }
            }
        })
    };
    let watcher = watcher.abort_handle();
    let stop_watcher = watcher.clone();

    let key = options.api_key.map(|k| format!("Bearer {k}"));
    let svc =
        pb::ws_gate_server::WsGateServer::with_interceptor(api, move |req: tonic::Request<()>| {
            match &key {
                None => Ok(req),
                Some(want) => {
                    let given = req
                        .metadata()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok());
                    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), want.as_bytes())) {
                        Ok(req)
                    } else {
                        Err(tonic::Status::unauthenticated(
                            "Unauthorized: missing or wrong API key",
                        ))
                    }
                }
            }
        });
    info!(addr = ?addr, "wsgate gRPC listening");
    let result = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(svc)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
            shutdown.await;
            // Tell health watchers first, then stop taking calls.
            stop_watcher.abort();
            set(reporter, ServingStatus::NotServing).await;
        })
        .await;
    watcher.abort();
    info!("wsgate gRPC stopped");
    result
}

/// Compares without an early exit, so response time does not leak how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
